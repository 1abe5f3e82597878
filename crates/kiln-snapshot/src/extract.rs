//! OCI layer tar -> overlay-format layer dir, refusing anything that would land outside it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use tar::EntryType;

use crate::SnapshotError;
use crate::fsmeta::{self, EntryMeta};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

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

fn extract<R: Read>(
    tar_stream: R,
    dest: &Path,
    whiteouts: bool,
) -> Result<ExtractStats, SnapshotError> {
    let mut archive = tar::Archive::new(tar_stream);
    let mut extractor = Extractor {
        dest,
        whiteouts,
        earlier_files: HashSet::new(),
        dir_times: Vec::new(),
    };
    let mut entries = 0;
    for entry in archive.entries().map_err(SnapshotError::TarStream)? {
        let mut entry = entry.map_err(SnapshotError::TarStream)?;
        extractor.apply(&mut entry)?;
        entries += 1;
    }
    // Writing a child bumps its directory's mtime, so directory times go on last.
    for (path, meta) in &extractor.dir_times {
        meta.apply_time(path).map_err(crate::at(path))?;
    }
    Ok(ExtractStats { entries })
}

struct Extractor<'d> {
    dest: &'d Path,
    /// Whether `.wh.` entries are deletions (layers) or plain names (archives).
    whiteouts: bool,
    /// Normalised paths of the non-directories extracted so far: the only valid hard link targets.
    earlier_files: HashSet<Vec<u8>>,
    dir_times: Vec<(PathBuf, EntryMeta)>,
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

fn display(components: &[&[u8]]) -> String {
    String::from_utf8_lossy(&components.join(&b'/')).into_owned()
}

impl Extractor<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), SnapshotError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let comps = components(&raw).ok_or_else(|| SnapshotError::EntryEscapes {
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
        let parent = self.make_parents(&name, parents)?;

        if self.whiteouts && *last == OPAQUE_MARKER {
            return fsmeta::set_xattr(&parent, fsmeta::OPAQUE_XATTRS[0], b"y").map_err(entry_err);
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
            let path = parent.join(OsStr::from_bytes(deleted));
            clear(&path, false).map_err(entry_err)?;
            return fsmeta::make_whiteout(&path).map_err(entry_err);
        }

        let path = parent.join(OsStr::from_bytes(last));
        let meta = entry_meta(entry).map_err(entry_err)?;
        let key = comps.join(&b'/');
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                clear(&path, false).map_err(entry_err)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(entry_err)?;
                io::copy(entry, &mut file).map_err(entry_err)?;
                drop(file);
                meta.apply(&path, false).map_err(entry_err)?;
            }
            EntryType::Directory => {
                if !clear(&path, true).map_err(entry_err)? {
                    fs::create_dir(&path).map_err(entry_err)?;
                }
                meta.apply_except_time(&path, false).map_err(entry_err)?;
                self.dir_times.push((path, meta));
                return Ok(());
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                clear(&path, false).map_err(entry_err)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(entry_err)?;
                meta.apply(&path, true).map_err(entry_err)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target_path = self.hard_link_target(&name, &target, &key)?;
                clear(&path, false).map_err(entry_err)?;
                fs::hard_link(&target_path, &path).map_err(entry_err)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let node = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                clear(&path, false).map_err(entry_err)?;
                if !fsmeta::make_node(&path, node, meta.mode, major, minor).map_err(entry_err)? {
                    return Ok(());
                }
                meta.apply(&path, false).map_err(entry_err)?;
            }
            other => {
                return Err(SnapshotError::UnsupportedEntryType {
                    entry: name,
                    kind: other.as_byte(),
                });
            }
        }
        self.earlier_files.insert(key);
        Ok(())
    }

    /// Walk (and create) the parent directories of an entry, refusing to pass through symlinks.
    fn make_parents(&self, entry: &str, parents: &[&[u8]]) -> Result<PathBuf, SnapshotError> {
        let mut path = self.dest.to_path_buf();
        for (i, c) in parents.iter().enumerate() {
            path.push(OsStr::from_bytes(c));
            match fs::symlink_metadata(&path) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.is_symlink() => {
                    return Err(SnapshotError::EntryThroughSymlink {
                        entry: entry.to_string(),
                        symlink: display(&parents[..=i]),
                    });
                }
                Ok(_) => {
                    return Err(SnapshotError::EntryParentNotDir {
                        entry: entry.to_string(),
                        parent: display(&parents[..=i]),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(|source| SnapshotError::Entry {
                            entry: entry.to_string(),
                            source,
                        })?;
                }
                Err(source) => {
                    return Err(SnapshotError::Entry {
                        entry: entry.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(path)
    }

    /// The host path of a hard link's target: an earlier non-directory of this layer, reached
    /// without passing through a symlink (a later entry may have replaced a parent by one).
    fn hard_link_target(
        &self,
        entry: &str,
        target: &[u8],
        key: &[u8],
    ) -> Result<PathBuf, SnapshotError> {
        let target_name = String::from_utf8_lossy(target).into_owned();
        let comps = components(target).ok_or_else(|| SnapshotError::HardLinkEscapes {
            entry: entry.to_string(),
            target: target_name.clone(),
        })?;
        let missing = || SnapshotError::HardLinkTargetMissing {
            entry: entry.to_string(),
            target: target_name.clone(),
        };
        let target_key = comps.join(&b'/');
        if target_key == key || !self.earlier_files.contains(&target_key) {
            return Err(missing());
        }
        let mut path = self.dest.to_path_buf();
        for (i, c) in comps.iter().enumerate() {
            path.push(OsStr::from_bytes(c));
            let md = fs::symlink_metadata(&path).map_err(|_| missing())?;
            let is_last = i + 1 == comps.len();
            if !is_last && md.is_symlink() {
                return Err(SnapshotError::EntryThroughSymlink {
                    entry: entry.to_string(),
                    symlink: display(&comps[..=i]),
                });
            }
            if is_last == md.is_dir() {
                return Err(missing());
            }
        }
        Ok(path)
    }
}

/// Make room for a new entry at `path`. An existing directory is kept when `keep_dir` (a dir
/// entry over an implicitly created dir); returns whether it was kept.
fn clear(path: &Path, keep_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() && keep_dir => Ok(true),
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).map(|()| false),
        Ok(_) => fs::remove_file(path).map(|()| false),
    }
}

/// Mode, owner, mtime and xattrs of a tar entry; PAX records override the ustar fields.
fn entry_meta<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<EntryMeta> {
    let header = entry.header();
    let mut meta = EntryMeta {
        mode: header.mode()? & 0o7777,
        uid: header.uid()? as u32,
        gid: header.gid()? as u32,
        mtime: header.mtime()? as i64,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for record in pax {
            let record = record?;
            let key = record.key_bytes();
            let value = record.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
            };
            match key {
                b"uid" => meta.uid = number().unwrap_or(meta.uid),
                b"gid" => meta.gid = number().unwrap_or(meta.gid),
                b"mtime" => {
                    let secs = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok());
                    meta.mtime = secs.unwrap_or(meta.mtime);
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        // An image must not smuggle overlayfs' own markers into a layer dir.
                        if !fsmeta::is_overlay_xattr(name) {
                            meta.xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
    }
    Ok(meta)
}
