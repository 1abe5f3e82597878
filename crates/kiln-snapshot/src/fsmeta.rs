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

/// Where kiln keeps what it cannot give an entry, when it runs as a user other than root with
/// no user namespace (a non-root pod under Kubernetes' RuntimeDefault): the owner, since chown
/// to another user is refused, and the mode, where kiln had to widen its own access to work in
/// the entry (a 0555 directory, a 0000 file). "uid:gid" or "uid:gid:mode" (octal).
const RECORD_XATTR: &[u8] = b"user.kiln.owner";

/// overlayfs' own bookkeeping and kiln's records: never copied into images or between
/// layers, never taken from one.
pub(crate) fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.")
        || name.starts_with(b"trusted.overlay.")
        || name == RECORD_XATTR
}

/// Whether kiln can give files any owner (root, or root of its user namespace). Otherwise
/// owners are recorded in [`RECORD_XATTR`].
fn can_chown() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
}

/// Owner and permission bits kiln gave the entry at `path`: its own, or where kiln cannot
/// chown, the recorded ones. An entry kiln made without a record (a symlink takes no user.*
/// xattr) is root's, as kiln's own uid is root's in a user namespace that maps only it.
pub(crate) fn owner_and_mode(path: &Path, md: &Metadata) -> io::Result<(u32, u32, u32)> {
    let mode = md.mode() & 0o7777;
    if can_chown() {
        return Ok((md.uid(), md.gid(), mode));
    }
    match get_xattr(path, RECORD_XATTR)? {
        Some(value) => parse_record(&value, mode).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: kiln's owner record is damaged", path.display()),
            )
        }),
        None => {
            let squash = |id: u32, ours: u32| if id == ours { 0 } else { id };
            Ok((
                squash(md.uid(), nix::unistd::geteuid().as_raw()),
                squash(md.gid(), nix::unistd::getegid().as_raw()),
                mode,
            ))
        }
    }
}

fn parse_record(value: &[u8], mode: u32) -> Option<(u32, u32, u32)> {
    let mut fields = std::str::from_utf8(value).ok()?.split(':');
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    let mode = match fields.next() {
        Some(recorded) => u32::from_str_radix(recorded, 8).ok()? & 0o7777,
        None => mode,
    };
    fields.next().is_none().then_some((uid, gid, mode))
}

/// Where kiln cannot chown: the record of `uid`, `gid` and `mode`, and the mode to give the
/// entry, with kiln's own read and write access (and search, for a directory) added.
fn record(uid: u32, gid: u32, mode: u32, is_dir: bool) -> (Vec<u8>, u32) {
    let usable = mode | if is_dir { 0o700 } else { 0o600 };
    let record = match usable == mode {
        true => format!("{uid}:{gid}"),
        false => format!("{uid}:{gid}:{mode:o}"),
    };
    (record.into_bytes(), usable)
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
/// layer, sorted by name: all but overlayfs' and kiln's own bookkeeping.
pub fn copied_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut xattrs = list_xattrs(path)?;
    xattrs.retain(|(name, _)| !is_private_xattr(name));
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
        let (uid, gid, mode) = owner_and_mode(path, md)?;
        Ok(EntryMeta {
            mode,
            uid,
            gid,
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
        if is_symlink {
            set_owner(dir, name, self.uid, self.gid)?;
        } else if can_chown() {
            set_owner(dir, name, self.uid, self.gid)?;
            dir.set_mode(name, self.mode)?;
        } else {
            let is_dir = dir.metadata(name)?.is_dir();
            let (record, mode) = record(self.uid, self.gid, self.mode, is_dir);
            dir.set_xattr(name, RECORD_XATTR, &record)?;
            dir.set_mode(name, mode)?;
        }
        for (key, value) in &self.xattrs {
            xattr_set(dir.set_xattr(name, key, value))?;
        }
        Ok(())
    }

    /// [`EntryMeta::apply`] through the descriptor of a regular file kiln created and still
    /// holds open, in the same order.
    pub(crate) fn apply_to_file(&self, file: &File) -> io::Result<()> {
        if can_chown() {
            match open_file::set_owner(file, self.uid, self.gid) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                other => other?,
            }
            open_file::set_mode(file, self.mode)?;
        } else {
            let (record, mode) = record(self.uid, self.gid, self.mode, false);
            open_file::set_xattr(file, RECORD_XATTR, &record)?;
            open_file::set_mode(file, mode)?;
        }
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

/// lchown; an id that is not mapped in our user namespace (EINVAL) leaves the entry owned by
/// us. Where kiln cannot chown at all, a symlink (which takes no user.* xattr, and no mode)
/// stays kiln's: [`owner_and_mode`] gives it root's.
fn set_owner(dir: &Dir, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    match dir.set_owner(name, uid, gid) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !can_chown() => Ok(()),
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
