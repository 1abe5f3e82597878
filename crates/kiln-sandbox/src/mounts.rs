//! `RUN --mount`: placing mount points in the rootfs without leaving them in a layer, and
//! mounting binds and tmpfs over the rootfs in the command's mount namespace.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::{MountKind, RunMount};

/// Symlinks followed while resolving one mount target, as the kernel allows for one path.
const MAX_SYMLINK_HOPS: usize = 40;

/// Mount points the sandbox mounts over before the command's own mounts; a target under
/// one of these is created inside that mount, not in the overlay.
const SANDBOX_MOUNTS: [&str; 2] = ["/proc", "/dev"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum MountPointKind {
    Dir,
    File,
}

/// What the mount point of `mount` must be: a dir for a tmpfs or a dir source, else a file.
pub(crate) fn mount_point_kind(mount: &RunMount) -> Result<MountPointKind, String> {
    match &mount.kind {
        MountKind::Tmpfs { .. } => Ok(MountPointKind::Dir),
        MountKind::Bind { source, .. } => match std::fs::metadata(source) {
            Ok(meta) if meta.is_dir() => Ok(MountPointKind::Dir),
            Ok(_) => Ok(MountPointKind::File),
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

/// Resolves `target` inside `root` (symlinks are followed as if `root` were `/`, so none
/// leads out of it), creating what is missing: dirs on the way, and a `kind` entry at the
/// end. `before_create` gets each path (relative to `root`) just before it is created.
/// Returns the mount point's host path.
pub(crate) fn mount_point(
    root: &Path,
    target: &str,
    kind: MountPointKind,
    before_create: &mut dyn FnMut(&Path, MountPointKind),
) -> Result<PathBuf, String> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = components_reversed(Path::new(target));
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == Path::new("..") {
            resolved.pop();
            continue;
        }
        let last = pending.is_empty();
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match full.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(format!(
                        "mount target {target}: too many levels of symlinks"
                    ));
                }
                let link = std::fs::read_link(&full)
                    .map_err(|err| format!("mount target {target}: {err}"))?;
                if link.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(components_reversed(&link));
                continue;
            }
            Ok(meta) => {
                let wanted_dir = !last || kind == MountPointKind::Dir;
                if wanted_dir && !meta.is_dir() {
                    return Err(format!(
                        "mount target {target}: /{} is not a directory",
                        candidate.display()
                    ));
                }
                if !wanted_dir && meta.is_dir() {
                    return Err(format!(
                        "mount target {target} is a directory, but the mount source is not"
                    ));
                }
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {
                let entry_kind = match last {
                    true => kind,
                    false => MountPointKind::Dir,
                };
                before_create(&candidate, entry_kind);
                let created = match entry_kind {
                    MountPointKind::Dir => std::fs::create_dir(&full),
                    MountPointKind::File => File::create(&full).map(drop),
                };
                created.map_err(|err| {
                    format!("creating mount point /{}: {err}", candidate.display())
                })?;
            }
            Err(err) => return Err(format!("mount target {target}: {err}")),
        }
        resolved = candidate;
    }
    Ok(root.join(resolved))
}

/// Normal and `..` components, last first (a stack to pop from).
fn components_reversed(path: &Path) -> Vec<PathBuf> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .rev()
        .collect()
}

/// Mounts every mount of the spec over `merged`, in order, in the command's mount namespace.
/// Mount points still missing lie inside earlier mounts and are created there.
pub(crate) fn mount_all(merged: &Path, mounts: &[RunMount]) -> Result<(), String> {
    let mut readonly = Vec::new();
    for mount in mounts {
        let kind = mount_point_kind(mount)?;
        let at = mount_point(merged, &mount.target, kind, &mut |_, _| {})?;
        match &mount.kind {
            MountKind::Bind {
                source,
                readonly: ro,
            } => {
                nix::mount::mount(
                    Some(source),
                    &at,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|err| {
                    format!(
                        "bind-mounting {} on {}: {err}",
                        source.display(),
                        mount.target
                    )
                })?;
                if *ro {
                    readonly.push((at, &mount.target));
                }
            }
            MountKind::Tmpfs { size } => {
                let options = match size {
                    Some(bytes) => format!("mode=1777,size={bytes}"),
                    None => "mode=1777".to_string(),
                };
                nix::mount::mount(
                    Some("tmpfs"),
                    &at,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options.as_str()),
                )
                .map_err(|err| format!("mounting a tmpfs on {}: {err}", mount.target))?;
            }
        }
    }
    // Read-only last, so that mount points of later mounts could still be made inside.
    for (at, target) in readonly {
        remount_readonly(&at).map_err(|err| format!("making {target} read-only: {err}"))?;
    }
    Ok(())
}

/// A bind mount is made read-only by remounting it; flags the mount inherited from the host
/// are locked in a user namespace and must be kept, or the remount is refused.
pub(crate) fn remount_readonly(at: &Path) -> Result<(), nix::Error> {
    let current = statvfs(at)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (has, keep) in [
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
