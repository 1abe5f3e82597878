//! Path operations confined beneath a directory.
//!
//! A [`Dir`] is an open directory. Nothing done through it leaves it or follows a symlink:
//! [`Dir::open_dir`] resolves a relative path with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, and every other method takes a single file
//! name and acts on that entry itself, with an `*at` call that does not follow it. A symlink
//! that a layer or a RUN step planted (`etc -> /host/dir`) therefore makes an operation fail
//! (`ELOOP`, `ENOTDIR`) or act on the link itself; it never reaches what the link points to.
//!
//! A name is one path component: no `/`, not `.` or `..`. Where a method says so, the empty
//! name stands for the directory itself.
//!
//! [`Dir::open_in_root`] and [`Dir::make_in_root`] are the exception: they follow symlinks, but
//! as if the directory were `/` (a container's rootfs), so that none leads out of it.

#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps, Uid,
    XattrFlags,
};
use rustix::io::Errno;

/// How directories are opened: read-only, never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// How `open_dir` resolves: beneath the directory, no symlinks, no `/proc` magic links.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// How `open_in_root` resolves: symlinks and `..` as if the directory were `/`, no `/proc`
/// magic links (`/proc/self/root`, `/proc/<pid>/fd/<n>`), which jump wherever they point.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Symlinks followed while resolving one path, as the kernel allows (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Times `make_in_root` looks again at an entry that appeared, or vanished, between its
/// lookup and its creation, before it gives up with `EAGAIN`.
const MAX_RACES: usize = 8;

/// An open directory; see the crate docs.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// A point in time as the filesystem stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: i64,
}

/// What [`Dir::make_node`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    CharDevice,
    BlockDevice,
    Fifo,
}

/// What [`Dir::make_in_root`] creates where nothing is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// What [`Dir::make_in_root`] calls with each path it is about to create.
pub type BeforeCreate<'a> = dyn FnMut(&Path, EntryKind) + 'a;

/// An entry held by an `O_PATH` descriptor: it stays the inode that was looked up, whatever
/// later happens to the path that led to it.
#[derive(Debug)]
pub struct Entry {
    fd: OwnedFd,
}

impl Entry {
    /// The `fstat` of the entry (a symlink only if one was opened as such).
    pub fn metadata(&self) -> io::Result<Metadata> {
        Ok(Metadata(rustix::fs::fstat(&self.fd)?))
    }

    /// `/proc/self/fd/<n>` of the descriptor: for calls that take only a path (`mount(2)`),
    /// it leads to exactly this inode, as the kernel follows it without a lookup by name.
    pub fn proc_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
}

impl AsFd for Entry {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The `lstat` of an entry (or `fstat` of the directory itself).
#[derive(Clone, Copy, Debug)]
pub struct Metadata(rustix::fs::Stat);

// The field types of `struct stat` differ between architectures, hence the casts.
#[allow(clippy::unnecessary_cast)]
impl Metadata {
    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.0.st_mode as _)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == FileType::Symlink
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == FileType::RegularFile
    }

    pub fn is_char_device(&self) -> bool {
        self.file_type() == FileType::CharacterDevice
    }

    /// `st_mode`: the file type and permission bits.
    pub fn mode(&self) -> u32 {
        self.0.st_mode as u32
    }

    pub fn uid(&self) -> u32 {
        self.0.st_uid as u32
    }

    pub fn gid(&self) -> u32 {
        self.0.st_gid as u32
    }

    pub fn rdev(&self) -> u64 {
        self.0.st_rdev as u64
    }

    pub fn accessed(&self) -> Timestamp {
        Timestamp {
            sec: self.0.st_atime as i64,
            nsec: self.0.st_atime_nsec as i64,
        }
    }

    pub fn modified(&self) -> Timestamp {
        Timestamp {
            sec: self.0.st_mtime as i64,
            nsec: self.0.st_mtime_nsec as i64,
        }
    }

    /// When the inode last changed: its contents, mode, owner, links or xattrs.
    pub fn changed(&self) -> Timestamp {
        Timestamp {
            sec: self.0.st_ctime as i64,
            nsec: self.0.st_ctime_nsec as i64,
        }
    }

    pub fn dev(&self) -> u64 {
        self.0.st_dev as u64
    }

    pub fn ino(&self) -> u64 {
        self.0.st_ino as u64
    }

    pub fn nlink(&self) -> u64 {
        self.0.st_nlink as u64
    }

    /// `st_size`: bytes of a file, of a symlink's target path.
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
}

impl Dir {
    /// Opens the directory at `path`. `path` is kiln's own (a layer or upper dir it made), so
    /// symlinks in it are followed; this is the boundary later calls stay beneath.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty())?;
        Ok(Dir { fd })
    }

    /// Opens the directory `rel` beneath this one; an empty `rel` opens this one again. A
    /// component that is a symlink fails with `ELOOP`, one that is not a directory with
    /// `ENOTDIR`; `..` and absolute paths are refused with `EXDEV`.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Errno::XDEV.into());
        }
        if rel.as_os_str().is_empty() {
            return self.open_dir_stepwise(rel);
        }
        // Without O_NOFOLLOW, RESOLVE_NO_SYMLINKS turns a final symlink into ELOOP too.
        let flags = DIR_FLAGS.difference(OFlags::NOFOLLOW);
        match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), BENEATH) {
            // Before Linux 5.6, or under a seccomp filter that predates openat2.
            Err(Errno::NOSYS) => self.open_dir_stepwise(rel),
            opened => Ok(Dir { fd: opened? }),
        }
    }

    /// `open_dir` one component at a time, each opened with `O_NOFOLLOW`: the same result as
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` for paths without `..`.
    fn open_dir_stepwise(&self, rel: &Path) -> io::Result<Dir> {
        let mut fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        for component in rel.components() {
            match component {
                Component::Normal(name) => {
                    let parent = Dir { fd };
                    fd = match rustix::fs::openat(&parent.fd, name, DIR_FLAGS, Mode::empty()) {
                        // O_NOFOLLOW with O_DIRECTORY answers ENOTDIR for a symlink.
                        Err(Errno::NOTDIR)
                            if parent.metadata(name).is_ok_and(|m| m.is_symlink()) =>
                        {
                            return Err(Errno::LOOP.into());
                        }
                        opened => opened?,
                    };
                }
                Component::CurDir => {}
                _ => return Err(Errno::XDEV.into()),
            }
        }
        Ok(Dir { fd })
    }

    /// Opens `path` as if this directory were `/`, with `openat2(RESOLVE_IN_ROOT |
    /// RESOLVE_NO_MAGICLINKS)`: absolute and relative symlinks (a final one too) and `..`
    /// resolve inside it and never lead out; a `/proc` magic link fails with `ELOOP`.
    pub fn open_in_root(&self, path: &Path) -> io::Result<Entry> {
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let mut races = 0;
        loop {
            match rustix::fs::openat2(&self.fd, path, flags, Mode::empty(), IN_ROOT) {
                // Before Linux 5.6, or under a seccomp filter that predates openat2.
                Err(Errno::NOSYS) => return self.walk_in_root(path, None),
                // A rename or mount elsewhere raced with a `..`: the kernel asks to try again.
                Err(Errno::AGAIN) if races < MAX_RACES => races += 1,
                opened => return Ok(Entry { fd: opened? }),
            }
        }
    }

    /// [`Dir::open_in_root`], creating what is missing: directories on the way and a `last`
    /// at the end (where a final symlink leads, if it leads nowhere yet). An existing final
    /// entry of the other kind fails with `ENOTDIR` (a directory was wanted) or `EISDIR`.
    ///
    /// `before_create` gets each entry's path relative to this directory, with symlinks
    /// resolved, just before it is created. Each component is looked up with `O_NOFOLLOW` and
    /// created (`mkdirat`, `O_CREAT | O_EXCL`) relative to the descriptor of the directory
    /// just looked at, so nothing lands anywhere but where the check was made, whatever
    /// happens to paths meanwhile.
    pub fn make_in_root(
        &self,
        path: &Path,
        last: EntryKind,
        before_create: &mut BeforeCreate,
    ) -> io::Result<Entry> {
        // The usual case: nothing to create, and the kernel resolves.
        let entry = match self.open_in_root(path) {
            Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                self.walk_in_root(path, Some((last, before_create)))?
            }
            opened => opened?,
        };
        let is_dir = entry.metadata()?.is_dir();
        match (last, is_dir) {
            (EntryKind::Dir, false) => Err(Errno::NOTDIR.into()),
            (EntryKind::File, true) => Err(Errno::ISDIR.into()),
            _ => Ok(entry),
        }
    }

    /// Resolves `path` in root one component at a time, relative to the descriptor of the
    /// directory reached so far, expanding symlinks itself (an absolute one starts over at
    /// this directory, `..` goes back to the directory it came from and stays here at the
    /// top). With `create`, missing entries are made as [`Dir::make_in_root`] says. Symlinks
    /// on procfs are refused (`ELOOP`) like magic links: the walk cannot tell them apart, and
    /// nothing can be created in procfs anyway.
    fn walk_in_root(
        &self,
        path: &Path,
        mut create: Option<(EntryKind, &mut BeforeCreate)>,
    ) -> io::Result<Entry> {
        let lookup = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // The directories below this one that the walk is in, with their names.
        let mut dirs: Vec<(OwnedFd, OsString)> = Vec::new();
        let mut pending = components_reversed(path.as_os_str());
        let (mut symlinks, mut races) = (0, 0);
        // Whether the last lookup's entry was just created here: if it is gone again, a race.
        let mut just_created = false;
        loop {
            let parent = dirs.last().map_or(&self.fd, |(fd, _)| fd);
            let Some(part) = pending.pop() else {
                // The path ended at a directory (`/`, `..`, or a symlink to a directory).
                let fd = rustix::fs::openat(parent, ".", lookup, Mode::empty())?;
                return Ok(Entry { fd });
            };
            if part == ".." {
                dirs.pop();
                continue;
            }
            let is_last = pending.is_empty();
            let fd = match rustix::fs::openat(parent, &part, lookup, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create.is_some() => {
                    let (last, before_create) = create.as_mut().expect("checked");
                    let kind = if is_last { *last } else { EntryKind::Dir };
                    let mut relative: PathBuf =
                        dirs.iter().map(|(_, name)| name.as_os_str()).collect();
                    relative.push(&part);
                    if just_created {
                        races += 1;
                    }
                    if races > MAX_RACES {
                        return Err(Errno::AGAIN.into());
                    }
                    before_create(&relative, kind);
                    let created = match kind {
                        EntryKind::Dir => {
                            rustix::fs::mkdirat(parent, &part, Mode::from_raw_mode(0o755))
                        }
                        EntryKind::File => {
                            let flags = OFlags::WRONLY
                                | OFlags::CREATE
                                | OFlags::EXCL
                                | OFlags::NOFOLLOW
                                | OFlags::CLOEXEC;
                            let mode = Mode::from_raw_mode(0o644);
                            rustix::fs::openat(parent, &part, flags, mode).map(drop)
                        }
                    };
                    just_created = match created {
                        Ok(()) => true,
                        // Something appeared there since the lookup: look at that instead.
                        Err(Errno::EXIST) => {
                            races += 1;
                            false
                        }
                        Err(err) => return Err(err.into()),
                    };
                    // Looked up again, with O_NOFOLLOW like any other entry: a race may
                    // already have replaced what was just made.
                    pending.push(part);
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            just_created = false;
            match Metadata(rustix::fs::fstat(&fd)?).file_type() {
                FileType::Symlink => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS
                        || rustix::fs::fstatfs(&fd)?.f_type == rustix::fs::PROC_SUPER_MAGIC
                    {
                        return Err(Errno::LOOP.into());
                    }
                    let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
                    let target = OsStr::from_bytes(target.as_bytes());
                    if target.as_bytes().starts_with(b"/") {
                        dirs.clear();
                    }
                    pending.extend(components_reversed(target));
                }
                FileType::Directory if !is_last => dirs.push((fd, part)),
                _ if is_last => return Ok(Entry { fd }),
                _ => return Err(Errno::NOTDIR.into()),
            }
        }
    }

    /// The entry `name` itself (a symlink is not followed); the empty name: this directory.
    pub fn metadata(&self, name: &OsStr) -> io::Result<Metadata> {
        let stat = match entry(name)? {
            None => rustix::fs::fstat(&self.fd)?,
            Some(name) => rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?,
        };
        Ok(Metadata(stat))
    }

    /// The names in this directory, without `.` and `..`, in no particular order.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut reader = rustix::fs::Dir::read_from(&self.fd)?;
        let mut names = Vec::new();
        while let Some(entry) = reader.read() {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from(OsStr::from_bytes(&name)));
            }
        }
        Ok(names)
    }

    /// `mkdirat`; the process umask applies to `mode`.
    pub fn create_dir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let name = named(name)?;
        Ok(rustix::fs::mkdirat(
            &self.fd,
            name,
            Mode::from_raw_mode(mode),
        )?)
    }

    /// Creates the regular file `name` for writing; fails if anything is there already.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let name = named(name)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Creates the symlink `name` pointing to `target` (which is only stored, never resolved).
    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let name = named(name)?;
        Ok(rustix::fs::symlinkat(target, &self.fd, name)?)
    }

    /// Creates `name` as a hard link to `from_name` in `from` (a symlink there is linked, not
    /// followed).
    pub fn hard_link(&self, name: &OsStr, from: &Dir, from_name: &OsStr) -> io::Result<()> {
        let (name, from_name) = (named(name)?, named(from_name)?);
        Ok(rustix::fs::linkat(
            &from.fd,
            from_name,
            &self.fd,
            name,
            AtFlags::empty(),
        )?)
    }

    /// `mknodat`; the process umask applies to `mode`.
    pub fn make_node(
        &self,
        name: &OsStr,
        kind: NodeKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let name = named(name)?;
        let file_type = match kind {
            NodeKind::CharDevice => FileType::CharacterDevice,
            NodeKind::BlockDevice => FileType::BlockDevice,
            NodeKind::Fifo => FileType::Fifo,
        };
        let dev = rustix::fs::makedev(major, minor);
        Ok(rustix::fs::mknodat(
            &self.fd,
            name,
            file_type,
            Mode::from_raw_mode(mode),
            dev,
        )?)
    }

    /// Removes the non-directory `name` (a symlink itself, not its target).
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        let name = named(name)?;
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Removes the empty directory `name`.
    pub fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        let name = named(name)?;
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    /// Removes `name` and, if it is a directory, everything in it. Symlinks inside are
    /// removed, never followed. At most three descriptors are open and no call recurses,
    /// however deep the tree (a hostile layer can nest directories far beyond the 1,024
    /// descriptors a pod allows): the entries two levels down are moved up into `name`, a
    /// level at a time, until it holds only what can be unlinked.
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        let name = named(name)?;
        if !self.metadata(name)?.is_dir() {
            return self.remove_file(name);
        }
        let dir = self.open_dir(Path::new(name))?;
        // What is left to remove: the names `dir` held, then those moved up into it. Kept
        // here, not read from `dir` again: ext4 never shrinks a directory, so each listing
        // would cost all `dir` ever held, and a tree both wide and deep would cost its width
        // once per level.
        let mut left = dir.names()?;
        let mut moved = 0u64;
        while let Some(child) = left.pop() {
            if !dir.metadata(&child)?.is_dir() {
                dir.remove_file(&child)?;
                continue;
            }
            let sub = dir.open_dir(Path::new(&child))?;
            for grandchild in sub.names()? {
                // Under a name `dir` does not hold.
                loop {
                    moved += 1;
                    let to = format!(".kiln-removing-{moved}");
                    match rustix::fs::renameat_with(
                        &sub.fd,
                        grandchild.as_os_str(),
                        &dir.fd,
                        to.as_str(),
                        RenameFlags::NOREPLACE,
                    ) {
                        Ok(()) => {
                            left.push(to.into());
                            break;
                        }
                        Err(Errno::EXIST) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            dir.remove_dir(&child)?;
        }
        self.remove_dir(name)
    }

    /// `lchown` of `name` (the empty name: this directory). `u32::MAX` leaves an id as it is.
    pub fn set_owner(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let uid = Some(Uid::from_raw_unchecked(uid));
        let gid = Some(Gid::from_raw_unchecked(gid));
        match entry(name)? {
            None => rustix::fs::fchown(&self.fd, uid, gid)?,
            Some(name) => {
                rustix::fs::chownat(&self.fd, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        Ok(())
    }

    /// chmod of `name` itself (the empty name: this directory). A symlink is refused with
    /// `ELOOP`: chmod would change what it points to.
    pub fn set_mode(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let mode = Mode::from_raw_mode(mode);
        let Some(name) = entry(name)? else {
            return Ok(rustix::fs::fchmod(&self.fd, mode)?);
        };
        // An O_PATH descriptor opens no device and takes no fchmod, but its /proc/self/fd
        // link resolves to exactly the inode it holds.
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let node = rustix::fs::openat(&self.fd, name, flags, Mode::empty())?;
        let stat = rustix::fs::fstat(&node)?;
        if FileType::from_raw_mode(stat.st_mode as _) == FileType::Symlink {
            return Err(Errno::LOOP.into());
        }
        let path = format!("/proc/self/fd/{}", node.as_raw_fd());
        Ok(rustix::fs::chmod(path.as_str(), mode)?)
    }

    /// Sets the access and modification times of `name` itself (the empty name: this
    /// directory).
    pub fn set_times(
        &self,
        name: &OsStr,
        accessed: Timestamp,
        modified: Timestamp,
    ) -> io::Result<()> {
        let times = timestamps(accessed, modified);
        match entry(name)? {
            None => rustix::fs::futimens(&self.fd, &times)?,
            Some(name) => {
                rustix::fs::utimensat(&self.fd, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        Ok(())
    }

    /// Sets the extended attribute `key` of `name` itself (the empty name: this directory).
    pub fn set_xattr(&self, name: &OsStr, key: &[u8], value: &[u8]) -> io::Result<()> {
        let flags = XattrFlags::empty();
        match entry(name)? {
            None => rustix::fs::fsetxattr(&self.fd, key, value, flags)?,
            Some(name) => {
                // There is no `lsetxattrat` before Linux 6.13. Through our own descriptor's
                // /proc/self/fd link the path has one component left, which `l*` does not
                // follow.
                let mut path = OsString::from(format!("/proc/self/fd/{}/", self.fd.as_raw_fd()));
                path.push(name);
                rustix::fs::lsetxattr(path, key, value, flags)?;
            }
        }
        Ok(())
    }
}

/// Metadata changes through a descriptor of a file kiln just created and still holds open:
/// one syscall each, with no name to look up again, and no way to reach another inode.
pub mod open_file {
    use super::*;

    /// `fchown`. `u32::MAX` leaves an id as it is.
    pub fn set_owner(file: &File, uid: u32, gid: u32) -> io::Result<()> {
        let uid = Some(Uid::from_raw_unchecked(uid));
        let gid = Some(Gid::from_raw_unchecked(gid));
        Ok(rustix::fs::fchown(file, uid, gid)?)
    }

    /// `fchmod`.
    pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?)
    }

    /// `futimens`: access and modification times.
    pub fn set_times(file: &File, accessed: Timestamp, modified: Timestamp) -> io::Result<()> {
        Ok(rustix::fs::futimens(file, &timestamps(accessed, modified))?)
    }

    /// `fsetxattr`.
    pub fn set_xattr(file: &File, key: &[u8], value: &[u8]) -> io::Result<()> {
        Ok(rustix::fs::fsetxattr(
            file,
            key,
            value,
            XattrFlags::empty(),
        )?)
    }
}

fn timestamps(accessed: Timestamp, modified: Timestamp) -> Timestamps {
    let spec = |t: Timestamp| Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as _,
    };
    Timestamps {
        last_access: spec(accessed),
        last_modification: spec(modified),
    }
}

/// The names and `..` of `path`, last first (a stack to pop from); `/` and `.` are dropped.
fn components_reversed(path: &OsStr) -> Vec<OsString> {
    path.as_bytes()
        .split(|&byte| byte == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .rev()
        .map(|part| OsStr::from_bytes(part).to_os_string())
        .collect()
}

/// `None` for the empty name (the directory itself), else the checked name.
fn entry(name: &OsStr) -> io::Result<Option<&OsStr>> {
    match name.is_empty() {
        true => Ok(None),
        false => named(name).map(Some),
    }
}

/// A name of one entry: not empty, no `/`, not `.` or `..`.
fn named(name: &OsStr) -> io::Result<&OsStr> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not the name of one directory entry",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests;
