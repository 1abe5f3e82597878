//! Running a process and measuring what it cost: its peak resident memory, as the kernel
//! accounted it (`ru_maxrss` from `wait4`), so a test can check a bound on a real kiln process.
//!
//! The count comes from GNU time (Debian's `time`), a small process that forks the command
//! and reads its rusage. A process spawned straight from the test would not do: std spawns
//! with `vfork` + `exec`, and `exec` carries the spawner's high-water RSS into the new
//! program's `ru_maxrss`, so a test holding a large hostile input in memory would be
//! measured instead of kiln.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

const GNU_TIME: &str = "/usr/bin/time";

/// A finished process: its output, and its peak resident set size.
#[derive(Debug)]
pub struct Measured {
    pub output: Output,
    /// The most memory the process held resident at once, in KiB.
    pub peak_rss_kib: u64,
}

impl Measured {
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs `cmd` (its program, arguments, environment changes and working directory) to its
/// end with stdin closed and stdout and stderr captured, and measures its peak RSS. The exit
/// status is the command's (128 + N when signal N ended it).
pub fn run_measured(cmd: &mut Command) -> Measured {
    assert!(
        std::path::Path::new(GNU_TIME).exists(),
        "{GNU_TIME} is missing: run scripts/install-deps.sh (Debian package time)"
    );
    let report = tempfile::NamedTempFile::new().expect("creating a file for GNU time's report");
    let mut timed = wrapped(
        GNU_TIME,
        &[
            "--quiet".as_ref(),
            "--format=%M".as_ref(),
            "--output".as_ref(),
            report.path().as_os_str(),
        ],
        cmd,
    );
    let output = timed
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} under {GNU_TIME}: {e}"));
    let text = std::fs::read_to_string(report.path()).expect("reading GNU time's report");
    let peak_rss_kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time reported {text:?} for {cmd:?}"));
    Measured {
        output,
        peak_rss_kib,
    }
}

/// `cmd` run by `program ARGS...` (a tool that takes a command line: GNU time, strace), with
/// `cmd`'s environment changes and working directory.
pub fn wrapped(program: &str, args: &[&OsStr], cmd: &Command) -> Command {
    let mut outer = Command::new(program);
    outer.args(args).arg(cmd.get_program()).args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => outer.env(name, value),
            None => outer.env_remove(name),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        outer.current_dir(dir);
    }
    outer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_is_the_commands_not_the_callers() {
        // Touch 200 MiB in this process first: a measurement that carried the caller's
        // high-water mark over would see it.
        let ballast = vec![1u8; 200 << 20];
        let small = run_measured(Command::new("sh").args(["-c", "echo hi; exit 3"]));
        assert_eq!(
            ballast.iter().map(|&b| b as usize).sum::<usize>(),
            200 << 20
        );
        // A shell variable holds 40 MB of `a`s at once.
        let big = run_measured(Command::new("sh").args([
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]));
        assert_eq!(small.output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&small.output.stdout), "hi\n");
        assert!(small.peak_rss_kib < 20 << 10, "{} KiB", small.peak_rss_kib);
        assert_eq!(String::from_utf8_lossy(&big.output.stdout), "40000000\n");
        assert!(
            big.peak_rss_kib > small.peak_rss_kib + 30_000,
            "{} KiB vs {} KiB",
            big.peak_rss_kib,
            small.peak_rss_kib
        );
    }
}
