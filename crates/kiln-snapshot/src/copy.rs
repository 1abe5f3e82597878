//! COPY into a new layer dir, and the one-entry copy shared with `LayerStack::export`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use kiln_fs::{Dir, NodeKind};
use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use crate::Chmod;
use crate::fsmeta::{self, EntryMeta, in_parent, is_whiteout};
use crate::stack::{LayerStack, Node, Walk};
use crate::{SnapshotError, at};

/// (dev, ino) of a multiply-linked source file -> where its first copy went.
type HardLinks = HashMap<(u64, u64), PathBuf>;

#[derive(Default)]
pub struct CopyOptions<'a> {
    /// Owner of everything copied; `None` means 0:0, as COPY does (see `keep_owner`).
    pub chown: Option<(u32, u32)>,
    /// Without `chown`, keep the sources' owners instead of 0:0 (ADD of an archive).
    pub keep_owner: bool,
    /// Changes the permission bits of copied files and directories.
    pub chmod: Option<Chmod>,
    /// Called with the path relative to a directory source; `false` skips the entry (and
    /// everything under a skipped directory).
    pub filter: Option<&'a dyn Fn(&Path) -> bool>,
}

/// Copy one COPY source into the layer dir `layer` at the absolute image path `target`.
/// Returns the number of entries copied (parents created on the way are not counted).
pub fn copy_into_layer(
    src: &Path,
    layer: &Path,
    target: &Path,
    below: &LayerStack,
    opts: &CopyOptions,
) -> Result<u64, SnapshotError> {
    let src_md = fs::symlink_metadata(src).map_err(at(src))?;
    let target_comps = lexical_components(target);
    // Earlier sources of the same COPY are already in `layer`: resolve through them too.
    let mut stack = below.layers().to_vec();
    stack.push(layer.to_path_buf());
    let merged = LayerStack::new(stack);
    let owner = match opts.chown {
        Some(owner) => Some(owner),
        None if opts.keep_owner => None,
        None => Some((0, 0)),
    };
    let meta_for = |path: &Path, md: &Metadata| -> Result<EntryMeta, SnapshotError> {
        let mut meta = EntryMeta::of(path, md).map_err(at(path))?;
        if let Some(owner) = owner {
            (meta.uid, meta.gid) = owner;
        }
        if let Some(chmod) = opts.chmod.as_ref().filter(|_| !md.is_symlink()) {
            meta.mode = chmod.apply(meta.mode, md.is_dir());
        }
        Ok(meta)
    };
    let mut links = HardLinks::new();

    if !src_md.is_dir() {
        let Some((name, parent)) = target_comps.split_last() else {
            return Err(SnapshotError::FileOntoRoot {
                src: src.to_path_buf(),
            });
        };
        let parent = resolve_dir(&merged, parent, target)?;
        let parents = make_parents(layer, &parent, below, target, (0, 0))?;
        let dest = layer_path(layer, &parent).join(name);
        clear(&dest)?;
        let (dir, _) = in_parent(&dest).map_err(at(&dest))?;
        let meta = meta_for(src, &src_md)?;
        let copied = copy_nondir(src, &src_md, &dir, &dest, &meta, &mut links)?;
        parents.restore_times()?;
        return Ok(u64::from(copied));
    }

    let dir = resolve_dir(&merged, &target_comps, target)?;
    let Some((_, parent)) = dir.split_last() else {
        // Into the image root: only the contents are copied, the root keeps its metadata.
        return copy_tree(src, layer, Path::new(""), opts, &meta_for, &mut links);
    };
    let parents = make_parents(layer, parent, below, target, (0, 0))?;
    let dest = layer_path(layer, &dir);
    let (dest_parent, dest_name) = in_parent(&dest).map_err(at(&dest))?;
    let mut copied = 0;
    let dest_meta = match fs::symlink_metadata(&dest) {
        // Made by an earlier source of this COPY: it keeps what it got then.
        Ok(md) if md.is_dir() => EntryMeta::of(&dest, &md).map_err(at(&dest))?,
        existing => {
            if existing.is_ok() {
                clear(&dest)?;
            }
            fs::create_dir(&dest).map_err(at(&dest))?;
            // A directory already in the image keeps its metadata; a new one takes the source's.
            let meta = match dir_meta_below(below, &dir) {
                Some(meta) => meta,
                None => {
                    copied += 1;
                    meta_for(src, &src_md)?
                }
            };
            meta.apply_except_time(&dest_parent, dest_name, false)
                .map_err(at(&dest))?;
            meta
        }
    };
    copied += copy_tree(src, &dest, Path::new(""), opts, &meta_for, &mut links)?;
    dest_meta
        .apply_time(&dest_parent, dest_name)
        .map_err(at(&dest))?;
    parents.restore_times()?;
    Ok(copied)
}

/// Lexical components of an absolute image path; `..` stops at the root.
fn lexical_components(path: &Path) -> Vec<OsString> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn layer_path(layer: &Path, comps: &[OsString]) -> PathBuf {
    let mut p = layer.to_path_buf();
    p.extend(comps);
    p
}

/// Resolve a directory path through the merged view (following symlinks inside the image),
/// keeping the components that do not exist yet.
fn resolve_dir(
    merged: &LayerStack,
    comps: &[OsString],
    target: &Path,
) -> Result<Vec<OsString>, SnapshotError> {
    let path: PathBuf = std::iter::once(OsString::from("/"))
        .chain(comps.iter().cloned())
        .collect();
    match merged.walk(&path, true) {
        Walk::Found {
            comps,
            node: Node::Dir(_),
        } => Ok(comps),
        Walk::Missing { mut comps, rest } => {
            comps.extend(rest);
            Ok(comps)
        }
        Walk::Found { .. } | Walk::Blocked => Err(SnapshotError::TargetParentNotDir {
            path: target.to_path_buf(),
        }),
    }
}

/// Mode, owner and mtime of a directory of the image below, if it has one there.
fn dir_meta_below(below: &LayerStack, comps: &[OsString]) -> Option<EntryMeta> {
    let path: PathBuf = std::iter::once(OsString::from("/"))
        .chain(comps.iter().cloned())
        .collect();
    let Walk::Found {
        node: Node::Dir(hosts),
        ..
    } = below.walk(&path, false)
    else {
        return None;
    };
    let md = fs::symlink_metadata(&hosts[0]).ok()?;
    let (uid, gid, mode) = fsmeta::owner_and_mode(&hosts[0], &md).ok()?;
    Some(EntryMeta {
        mode,
        uid,
        gid,
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        xattrs: Vec::new(),
    })
}

/// Directories on the way to a copy, with the mtime each must end with: writing into a
/// directory bumps its mtime, which would make the layer depend on when it was built.
struct Parents(Vec<(PathBuf, i64, i64)>);

impl Parents {
    fn restore_times(&self) -> Result<(), SnapshotError> {
        for (path, sec, nsec) in &self.0 {
            in_parent(path)
                .and_then(|(dir, name)| fsmeta::set_mtime(&dir, name, *sec, *nsec))
                .map_err(at(path))?;
        }
        Ok(())
    }
}

/// Create the directory `target` (WORKDIR) and its missing parents in the fresh layer dir
/// `layer`: new directories are 0755, owned by `owner`. Symlinks in the image below are
/// followed. Returns how many directories the image did not have yet.
pub fn mkdir_in_layer(
    layer: &Path,
    target: &Path,
    below: &LayerStack,
    owner: (u32, u32),
) -> Result<u64, SnapshotError> {
    let comps = lexical_components(target);
    let dir = resolve_dir(below, &comps, target)?;
    let parents = make_parents(layer, &dir, below, target, owner)?;
    parents.restore_times()?;
    let existing = (1..=dir.len())
        .take_while(|n| dir_meta_below(below, &dir[..*n]).is_some())
        .count();
    Ok((dir.len() - existing) as u64)
}

/// Create the directories `comps` in `layer`, each with the metadata its counterpart has in
/// `below`, else 0755 `new_owner` mtime 0.
fn make_parents(
    layer: &Path,
    comps: &[OsString],
    below: &LayerStack,
    target: &Path,
    new_owner: (u32, u32),
) -> Result<Parents, SnapshotError> {
    let mut parents = Vec::new();
    let mut host = layer.to_path_buf();
    for (i, name) in comps.iter().enumerate() {
        host.push(name);
        match fs::symlink_metadata(&host) {
            Ok(md) if md.is_dir() => parents.push((host.clone(), md.mtime(), md.mtime_nsec())),
            Ok(_) => {
                return Err(SnapshotError::TargetParentNotDir {
                    path: target.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let meta = dir_meta_below(below, &comps[..=i]).unwrap_or(EntryMeta {
                    mode: 0o755,
                    uid: new_owner.0,
                    gid: new_owner.1,
                    mtime: 0,
                    mtime_nsec: 0,
                    xattrs: Vec::new(),
                });
                fs::create_dir(&host).map_err(at(&host))?;
                in_parent(&host)
                    .and_then(|(dir, name)| meta.apply_except_time(&dir, name, false))
                    .map_err(at(&host))?;
                parents.push((host.clone(), meta.mtime, meta.mtime_nsec));
            }
            Err(e) => return Err(at(&host)(e)),
        }
    }
    Ok(Parents(parents))
}

/// Remove whatever is at `path` in the layer (an earlier source's copy).
fn clear(path: &Path) -> Result<(), SnapshotError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(at(path))
}

/// Copy the contents of the directory `src` into the existing directory `dest`. Iterative:
/// a tree can nest as deep as PATH_MAX allows (a RUN step makes one in a second), and a call
/// per level overflowed a build thread's stack at about 1,900 levels.
fn copy_tree(
    src: &Path,
    dest: &Path,
    rel: &Path,
    opts: &CopyOptions,
    meta_for: &dyn Fn(&Path, &Metadata) -> Result<EntryMeta, SnapshotError>,
    links: &mut HardLinks,
) -> Result<u64, SnapshotError> {
    let mut levels = vec![TreeLevel::read(src, dest, rel, None)?];
    let mut copied = 0;
    while let Some(level) = levels.last_mut() {
        let Some(name) = level.names.next() else {
            let done = levels.pop().expect("a level was there");
            if let (Some(meta), Some(parent)) = (done.times, levels.last_mut()) {
                let name = done.dest.file_name().expect("a child dir has a name");
                meta.apply_time(parent.dest_dir()?, name)
                    .map_err(at(&done.dest))?;
            }
            continue;
        };
        let rel = level.rel.join(&name);
        if opts.filter.is_some_and(|keep| !keep(&rel)) {
            continue;
        }
        let from = level.src.join(&name);
        let to = level.dest.join(&name);
        let md = fs::symlink_metadata(&from).map_err(at(&from))?;
        let meta = meta_for(&from, &md)?;
        let dest_dir = level.dest_dir()?;
        if md.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(existing) if existing.is_dir() => {}
                _ => {
                    clear(&to)?;
                    fs::create_dir(&to).map_err(at(&to))?;
                }
            }
            meta.apply_except_time(dest_dir, &name, false)
                .map_err(at(&to))?;
            copied += 1;
            // Closed while below: one descriptor at a time, however deep the tree.
            level.dest_dir = None;
            let below = TreeLevel::read(&from, &to, &rel, Some(meta))?;
            levels.push(below);
        } else {
            clear(&to)?;
            copied += u64::from(copy_nondir(&from, &md, dest_dir, &to, &meta, links)?);
        }
    }
    Ok(copied)
}

/// A directory [`copy_tree`] is copying: the names still to copy, sorted so that the same
/// tree always gives the same hard link "first copies".
struct TreeLevel {
    src: PathBuf,
    dest: PathBuf,
    rel: PathBuf,
    names: std::vec::IntoIter<OsString>,
    /// `dest`, opened when needed.
    dest_dir: Option<Dir>,
    /// The times of `dest`, set in its parent once everything below is copied.
    times: Option<EntryMeta>,
}

impl TreeLevel {
    fn read(
        src: &Path,
        dest: &Path,
        rel: &Path,
        times: Option<EntryMeta>,
    ) -> Result<TreeLevel, SnapshotError> {
        let mut names = fs::read_dir(src)
            .map_err(at(src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(at(src))?;
        names.sort();
        Ok(TreeLevel {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
            rel: rel.to_path_buf(),
            names: names.into_iter(),
            dest_dir: None,
            times,
        })
    }

    fn dest_dir(&mut self) -> Result<&Dir, SnapshotError> {
        if self.dest_dir.is_none() {
            self.dest_dir = Some(Dir::open(&self.dest).map_err(at(&self.dest))?);
        }
        Ok(self.dest_dir.as_ref().expect("just opened"))
    }
}

/// Copy one non-directory to the new path `dest`, in the open directory `dir`, with `meta`.
/// Sockets, whiteouts and (where mknod is not permitted) device nodes are skipped: returns
/// whether something was written.
pub(crate) fn copy_nondir(
    src: &Path,
    md: &Metadata,
    dir: &Dir,
    dest: &Path,
    meta: &EntryMeta,
    links: &mut HardLinks,
) -> Result<bool, SnapshotError> {
    let name = dest
        .file_name()
        .ok_or_else(|| at(dest)(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let ft = md.file_type();
    if ft.is_socket() || is_whiteout(md) {
        return Ok(false);
    }
    let inode = (md.dev(), md.ino());
    if md.nlink() > 1
        && let Some(first) = links.get(&inode)
    {
        in_parent(first)
            .and_then(|(from, from_name)| dir.hard_link(name, &from, from_name))
            .map_err(at(dest))?;
        return Ok(true);
    }
    if ft.is_file() {
        let mut from = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .map_err(at(src))?;
        let mut to = dir.create_file(name, 0o600).map_err(at(dest))?;
        let copied = match md.blocks() * 512 < md.len() {
            true => copy_keeping_holes(&mut from, &mut to, md.len()),
            // Not sparse: one copy, without looking for holes first, of the size the source
            // had when its metadata was read (as the hole-keeping copy does).
            false => io::copy(&mut (&mut from).take(md.len()), &mut to).map(drop),
        };
        copied
            .and_then(|()| meta.apply_to_file(&to))
            .map_err(at(dest))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(at(src))?;
        dir.symlink(target.as_os_str(), name).map_err(at(dest))?;
        meta.apply(dir, name, true).map_err(at(dest))?;
    } else {
        let kind = if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_char_device() {
            NodeKind::CharDevice
        } else {
            NodeKind::BlockDevice
        };
        let device = (libc::major(md.rdev()), libc::minor(md.rdev()));
        if !fsmeta::make_node(dir, name, kind, meta.mode, device).map_err(at(dest))? {
            return Ok(false);
        }
        meta.apply(dir, name, false).map_err(at(dest))?;
    }
    if md.nlink() > 1 {
        links.insert(inode, dest.to_path_buf());
    }
    Ok(true)
}

/// Copies the `len` bytes of `from` to the empty file `to`, data regions only: the holes of a
/// sparse file (extraction keeps them) stay holes instead of becoming written zeros.
fn copy_keeping_holes(from: &mut File, to: &mut File, len: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < len {
        let Some((start, end)) = next_data(from, pos)? else {
            break;
        };
        from.seek(SeekFrom::Start(start))?;
        to.seek(SeekFrom::Start(start))?;
        io::copy(&mut from.by_ref().take(end - start), to)?;
        pos = end;
    }
    to.set_len(len)
}

/// The first region of `file` holding data at or after `pos`, as (start, end); `None` when
/// only a hole is left. A file system that does not track holes has one region, the file.
pub fn next_data(file: &File, pos: u64) -> io::Result<Option<(u64, u64)>> {
    let offset = |pos: u64| i64::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput);
    let start = match lseek(file.as_raw_fd(), offset(pos)?, Whence::SeekData) {
        Ok(start) => start as u64,
        Err(Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let end = lseek(file.as_raw_fd(), offset(start)?, Whence::SeekHole)? as u64;
    Ok(Some((start, end)))
}
