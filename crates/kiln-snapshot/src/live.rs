//! A live tree used as a build's rootfs, as kaniko uses its container's `/` (kiln's in-place
//! isolation): brought to the state of a stack of layer dirs, and what a command changed in it
//! captured as a layer dir. The paths it is told to keep (kiln's own directory, mount points)
//! are never entered, changed or recorded; the directories that lead to them are kept.
//!
//! Changes are made through descriptors that never follow a symlink ([`Dir`]), and every
//! directory on the way to an entry written is one this module made or checked to be a
//! directory, so neither a layer nor a command's leftovers can lead a write elsewhere.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kiln_fs::Dir;

use crate::copy::copy_nondir;
use crate::fsmeta::{self, EntryMeta, in_parent, is_opaque, is_whiteout};
use crate::stack::{LayerStack, Node, export_node};
use crate::{Changes, Inventory, SnapshotError, at};

/// A tree whose entries kiln replaces (a container's `/`), minus the paths it keeps.
pub struct LiveRoot {
    root: PathBuf,
    skips: Skips,
}

/// Paths relative to the root that are kept, and the directories that lead to them.
struct Skips {
    kept: Vec<PathBuf>,
    paths: HashSet<PathBuf>,
    leading: HashSet<PathBuf>,
}

impl Skips {
    fn new(kept: Vec<PathBuf>) -> Skips {
        let paths: HashSet<PathBuf> = kept.iter().cloned().collect();
        let leading = kept
            .iter()
            .flat_map(|path| path.ancestors().skip(1))
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        Skips {
            kept,
            paths,
            leading,
        }
    }

    /// Whether `rel` is a kept path or below one.
    fn is_kept(&self, rel: &Path) -> bool {
        rel.ancestors().any(|a| self.paths.contains(a))
    }

    /// Whether a kept path lies below `rel`.
    fn leads_to_kept(&self, rel: &Path) -> bool {
        self.leading.contains(rel)
    }
}

/// A live tree as the destination of an export (see `stack::export_node`).
pub(crate) struct Onto<'a> {
    pub root: &'a Path,
    skips: &'a Skips,
}

/// What [`Onto::make_way`] left at a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// Nothing: the entry can be created.
    Clear,
    /// A directory, kept for a directory.
    DirKept,
    /// A kept path: the entry must not be written.
    Skipped,
}

impl Onto<'_> {
    /// Readies `dest` for an entry of the image (a directory if `dir`).
    pub(crate) fn make_way(&self, dest: &Path, dir: bool) -> Result<Way, SnapshotError> {
        let Ok(rel) = dest.strip_prefix(self.root) else {
            return Ok(Way::Skipped);
        };
        if rel.as_os_str().is_empty() {
            return Ok(Way::DirKept);
        }
        if self.skips.is_kept(rel) {
            return Ok(Way::Skipped);
        }
        let (parent, name) = in_parent(dest).map_err(at(dest))?;
        match parent.metadata(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Way::Clear),
            Err(e) => Err(at(dest)(e)),
            Ok(md) if md.is_dir() && dir => Ok(Way::DirKept),
            Ok(_) if self.skips.leads_to_kept(rel) => Err(SnapshotError::KeptPathInTheWay {
                path: dest.to_path_buf(),
            }),
            Ok(_) => {
                parent.remove_all(name).map_err(at(dest))?;
                Ok(Way::Clear)
            }
        }
    }
}

impl LiveRoot {
    /// `keep`: paths relative to `root` that stay as they are.
    pub fn new(root: &Path, keep: Vec<PathBuf>) -> LiveRoot {
        LiveRoot {
            root: root.to_path_buf(),
            skips: Skips::new(keep),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The record a command's changes are found against (see [`Inventory::changes`]).
    pub fn inventory(&self) -> io::Result<Inventory> {
        Inventory::take(&self.root, &self.skips.kept)
    }

    /// What changed since `record`, and the record of now.
    pub fn changes(&self, record: &Inventory) -> io::Result<(Changes, Inventory)> {
        record.changes(&self.root, &self.skips.kept)
    }

    /// Makes the tree hold what the stack of layer dirs `layers` (bottom first) holds, and
    /// what it keeps.
    pub fn reset(&self, layers: &[PathBuf]) -> Result<(), SnapshotError> {
        self.clear(Path::new(""))?;
        let stack = LayerStack::new(layers.to_vec());
        let hosts = stack.root();
        if hosts.is_empty() {
            return Ok(());
        }
        export_node(
            Node::Dir(hosts),
            &self.root,
            Some(&self.onto()),
            &mut HashMap::new(),
        )
    }

    /// Applies the layer dir `layer` on top, as overlayfs would show it: its whiteouts
    /// delete, its opaque directories hide what was there, its entries replace what is there.
    pub fn apply(&self, layer: &Path) -> Result<(), SnapshotError> {
        if is_opaque(layer) {
            self.clear(Path::new(""))?;
        }
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let dir = layer.join(&rel);
            for entry in fs::read_dir(&dir).map_err(at(&dir))? {
                let entry = entry.map_err(at(&dir))?;
                let child = rel.join(entry.file_name());
                if self.skips.is_kept(&child) {
                    continue;
                }
                let md = entry.metadata().map_err(at(&entry.path()))?;
                if is_whiteout(&md) {
                    self.remove(&child)?;
                } else if md.is_dir() {
                    if is_opaque(&entry.path()) {
                        self.clear(&child)?;
                    }
                    todo.push(child);
                }
            }
        }
        let hosts = LayerStack::new(vec![layer.to_path_buf()]).root();
        export_node(
            Node::Dir(hosts),
            &self.root,
            Some(&self.onto()),
            &mut HashMap::new(),
        )
    }

    /// Writes what `changes` names into the empty dir `upper`, in overlay format: changed
    /// entries as they are now (with the directories above them), deleted ones as whiteouts.
    pub fn capture(&self, changes: &Changes, upper: &Path) -> Result<(), SnapshotError> {
        let mut capture = Capture {
            live: self,
            upper,
            made: HashSet::new(),
            dirs: Vec::new(),
        };
        let mut links = HashMap::new();
        let mut replaced: HashSet<&Path> = HashSet::new();
        for rel in &changes.changed {
            let src = self.root.join(rel);
            let md = match fs::symlink_metadata(&src) {
                // Gone since the walk (a process of the step still ran): not part of it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other.map_err(at(&src))?,
            };
            capture.parents_of(rel)?;
            let meta = EntryMeta::of(&src, &md).map_err(at(&src))?;
            let dest = upper.join(rel);
            let (dir, name) = in_parent(&dest).map_err(at(&dest))?;
            if md.is_dir() {
                if capture.made.insert(rel.clone()) {
                    dir.create_dir(name, 0o700).map_err(at(&dest))?;
                    meta.apply_except_time(&dir, name, false)
                        .map_err(at(&dest))?;
                    capture.dirs.push((dest, meta));
                }
            } else {
                copy_nondir(&src, &md, &dir, &dest, &meta, &mut links)?;
                replaced.insert(rel);
            }
        }
        for rel in &changes.deleted {
            // Below what is now a non-directory: that hides it already.
            if rel.ancestors().skip(1).any(|a| replaced.contains(a)) {
                continue;
            }
            capture.parents_of(rel)?;
            let dest = upper.join(rel);
            let (dir, name) = in_parent(&dest).map_err(at(&dest))?;
            fsmeta::make_whiteout(&dir, name).map_err(at(&dest))?;
        }
        // Children first: writing into a directory moves its mtime.
        for (dest, meta) in capture.dirs.iter().rev() {
            let (dir, name) = in_parent(dest).map_err(at(dest))?;
            meta.apply_time(&dir, name).map_err(at(dest))?;
        }
        Ok(())
    }

    fn onto(&self) -> Onto<'_> {
        Onto {
            root: &self.root,
            skips: &self.skips,
        }
    }

    /// Removes everything below the directory `rel` but the kept paths and the directories
    /// that lead to them.
    fn clear(&self, rel: &Path) -> Result<(), SnapshotError> {
        let root = Dir::open(&self.root).map_err(at(&self.root))?;
        let mut todo = vec![rel.to_path_buf()];
        while let Some(rel) = todo.pop() {
            let path = self.root.join(&rel);
            let dir = match rel.as_os_str().is_empty() {
                true => Dir::open(&self.root),
                false => root.open_dir(&rel),
            }
            .map_err(at(&path))?;
            let names: Vec<OsString> = dir.names().map_err(at(&path))?;
            for name in names {
                let child = rel.join(&name);
                if self.skips.paths.contains(&child) {
                    continue;
                }
                if self.skips.leads_to_kept(&child) {
                    todo.push(child);
                    continue;
                }
                dir.remove_all(&name).map_err(at(&self.root.join(&child)))?;
            }
        }
        Ok(())
    }

    /// Removes `rel` (a whiteout's target), keeping what must be kept below it.
    fn remove(&self, rel: &Path) -> Result<(), SnapshotError> {
        if self.skips.leads_to_kept(rel) {
            return self.clear(rel);
        }
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Ok(());
        };
        let root = Dir::open(&self.root).map_err(at(&self.root))?;
        let dir = match parent.as_os_str().is_empty() {
            true => Ok(root),
            false => root.open_dir(parent),
        };
        let removed = dir.and_then(|dir| dir.remove_all(name));
        match removed {
            // Nothing there, or a non-directory (a symlink) on the way, which the layer's
            // directory replaces anyway.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) =>
            {
                Ok(())
            }
            other => other.map_err(at(&self.root.join(rel))),
        }
    }
}

/// The directories [`LiveRoot::capture`] made in the upper dir, with their final times.
struct Capture<'a> {
    live: &'a LiveRoot,
    upper: &'a Path,
    made: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, EntryMeta)>,
}

impl Capture<'_> {
    /// Makes the directories above `rel` in the upper dir, each with the metadata it has in
    /// the live tree.
    fn parents_of(&mut self, rel: &Path) -> Result<(), SnapshotError> {
        let mut missing: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty() && !self.made.contains(*a))
            .collect();
        missing.reverse();
        for parent in missing {
            let src = self.live.root.join(parent);
            let md = fs::symlink_metadata(&src).map_err(at(&src))?;
            if !md.is_dir() {
                return Err(at(&src)(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            let meta = EntryMeta::of(&src, &md).map_err(at(&src))?;
            let dest = self.upper.join(parent);
            let (dir, name) = in_parent(&dest).map_err(at(&dest))?;
            dir.create_dir(name, 0o700).map_err(at(&dest))?;
            meta.apply_except_time(&dir, name, false)
                .map_err(at(&dest))?;
            self.made.insert(parent.to_path_buf());
            self.dirs.push((dest, meta));
        }
        Ok(())
    }
}
