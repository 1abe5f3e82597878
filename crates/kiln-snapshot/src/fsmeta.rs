//! Metadata shared by extraction, export and COPY: ownership, modes, times, xattrs,
//! whiteouts. Reads go by path, of trees nothing else changes meanwhile, and never follow a
//! final symlink; writes go through a [`Dir`] and its name of the entry.

use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_fs::{Dir, NodeKind, Timestamp, open_file};
use nix::errno::Errno;

pub(crate) const OPAQUE_XATTRS: [&[u8]; 2] = [b"user.overlay.opaque", b"trusted.overlay.opaque"];

/// A 0/0 character device: overlayfs' mark for a deleted entry.
pub(crate) fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// The same test on metadata read through a [`Dir`].
pub(crate) fn is_whiteout_at(md: &kiln_fs::Metadata) -> bool {
    md.is_char_device() && md.rdev() == 0
}

pub(crate) fn make_whiteout(dir: &Dir, name: &OsStr) -> io::Result<()> {
    dir.make_node(name, NodeKind::CharDevice, 0, 0, 0)
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

/// The extended attributes a COPY carries from `path` (not following a final symlink) into a
/// layer, sorted by name: all but overlayfs' own bookkeeping.
pub fn copied_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut xattrs = list_xattrs(path)?;
    xattrs.retain(|(name, _)| !is_overlay_xattr(name));
    Ok(xattrs)
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
        let xattrs = copied_xattrs(path)?;
        Ok(EntryMeta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            xattrs,
        })
    }

    /// Apply everything but the mtime to `name` in `dir`. Order matters: chown clears setuid
    /// bits and `security.capability`, so mode and xattrs come after it.
    pub(crate) fn apply_except_time(
        &self,
        dir: &Dir,
        name: &OsStr,
        is_symlink: bool,
    ) -> io::Result<()> {
        set_owner(dir, name, self.uid, self.gid)?;
        if !is_symlink {
            dir.set_mode(name, self.mode)?;
        }
        for (key, value) in &self.xattrs {
            xattr_set(dir.set_xattr(name, key, value))?;
        }
        Ok(())
    }

    /// [`EntryMeta::apply`] through the descriptor of a regular file kiln created and still
    /// holds open, in the same order.
    pub(crate) fn apply_to_file(&self, file: &File) -> io::Result<()> {
        match open_file::set_owner(file, self.uid, self.gid) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => other?,
        }
        open_file::set_mode(file, self.mode)?;
        for (key, value) in &self.xattrs {
            xattr_set(open_file::set_xattr(file, key, value))?;
        }
        let t = Timestamp {
            sec: self.mtime,
            nsec: self.mtime_nsec,
        };
        open_file::set_times(file, t, t)
    }

    pub(crate) fn apply_time(&self, dir: &Dir, name: &OsStr) -> io::Result<()> {
        set_mtime(dir, name, self.mtime, self.mtime_nsec)
    }

    pub(crate) fn apply(&self, dir: &Dir, name: &OsStr, is_symlink: bool) -> io::Result<()> {
        self.apply_except_time(dir, name, is_symlink)?;
        self.apply_time(dir, name)
    }
}

/// Unprivileged namespaces cannot set trusted.*/some security.* names, and symlinks take no
/// user.* xattrs: those are dropped, as other builders do.
fn xattr_set(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e)
            if matches!(
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                Errno::EPERM | Errno::ENOTSUP
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The directory that holds `path`, opened, and `path`'s name in it. Only for paths kiln made
/// itself (a fresh layer or export dir), whose every directory it created.
pub(crate) fn in_parent(path: &Path) -> io::Result<(Dir, &OsStr)> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "a path without a file name");
    let name = path.file_name().ok_or_else(invalid)?;
    let parent = path.parent().ok_or_else(invalid)?;
    Ok((Dir::open(parent)?, name))
}

/// lchown; an id that is not mapped in our user namespace (EINVAL) leaves the entry owned by us.
pub(crate) fn set_owner(dir: &Dir, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    match dir.set_owner(name, uid, gid) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// Set atime and mtime (atime = mtime, so the result does not depend on when it was made).
pub(crate) fn set_mtime(dir: &Dir, name: &OsStr, sec: i64, nsec: i64) -> io::Result<()> {
    let t = Timestamp { sec, nsec };
    dir.set_times(name, t, t)
}

/// mknod for devices and fifos. Returns Ok(false) when device nodes are not permitted here
/// (unprivileged user namespace): such entries are skipped.
pub(crate) fn make_node(
    dir: &Dir,
    name: &OsStr,
    kind: NodeKind,
    mode: u32,
    (major, minor): (u32, u32),
) -> io::Result<bool> {
    match dir.make_node(name, kind, mode & 0o7777, major, minor) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && kind != NodeKind::Fifo => Ok(false),
        Err(e) => Err(e),
    }
}
