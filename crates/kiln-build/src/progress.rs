use std::io::Write;
use std::time::Duration;

use crate::Redactor;

/// How much the build prints, on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Steps, their times and the output of RUN steps; what CI logs want.
    Plain,
    /// Only errors.
    Quiet,
}

/// Prints build steps as `[stage n/m] INSTRUCTION` with their times. Everything it prints,
/// in every mode, passes through its [`Redactor`].
pub struct Progress {
    mode: ProgressMode,
    redactor: Redactor,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        Progress {
            mode,
            redactor: Redactor::default(),
        }
    }

    /// The same progress, hiding what `redactor` hides.
    pub fn redacting(&self, redactor: Redactor) -> Progress {
        Progress {
            mode: self.mode,
            redactor,
        }
    }

    fn line(&self, text: &str) {
        if self.mode != ProgressMode::Quiet {
            self.print(text);
        }
    }

    fn print(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", self.redactor.redact(text));
    }

    pub fn step_start(&self, label: &str, instruction: &str) {
        self.line(&format!("{label} {instruction}"));
    }

    pub fn step_done(&self, label: &str, elapsed: Duration, note: &str) {
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        self.line(&format!("{label} DONE {:.2}s{note}", elapsed.as_secs_f64()));
    }

    /// A line printed by a RUN step.
    pub fn output(&self, label: &str, text: &str) {
        self.line(&format!("{label}   | {text}"));
    }

    /// A sub-task of the current step (pulling, extracting, pushing).
    pub fn detail(&self, text: &str) {
        self.line(&format!("  - {text}"));
    }

    pub fn info(&self, text: &str) {
        self.line(text);
    }

    /// Something the user should act on; printed in every mode, `--progress=quiet` too.
    pub fn warning(&self, text: &str) {
        self.print(&format!("[warning] {text}"));
    }
}
