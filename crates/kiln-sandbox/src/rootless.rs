//! Rootless kiln: a non-root user's kiln re-executes itself as uid 0 of a new user namespace,
//! so that the sandbox (and everything else) works as for root, within that namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::{Gid, Uid, User, getegid, geteuid, pipe2};

use crate::{HELPER_ARG, SandboxError};

/// Set in the re-executed kiln: the fd from which it reads one byte once its id maps are
/// written. Its presence also marks "already inside".
const SYNC_FD_ENV: &str = "KILN_ROOTLESS_SYNC_FD";

/// Call first thing in `main()`. As root (real, or in a namespace) it does nothing. Otherwise
/// it runs the current executable again, with the same arguments, as uid 0 of a new user and
/// mount namespace, and exits with its exit code; only failures to do so return.
pub fn enter_rootless_if_needed() -> Result<(), SandboxError> {
    // The sandbox helper starts unmapped in its new namespace; its caller maps it.
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(HELPER_ARG)) {
        return Ok(());
    }
    // Checked before the uid: the parent may have mapped us to uid 0 already, but we still
    // need the exec that grants capabilities.
    if let Ok(fd) = std::env::var(SYNC_FD_ENV) {
        return wait_until_mapped(&fd);
    }
    if geteuid().is_root() {
        return Ok(());
    }
    match rerun_in_user_namespace()? {
        Some(code) => std::process::exit(code),
        // No user namespace here: kiln goes on as its own user. It records the owners it
        // cannot give files beside them, so Dockerfiles without RUN steps build; the first RUN
        // step that must run fails with the reason.
        None => Ok(()),
    }
}

fn wait_until_mapped(fd: &str) -> Result<(), SandboxError> {
    let fd: i32 = fd
        .parse()
        .map_err(|_| SandboxError::Rootless(format!("{SYNC_FD_ENV}={fd} is not an fd number")))?;
    // SAFETY: F_GETFD only asks whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(SandboxError::Rootless(format!(
            "{SYNC_FD_ENV}={fd} is not open (started by something other than kiln?)"
        )));
    }
    // SAFETY: our parent passed this fd to us alone, checked open above.
    let mut sync = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut byte = [0u8; 1];
    let read = sync.read(&mut byte)?;
    if read != 1 || !geteuid().is_root() {
        return Err(SandboxError::Rootless(
            "the parent process did not map this user namespace".to_string(),
        ));
    }
    drop(sync);
    // We entered the namespace before our exec, unmapped, and that exec dropped all
    // capabilities; being mapped to uid 0 now gives none back, an exec as uid 0 does.
    let mut args = std::env::args_os();
    let mut command = Command::new(std::env::current_exe()?);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let err = command.args(args).env_remove(SYNC_FD_ENV).exec();
    Err(SandboxError::Rootless(format!(
        "re-executing kiln as uid 0: {err}"
    )))
}

/// Returns the exit code to exit with, or `None` if this system refuses a user namespace.
fn rerun_in_user_namespace() -> Result<Option<i32>, SandboxError> {
    let (sync_read, sync_write) = pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let sync_fd = sync_read.as_raw_fd();
    let mut args = std::env::args_os();
    let mut command = Command::new(std::env::current_exe()?);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).env(SYNC_FD_ENV, sync_fd.to_string());
    // SAFETY: runs between fork and exec; only raw syscalls (fcntl, prctl, unshare), no
    // allocation.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(sync_fd, libc::F_SETFD, 0) == -1
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1
                || libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        // unshare refused: a seccomp profile, a sysctl or an LSM says no.
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::ENOSPC)
            ) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(SandboxError::Rootless(format!("re-executing kiln: {err}"))),
    };
    drop(command);
    drop(sync_read);
    if let Err(err) = map_ids(child.id(), geteuid(), getegid()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    File::from(sync_write).write_all(b"1")?;
    // SAFETY: SIG_IGN installs no handler code. The terminal sends Ctrl-C and Ctrl-\ to the
    // child too; we stay to forward its exit code.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGQUIT, SigHandler::SigIgn);
    }
    let status = child.wait()?;
    Ok(Some(
        status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .unwrap_or(1),
    ))
}

/// Maps uid 0 to us and 1..N to our subordinate ids, or, without those, only uid 0 to us.
fn map_ids(pid: u32, uid: Uid, gid: Gid) -> Result<(), SandboxError> {
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| uid.to_string());
    let full_map: Result<(), String> = match (
        find_tool("newuidmap"),
        find_tool("newgidmap"),
        subordinate_range("/etc/subuid", &name, uid),
        subordinate_range("/etc/subgid", &name, uid),
    ) {
        (Some(newuidmap), Some(newgidmap), Some(uids), Some(gids)) => {
            // newuidmap writes nothing when it fails, so the single-id map remains possible.
            match run_map_tool(&newuidmap, pid, uid.as_raw(), uids) {
                Ok(()) => {
                    return run_map_tool(&newgidmap, pid, gid.as_raw(), gids)
                        .map_err(SandboxError::Rootless);
                }
                Err(err) => Err(err),
            }
        }
        (None, _, _, _) | (_, None, _, _) => {
            Err("newuidmap/newgidmap (package uidmap) are not installed".to_string())
        }
        _ => Err(format!(
            "user {name} has no subordinate id range in /etc/subuid and /etc/subgid"
        )),
    };
    if let Err(why) = full_map {
        eprintln!(
            "kiln: warning: {why}; using a user namespace with only uid 0 mapped (to uid {uid}): \
             all files in the image will be owned by root, and RUN steps cannot switch to \
             another user"
        );
    }
    let write = |file: &str, content: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, content)
            .map_err(|err| SandboxError::Rootless(format!("writing {path}: {err}")))
    };
    // Unprivileged gid maps require setgroups to be denied first.
    write("setgroups", "deny".to_string())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

/// The first `(start, count)` of `name` (or of the numeric uid) in an /etc/subuid-style file.
fn subordinate_range(file: &str, name: &str, uid: Uid) -> Option<(u64, u64)> {
    let content = std::fs::read_to_string(file).ok()?;
    let uid = uid.to_string();
    content.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let who = fields.next()?;
        let start = fields.next()?.parse().ok()?;
        let count: u64 = fields.next()?.parse().ok()?;
        ((who == name || who == uid) && count > 0).then_some((start, count))
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn run_map_tool(
    tool: &Path,
    pid: u32,
    own_id: u32,
    (start, count): (u64, u64),
) -> Result<(), String> {
    let output = Command::new(tool)
        .args([pid.to_string(), "0".into(), own_id.to_string(), "1".into()])
        .args(["1".to_string(), start.to_string(), count.to_string()])
        .output()
        .map_err(|err| format!("running {}: {err}", tool.display()))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{} failed: {}",
            tool.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::subordinate_range;
    use nix::unistd::Uid;

    #[test]
    fn subordinate_range_matches_name_or_uid() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subuid");
        std::fs::write(
            &file,
            "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        assert_eq!(
            subordinate_range(file, "alice", Uid::from_raw(1000)),
            Some((100000, 65536))
        );
        assert_eq!(
            subordinate_range(file, "carol", Uid::from_raw(1001)),
            Some((200000, 1000))
        );
        assert_eq!(subordinate_range(file, "bob", Uid::from_raw(1002)), None);
    }
}
