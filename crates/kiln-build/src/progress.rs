use std::io::Write;
use std::time::Duration;

use crate::Redactor;

/// How much of one step's output is printed, as BuildKit clips a step's log by default
/// (`BUILDKIT_STEP_LOG_MAX_SIZE`): a step must not flood the CI log. What the error of a
/// failing step quotes is its last lines, whatever was clipped.
pub const STEP_LOG_LIMIT: usize = 2 << 20;

/// How much the build prints, on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Steps, their times and the output of RUN steps; what CI logs want.
    Plain,
    /// Only errors.
    Quiet,
}

/// How each printed line looks: kiln's own text, with a timestamp in front, or one JSON object
/// (`level`, `msg`, `time`) per line, as kaniko's `--log-timestamp` and `--log-format=json`
/// print them for log collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStyle {
    pub json: bool,
    pub timestamps: bool,
}

/// Prints build steps as `[stage n/m] INSTRUCTION` with their times. Everything it prints,
/// in every mode, passes through its [`Redactor`].
pub struct Progress {
    mode: ProgressMode,
    redactor: Redactor,
    style: LogStyle,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        Progress {
            mode,
            redactor: Redactor::default(),
            style: LogStyle::default(),
        }
    }

    /// The same progress, printing its lines in `style`.
    pub fn styled(self, style: LogStyle) -> Progress {
        Progress { style, ..self }
    }

    /// The same progress, hiding what `redactor` hides.
    pub fn redacting(&self, redactor: Redactor) -> Progress {
        Progress {
            mode: self.mode,
            redactor,
            style: self.style,
        }
    }

    fn line(&self, text: &str) {
        if self.mode != ProgressMode::Quiet {
            self.print("info", text);
        }
    }

    fn print(&self, level: &str, text: &str) {
        let text = self.redactor.redact(text);
        let time = || crate::timefmt::rfc3339(crate::timefmt::now_secs());
        let line = match self.style {
            LogStyle { json: true, .. } => {
                serde_json::json!({"level": level, "msg": text, "time": time()}).to_string()
            }
            LogStyle {
                timestamps: true, ..
            } => format!("{} {text}", time()),
            LogStyle { .. } => text.into_owned(),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    pub fn step_start(&self, label: &str, instruction: &str) {
        self.line(&format!("{label} {instruction}"));
    }

    /// A step whose result came from the cache, as buildx shows one.
    pub fn step_cached(&self, label: &str, instruction: &str) {
        self.line(&format!("CACHED {label} {instruction}"));
    }

    pub fn step_done(&self, label: &str, elapsed: Duration, note: &str) {
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        self.line(&format!("{label} DONE {:.2}s{note}", elapsed.as_secs_f64()));
    }

    /// Where a RUN step's output lines go, up to [`STEP_LOG_LIMIT`].
    pub(crate) fn step_log<'p>(&'p self, label: &'p str) -> StepLog<'p> {
        StepLog {
            progress: self,
            label,
            printed: 0,
        }
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
        if self.style.json {
            self.print("warning", text);
        } else {
            self.print("warning", &format!("[warning] {text}"));
        }
    }
}

/// The printed output of one RUN step.
pub(crate) struct StepLog<'p> {
    progress: &'p Progress,
    label: &'p str,
    /// Bytes of output printed so far; past the limit, nothing more is.
    printed: usize,
}

impl StepLog<'_> {
    pub fn line(&mut self, text: &str) {
        if self.printed > STEP_LOG_LIMIT {
            return;
        }
        self.printed += text.len() + 1;
        if self.printed > STEP_LOG_LIMIT {
            self.progress.line(&format!(
                "{}   | [output clipped, log limit {} MiB reached]",
                self.label,
                STEP_LOG_LIMIT >> 20
            ));
            return;
        }
        self.progress.line(&format!("{}   | {text}", self.label));
    }
}
