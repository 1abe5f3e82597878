//! What the caller and the helper exchange besides the command's output.
//!
//! The helper gets two inherited pipe fds, named by number after [`crate::HELPER_ARG`]: the
//! spec fd (the caller writes the JSON [`HelperRequest`] there, then closes it) and the report
//! fd (the helper writes one JSON [`HelperReport`] per line). The report fd is close-on-exec in
//! the helper, so a successful exec of the command closes it.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Emulator, ExitStatus, RunSpec};

/// What the caller asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HelperRequest {
    /// Run a command (a RUN step).
    Run(Box<RunSpec>),
    /// Run the probe program of `arch` in `scratch` (an empty dir), through `emulator`
    /// registered in the helper's own binfmt_misc, or without one, through what the kernel
    /// already has; see [`crate::Sandbox::emulation_for`].
    ProbeEmulation {
        arch: String,
        emulator: Option<Emulator>,
        scratch: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HelperReport {
    /// Mounting, user lookup or exec failed; the command did not run.
    SetupFailed(String),
    Finished(ExitStatus),
}

/// Exit code of the helper when it reported `SetupFailed`. The caller goes by the report, not
/// by this code, so a command that exits with the same code is not mistaken for a failure.
pub(crate) const SETUP_FAILED_EXIT: i32 = 125;

impl HelperReport {
    /// Best effort: if the caller is gone there is nobody left to tell.
    pub(crate) fn send(&self, report: &mut impl Write) {
        if let Ok(mut line) = serde_json::to_vec(self) {
            line.push(b'\n');
            let _ = report.write_all(&line);
        }
    }
}

/// Exit code a shell would show for this status.
pub(crate) fn shell_exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(code) => code,
        ExitStatus::Signal(signal) => 128 + signal,
    }
}
