//! OCI layer tar -> overlay-format layer dir, refusing anything that would land outside it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_fs::{Dir, NodeKind, Timestamp};
use tar::EntryType;

use crate::fsmeta;
use crate::tar_reader::{SparseMap, TarEntry, TarReader};
use crate::{SnapshotError, shown};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

#[derive(Debug)]
pub struct ExtractStats {
    /// Tar entries applied (files, dirs, links, whiteouts...).
    pub entries: u64,
}

/// Extract an uncompressed OCI layer tar into the empty directory `dest`, in overlay format.
pub fn extract_layer<R: Read>(tar_stream: R, dest: &Path) -> Result<ExtractStats, SnapshotError> {
    extract(tar_stream, dest, true)
}

/// Extract a tar that is not a layer (ADD of an archive) into the empty directory `dest`:
/// the same safety rules, but `.wh.` names are ordinary files.
pub(crate) fn extract_plain<R: Read>(
    tar_stream: R,
    dest: &Path,
) -> Result<ExtractStats, SnapshotError> {
    extract(tar_stream, dest, false)
}

/// Every change goes through a descriptor of `dest` (see `kiln_fs`), so an entry can never
/// reach outside it, whatever symlinks earlier entries planted. Memory stays bounded: the tar
/// is streamed (see `tar_reader`), and nothing is remembered per entry; of directory times,
/// only those of the directory entries go into now (see [`Extractor::current`]).
fn extract<R: Read>(
    tar_stream: R,
    dest: &Path,
    whiteouts: bool,
) -> Result<ExtractStats, SnapshotError> {
    let root = Dir::open(dest).map_err(crate::at(dest))?;
    let mut extractor = Extractor {
        root,
        whiteouts,
        current: None,
    };
    let mut tar = TarReader::new(tar_stream);
    let mut entries = 0;
    while let Some(entry) = tar.next()? {
        extractor.apply(&entry, &mut tar.data())?;
        entries += 1;
    }
    extractor.leave().map_err(crate::at(dest))?;
    Ok(ExtractStats { entries })
}

struct Extractor {
    root: Dir,
    /// Whether `.wh.` entries are deletions (layers) or plain names (archives).
    whiteouts: bool,
    /// The directory the last entry went into, kept open for the next ones (a tar lists a
    /// directory's files together).
    current: Option<Current>,
}

/// An open directory entries are going into, and the times it must end with: a directory
/// keeps the times of its own tar entry (or of its creation) whatever goes into it after.
/// They are put back when entries move elsewhere ([`Extractor::leave`]), once, not after
/// every entry.
struct Current {
    comps: Vec<Vec<u8>>,
    dir: Dir,
    accessed: Timestamp,
    modified: Timestamp,
}

/// The components of an entry path relative to the layer root. A leading `/` and `.`
/// components are dropped; `None` if any component is `..`.
fn components(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn joined(components: &[&[u8]]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&components.join(&b'/')))
}

/// Runs `op`, which adds or removes entries of `dir`, and puts `dir`'s times back: a
/// directory keeps the times of its own tar entry (or of its creation) whatever follows it.
fn keeping_times<T>(dir: &Dir, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let this = OsStr::new("");
    let before = dir.metadata(this)?;
    let out = op()?;
    dir.set_times(this, before.accessed(), before.modified())?;
    Ok(out)
}

impl Extractor {
    fn apply(&mut self, entry: &TarEntry, data: &mut impl Read) -> Result<(), SnapshotError> {
        let name = shown(&entry.path);
        let comps = components(&entry.path).ok_or_else(|| SnapshotError::EntryEscapes {
            entry: name.clone(),
        })?;
        let entry_err = |source: io::Error| SnapshotError::Entry {
            entry: name.clone(),
            source,
        };
        // The layer root itself (`./`) belongs to the rootfs, not to the layer.
        let Some((last, parents)) = comps.split_last() else {
            return Ok(());
        };
        let hard_link = match entry.kind {
            EntryType::Link => Some(self.hard_link_target(&name, &entry.link_name, &comps)?),
            _ => None,
        };
        let whiteouts = self.whiteouts;
        let parent = self.enter(&name, parents)?;

        if whiteouts && *last == OPAQUE_MARKER {
            let opaque = fsmeta::OPAQUE_XATTRS[0];
            return parent
                .set_xattr(OsStr::new(""), opaque, b"y")
                .map_err(entry_err);
        }
        if let Some(deleted) = last.strip_prefix(WHITEOUT_PREFIX).filter(|_| whiteouts) {
            if deleted.starts_with(WHITEOUT_PREFIX) {
                // aufs bookkeeping (`.wh..wh.plnk` etc.): means nothing to overlayfs.
                return Ok(());
            }
            if matches!(deleted, b"" | b"." | b"..") {
                return Err(SnapshotError::EntryEscapes { entry: name });
            }
            let deleted = OsStr::from_bytes(deleted);
            return replacing(parent, deleted, || fsmeta::make_whiteout(parent, deleted))
                .map_err(entry_err);
        }

        let last = OsStr::from_bytes(last);
        let meta = &entry.meta;
        match entry.kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = replacing(parent, last, || parent.create_file(last, 0o600))
                    .map_err(&entry_err)?;
                write_contents(&mut file, data, entry.sparse.as_ref())
                    .and_then(|()| meta.apply_to_file(&file))
                    .map_err(entry_err)?;
            }
            EntryType::Directory => {
                match parent.create_dir(last, 0o700) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        if !clear(parent, last, true).map_err(&entry_err)? {
                            parent.create_dir(last, 0o700).map_err(&entry_err)?;
                        }
                    }
                    other => other.map_err(&entry_err)?,
                }
                meta.apply(parent, last, false).map_err(entry_err)?;
            }
            EntryType::Symlink => {
                let target = OsStr::from_bytes(&entry.link_name);
                replacing(parent, last, || parent.symlink(target, last))
                    .and_then(|()| meta.apply(parent, last, true))
                    .map_err(entry_err)?;
            }
            EntryType::Link => {
                let (from, from_name) = hard_link.expect("looked up for links");
                replacing(parent, last, || parent.hard_link(last, &from, from_name))
                    .map_err(entry_err)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match entry.kind {
                    EntryType::Char => NodeKind::CharDevice,
                    EntryType::Block => NodeKind::BlockDevice,
                    _ => NodeKind::Fifo,
                };
                let made = replacing(parent, last, || {
                    fsmeta::make_node(parent, last, kind, meta.mode, entry.device)
                })
                .map_err(&entry_err)?;
                if made {
                    meta.apply(parent, last, false).map_err(entry_err)?;
                }
            }
            other => {
                return Err(SnapshotError::UnsupportedEntryType {
                    entry: name,
                    kind: other.as_byte(),
                });
            }
        }
        Ok(())
    }

    /// The directory `comps` of the layer, made the current one: opened (and made where
    /// missing) unless it is the current one already. An entry changes only its parent and
    /// itself; an entry that is the current directory, or above it, has another parent, so
    /// the current directory's times are back before it is applied.
    fn enter(&mut self, entry: &str, comps: &[&[u8]]) -> Result<&Dir, SnapshotError> {
        if self.current.as_ref().is_none_or(|c| c.comps != comps) {
            let entry_err = |source| SnapshotError::Entry {
                entry: entry.to_string(),
                source,
            };
            self.leave().map_err(entry_err)?;
            let dir = self.open_parents(entry, comps, true)?;
            let md = dir.metadata(OsStr::new("")).map_err(entry_err)?;
            self.current = Some(Current {
                comps: comps.iter().map(|c| c.to_vec()).collect(),
                dir,
                accessed: md.accessed(),
                modified: md.modified(),
            });
        }
        Ok(&self.current.as_ref().expect("entered just now").dir)
    }

    /// Puts the current directory's times back, and forgets it.
    fn leave(&mut self) -> io::Result<()> {
        match self.current.take() {
            Some(c) => c.dir.set_times(OsStr::new(""), c.accessed, c.modified),
            None => Ok(()),
        }
    }

    /// Opens the directory `comps` of the layer, never through a symlink; with `create`, the
    /// missing ones are made (0755).
    fn open_parents(
        &self,
        entry: &str,
        comps: &[&[u8]],
        create: bool,
    ) -> Result<Dir, SnapshotError> {
        let entry_err = |source| SnapshotError::Entry {
            entry: entry.to_string(),
            source,
        };
        match self.root.open_dir(&joined(comps)) {
            Ok(dir) => return Ok(dir),
            // Something on the way is missing, a symlink or no directory: find out which.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::ENAMETOOLONG)
                ) => {}
            Err(e) => return Err(entry_err(e)),
        }
        let mut dir = self.root.open_dir(Path::new("")).map_err(entry_err)?;
        for (i, c) in comps.iter().enumerate() {
            let c = OsStr::from_bytes(c);
            match dir.metadata(c) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.is_symlink() => {
                    return Err(SnapshotError::EntryThroughSymlink {
                        entry: entry.to_string(),
                        symlink: shown(&comps[..=i].join(&b'/')),
                    });
                }
                Ok(_) => {
                    return Err(SnapshotError::EntryParentNotDir {
                        entry: entry.to_string(),
                        parent: shown(&comps[..=i].join(&b'/')),
                    });
                }
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    keeping_times(&dir, || dir.create_dir(c, 0o755)).map_err(entry_err)?;
                }
                Err(e) => return Err(entry_err(e)),
            }
            dir = dir.open_dir(Path::new(c)).map_err(entry_err)?;
        }
        Ok(dir)
    }

    /// The directory and name of a hard link's target: an earlier non-directory of this
    /// layer (the only things in `dest`), reached without passing through a symlink.
    fn hard_link_target<'t>(
        &self,
        entry: &str,
        target: &'t [u8],
        comps: &[&[u8]],
    ) -> Result<(Dir, &'t OsStr), SnapshotError> {
        let missing = || SnapshotError::HardLinkTargetMissing {
            entry: entry.to_string(),
            target: shown(target),
        };
        let target_comps = components(target).ok_or_else(|| SnapshotError::HardLinkEscapes {
            entry: entry.to_string(),
            target: shown(target),
        })?;
        let Some((name, parents)) = target_comps.split_last() else {
            return Err(missing());
        };
        if target_comps == comps {
            return Err(missing());
        }
        let dir = match self.open_parents(entry, parents, false) {
            Err(SnapshotError::Entry { .. } | SnapshotError::EntryParentNotDir { .. }) => {
                return Err(missing());
            }
            other => other?,
        };
        let name = OsStr::from_bytes(name);
        match dir.metadata(name) {
            Ok(md) if !md.is_dir() && !fsmeta::is_whiteout_at(&md) => Ok((dir, name)),
            _ => Err(missing()),
        }
    }
}

/// Writes an entry's data to a new file. A sparse file's holes are skipped, not written:
/// they read as zeros and take no disk.
fn write_contents(
    file: &mut File,
    data: &mut impl Read,
    sparse: Option<&SparseMap>,
) -> io::Result<()> {
    let Some(sparse) = sparse else {
        io::copy(data, file)?;
        return Ok(());
    };
    for &(offset, len) in &sparse.regions {
        file.seek(SeekFrom::Start(offset))?;
        let written = io::copy(&mut data.take(len), file)?;
        if written < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a sparse region",
            ));
        }
    }
    file.set_len(sparse.size)
}

/// Runs `make`, which creates `name` in `dir`; if something is there already, removes it
/// (with everything below, if a directory) and runs `make` again. A fresh layer dir mostly has
/// nothing there: one syscall, not a lookup first.
fn replacing<T>(dir: &Dir, name: &OsStr, make: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match make() {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            clear(dir, name, false)?;
            make()
        }
        other => other,
    }
}

/// Make room for a new entry `name` in `dir`. An existing directory is kept when `keep_dir` (a
/// dir entry over an implicitly created dir); returns whether it was kept.
fn clear(dir: &Dir, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
    match dir.metadata(name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() && keep_dir => Ok(true),
        Ok(_) => dir.remove_all(name).map(|()| false),
    }
}
