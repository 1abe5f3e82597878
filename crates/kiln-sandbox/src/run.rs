//! Caller side of [`Sandbox::run`]: starts the helper in new namespaces, maps its ids, sends
//! the spec and collects output and report.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::protocol::{HelperReport, HelperRequest};
use crate::{
    HELPER_ARG, MAX_LINE_BYTES, RunOutput, RunSpec, Sandbox, SandboxError, TAIL_LINES, arch,
};

impl Sandbox {
    /// Runs `spec.argv` in the sandbox. Each line of the command's combined stdout and stderr
    /// is passed to `on_line` as it arrives. A command that ran and failed is `Ok` with a
    /// non-success status; `Err` means the sandbox could not be set up or the command not
    /// started.
    pub fn run(
        &self,
        spec: &RunSpec,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutput, SandboxError> {
        self.run_request(&HelperRequest::Run(Box::new(spec.clone())), on_line)
    }

    /// Runs a program that only exits 0 as a step would run it: the helper in new namespaces,
    /// overlayfs, /proc, /dev, pivot_root, the hostname, seccomp, capabilities, the exec. A
    /// container runtime may allow some of this and refuse the rest, so only a whole trial
    /// tells whether steps can run. `scratch` must be an empty dir on the filesystem where
    /// the steps' upper dirs will be; the trial leaves its files there.
    pub fn trial(&self, scratch: &Path) -> Result<(), SandboxError> {
        let Some(native) = arch::native() else {
            // No trial program for this machine: the first step finds out instead.
            return Ok(());
        };
        let [lower, upper, work] = ["lower", "upper", "work"].map(|dir| scratch.join(dir));
        for dir in [&lower, &upper, &work] {
            std::fs::create_dir(dir)?;
        }
        let program = lower.join("trial");
        std::fs::write(&program, native.probe_program())?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
        let spec = RunSpec {
            lowers: vec![lower],
            upper,
            work,
            argv: vec!["/trial".to_string()],
            cwd: "/".to_string(),
            ..RunSpec::default()
        };
        let output = self.run(&spec, &mut |_| {})?;
        match output.status.success() {
            true => Ok(()),
            false => Err(SandboxError::Setup(format!(
                "a program that only exits 0 ended with {}",
                output.status
            ))),
        }
    }

    /// Starts the helper in new namespaces and has it carry out `request`.
    pub(crate) fn run_request(
        &self,
        request: &HelperRequest,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RunOutput, SandboxError> {
        let (spec_read, spec_write) = pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let (output_read, output_write) = pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;

        let mut child = self.spawn_helper(&spec_read, &report_write, output_write)?;
        // Our copies of the helper's ends must go, or the reads below would never see EOF.
        drop((spec_read, report_write));

        if let Err(err) = write_id_maps(child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }

        // The helper blocks reading the spec, so sending it only now, after the id maps, is
        // the handshake: the helper never runs unmapped. A helper that died early makes this
        // fail with EPIPE; its report or exit status tells why, so the error is not returned.
        let mut spec_pipe = File::from(spec_write);
        let spec_json = serde_json::to_vec(request).map_err(std::io::Error::from)?;
        let _ = spec_pipe.write_all(&spec_json);
        drop(spec_pipe);

        let tail = read_lines(File::from(output_read), on_line)?;
        let helper_status = child.wait()?;

        let mut reports = String::new();
        File::from(report_read).read_to_string(&mut reports)?;
        let mut finished = None;
        for line in reports.lines() {
            match serde_json::from_str::<HelperReport>(line) {
                Ok(HelperReport::SetupFailed(message)) => return Err(SandboxError::Setup(message)),
                Ok(HelperReport::Finished(status)) => finished = Some(status),
                Err(err) => {
                    return Err(SandboxError::HelperDied(format!(
                        "unreadable report {line:?}: {err}"
                    )));
                }
            }
        }
        match finished {
            Some(status) => Ok(RunOutput {
                status,
                tail: tail.into(),
            }),
            None => Err(SandboxError::HelperDied(format!(
                "helper {}, last output: {:?}",
                helper_status,
                tail.back()
            ))),
        }
    }

    fn spawn_helper(
        &self,
        spec_read: &OwnedFd,
        report_write: &OwnedFd,
        output_write: OwnedFd,
    ) -> Result<Child, SandboxError> {
        let inherited = [spec_read.as_raw_fd(), report_write.as_raw_fd()];
        let mut command = Command::new(&self.helper);
        command
            .arg(HELPER_ARG)
            .arg(inherited[0].to_string())
            .arg(inherited[1].to_string())
            // The helper needs no environment, and the command gets exactly its own.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(output_write.try_clone()?))
            .stderr(Stdio::from(output_write));
        // SAFETY: runs between fork and exec in the child of a possibly multi-threaded process,
        // so it only makes raw syscalls (close_range, prctl, fcntl, unshare) and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // The helper must not inherit what kiln inherited without close-on-exec (a
                // descriptor of the host's `/`, a terminal): only stdio and the two pipes.
                close_on_exec_above_stdio()?;
                // A SIGKILLed kiln must take its steps with it. The signal follows the death
                // of this thread, which waits for the helper anyway.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                for fd in inherited {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let namespaces = libc::CLONE_NEWUSER
                    | libc::CLONE_NEWNS
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWUTS;
                if libc::unshare(namespaces) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // `command` holds the output pipe's write ends; dropping it at the end of this
        // function closes them in the caller.
        command.spawn().map_err(|source| SandboxError::SpawnHelper {
            path: self.helper.clone(),
            source,
        })
    }
}

/// Marks every descriptor above 2 close-on-exec. Async-signal-safe (one syscall), for
/// `pre_exec`. CLOSE_RANGE_CLOEXEC needs Linux 5.11, as overlayfs's `userxattr` does.
pub(crate) fn close_on_exec_above_stdio() -> std::io::Result<()> {
    // SAFETY: close_range takes numbers only and changes flags of this process's descriptors.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match marked {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Maps the helper's namespace onto every id of ours, one to one: as real root that is the
/// whole 32-bit range, inside a rootless namespace it is what that namespace has.
fn write_id_maps(pid: u32) -> Result<(), SandboxError> {
    for map in ["uid_map", "gid_map"] {
        let own = std::fs::read_to_string(format!("/proc/self/{map}"))
            .map_err(|err| SandboxError::IdMap(format!("reading /proc/self/{map}: {err}")))?;
        let identity = identity_map(&own)
            .ok_or_else(|| SandboxError::IdMap(format!("unexpected /proc/self/{map}: {own:?}")))?;
        let target = format!("/proc/{pid}/{map}");
        std::fs::write(&target, identity)
            .map_err(|err| SandboxError::IdMap(format!("writing {target}: {err}")))?;
    }
    Ok(())
}

/// `inside outside count` lines of our map become `inside inside count`.
fn identity_map(own_map: &str) -> Option<String> {
    let mut identity = String::new();
    for line in own_map.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        let [inside, _outside, count] = fields[..] else {
            return None;
        };
        identity.push_str(&format!("{inside} {inside} {count}\n"));
    }
    (!identity.is_empty()).then_some(identity)
}

/// Passes every line to `on_line` and keeps the last [`TAIL_LINES`]. Output that is not UTF-8
/// is converted lossily; a last line without a newline counts too. A line longer than
/// [`MAX_LINE_BYTES`] is cut there and says how much of it was dropped.
pub(crate) fn read_lines(
    output: File,
    on_line: &mut dyn FnMut(&str),
) -> Result<VecDeque<String>, SandboxError> {
    let mut reader = BufReader::new(output);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let Some(dropped) = read_line_at_most(&mut reader, &mut raw, MAX_LINE_BYTES)? else {
            return Ok(tail);
        };
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        if dropped > 0 {
            line.push_str(&format!(
                " [kiln: {dropped} more bytes of this line not shown]"
            ));
        }
        on_line(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Reads one line into `raw`, without its newline, keeping at most `limit` bytes of it: the
/// rest of a longer line is read and dropped, so that a step printing without newlines
/// cannot make kiln's memory grow without end. Returns how many bytes were dropped, or
/// `None` at the end of the output.
fn read_line_at_most(
    reader: &mut impl BufRead,
    raw: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<u64>> {
    let mut dropped = 0;
    let mut read_any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(read_any.then_some(dropped));
        }
        read_any = true;
        let newline = available.iter().position(|&byte| byte == b'\n');
        let line_part = &available[..newline.unwrap_or(available.len())];
        let kept = line_part.len().min(limit.saturating_sub(raw.len()));
        raw.extend_from_slice(&line_part[..kept]);
        dropped += (line_part.len() - kept) as u64;
        let consumed = newline.map_or(available.len(), |at| at + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(Some(dropped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{identity_map, read_line_at_most};

    #[test]
    fn lines_are_cut_at_the_limit_and_the_rest_is_counted() {
        let mut output = std::io::BufReader::with_capacity(3, &b"short\nmuch too long\n\nend"[..]);
        let mut raw = Vec::new();
        let mut lines = Vec::new();
        while let Some(dropped) = read_line_at_most(&mut output, &mut raw, 8).unwrap() {
            lines.push((
                String::from_utf8(std::mem::take(&mut raw)).unwrap(),
                dropped,
            ));
        }
        let expected = [("short", 0), ("much too", 5), ("", 0), ("end", 0)];
        let expected: Vec<(String, u64)> = expected
            .iter()
            .map(|(line, dropped)| (line.to_string(), *dropped))
            .collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn identity_map_keeps_inside_ids_of_every_range() {
        assert_eq!(
            identity_map("         0          0 4294967295\n").as_deref(),
            Some("0 0 4294967295\n")
        );
        assert_eq!(
            identity_map("0 1000 1\n1 100000 65536\n").as_deref(),
            Some("0 0 1\n1 1 65536\n")
        );
        assert_eq!(identity_map("garbage"), None);
    }
}
