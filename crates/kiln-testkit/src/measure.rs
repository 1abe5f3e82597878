//! Running a command and measuring its peak memory, as the kernel accounts it.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};

/// What [`run_measured`] saw.
pub struct Measured {
    pub output: Output,
    /// Peak resident set size of the process (`ru_maxrss` from `wait4`), in KiB. It covers
    /// the process itself and the largest of the children it waited for.
    pub max_rss_kib: u64,
}

impl Measured {
    pub fn max_rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

/// Runs `command` to its end with stdout and stderr captured, and returns them with the
/// process's peak RSS. The child is reaped with `wait4`, which reports the resource usage of
/// exactly that process, unlike `getrusage(RUSAGE_CHILDREN)`, which mixes in every child any
/// thread of the test process waited for.
// The child is reaped by `wait4`, not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_measured(command: &mut Command) -> Measured {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes)
                .expect("reading a child's output");
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our unreaped child
        // (`child` is never waited on through std, so it is reaped exactly once, here).
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "waiting for {command:?}: {err}"
        );
    }
    Measured {
        output: Output {
            status: ExitStatus::from_raw(status),
            stdout: stdout.join().expect("the stdout reader panicked"),
            stderr: stderr.join().expect("the stderr reader panicked"),
        },
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_the_childs_and_output_is_captured() {
        // The shell holds a 40 MB string at once, then prints its length.
        let measured = run_measured(Command::new("sh").args([
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}; echo done >&2",
        ]));
        assert!(measured.output.status.success());
        assert_eq!(measured.output.stdout, b"40000000\n");
        assert_eq!(measured.output.stderr, b"done\n");
        assert!(
            measured.max_rss_mib() > 38.0,
            "peak RSS {:.1} MiB, expected above 38",
            measured.max_rss_mib()
        );
        let small = run_measured(&mut Command::new("true"));
        assert!(small.max_rss_mib() < 10.0, "{:.1} MiB", small.max_rss_mib());
    }
}
