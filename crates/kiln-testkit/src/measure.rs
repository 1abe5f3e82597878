//! Running a process and measuring what it cost: its peak resident memory, as the kernel
//! accounted it (`wait4`'s `ru_maxrss`), so a test can check a bound on a real kiln process.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};

/// A finished process: its output, and its peak resident set size.
#[derive(Debug)]
pub struct Measured {
    pub output: Output,
    /// The most memory the process held resident at once, in KiB.
    pub peak_rss_kib: u64,
}

/// Runs `cmd` to its end with stdin closed and stdout and stderr captured, and reaps it with
/// `wait4` to read its peak RSS.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std's wait cannot replace"
)]
pub fn run_measured(cmd: &mut Command) -> Measured {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for writes.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4 for {cmd:?}: {err}"
        );
    }
    Measured {
        output: Output {
            status: ExitStatus::from_raw(status),
            stdout: stdout.join().expect("the stdout reader"),
            stderr: stderr.join().expect("the stderr reader"),
        },
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_of_a_real_process_is_measured() {
        // `head -c` of /dev/zero into a shell variable holds it all in memory at once.
        let small = run_measured(Command::new("sh").args(["-c", "echo hi"]));
        let big = run_measured(Command::new("sh").args([
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]));
        assert!(small.output.status.success());
        assert_eq!(String::from_utf8_lossy(&small.output.stdout), "hi\n");
        assert_eq!(String::from_utf8_lossy(&big.output.stdout), "40000000\n");
        assert!(
            big.peak_rss_kib > small.peak_rss_kib + 30_000,
            "{} KiB vs {} KiB",
            big.peak_rss_kib,
            small.peak_rss_kib
        );
    }
}
