//! The command's process, PID 1 of the new pid namespace: finishes the rootfs (proc, dev,
//! /etc files), enters it, confines itself as Docker confines a container (see
//! [`confine`]), takes the user's identity and execs the command.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::unistd::{AccessFlags, Gid, Uid, access, chdir, execve, pivot_root, sethostname};
use nix::unistd::{setgid, setgroups, setsid, setuid};

use kiln_fs::{Dir, Entry};

use crate::helper::EtcBind;
use crate::users::{self, Identity};
use crate::{DEFAULT_SHM_SIZE, Network, RunSpec, Ulimit, caps, mounts, network, run, seccomp};

/// PATH used for the lookup of the command when its environment has none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host devices bind-mounted (read-only) into the sandbox's /dev. /dev/tty is the controlling
/// terminal of whoever opens it; the command has none (see [`confine`]), so opening it fails.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// runc's read-only paths: kernel knobs in /proc whose permission checks compare the caller's
/// uid with the host's root, not its namespace's (as real root, the command's uid 0 is the
/// host's), such as /proc/sys/kernel/core_pattern.
const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// runc's masked paths under /proc: host information (kernel memory, keys, interrupts,
/// timers) hidden behind /dev/null (files) or an empty read-only tmpfs (dirs). runc also
/// masks /sys/firmware and /sys/devices/virtual/powercap; kiln mounts no /sys.
const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];

pub(crate) fn hostname_of(requested: &str) -> String {
    match requested {
        "" => "localhost".to_string(),
        name => name.to_string(),
    }
}

/// Only returns on failure, with the message for the caller.
pub(crate) fn run(
    spec: &RunSpec,
    merged: &Path,
    etc_binds: &[EtcBind],
) -> Result<Infallible, String> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets an attribute of this process. If the helper
    // dies, the command must not outlive it.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", Errno::last()));
    }
    // pivot_root moves the root of every process in the mount namespace; in a namespace of
    // our own it leaves the helper's root alone, which still needs host paths afterwards.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|err| format!("unshare(CLONE_NEWNS): {err}"))?;
    if spec.network == Network::None {
        network::isolate()?;
    }
    // Opened in this mount namespace: a mount point must be in the namespace mounted in.
    let root = Dir::open(merged).map_err(|err| format!("opening {}: {err}", merged.display()))?;
    let mount_point = |path: &str| {
        root.open_in_root(Path::new(path))
            .map_err(|err| format!("mount point /{path} in the rootfs: {err}"))
    };
    // The /etc files first: if the image's /etc/hosts is a symlink into /proc or /dev, the
    // file lands in the rootfs there and is covered, rather than over a kernel file.
    for bind in etc_binds {
        mounts::bind_onto(&bind.source, &mount_point(bind.target)?).map_err(|err| {
            format!(
                "bind-mounting {} on /{}: {err}",
                bind.source.display(),
                bind.target
            )
        })?;
    }
    mount_proc(&mount_point("proc")?)?;
    let shm_size = spec.options.shm_size.unwrap_or(DEFAULT_SHM_SIZE);
    mount_dev(&mount_point("dev")?, &merged.join("dev"), shm_size)?;
    mounts::mount_all(&root, &spec.mounts)?;
    enter_root(merged)?;
    restrict_proc()?;
    stdin_from_rootfs()?;
    // The hostname is cosmetic. A container runtime whose seccomp profile allows sethostname
    // only with CAP_SYS_ADMIN in its own user namespace (podman's default) refuses it with
    // EPERM even in this UTS namespace of our own; the step then sees the UTS name it
    // inherited (the container's hostname) rather than failing. /etc/hostname still says
    // `spec.hostname`.
    match sethostname(hostname_of(&spec.hostname)) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(err) => return Err(format!("setting the hostname {:?}: {err}", spec.hostname)),
    }

    let identity = users::resolve(
        &spec.user,
        &read_rootfs_file("/etc/passwd")?,
        &read_rootfs_file("/etc/group")?,
    )?;
    // Created as root, as Docker does, before dropping to the user.
    std::fs::create_dir_all(&spec.cwd)
        .map_err(|err| format!("creating the working dir {}: {err}", spec.cwd))?;
    set_ulimits(&spec.options.ulimits)?;
    confine()?;
    switch_user(&spec.user, &identity)?;
    // A change of uid cleared the parent-death signal set above.
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", Errno::last()));
    }
    chdir(spec.cwd.as_str()).map_err(|err| format!("chdir {}: {err}", spec.cwd))?;
    reset_signals()?;
    exec(spec, &with_home(&spec.env, &identity.home))
}

/// What a default Docker container gets and no more, once everything that needs privileges
/// is done (mounts, pivot_root, the user lookup):
///
/// - a session of its own without a controlling terminal, so that it cannot open kiln's
///   terminal as /dev/tty and push input into it (TIOCSTI);
/// - Docker's default seccomp profile, loaded while CAP_SYS_ADMIN still allows it without
///   no_new_privs; it allows what is left to do here (capset, prctl, setgroups, setgid,
///   setuid, chdir, close_range, execve);
/// - Docker's default capabilities, in the bounding set too.
///
/// The descriptors above 2 are closed at the exec (see [`exec`]).
fn confine() -> Result<(), String> {
    setsid().map_err(|err| format!("setsid: {err}"))?;
    seccomp::load_default_profile()?;
    caps::limit_to_default()
}

/// Makes runc's read-only paths read-only and masks its masked paths. Runs after pivot_root,
/// so the paths resolve inside the rootfs; a path this kernel does not have is skipped. Works
/// on a fresh /proc and on the host's (see [`mount_proc`]), whose mounts a user namespace
/// may not change but may cover.
fn restrict_proc() -> Result<(), String> {
    let exists = |path: &str| match Path::new(path).symlink_metadata() {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("{path}: {err}")),
    };
    for path in READ_ONLY_PATHS {
        if exists(path)?.is_none() {
            continue;
        }
        // Recursive: a bind of a tree with mounts the namespace may not uncover must take them.
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| mounts::remount_readonly(Path::new(path)))
        .map_err(|err| format!("making {path} read-only: {err}"))?;
    }
    for path in MASKED_PATHS {
        let masked = match exists(path)? {
            None => continue,
            Some(meta) if meta.is_dir() => mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0"),
            ),
            Some(_) => mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        };
        masked.map_err(|err| format!("masking {path}: {err}"))?;
    }
    Ok(())
}

/// The command's environment: `env`, with `HOME` set to the user's home when it is unset or
/// empty, as runc does for BuildKit.
pub(crate) fn with_home(env: &[String], home: &str) -> Vec<String> {
    let has_home = env
        .iter()
        .any(|var| var.strip_prefix("HOME=").is_some_and(|v| !v.is_empty()));
    if has_home {
        return env.to_vec();
    }
    env.iter()
        .filter(|var| *var != "HOME=")
        .cloned()
        .chain(std::iter::once(format!("HOME={home}")))
        .collect()
}

fn mount_proc(target: &Entry) -> Result<(), String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let at = target.proc_path();
    match mount(Some("proc"), at.as_str(), Some("proc"), flags, None::<&str>) {
        Ok(()) => Ok(()),
        // A fresh proc is refused where the host's /proc is partly masked; the host's /proc
        // then still works, though it shows the host's processes.
        Err(fresh) => mounts::bind_onto(Path::new("/proc"), target)
            .map(drop)
            .map_err(|bind| format!("mounting /proc: {fresh}; bind-mounting the host's: {bind}")),
    }
}

/// Mounts a tmpfs on `target` and fills it by path, through `dev`: the rootfs's /dev, a
/// directory (not a symlink) that only this process can reach now; its /dev/shm holds
/// `shm_size` bytes.
fn mount_dev(target: &Entry, dev: &Path, shm_size: u64) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        target.proc_path().as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )
    .map_err(|err| format!("mounting a tmpfs on /dev: {err}"))?;
    for device in DEVICES {
        let host = Path::new("/dev").join(device);
        if !host.exists() {
            continue;
        }
        let target = dev.join(device);
        File::create(&target).map_err(|err| format!("creating /dev/{device}: {err}"))?;
        bind_mount(&host, &target)?;
        // These are the host's device inodes, and as real root the command's uid 0 owns
        // them: through a writable mount it could chmod, chown or retime the host's
        // /dev/null. Reads and writes of a device do not need a writable mount.
        mounts::remount_readonly(&target)
            .map_err(|err| format!("making /dev/{device} read-only: {err}"))?;
    }
    for (link, points_to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(points_to, dev.join(link))
            .map_err(|err| format!("creating /dev/{link}: {err}"))?;
    }
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|err| format!("creating /dev/shm: {err}"))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={shm_size}").as_str()),
    )
    .map_err(|err| format!("mounting a tmpfs of {shm_size} bytes on /dev/shm: {err}"))
}

/// Sets the `--ulimit`s, inherited by the command across its exec. Lowering a limit needs
/// no privilege; raising a hard limit above the one kiln has needs CAP_SYS_RESOURCE in the
/// host's user namespace, which the sandbox does not have.
fn set_ulimits(ulimits: &[Ulimit]) -> Result<(), String> {
    for limit in ulimits {
        let resource = Ulimit::resource(&limit.name).expect("names are checked when parsed");
        nix::sys::resource::setrlimit(resource, limit.soft, limit.hard).map_err(|err| {
            let current = nix::sys::resource::getrlimit(resource)
                .map(|(_, hard)| format!(" (kiln's own hard limit is {hard})"))
                .unwrap_or_default();
            format!(
                "--ulimit {}={}:{}: {err}{current}",
                limit.name, limit.soft, limit.hard
            )
        })?;
    }
    Ok(())
}

fn bind_mount(source: &Path, target: &Path) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|err| {
        format!(
            "bind-mounting {} on {}: {err}",
            source.display(),
            target.display()
        )
    })
}

/// Makes `merged` the root and detaches the old one, so that no host path stays reachable.
fn enter_root(merged: &Path) -> Result<(), String> {
    chdir(merged).map_err(|err| format!("chdir {}: {err}", merged.display()))?;
    // With new and old root the same, the old root ends up mounted on top of the new one,
    // at ".", from where it can be detached: no directory for it is needed in the rootfs.
    pivot_root(".", ".").map_err(|err| format!("pivot_root: {err}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|err| format!("detaching the old root: {err}"))?;
    chdir("/").map_err(|err| format!("chdir /: {err}"))
}

/// Replaces stdin, which kiln opened as the host's /dev/null, by the rootfs's read-only
/// /dev/null: through `/proc/self/fd/0` the command could otherwise chmod or chown the host's.
fn stdin_from_rootfs() -> Result<(), String> {
    let null = File::open("/dev/null").map_err(|err| format!("opening /dev/null: {err}"))?;
    nix::unistd::dup2(null.as_raw_fd(), libc::STDIN_FILENO)
        .map(drop)
        .map_err(|err| format!("making /dev/null stdin: {err}"))
}

/// A missing passwd or group file is empty: root and numeric ids still work. Symlinks are
/// resolved first: after pivot_root they cannot lead out of the rootfs.
pub(crate) fn read_rootfs_file(path: &str) -> Result<String, String> {
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(format!("{path} in the rootfs cannot be resolved: {err}")),
    };
    users::read_account_file(&resolved)
        .map(Option::unwrap_or_default)
        .map_err(|err| format!("{path} in the rootfs {err}"))
}

fn switch_user(user: &str, identity: &Identity) -> Result<(), String> {
    let groups: Vec<Gid> = identity
        .groups
        .iter()
        .map(|&gid| Gid::from_raw(gid))
        .collect();
    if let Err(err) = setgroups(&groups) {
        // A rootless kiln with a single-id map had to deny setgroups; there is only one
        // group to be in anyway.
        let denied = std::fs::read_to_string("/proc/self/setgroups")
            .is_ok_and(|setting| setting.trim() == "deny");
        if !(err == Errno::EPERM && denied) {
            return Err(format!(
                "setgroups {:?} for user {user:?}: {err}",
                identity.groups
            ));
        }
    }
    let unmapped_hint = "is it mapped in kiln's user namespace? Without a subordinate id \
                         range (/etc/subuid, /etc/subgid) rootless kiln can only run as root";
    setgid(Gid::from_raw(identity.gid)).map_err(|err| {
        format!(
            "setgid {} for user {user:?}: {err} ({unmapped_hint})",
            identity.gid
        )
    })?;
    setuid(Uid::from_raw(identity.uid)).map_err(|err| {
        format!(
            "setuid {} for user {user:?}: {err} ({unmapped_hint})",
            identity.uid
        )
    })
}

/// The helper, a Rust program, ignores SIGPIPE, and ignored signals survive exec.
fn reset_signals() -> Result<(), String> {
    // SAFETY: SIG_DFL installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|err| format!("resetting SIGPIPE: {err}"))?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|err| format!("clearing the signal mask: {err}"))
}

fn exec(spec: &RunSpec, env: &[String]) -> Result<Infallible, String> {
    let name = spec
        .argv
        .first()
        .ok_or_else(|| "no command to run".to_string())?;
    let program = find_program(name, env)?;
    let c_strings = |strings: &[String]| -> Result<Vec<CString>, String> {
        strings
            .iter()
            .map(|s| CString::new(s.as_str()).map_err(|_| format!("{s:?} contains a NUL byte")))
            .collect()
    };
    let program_c = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", program.display()))?;
    let (argv, env) = (c_strings(&spec.argv)?, c_strings(env)?);
    // The command gets stdin, stdout and stderr only, whatever kiln inherited. Close-on-exec
    // rather than closed: the report pipe must work until the exec succeeds.
    run::close_on_exec_above_stdio().map_err(|err| format!("close_range: {err}"))?;
    let Err(err) = execve(&program_c, &argv, &env);
    Err(match err {
        Errno::ENOENT => format!(
            "exec {}: {err} (the file exists: is its interpreter or dynamic loader missing from \
             the image?)",
            program.display()
        ),
        _ => format!("exec {}: {err}", program.display()),
    })
}

/// Looks `name` up like a shell does: as given when it contains a slash, else in the `PATH` of
/// the command's environment `env` (Docker's default without one).
pub(crate) fn find_program(name: &str, env: &[String]) -> Result<PathBuf, String> {
    let search_path = env
        .iter()
        .find_map(|var| var.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if name.contains('/') {
        return match Path::new(name).exists() {
            true => Ok(PathBuf::from(name)),
            false => Err(format!("exec {name}: no such file in the image")),
        };
    }
    search_path
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|candidate| candidate.is_file() && access(candidate, AccessFlags::X_OK).is_ok())
        .ok_or_else(|| format!("exec {name}: executable file not found in $PATH ({search_path})"))
}

#[cfg(test)]
mod tests {
    use super::with_home;

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn home_comes_from_the_user_unless_set() {
        assert_eq!(
            with_home(&env(&["PATH=/bin"]), "/home/builder"),
            env(&["PATH=/bin", "HOME=/home/builder"])
        );
        assert_eq!(
            with_home(&env(&["HOME=/custom", "PATH=/bin"]), "/root"),
            env(&["HOME=/custom", "PATH=/bin"])
        );
        assert_eq!(
            with_home(&env(&["HOME=", "PATH=/bin"]), "/root"),
            env(&["PATH=/bin", "HOME=/root"]),
            "an empty HOME is replaced, as runc does"
        );
    }
}
