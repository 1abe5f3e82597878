//! Metadata syscalls shared by extraction, export and COPY: ownership, modes, times, xattrs,
//! whiteouts. Nothing here follows a symlink at the final component.

use std::ffi::CString;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;

pub(crate) const OPAQUE_XATTRS: [&[u8]; 2] = [b"user.overlay.opaque", b"trusted.overlay.opaque"];

/// A 0/0 character device: overlayfs' mark for a deleted entry.
pub(crate) fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

pub(crate) fn make_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(io::Error::from)
}

/// Whether a directory is marked opaque (hides everything below it in lower layers).
pub(crate) fn is_opaque(path: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|name| matches!(get_xattr(path, name), Ok(Some(v)) if v == b"y"))
}

/// overlayfs' own bookkeeping: never copied into images or between layers.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.") || name.starts_with(b"trusted.overlay.")
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// All extended attributes of `path` (not following a final symlink), sorted by name.
/// A filesystem without xattr support has none.
pub(crate) fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(path)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: `c` is NUL-terminated and `names` is a writable buffer of the given length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            Errno::ERANGE => names.resize(names.len() * 4, 0),
            Errno::ENOTSUP => return Ok(Vec::new()),
            e => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(value) = get_xattr(path, name)? {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One extended attribute, `None` if absent.
pub(crate) fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let c = cpath(path)?;
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    let mut value = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated; `value` is writable for its length.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n >= 0 {
            value.truncate(n as usize);
            return Ok(Some(value));
        }
        match Errno::last() {
            Errno::ERANGE => value.resize(value.len() * 4, 0),
            Errno::ENODATA | Errno::ENOTSUP => return Ok(None),
            e => return Err(e.into()),
        }
    }
}

pub(crate) fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The metadata kiln carries for every entry it writes.
#[derive(Debug, Clone)]
pub(crate) struct EntryMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    /// Mode, owner, mtime and non-overlay xattrs of an existing entry.
    pub(crate) fn of(path: &Path, md: &Metadata) -> io::Result<EntryMeta> {
        let mut xattrs = list_xattrs(path)?;
        xattrs.retain(|(name, _)| !is_overlay_xattr(name));
        Ok(EntryMeta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            xattrs,
        })
    }

    /// Apply everything but the mtime. Order matters: chown clears setuid bits and
    /// `security.capability`, so mode and xattrs come after it.
    pub(crate) fn apply_except_time(&self, path: &Path, is_symlink: bool) -> io::Result<()> {
        set_owner(path, self.uid, self.gid)?;
        if !is_symlink {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))?;
        }
        for (name, value) in &self.xattrs {
            match set_xattr(path, name, value) {
                // Unprivileged namespaces cannot set trusted.*/some security.* names, and
                // symlinks take no user.* xattrs: those are dropped, as other builders do.
                Err(e)
                    if matches!(
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        Errno::EPERM | Errno::ENOTSUP
                    ) => {}
                other => other?,
            }
        }
        Ok(())
    }

    pub(crate) fn apply_time(&self, path: &Path) -> io::Result<()> {
        set_mtime(path, self.mtime, self.mtime_nsec)
    }

    pub(crate) fn apply(&self, path: &Path, is_symlink: bool) -> io::Result<()> {
        self.apply_except_time(path, is_symlink)?;
        self.apply_time(path)
    }
}

/// lchown; an id that is not mapped in our user namespace (EINVAL) leaves the entry owned by us.
pub(crate) fn set_owner(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// Set atime and mtime (atime = mtime, so the result does not depend on when it was made).
pub(crate) fn set_mtime(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let t = TimeSpec::new(sec, nsec);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

/// mknod for devices and fifos. Returns Ok(false) when device nodes are not permitted here
/// (unprivileged user namespace): such entries are skipped.
pub(crate) fn make_node(
    path: &Path,
    kind: SFlag,
    mode: u32,
    major: u32,
    minor: u32,
) -> io::Result<bool> {
    let dev = libc::makedev(major, minor);
    match mknod(path, kind, Mode::from_bits_truncate(mode & 0o7777), dev) {
        Ok(()) => Ok(true),
        Err(Errno::EPERM) if kind != SFlag::S_IFIFO => Ok(false),
        Err(e) => Err(e.into()),
    }
}
