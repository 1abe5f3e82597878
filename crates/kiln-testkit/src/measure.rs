//! Running a process and measuring its peak resident memory, as the kernel counts it
//! (`ru_maxrss` from `wait4`), so tests can hold kiln to a memory bound.
//!
//! The process runs under GNU time (Debian's `time`), which forks it, reaps it with `wait4`
//! and reports that count. The test process cannot start it itself: std starts children with
//! `vfork` and `exec`, and the kernel carries the high-water mark of the address space that
//! `exec` replaces (here, the whole test process) into the new program's `ru_maxrss`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const GNU_TIME: &str = "/usr/bin/time";

/// A finished process: what it printed and how it ended, and its peak resident memory.
#[derive(Debug)]
pub struct Measured {
    pub output: Output,
    /// The most memory the process had resident at once, in KiB.
    pub peak_rss_kib: u64,
}

/// Runs `cmd` (its program, arguments, environment changes and working directory) to its
/// end, with stdin empty and stdout and stderr captured. The exit status is the command's;
/// GNU time exits with 128 + N when signal N ended it.
pub fn run_measured(cmd: &mut Command) -> Measured {
    assert!(
        Path::new(GNU_TIME).exists(),
        "{GNU_TIME} is missing: run scripts/install-deps.sh (Debian package time)"
    );
    let report = tempfile::NamedTempFile::new().expect("creating a file for GNU time's report");
    let mut timed = Command::new(GNU_TIME);
    // Only the peak RSS goes to the report; --quiet keeps out the exit status line.
    timed
        .args(["--quiet", "--format=%M", "--output"])
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let output = timed
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} under {GNU_TIME}: {e}"));
    let text = std::fs::read_to_string(report.path()).expect("reading GNU time's report");
    let peak_rss_kib = text
        .lines()
        .next_back()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time reported {text:?} for {cmd:?}"));
    Measured {
        output,
        peak_rss_kib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_the_commands_not_the_test_process() {
        // The test process holds 150 MiB while it measures: none of it may be counted.
        let held = vec![7u8; 150 << 20];
        let small = run_measured(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 4"]));
        assert_eq!(
            held.iter().map(|&b| u64::from(b)).sum::<u64>(),
            7 * (150 << 20)
        );
        assert_eq!(small.output.status.code(), Some(4));
        assert_eq!(small.output.stdout, b"out\n");
        assert_eq!(small.output.stderr, b"err\n");
        assert!(small.peak_rss_kib < 16 << 10, "{} KiB", small.peak_rss_kib);
        // A shell that holds 40 MB at once is counted with it.
        let big = run_measured(Command::new("sh").args([
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]));
        assert_eq!(big.output.stdout, b"40000000\n");
        assert!(
            big.peak_rss_kib > small.peak_rss_kib + 35_000,
            "{} KiB, against {} KiB",
            big.peak_rss_kib,
            small.peak_rss_kib
        );
    }
}
