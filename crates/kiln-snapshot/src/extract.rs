//! OCI layer tar -> overlay-format layer dir, refusing anything that would land outside it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_fs::{Dir, NodeKind};
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
/// is streamed (see `tar_reader`), and nothing is remembered per entry, not even directory
/// times, which are kept right as entries go in.
fn extract<R: Read>(
    tar_stream: R,
    dest: &Path,
    whiteouts: bool,
) -> Result<ExtractStats, SnapshotError> {
    let root = Dir::open(dest).map_err(crate::at(dest))?;
    let extractor = Extractor { root, whiteouts };
    let mut tar = TarReader::new(tar_stream);
    let mut entries = 0;
    while let Some(entry) = tar.next()? {
        extractor.apply(&entry, &mut tar.data())?;
        entries += 1;
    }
    Ok(ExtractStats { entries })
}

struct Extractor {
    root: Dir,
    /// Whether `.wh.` entries are deletions (layers) or plain names (archives).
    whiteouts: bool,
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
    fn apply(&self, entry: &TarEntry, data: &mut impl Read) -> Result<(), SnapshotError> {
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
        let parent = self.open_parents(&name, parents, true)?;

        if self.whiteouts && *last == OPAQUE_MARKER {
            let opaque = fsmeta::OPAQUE_XATTRS[0];
            return parent
                .set_xattr(OsStr::new(""), opaque, b"y")
                .map_err(entry_err);
        }
        if let Some(deleted) = last
            .strip_prefix(WHITEOUT_PREFIX)
            .filter(|_| self.whiteouts)
        {
            if deleted.starts_with(WHITEOUT_PREFIX) {
                // aufs bookkeeping (`.wh..wh.plnk` etc.): means nothing to overlayfs.
                return Ok(());
            }
            if matches!(deleted, b"" | b"." | b"..") {
                return Err(SnapshotError::EntryEscapes { entry: name });
            }
            let deleted = OsStr::from_bytes(deleted);
            return keeping_times(&parent, || {
                clear(&parent, deleted, false)?;
                fsmeta::make_whiteout(&parent, deleted)
            })
            .map_err(entry_err);
        }

        let last = OsStr::from_bytes(last);
        let meta = &entry.meta;
        match entry.kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                keeping_times(&parent, || {
                    clear(&parent, last, false)?;
                    let mut file = parent.create_file(last, 0o600)?;
                    write_contents(&mut file, data, entry.sparse.as_ref())?;
                    drop(file);
                    meta.apply(&parent, last, false)
                })
                .map_err(entry_err)?;
            }
            EntryType::Directory => {
                keeping_times(&parent, || {
                    if !clear(&parent, last, true)? {
                        parent.create_dir(last, 0o700)?;
                    }
                    meta.apply(&parent, last, false)
                })
                .map_err(entry_err)?;
            }
            EntryType::Symlink => {
                keeping_times(&parent, || {
                    clear(&parent, last, false)?;
                    parent.symlink(OsStr::from_bytes(&entry.link_name), last)?;
                    meta.apply(&parent, last, true)
                })
                .map_err(entry_err)?;
            }
            EntryType::Link => {
                let (from, from_name) = self.hard_link_target(&name, &entry.link_name, &comps)?;
                keeping_times(&parent, || {
                    clear(&parent, last, false)?;
                    parent.hard_link(last, &from, from_name)
                })
                .map_err(entry_err)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match entry.kind {
                    EntryType::Char => NodeKind::CharDevice,
                    EntryType::Block => NodeKind::BlockDevice,
                    _ => NodeKind::Fifo,
                };
                keeping_times(&parent, || {
                    clear(&parent, last, false)?;
                    if fsmeta::make_node(&parent, last, kind, meta.mode, entry.device)? {
                        meta.apply(&parent, last, false)?;
                    }
                    Ok(())
                })
                .map_err(entry_err)?;
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
