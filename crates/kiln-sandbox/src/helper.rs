//! The helper process: already in new user, mount, pid and UTS namespaces (entered in the
//! caller's `pre_exec`), mapped by the caller. It mounts the overlay, creates missing mount
//! points, forks the command's process (PID 1 of the new pid namespace, see [`crate::init`]),
//! waits for it and removes the mount point stubs from the upper dir again.

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_fs::{Dir, EntryKind};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, fork, getuid};

use crate::mounts;
use crate::protocol::{HelperReport, HelperRequest, SETUP_FAILED_EXIT, shell_exit_code};
use crate::{ExitStatus, ExtraHost, HELPER_ARG, RunMount, RunSpec, emulation, init};

/// Marks the helper's second start, after its id maps were written.
const MAPPED_ARG: &str = "mapped";

/// Runs the helper with the arguments after [`crate::HELPER_ARG`]; returns its exit code.
///
/// The helper starts twice. Its namespaces were entered before its first exec, when it had no
/// uid in them yet, and exec as a non-root uid drops all capabilities; mapping uid 0 later
/// gives none back. So the first start only waits for the maps and executes itself again: an
/// exec as uid 0 gets the full capability set of the namespace.
pub(crate) fn main(args: Vec<OsString>) -> i32 {
    // The second start gets `mapped` and the pid of kiln, its parent.
    let kiln_pid = match &args[..] {
        [_, _, mapped, pid] if mapped == MAPPED_ARG => pid.to_str().and_then(|p| p.parse().ok()),
        _ => None,
    };
    let Some([spec_fd, report_fd]) = inherited_fds(&args[..args.len().min(2)]) else {
        eprintln!("kiln-sandbox helper: expected two open fds (spec, report) as arguments");
        return SETUP_FAILED_EXIT;
    };
    // SAFETY: the caller opened these fds for us alone (checked open above), and nothing else
    // in this process refers to them.
    let (spec, mut report) = unsafe {
        (
            File::from(OwnedFd::from_raw_fd(spec_fd)),
            File::from(OwnedFd::from_raw_fd(report_fd)),
        )
    };
    let outcome = match kiln_pid {
        Some(kiln_pid) => die_with_kiln(kiln_pid).and_then(|()| run(spec, &mut report)),
        None => reexec_when_mapped(&spec, &args).map(|never| match never {}),
    };
    match outcome {
        Ok(status) => {
            HelperReport::Finished(status).send(&mut report);
            shell_exit_code(status)
        }
        Err(message) => {
            HelperReport::SetupFailed(message).send(&mut report);
            SETUP_FAILED_EXIT
        }
    }
}

fn inherited_fds(args: &[OsString]) -> Option<[RawFd; 2]> {
    let [spec, report] = args else { return None };
    let parse = |arg: &OsString| -> Option<RawFd> {
        let fd = arg.to_str()?.parse().ok()?;
        // SAFETY: F_GETFD only asks whether `fd` is open.
        (fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1).then_some(fd)
    };
    Some([parse(spec)?, parse(report)?])
}

/// Waits until the spec can be read (the caller sends it after writing the id maps), then
/// executes the helper again, keeping the inherited fds. Only returns on failure.
fn reexec_when_mapped(spec: &File, args: &[OsString]) -> Result<Infallible, String> {
    let mut poll_fd = libc::pollfd {
        fd: spec.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll gets one valid pollfd and its count.
    while unsafe { libc::poll(&mut poll_fd, 1, -1) } == -1 {
        let err = Errno::last();
        if err != Errno::EINTR {
            return Err(format!("waiting for the run spec: {err}"));
        }
    }
    let exe = std::env::current_exe().map_err(|err| format!("locating the helper: {err}"))?;
    let err = Command::new(&exe)
        .arg(HELPER_ARG)
        .args(args)
        .arg(MAPPED_ARG)
        .arg(std::os::unix::process::parent_id().to_string())
        .exec();
    Err(format!("re-executing the helper {}: {err}", exe.display()))
}

/// Has the kernel kill the helper when kiln dies (a SIGKILLed build must not leave its step
/// running). The exec that gained the namespace's capabilities cleared the parent-death signal
/// set before it, so it is set again here, and a kiln that died in between is noticed.
fn die_with_kiln(kiln_pid: u32) -> Result<(), String> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets an attribute of this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", Errno::last()));
    }
    match std::os::unix::process::parent_id() == kiln_pid {
        true => Ok(()),
        false => Err("kiln ended before the step started".to_string()),
    }
}

fn run(spec_pipe: File, report: &mut File) -> Result<ExitStatus, String> {
    // The command must not inherit the report pipe: its exec closes our copy of it.
    fcntl(report.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|err| format!("making the report fd close-on-exec: {err}"))?;
    // The caller writes the request only after our id maps: this read is the handshake.
    let request: HelperRequest = serde_json::from_reader(spec_pipe)
        .map_err(|err| format!("reading the request from the caller: {err}"))?;
    if !getuid().is_root() {
        return Err(format!(
            "the sandbox's user namespace maps no root user (running as uid {})",
            getuid()
        ));
    }
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|err| format!("making / a private mount: {err}"))?;

    match request {
        HelperRequest::Run(spec) => run_step(&spec, report),
        HelperRequest::ProbeEmulation {
            arch,
            emulator,
            scratch,
        } => emulation::probe_in_helper(&arch, emulator.as_ref(), &scratch),
    }
}

fn run_step(spec: &RunSpec, report: &mut File) -> Result<ExitStatus, String> {
    if let Some(emulator) = &spec.emulator {
        // Registered in the helper's mount namespace, not in the command's: a registration
        // lasts only while a binfmt_misc mount of the user namespace does, and the command's
        // mount namespace drops every host path, this mount point included, with its old root.
        let work = canonical(&spec.work, "work dir")?;
        emulation::register_private(emulator, &work)?;
    }
    let rootfs = Rootfs::mount(spec)?;
    let (stubs, etc_binds) = match Stubs::create(
        &rootfs.merged,
        &spec.upper,
        &init::hostname_of(&spec.hostname),
        &spec.options.extra_hosts,
        &spec.mounts,
    ) {
        Ok(created) => created,
        Err(err) => {
            let _ = umount2(&rootfs.merged, MntFlags::MNT_DETACH);
            return Err(err);
        }
    };
    let outcome = run_init(spec, &rootfs, &etc_binds, report);
    // The command's mount namespace is gone with it; this unmounts our view of the overlay, so
    // that the upper dir is not changed under a mounted overlay below.
    let unmounted = umount2(&rootfs.merged, MntFlags::MNT_DETACH)
        .map_err(|err| format!("unmounting {}: {err}", rootfs.merged.display()));
    let cleaned = stubs.remove(&spec.upper);
    let status = outcome?;
    unmounted?;
    cleaned?;
    Ok(status)
}

fn run_init(
    spec: &RunSpec,
    rootfs: &Rootfs,
    etc_binds: &[EtcBind],
    report: &mut File,
) -> Result<ExitStatus, String> {
    // SAFETY: the helper is single-threaded (freshly exec'd, it starts no threads), so the
    // child may allocate and use the standard library freely after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let Err(message) = init::run(spec, &rootfs.merged, etc_binds);
            HelperReport::SetupFailed(message).send(report);
            std::process::exit(SETUP_FAILED_EXIT);
        }
        Ok(ForkResult::Parent { child }) => wait_for(child),
        Err(err) => Err(format!("fork: {err}")),
    }
}

pub(crate) fn wait_for(child: Pid) -> Result<ExitStatus, String> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitStatus::Signal(signal as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => return Err(format!("waiting for the command: {err}")),
        }
    }
}

/// The overlay, mounted on a dir in the work dir.
struct Rootfs {
    merged: PathBuf,
}

/// A file the sandbox generates in the work dir and bind-mounts at `target` in the rootfs.
pub(crate) struct EtcBind {
    pub source: PathBuf,
    pub target: &'static str,
}

/// Most of a page: the kernel copies mount options into one page, NUL included.
const MOUNT_DATA_LIMIT: usize = 4095;

impl Rootfs {
    fn mount(spec: &RunSpec) -> Result<Rootfs, String> {
        let work = canonical(&spec.work, "work dir")?;
        let overlay_work = work.join("overlay-work");
        let merged = work.join("merged");
        for dir in [&overlay_work, &merged] {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("creating {}: {err}", dir.display()))?;
        }
        // overlayfs wants the top layer first.
        let mut lowers = spec
            .lowers
            .iter()
            .rev()
            .map(|lower| canonical(lower, "layer dir"))
            .collect::<Result<Vec<_>, _>>()?;
        if lowers.is_empty() {
            let empty = work.join("empty-layer");
            std::fs::create_dir_all(&empty)
                .map_err(|err| format!("creating {}: {err}", empty.display()))?;
            lowers.push(empty);
        }
        let upper = canonical(&spec.upper, "upper dir")?;

        // Relative paths from the common parent keep the options short: they must fit in a page.
        let all = lowers.iter().chain([&upper, &overlay_work, &merged]);
        let base = common_ancestor(all.clone());
        for path in all {
            let text = path.to_string_lossy();
            if text.contains([',', ':', '\\']) {
                return Err(format!(
                    "path {text} contains ',', ':' or '\\', which overlayfs options cannot carry"
                ));
            }
        }
        let relative = |path: &Path| -> String {
            let relative = path.strip_prefix(&base).expect("base is a common ancestor");
            match relative.as_os_str().is_empty() {
                true => ".".to_string(),
                false => relative.to_string_lossy().into_owned(),
            }
        };
        let lowerdir: Vec<String> = lowers.iter().map(|lower| relative(lower)).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            lowerdir.join(":"),
            relative(&upper),
            relative(&overlay_work)
        );
        if options.len() > MOUNT_DATA_LIMIT {
            return Err(format!(
                "too many layers: the overlay mount options take {} bytes, the limit is {}",
                options.len(),
                MOUNT_DATA_LIMIT
            ));
        }
        chdir(&base).map_err(|err| format!("chdir {}: {err}", base.display()))?;
        let mounted = mount(
            Some("overlay"),
            relative(&merged).as_str(),
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        );
        let _ = chdir("/");
        mounted.map_err(|err| {
            format!(
                "mounting overlayfs (in {}, options {options}): {err}",
                base.display()
            )
        })?;
        Ok(Rootfs { merged })
    }
}

fn canonical(path: &Path, what: &str) -> Result<PathBuf, String> {
    std::fs::canonicalize(path).map_err(|err| format!("{what} {}: {err}", path.display()))
}

fn common_ancestor<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> PathBuf {
    let mut common: Option<PathBuf> = None;
    for path in paths {
        common = Some(match common {
            None => path.clone(),
            Some(common) => common
                .ancestors()
                .find(|ancestor| path.starts_with(ancestor))
                .expect("absolute paths share /")
                .to_path_buf(),
        });
    }
    common.unwrap_or_else(|| PathBuf::from("/"))
}

/// Directories the sandbox mounts over (proc, a tmpfs). They must be directories themselves,
/// not symlinks: /dev is filled by path once its tmpfs is on it.
const SANDBOX_DIRS: [&str; 2] = ["proc", "dev"];

/// Files the sandbox generates and bind-mounts. Like runc, a symlink there is followed
/// inside the rootfs, and a missing file (or what a symlink names) is created.
const ETC_FILES: [&str; 3] = ["etc/hosts", "etc/resolv.conf", "etc/hostname"];

/// Owner and mode bits of a dir: `(mode, uid, gid)`.
type OwnerAndMode = (u32, u32, u32);

/// Mount points the sandbox had to create in the rootfs (its own and those of the spec's
/// mounts); they end up in the upper dir and are not changes of the command, so they are
/// removed again afterwards.
///
/// The upper dir is looked at only through [`kiln_fs::Dir`]: by the time the stubs are
/// removed, the command may have replaced any directory on their way by a symlink to a host
/// path, which must not be followed.
struct Stubs {
    /// Relative to the rootfs, in creation order.
    created: Vec<(PathBuf, EntryKind)>,
    /// Dirs above a stub, parents first, with whether the upper dir had them before.
    ancestors: Vec<(PathBuf, bool)>,
    /// Dirs of a lower layer that creating stubs in them copied up, with their owner and
    /// mode right after.
    copied_up: Vec<(PathBuf, OwnerAndMode)>,
}

impl Stubs {
    /// Creates the missing mount points in `merged`; returns them with the generated /etc files
    /// to bind-mount. An /etc entry that cannot take a file (a directory, a device, a symlink
    /// loop) is left as the image has it.
    fn create(
        merged: &Path,
        upper: &Path,
        hostname: &str,
        extra_hosts: &[ExtraHost],
        mounts: &[RunMount],
    ) -> Result<(Stubs, Vec<EtcBind>), String> {
        let mut stubs = Stubs {
            created: Vec::new(),
            ancestors: Vec::new(),
            copied_up: Vec::new(),
        };
        let open =
            |dir: &Path| Dir::open(dir).map_err(|err| format!("opening {}: {err}", dir.display()));
        let (root, upper_dir) = (open(merged)?, open(upper)?);
        let created = stubs
            .create_missing(&root, &upper_dir, mounts)
            .and_then(|etc_targets| {
                stubs.note_copied_up(&upper_dir);
                generate_etc_files(merged, &etc_targets, hostname, extra_hosts)
            });
        match created {
            Ok(binds) => Ok((stubs, binds)),
            Err(err) => {
                let _ = stubs.remove(upper);
                Err(err)
            }
        }
    }

    /// Returns the /etc files that can be bind-mounted. Everything is looked up and created
    /// through descriptors of the rootfs `root` (see [`kiln_fs::Dir::make_in_root`]).
    fn create_missing(
        &mut self,
        root: &Dir,
        upper: &Dir,
        mounts: &[RunMount],
    ) -> Result<Vec<&'static str>, String> {
        for name in SANDBOX_DIRS {
            match root.metadata(OsStr::new(name)) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(format!("/{name} in the rootfs is not a directory")),
                Err(err) if err.kind() == ErrorKind::NotFound => {
                    self.record(upper, Path::new(name), EntryKind::Dir);
                    root.create_dir(OsStr::new(name), 0o755)
                        .map_err(|err| format!("creating mount point /{name}: {err}"))?;
                }
                Err(err) => return Err(format!("/{name} in the rootfs: {err}")),
            }
        }
        let mut etc_targets = Vec::new();
        for path in ETC_FILES {
            let found = root.make_in_root(Path::new(path), EntryKind::File, &mut |path, kind| {
                self.record(upper, path, kind)
            });
            match found.and_then(|entry| entry.metadata()) {
                Ok(meta) if meta.is_file() => etc_targets.push(path),
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EISDIR | libc::ENOTDIR | libc::ELOOP)
                    ) => {}
                Err(err) => return Err(format!("creating mount point /{path}: {err}")),
            }
        }
        // A nested mount's point lies inside another mount; the command's process makes it.
        for (index, mount) in mounts.iter().enumerate() {
            if !mounts::is_nested(mounts, index) {
                let kind = mounts::mount_point_kind(mount)?;
                mounts::mount_point(root, &mount.target, kind, &mut |path, kind| {
                    self.record(upper, path, kind)
                })?;
            }
        }
        Ok(etc_targets)
    }

    /// Notes a stub about to be created at `path` (relative), and whether its parents were
    /// in the upper dir before.
    fn record(&mut self, upper: &Dir, path: &Path, kind: EntryKind) {
        let mut parents: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .filter(|parent| !parent.as_os_str().is_empty())
            .collect();
        parents.reverse();
        for parent in parents {
            if !self.ancestors.iter().any(|(known, _)| known == parent) {
                let in_upper = entry_metadata(upper, parent).is_ok();
                self.ancestors.push((parent.to_path_buf(), in_upper));
            }
        }
        self.created.push((path.to_path_buf(), kind));
    }

    /// Finds the parents that creating the stubs copied up into the upper dir.
    fn note_copied_up(&mut self, upper: &Dir) {
        for (parent, was_in_upper) in &self.ancestors {
            let created = self.created.iter().any(|(path, _)| path == parent);
            if *was_in_upper || created {
                continue;
            }
            if let Ok(meta) = entry_metadata(upper, parent) {
                let owner_and_mode = (meta.mode(), meta.uid(), meta.gid());
                self.copied_up.push((parent.clone(), owner_and_mode));
            }
        }
    }

    /// Removes the stubs from the upper dir (after the overlay is unmounted). A stub dir the
    /// command put files in is a change of the command and stays, and so does a copied-up
    /// dir the command changed. A stub the command removed, replaced, or moved out of reach
    /// (a directory on its way now a symlink or a file) is left alone.
    fn remove(&self, upper: &Path) -> Result<(), String> {
        let upper_dir =
            Dir::open(upper).map_err(|err| format!("opening {}: {err}", upper.display()))?;
        for (path, kind) in self.created.iter().rev() {
            let removed = in_upper_parent(&upper_dir, path).and_then(|(dir, name)| match kind {
                EntryKind::Dir => dir.remove_dir(name),
                EntryKind::File => dir.remove_file(name),
            });
            match removed {
                Err(err) if !replaced_or_gone(&err) => {
                    return Err(format!(
                        "removing mount point stub {}: {err}",
                        upper.join(path).display()
                    ));
                }
                _ => {}
            }
        }
        for (parent, owner_and_mode) in self.copied_up.iter().rev() {
            let Ok((dir, name)) = in_upper_parent(&upper_dir, parent) else {
                continue;
            };
            let unchanged = dir.metadata(name).is_ok_and(|meta| {
                meta.is_dir() && (meta.mode(), meta.uid(), meta.gid()) == *owner_and_mode
            });
            let empty = unchanged
                && dir
                    .open_dir(Path::new(name))
                    .and_then(|copied| copied.names())
                    .is_ok_and(|names| names.is_empty());
            if empty {
                dir.remove_dir(name).map_err(|err| {
                    format!("removing copied-up {}: {err}", upper.join(parent).display())
                })?;
            }
        }
        Ok(())
    }
}

/// The directory holding `path` (relative to the upper dir), opened without following a
/// symlink, and `path`'s name in it.
fn in_upper_parent<'p>(upper: &Dir, path: &'p Path) -> std::io::Result<(Dir, &'p OsStr)> {
    let name = path.file_name().ok_or(ErrorKind::InvalidInput)?;
    let parent = path.parent().unwrap_or(Path::new(""));
    Ok((upper.open_dir(parent)?, name))
}

fn entry_metadata(upper: &Dir, path: &Path) -> std::io::Result<kiln_fs::Metadata> {
    let (dir, name) = in_upper_parent(upper, path)?;
    dir.metadata(name)
}

/// Whether removing a stub failed because the command removed, filled or replaced it (or a
/// directory on its way), so that it is no longer the sandbox's to remove.
fn replaced_or_gone(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTEMPTY | libc::ELOOP | libc::ENOTDIR | libc::EISDIR)
    )
}

/// Writes /etc/hosts (with the `--add-host` lines last, as Docker writes them),
/// /etc/hostname and a copy of the host's /etc/resolv.conf into the work dir (next to
/// `merged`), for the targets that can take a bind mount.
fn generate_etc_files(
    merged: &Path,
    targets: &[&'static str],
    hostname: &str,
    extra_hosts: &[ExtraHost],
) -> Result<Vec<EtcBind>, String> {
    let work = merged.parent().expect("merged is in the work dir");
    let generated = work.join("etc");
    std::fs::create_dir_all(&generated)
        .map_err(|err| format!("creating {}: {err}", generated.display()))?;
    let mut binds = Vec::new();
    for &target in targets {
        let content = match target {
            "etc/hosts" => extra_hosts.iter().fold(
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
                    hostname
                ),
                |hosts, extra| hosts + &format!("{}\t{}\n", extra.ip, extra.name),
            ),
            "etc/hostname" => format!("{hostname}\n"),
            _ => match std::fs::read_to_string("/etc/resolv.conf") {
                Ok(content) => content,
                Err(err) if err.kind() == ErrorKind::NotFound => String::new(),
                Err(err) => return Err(format!("reading the host's /etc/resolv.conf: {err}")),
            },
        };
        let source = generated.join(target.trim_start_matches("etc/"));
        std::fs::write(&source, content)
            .map_err(|err| format!("writing {}: {err}", source.display()))?;
        binds.push(EtcBind { source, target });
    }
    Ok(binds)
}
