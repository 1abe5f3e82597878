use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, DigestWriter};
use kiln_snapshot::{LayerBlob, LayerOptions};

use crate::BuildError;

/// kiln's work and cache directory: a content-addressed blob store, extracted layer dirs keyed
/// by diff_id, and scratch space. Everything lands under a temporary name first and is renamed
/// into place, so an interrupted build never leaves a half-written blob or layer dir.
///
/// The root and the dirs kiln makes in it are mode 0700: layer dirs hold what images hold
/// (setuid programs, files with capabilities, device nodes), and only the owner may reach
/// them. Each process's scratch space is a dir of its own under `tmp/`, removed when the
/// store is dropped, or by the next process to open the store if this one was killed.
pub struct Store {
    root: PathBuf,
    scratch: LockedDir,
    warning: Option<String>,
}

/// The prefix of a process's scratch dir under `<root>/tmp`.
const SCRATCH_PREFIX: &str = "build-";

impl Store {
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        let mut private = DirBuilder::new();
        private.recursive(true).mode(0o700);
        for sub in ["", "blobs/sha256", "layers", "tmp", "cache"] {
            let dir = root.join(sub);
            private
                .create(&dir)
                .map_err(BuildError::io(format!("creating {}", dir.display())))?;
        }
        let root = root
            .canonicalize()
            .map_err(BuildError::io(format!("opening {}", root.display())))?;
        let mode = fs::metadata(&root)
            .map_err(BuildError::io(format!("opening {}", root.display())))?
            .mode();
        // An existing root is the user's to change: kiln says what is wrong and how to fix it.
        let warning = (mode & 0o011 != 0).then(|| {
            format!(
                "the kiln root {path} can be entered by other users (mode {mode:o}), so setuid \
                 programs and device nodes from images are reachable through it: run \
                 `chmod 700 {path}`",
                path = root.display(),
                mode = mode & 0o7777,
            )
        });
        let tmp = root.join("tmp");
        LockedDir::remove_stale(&tmp, SCRATCH_PREFIX);
        let scratch = LockedDir::create(&tmp, SCRATCH_PREFIX).map_err(BuildError::io(format!(
            "creating a scratch dir in {}",
            tmp.display()
        )))?;
        Ok(Store {
            root,
            scratch,
            warning,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Why the root is unsafe as it is, for the user, if it is.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// This process's scratch dir; gone when the store is dropped.
    pub(crate) fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A scratch directory removed when dropped.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, BuildError> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.scratch())
            .map_err(BuildError::io("creating a scratch dir in the kiln store"))
    }

    /// A path in the scratch area for a file that will be renamed into the store.
    pub fn temp_path(&self, prefix: &str) -> Result<tempfile::TempPath, BuildError> {
        Ok(tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(self.scratch())
            .map_err(BuildError::io("creating a scratch file in the kiln store"))?
            .into_temp_path())
    }

    fn commit_blob(&self, tmp: tempfile::TempPath, digest: &Digest) -> Result<(), BuildError> {
        let dest = self.blob_path(digest);
        tmp.persist(&dest)
            .map_err(|e| BuildError::io(format!("storing blob {digest}"))(e.error))
    }

    /// Stores a JSON document (config, manifest or index) and describes it.
    pub fn put_json(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, BuildError> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            let tmp = self.temp_path("json-")?;
            fs::write(&tmp, bytes).map_err(BuildError::io("writing a blob"))?;
            self.commit_blob(tmp, &digest)?;
        }
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    /// Turns an overlay-format dir into a compressed layer blob in the store.
    pub fn put_layer(&self, dir: &Path, opts: &LayerOptions) -> Result<LayerBlob, BuildError> {
        let tmp = self.temp_path("layer-")?;
        let file = File::create(&tmp).map_err(BuildError::io("creating a layer blob"))?;
        let mut out = BufWriter::new(file);
        let blob = kiln_snapshot::write_layer(dir, &mut out, opts).map_err(|e| BuildError::Io {
            context: format!("writing a layer from {}", dir.display()),
            source: std::io::Error::other(e),
        })?;
        out.flush()
            .map_err(BuildError::io("writing a layer blob"))?;
        self.commit_blob(tmp, &blob.digest)?;
        Ok(blob)
    }

    /// Copies a blob from a reader into the store, checking it hashes to `expected`.
    pub fn put_blob_from(
        &self,
        mut src: impl std::io::Read,
        expected: &Digest,
    ) -> Result<(), BuildError> {
        let tmp = self.temp_path("blob-")?;
        let mut w = DigestWriter::new(BufWriter::new(
            File::create(&tmp).map_err(BuildError::io("creating a blob"))?,
        ));
        std::io::copy(&mut src, &mut w).map_err(BuildError::io("writing a blob"))?;
        let (digest, _, mut inner) = w.finish();
        inner.flush().map_err(BuildError::io("writing a blob"))?;
        if &digest != expected {
            return Err(BuildError::Io {
                context: format!("storing blob {expected}"),
                source: std::io::Error::other(format!("content hashes to {digest}")),
            });
        }
        self.commit_blob(tmp, expected)
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// Moves a finished layer dir into place under its diff_id. If another build already
    /// stored the same layer, that one is kept and `dir` is removed.
    pub fn commit_layer_dir(&self, dir: &Path, diff_id: &Digest) -> Result<PathBuf, BuildError> {
        let dest = self.layer_dir(diff_id);
        if dest.exists() {
            let _ = fs::remove_dir_all(dir);
            return Ok(dest);
        }
        match fs::rename(dir, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.exists() => {
                let _ = fs::remove_dir_all(dir);
                Ok(dest)
            }
            Err(e) => Err(BuildError::io(format!("storing layer {diff_id}"))(e)),
        }
    }
}

/// A dir that exists while this process holds it: mode 0700, named `<prefix><random>`, and
/// locked (`flock`) by this process before it takes that name. The lock goes away with the
/// process however it ends, so a dir with that prefix that nobody holds locked was left by a
/// process that was killed, and [`LockedDir::remove_stale`] removes it. No pid is involved,
/// so pid reuse and pid namespaces cannot make a live dir look stale or a dead one live.
pub(crate) struct LockedDir {
    path: PathBuf,
    /// Holds the lock; closed after the dir is removed.
    _lock: File,
}

impl LockedDir {
    /// Made as `.<prefix><random>`, locked, then renamed, so that it is never seen under its
    /// name unlocked. A process killed before the rename leaves an empty dir with a dot name.
    pub fn create(base: &Path, prefix: &str) -> std::io::Result<LockedDir> {
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{prefix}"))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(base)?;
        let lock = File::open(staging.path())?;
        lock.lock()?;
        let name = staging.path().file_name().expect("a temp dir has a name");
        let path = base.join(&name.to_string_lossy()[1..]);
        fs::rename(staging.path(), &path)?;
        // Renamed: nothing is left at the staging path to clean up.
        let _ = staging.keep();
        Ok(LockedDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the dirs named `<prefix>...` in `base` that belong to this user and that no
    /// process holds locked. Symlinks are never followed; errors are ignored (another
    /// process may be removing the same dir).
    pub fn remove_stale(base: &Path, prefix: &str) {
        let Ok(entries) = fs::read_dir(base) else {
            return;
        };
        let me = nix::unistd::geteuid().as_raw();
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(prefix) {
                continue;
            }
            let path = entry.path();
            let Ok(dir) = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
                .open(&path)
            else {
                continue;
            };
            let ours = dir.metadata().is_ok_and(|meta| meta.uid() == me);
            if ours && dir.try_lock().is_ok() {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

impl Drop for LockedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_and_its_dirs_are_private() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("new/root");
        let store = Store::open(&root).unwrap();
        for sub in ["", "blobs", "blobs/sha256", "layers", "tmp", "cache"] {
            let mode = fs::metadata(root.join(sub)).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{sub:?}");
        }
        assert_eq!(store.warning(), None);
        let scratch = fs::metadata(store.scratch()).unwrap().mode() & 0o7777;
        assert_eq!(scratch, 0o700);
    }

    #[test]
    fn a_root_others_can_enter_is_left_alone_with_a_warning() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o751)).unwrap();
        let store = Store::open(root.path()).unwrap();
        let warning = store.warning().expect("a warning");
        assert!(warning.contains("mode 751"), "{warning}");
        assert!(
            warning.contains(&format!("chmod 700 {}", store.root().display())),
            "{warning}"
        );
        let mode = fs::metadata(root.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o751);
    }

    #[test]
    fn scratch_dirs_of_dead_processes_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let first = Store::open(root.path()).unwrap();
        std::fs::write(first.scratch().join("left"), "x").unwrap();
        // A killed process's dir: named like one, but nobody holds its lock.
        let dead = root
            .path()
            .join("tmp")
            .join(format!("{SCRATCH_PREFIX}dead"));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("secret"), "x").unwrap();
        let second = Store::open(root.path()).unwrap();
        assert!(!dead.exists());
        assert!(
            first.scratch().join("left").exists(),
            "a live dir was removed"
        );
        let first_dir = first.scratch().to_path_buf();
        drop(first);
        assert!(!first_dir.exists());
        drop(second);
        assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    }
}
