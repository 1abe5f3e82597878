//! `RUN --mount`: placing mount points in the rootfs without leaving them in a layer, and
//! mounting binds and tmpfs over the rootfs in the command's mount namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use kiln_fs::{Dir, Entry, EntryKind};
use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::{MountKind, RunMount};

/// Mount points the sandbox mounts over before the command's own mounts; a target under
/// one of these is created inside that mount, not in the overlay.
const SANDBOX_MOUNTS: [&str; 2] = ["/proc", "/dev"];

/// What the mount point of `mount` must be: a dir for a tmpfs or a dir source, else a file.
pub(crate) fn mount_point_kind(mount: &RunMount) -> Result<EntryKind, String> {
    match &mount.kind {
        MountKind::Tmpfs { .. } => Ok(EntryKind::Dir),
        MountKind::Bind { source, .. } => match std::fs::metadata(source) {
            Ok(meta) if meta.is_dir() => Ok(EntryKind::Dir),
            Ok(_) => Ok(EntryKind::File),
            Err(err) => Err(format!(
                "mount source {} for {}: {err}",
                source.display(),
                mount.target
            )),
        },
    }
}

/// Whether `mount`'s target lies inside the target of an earlier mount (or of a mount the
/// sandbox itself makes), so that its mount point can only be created once that is mounted.
pub(crate) fn is_nested(mounts: &[RunMount], index: usize) -> bool {
    let target = lexical(&mounts[index].target);
    let earlier = mounts[..index].iter().map(|m| lexical(&m.target));
    SANDBOX_MOUNTS
        .iter()
        .map(|t| lexical(t))
        .chain(earlier)
        .any(|outer| target.starts_with(&outer))
}

/// The normal components of an absolute image path, `..` stopping at the root.
fn lexical(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Finds the mount point of `target` in `root`, creating what is missing (dirs on the way,
/// a `kind` entry at the end) through [`Dir::make_in_root`]: symlinks resolve as if `root`
/// were `/`, and everything is looked up and created relative to a parent's descriptor, so
/// nothing outside `root` is reached, even if a step sharing a cache changes it meanwhile.
/// `before_create` gets each path (relative to `root`) just before it is created.
pub(crate) fn mount_point(
    root: &Dir,
    target: &str,
    kind: EntryKind,
    before_create: &mut dyn FnMut(&Path, EntryKind),
) -> Result<Entry, String> {
    root.make_in_root(Path::new(target), kind, before_create)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::EISDIR) => {
                format!("mount target {target} is a directory, but the mount source is not")
            }
            _ => format!("mount target {target}: {err}"),
        })
}

/// Bind-mounts `source` (a host path of kiln's, with the mounts below it) onto exactly the
/// inode `target` holds: the tree is cloned detached (`open_tree`) and attached to the
/// target's descriptor (`move_mount`), not to a path. Returns the new mount's descriptor.
pub(crate) fn bind_onto(source: &Path, target: &Entry) -> rustix::io::Result<OwnedFd> {
    let clone = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE;
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, clone)?;
    let by_fds = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    rustix::mount::move_mount(&tree, "", target, "", by_fds)?;
    Ok(tree)
}

/// Mounts every mount of the spec over the rootfs `root`, in order, in the command's mount
/// namespace. Mount points still missing lie inside earlier mounts and are created there.
pub(crate) fn mount_all(root: &Dir, mounts: &[RunMount]) -> Result<(), String> {
    let mut binds = Vec::new();
    for mount in mounts {
        let kind = mount_point_kind(mount)?;
        let at = mount_point(root, &mount.target, kind, &mut |_, _| {})?;
        match &mount.kind {
            MountKind::Bind {
                source,
                readonly: ro,
            } => {
                let bound = bind_onto(source, &at).map_err(|err| {
                    format!(
                        "bind-mounting {} on {}: {err}",
                        source.display(),
                        mount.target
                    )
                })?;
                binds.push((bound, &mount.target, *ro));
            }
            MountKind::Tmpfs { size } => {
                let options = match size {
                    Some(bytes) => format!("mode=1777,size={bytes}"),
                    None => "mode=1777".to_string(),
                };
                nix::mount::mount(
                    Some("tmpfs"),
                    at.proc_path().as_str(),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options.as_str()),
                )
                .map_err(|err| format!("mounting a tmpfs on {}: {err}", mount.target))?;
            }
        }
    }
    // Every bind mount nodev: a device node in what it shows (an image's or a stage's files,
    // made as they were by kiln running as root) would open the host's device, such as its
    // disk; the rootfs overlay is nodev too. Read-only last, so that mount points of later
    // mounts could still be made inside. The mount's own descriptor leads to it, whatever
    // was mounted or changed above it since.
    for (bound, target, ro) in binds {
        let at = PathBuf::from(format!("/proc/self/fd/{}", bound.as_raw_fd()));
        let flags = match ro {
            true => MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
            false => MsFlags::MS_NODEV,
        };
        remount_bind(&at, flags).map_err(|err| format!("remounting {target}: {err}"))?;
    }
    Ok(())
}

/// A bind mount is made read-only by remounting it.
pub(crate) fn remount_readonly(at: &Path) -> Result<(), nix::Error> {
    remount_bind(at, MsFlags::MS_RDONLY)
}

/// Remounts a bind mount with `extra` flags. Flags the mount inherited from the host are
/// locked in a user namespace and must be kept, or the remount is refused.
fn remount_bind(at: &Path, extra: MsFlags) -> Result<(), nix::Error> {
    let current = statvfs(at)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
    for (has, keep) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(has) {
            flags |= keep;
        }
    }
    mount(None::<&str>, at, None::<&str>, flags, None::<&str>)
}
