//! Running a command and measuring its peak memory, as the kernel accounts it.

use std::process::{Command, Output};

/// What [`run_measured`] saw.
pub struct Measured {
    pub output: Output,
    /// Peak resident set size of the process (its `ru_maxrss` from `wait4`), in KiB.
    pub max_rss_kib: u64,
}

impl Measured {
    pub fn max_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// Runs `command` (its program, arguments, environment and directory) to its end with
/// stdout and stderr captured, and returns them with the process's peak RSS.
///
/// The process is started by GNU time (Debian's `time`), which reaps it with `wait4` and
/// reports its `ru_maxrss`. It cannot be started by the test process itself: the kernel
/// counts into a process's `ru_maxrss` the peak of the address space it replaced at exec,
/// which for a child forked (or vforked, as `Command` does) by the test process is the whole
/// test process. What the small `time` process forks starts from almost nothing. (busybox's
/// `time` applet would do, but its `%M` is four times too large: it converts the KiB the
/// kernel gives as if they were pages.)
pub fn run_measured(command: &Command) -> Measured {
    let report = tempfile::NamedTempFile::new().expect("creating a temp file");
    let mut timed = Command::new("time");
    // -q: no "Command exited with non-zero status" line in the report.
    timed
        .args(["-q", "-f", "%M", "-o"])
        .arg(report.path())
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    let output = timed
        .output()
        .unwrap_or_else(|e| panic!("starting GNU time for {command:?}: {e}"));
    let text = std::fs::read_to_string(report.path()).expect("reading GNU time's report");
    let max_rss_kib = text
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no peak RSS in GNU time's report {text:?}"));
    Measured {
        output,
        max_rss_kib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_the_commands_own_and_output_is_captured() {
        // The shell holds a 40 MB string (and the buffer it grew it in), then prints its length.
        let mut shell = Command::new("sh");
        shell.args([
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}; echo $GREETING >&2; exit 3",
        ]);
        shell.env("GREETING", "hello");
        let measured = run_measured(&shell);
        assert_eq!(measured.output.status.code(), Some(3));
        assert_eq!(measured.output.stdout, b"40000000\n");
        assert_eq!(measured.output.stderr, b"hello\n");
        assert!(
            (38.0..80.0).contains(&measured.max_rss_mib()),
            "peak RSS {:.1} MiB, expected about 40",
            measured.max_rss_mib()
        );
        // Not the test process's memory (which is larger: it holds the test binary).
        let small = run_measured(&Command::new("true"));
        assert!(small.max_rss_mib() < 3.0, "{:.1} MiB", small.max_rss_mib());
    }
}
