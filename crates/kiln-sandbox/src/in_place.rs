//! Running a command directly in the container kiln itself runs in, as kaniko does: where
//! the runtime refuses namespaces (Docker's default seccomp profile, Kubernetes'
//! RuntimeDefault), the container's `/` is the rootfs (kiln-snapshot's `LiveRoot` lays it
//! out and finds the changes). Nothing is mounted and no namespace is made, so the command
//! shares the container with kiln: the container is the boundary.
//!
//! The command gets the image's user and groups, its environment, a session of its own with
//! no terminal, and stdin, stdout and stderr as its only descriptors. `RUN --mount`s are put
//! in place for the step and taken away before its changes are read: a directory is moved
//! there (a symlink to it where it lives on another filesystem), a file is copied, a socket
//! is linked, a tmpfs is an empty directory. Processes the command leaves behind are killed
//! when it exits, so that nothing changes the tree while kiln reads it.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;

use crate::init;
use crate::run::{close_on_exec_above_stdio, read_lines};
use crate::{
    ExitStatus, MountKind, Network, RunMount, RunOutput, RunSpec, SandboxError, arch, users,
};

/// Runs `spec.argv` in this container's `/`; its layer fields (`lowers`, `upper`, `work`),
/// hostname and emulator are not used. Like [`crate::Sandbox::run`], a command that ran and
/// failed is `Ok`.
pub fn run_in_place(
    spec: &RunSpec,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutput, SandboxError> {
    if spec.network == Network::None {
        return Err(SandboxError::Setup(
            "RUN --network=none needs a network namespace of its own, and in-place isolation \
             makes none: drop the flag, or build where kiln can use namespaces"
                .to_string(),
        ));
    }
    if !spec.options.is_default() {
        return Err(SandboxError::Setup(
            "--add-host, --ulimit and --shm-size set up a sandbox of the step's own (its \
             /etc/hosts, limits and /dev/shm), and in-place isolation makes none: drop them, or \
             build where kiln can use namespaces"
                .to_string(),
        ));
    }
    let identity = users::resolve(
        &spec.user,
        &init::read_rootfs_file("/etc/passwd").map_err(SandboxError::Setup)?,
        &init::read_rootfs_file("/etc/group").map_err(SandboxError::Setup)?,
    )
    .map_err(SandboxError::Setup)?;
    std::fs::create_dir_all(&spec.cwd).map_err(|err| {
        SandboxError::Setup(format!("creating the working dir {}: {err}", spec.cwd))
    })?;
    let env = init::with_home(&spec.env, &identity.home);
    let name = spec
        .argv
        .first()
        .ok_or_else(|| SandboxError::Setup("no command to run".to_string()))?;
    let program = init::find_program(name, &env).map_err(SandboxError::Setup)?;

    // Orphans of the command become kiln's children, so that they can be found and killed.
    // And kiln stops being dumpable: a step runs as root beside it, and without
    // CAP_SYS_PTRACE (not among a container's defaults) it then cannot ptrace kiln or read
    // its memory or /proc/<pid>/environ (registry credentials, secrets).
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets an attribute of this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let _ = nix::sys::prctl::set_dumpable(false);
    });

    let mut placed = Vec::new();
    for mount in &spec.mounts {
        match place(mount) {
            Ok(placement) => placed.push(placement),
            Err(err) => {
                // The error that stopped the step says more than one taking it back.
                let _ = undo_all(placed);
                return Err(err);
            }
        }
    }
    let ran = spawn_and_wait(spec, &program, &env, &identity, on_line);
    let undone = undo_all(placed);
    let output = ran?;
    undone?;
    Ok(output)
}

fn spawn_and_wait(
    spec: &RunSpec,
    program: &Path,
    env: &[String],
    identity: &users::Identity,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutput, SandboxError> {
    let (output_read, output_write) = std::io::pipe()?;
    let mut command = Command::new(program);
    command
        .arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env.iter().filter_map(|var| var.split_once('=')))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output_write.try_clone()?))
        .stderr(Stdio::from(output_write));
    let groups: Vec<libc::gid_t> = identity.groups.clone();
    let (uid, gid) = (identity.uid, identity.gid);
    // SAFETY: runs between fork and exec in the child of a multi-threaded process, so it only
    // makes raw syscalls (close_range, setsid, setgroups, setgid, setuid, prctl) on memory
    // allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let check = |result: libc::c_long| match result {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            };
            close_on_exec_above_stdio()?;
            // A session of its own: no controlling terminal, and one group to kill.
            check(libc::setsid() as libc::c_long)?;
            check(libc::setgroups(groups.len(), groups.as_ptr()) as libc::c_long)?;
            check(libc::setgid(gid) as libc::c_long)?;
            check(libc::setuid(uid) as libc::c_long)?;
            // Set after the change of uid, which clears it: a killed kiln takes the step along.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) as libc::c_long)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|err| SandboxError::Setup(format!("starting {}: {err}", program.display())))?;
    // `command` holds the write ends; they must be closed here for the read to see the end.
    drop(command);
    let pid = child.id() as libc::pid_t;
    // Waits on another thread: when the command exits, whatever it left running is killed,
    // which closes the output pipe those processes may hold open.
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        (status, kill_leftovers(pid))
    });
    let tail = read_lines(
        std::fs::File::from(std::os::fd::OwnedFd::from(output_read)),
        on_line,
    );
    let (status, killed) = waiter.join().expect("the waiting thread panicked");
    let status = status?;
    // Something still running would change / while kiln reads it for the layer.
    killed.map_err(SandboxError::Setup)?;
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Signal(0),
    };
    Ok(RunOutput {
        status,
        tail: tail?.into(),
    })
}

/// Kills the command's session and every process that became kiln's child by its parent's
/// death (kiln is a subreaper) and is not of kiln's own session, until none is left, and
/// reaps them. kiln's other children (a credential helper, another platform's probe) are in
/// kiln's session, which the command left (it runs in a session of its own).
fn kill_leftovers(session: libc::pid_t) -> Result<(), String> {
    // SAFETY: kill takes numbers only; the command's session is also its process group.
    unsafe { libc::kill(-session, libc::SIGKILL) };
    // SAFETY: getsid(0) only reads this process's session id.
    let own_session = unsafe { libc::getsid(0) };
    let me = std::process::id();
    for _ in 0..1000 {
        let left = children_of(me, own_session);
        if left.is_empty() {
            return Ok(());
        }
        for pid in left {
            // SAFETY: kill and waitpid take numbers and a null status pointer.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    Err(
        "processes the step started kept starting others after it ended, and could not all \
         be stopped"
            .to_string(),
    )
}

/// The processes whose parent is `parent` and whose session is not `except_session`, from
/// /proc.
fn children_of(parent: u32, except_session: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .parse::<libc::pid_t>()
                .ok()
        })
        .filter(|pid| {
            // After the command name, which ends at the last `)` and may contain anything:
            // state, parent, process group, session.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
                let field = |n: usize| fields.get(n).and_then(|f| f.parse::<i64>().ok());
                field(1) == Some(i64::from(parent)) && field(3) != Some(i64::from(except_session))
            })
        })
        .collect()
}

/// A `RUN --mount` put in place, and how to take it away.
struct Placement {
    target: PathBuf,
    /// Moved here from `source`, to be moved back; else created here, to be removed.
    moved_from: Option<PathBuf>,
    /// What was at the target before, moved aside for the step.
    aside: Option<PathBuf>,
    /// Directories made on the way to the target, outermost first.
    created: Vec<PathBuf>,
}

fn setup_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |err| SandboxError::Setup(format!("{what} {}: {err}", path.display()))
}

fn place(mount: &RunMount) -> Result<Placement, SandboxError> {
    let target = PathBuf::from(&mount.target);
    let mut placement = Placement {
        target: target.clone(),
        moved_from: None,
        aside: None,
        created: Vec::new(),
    };
    let mut missing: Vec<&Path> = target
        .ancestors()
        .skip(1)
        .take_while(|dir| std::fs::symlink_metadata(dir).is_err())
        .collect();
    missing.reverse();
    for dir in missing {
        std::fs::create_dir(dir).map_err(setup_err("creating", dir))?;
        placement.created.push(dir.to_path_buf());
    }
    if std::fs::symlink_metadata(&target).is_ok() {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let aside = target.with_file_name(format!(".kiln-under-mount-{name}"));
        std::fs::rename(&target, &aside).map_err(setup_err("moving aside", &target))?;
        placement.aside = Some(aside);
    }
    let placed = match &mount.kind {
        MountKind::Tmpfs { .. } => std::fs::create_dir(&target).and_then(|()| {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o1777))
        }),
        MountKind::Bind { source, .. } => {
            let md = std::fs::metadata(source).map_err(setup_err("reading", source))?;
            if md.is_dir() {
                match std::fs::rename(source, &target) {
                    Ok(()) => {
                        placement.moved_from = Some(source.clone());
                        Ok(())
                    }
                    Err(err) if err.kind() == ErrorKind::CrossesDevices => {
                        std::os::unix::fs::symlink(source, &target)
                    }
                    Err(err) => Err(err),
                }
            } else if md.file_type().is_socket() {
                std::os::unix::fs::symlink(source, &target)
            } else {
                // With its owner: a secret's `uid=`/`gid=` are the source's.
                std::fs::copy(source, &target).and_then(|_| {
                    std::os::unix::fs::lchown(&target, Some(md.uid()), Some(md.gid()))
                })
            }
        }
    };
    match placed {
        Ok(()) => Ok(placement),
        Err(err) => {
            let _ = undo(&placement);
            Err(setup_err("putting the mount in place at", &target)(err))
        }
    }
}

/// Takes the mounts away, the last placed first; the first failure is returned.
fn undo_all(placed: Vec<Placement>) -> Result<(), SandboxError> {
    let mut first = Ok(());
    for placement in placed.iter().rev() {
        if let Err(err) = undo(placement) {
            first = first.and(Err(err));
        }
    }
    first
}

fn undo(placement: &Placement) -> Result<(), SandboxError> {
    let target = &placement.target;
    let gone = |result: std::io::Result<()>| match result {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(setup_err("removing the mount at", target)(err))
        }
        _ => Ok(()),
    };
    match (&placement.moved_from, std::fs::symlink_metadata(target)) {
        (Some(source), Ok(_)) => std::fs::rename(target, source)
            .map_err(setup_err("moving back the mount at", target))?,
        (None, Ok(md)) if md.is_dir() => gone(std::fs::remove_dir_all(target))?,
        (None, Ok(_)) => gone(std::fs::remove_file(target))?,
        (_, Err(_)) => {}
    }
    if let Some(aside) = &placement.aside {
        std::fs::rename(aside, target).map_err(setup_err("putting back", target))?;
    }
    for dir in placement.created.iter().rev() {
        // Left where the step put something of its own there.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Whether binaries of `arch` run here without namespaces: natively, or through a
/// binfmt_misc handler the host registered (in place, kiln cannot register its own).
/// Probed by running a tiny program of `arch` written to `scratch`.
pub fn runs_in_place(arch: &str, scratch: &Path) -> Result<bool, SandboxError> {
    if crate::runs_natively(arch) {
        return Ok(true);
    }
    let Some(foreign) = arch::foreign_arch(arch) else {
        return Err(SandboxError::UnknownArch {
            arch: arch.to_string(),
        });
    };
    let program = scratch.join(format!("probe-{}", foreign.oci));
    std::fs::write(&program, foreign.probe_program())?;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    let ran = Command::new(&program)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_file(&program);
    Ok(ran.is_ok_and(|status| status.success()))
}
