use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
///
/// A store is held ([`Hold`]) while it is open: builds share the root, `kiln prune` has it
/// alone, so that prune never removes what a running build uses.
pub struct Store {
    root: PathBuf,
    scratch: LockedDir,
    warning: Option<String>,
    _held: RootLock,
}

/// The prefix of a process's scratch dir under `<root>/tmp`.
const SCRATCH_PREFIX: &str = "build-";

/// How a process holds the root while its [`Store`] is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// A build: any number of builds share the root.
    Shared,
    /// `kiln prune`: alone, once every build that holds the root has ended. New builds wait
    /// from the moment prune asks, so a steady stream of builds cannot keep it out. With a
    /// timeout, it gives up when builds still hold the root after that long.
    Exclusive { timeout: Option<Duration> },
}

/// `<root>/lock`, held shared by builds and exclusively by prune, and `<root>/lock.gate`,
/// held exclusively by prune from the moment it asks: a build takes the gate (shared) only
/// for as long as it takes to get `lock`, so builds that arrive while prune waits queue
/// behind it instead of starving it (`flock` favours nobody).
struct RootLock {
    _lock: File,
    _gate: Option<File>,
}

/// How often prune looks again whether the builds holding the root have ended, when it waits
/// with a timeout (`flock` itself cannot time out).
const BUSY_POLL: Duration = Duration::from_millis(50);

impl RootLock {
    fn take(root: &Path, hold: Hold, waiting: &dyn Fn()) -> Result<RootLock, BuildError> {
        let open = |name: &str| {
            let path = root.join(name);
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(BuildError::io(format!(
                    "opening the lock {}",
                    path.display()
                )))
        };
        let failed = |name: &str| BuildError::io(format!("locking {}", root.join(name).display()));
        let gate = open("lock.gate")?;
        let lock = open("lock")?;
        match hold {
            Hold::Shared => {
                match gate.try_lock_shared() {
                    Ok(()) => {}
                    Err(fs::TryLockError::WouldBlock) => {
                        waiting();
                        gate.lock_shared().map_err(failed("lock.gate"))?;
                    }
                    Err(fs::TryLockError::Error(e)) => return Err(failed("lock.gate")(e)),
                }
                lock.lock_shared().map_err(failed("lock"))?;
                // Builds hold only `lock` from here on; the gate was a turnstile.
                Ok(RootLock {
                    _lock: lock,
                    _gate: None,
                })
            }
            Hold::Exclusive { timeout } => {
                let deadline = timeout.map(|t| Instant::now() + t);
                let mut warned = false;
                for (file, name) in [(&gate, "lock.gate"), (&lock, "lock")] {
                    loop {
                        match file.try_lock() {
                            Ok(()) => break,
                            Err(fs::TryLockError::WouldBlock) => {}
                            Err(fs::TryLockError::Error(e)) => return Err(failed(name)(e)),
                        }
                        if !std::mem::replace(&mut warned, true) {
                            waiting();
                        }
                        match deadline {
                            None => {
                                file.lock().map_err(failed(name))?;
                                break;
                            }
                            Some(deadline) if Instant::now() >= deadline => {
                                return Err(BuildError::RootBusy {
                                    root: root.to_path_buf(),
                                    waited: timeout.unwrap_or_default(),
                                });
                            }
                            Some(_) => std::thread::sleep(BUSY_POLL),
                        }
                    }
                }
                Ok(RootLock {
                    _lock: lock,
                    _gate: Some(gate),
                })
            }
        }
    }
}

impl Store {
    /// Opens the store for a build (see [`Hold::Shared`]), waiting quietly while a prune
    /// runs.
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        Store::open_holding(root, Hold::Shared, &|| {})
    }

    /// Opens the store holding the root as `hold` says; `waiting` is called once if another
    /// process makes it wait.
    pub fn open_holding(root: &Path, hold: Hold, waiting: &dyn Fn()) -> Result<Store, BuildError> {
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
        let held = RootLock::take(&root, hold, waiting)?;
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
            _held: held,
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

    pub(crate) fn commit_blob(
        &self,
        tmp: tempfile::TempPath,
        digest: &Digest,
    ) -> Result<(), BuildError> {
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
        self.put_layer_with(
            || format!("writing a layer from {}", dir.display()),
            |out| kiln_snapshot::write_layer(dir, out, opts),
            |_| Ok(()),
        )
    }

    /// Stores the layer blob `write` streams into the writer it is given (and describes),
    /// once `accept` takes its description; `context` names the work in errors. The blob
    /// appears in the store whole, with its diff_id noted, or not at all.
    pub(crate) fn put_layer_with(
        &self,
        context: impl FnOnce() -> String,
        write: impl FnOnce(&mut dyn Write) -> Result<LayerBlob, kiln_snapshot::SnapshotError>,
        accept: impl FnOnce(&LayerBlob) -> Result<(), BuildError>,
    ) -> Result<LayerBlob, BuildError> {
        let tmp = self.temp_path("layer-")?;
        let file = File::create(&tmp).map_err(BuildError::io("creating a layer blob"))?;
        let mut out = BufWriter::new(file);
        let blob = write(&mut out).map_err(|e| BuildError::Io {
            context: context(),
            source: std::io::Error::other(e),
        })?;
        out.flush()
            .map_err(BuildError::io("writing a layer blob"))?;
        drop(out);
        accept(&blob)?;
        self.commit_blob(tmp, &blob.digest)?;
        self.note_diff_id(&blob.digest, &blob.diff_id)?;
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

    /// The diff_id kiln found `blob` to decompress to (by extracting it, checking it, or
    /// writing it), if it did: a layer dir stands for a blob only under that diff_id, so
    /// an image or cache that pairs a blob with another layer's diff_id never gets the dir
    /// of another build's layer.
    pub fn checked_diff_id(&self, blob: &Digest) -> Option<Digest> {
        let text = fs::read_to_string(self.diff_id_note(blob)).ok()?;
        text.trim().parse().ok()
    }

    /// Notes that `blob` decompresses to `diff_id` (see [`Store::checked_diff_id`]).
    pub fn note_diff_id(&self, blob: &Digest, diff_id: &Digest) -> Result<(), BuildError> {
        let note = self.diff_id_note(blob);
        self.write_record(&note, diff_id.to_string().as_bytes(), "noting a diff_id")
    }

    /// Writes a small record under the root (`what` in errors): under a temporary name,
    /// then renamed, so a reader finds it whole or not at all.
    pub(crate) fn write_record(
        &self,
        path: &Path,
        bytes: &[u8],
        what: &str,
    ) -> Result<(), BuildError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(BuildError::io(what.to_string()))?;
        }
        let tmp = self.temp_path("record-")?;
        fs::write(&tmp, bytes).map_err(BuildError::io(what.to_string()))?;
        tmp.persist(path)
            .map_err(|e| BuildError::io(what.to_string())(e.error))
    }

    fn diff_id_note(&self, blob: &Digest) -> PathBuf {
        self.root.join("cache/diff-ids").join(blob.hex())
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
    fn prune_waits_for_builds_or_gives_up_after_its_timeout() {
        let root = tempfile::tempdir().unwrap();
        let build = Store::open(root.path()).unwrap();
        let waited = std::sync::atomic::AtomicBool::new(false);
        let note = || waited.store(true, std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        let busy = Store::open_holding(
            root.path(),
            Hold::Exclusive {
                timeout: Some(Duration::from_millis(300)),
            },
            &note,
        );
        match busy {
            Err(BuildError::RootBusy { root: at, waited }) => {
                assert_eq!(at, root.path().canonicalize().unwrap());
                assert_eq!(waited, Duration::from_millis(300));
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("prune got the root while a build held it"),
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
        // Without a timeout, prune waits for the build to end.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                drop(build);
            });
            let prune = Store::open_holding(root.path(), Hold::Exclusive { timeout: None }, &|| {})
                .unwrap();
            assert!(started.elapsed() >= Duration::from_millis(500));
            drop(prune);
        });
    }

    #[test]
    fn a_build_arriving_while_prune_waits_queues_behind_prune() {
        use std::sync::Mutex;
        let root = tempfile::tempdir().unwrap();
        let first = Store::open(root.path()).unwrap();
        let events = Mutex::new(Vec::new());
        let event = |what: &str| events.lock().unwrap().push(what.to_string());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let prune =
                    Store::open_holding(root.path(), Hold::Exclusive { timeout: None }, &|| {
                        event("prune waits")
                    })
                    .unwrap();
                event("prune runs");
                std::thread::sleep(Duration::from_millis(200));
                event("prune ends");
                drop(prune);
            });
            std::thread::sleep(Duration::from_millis(200));
            scope.spawn(|| {
                let second =
                    Store::open_holding(root.path(), Hold::Shared, &|| event("build waits"))
                        .unwrap();
                event("build runs");
                drop(second);
            });
            std::thread::sleep(Duration::from_millis(200));
            event("first build ends");
            drop(first);
        });
        assert_eq!(
            events.into_inner().unwrap(),
            [
                "prune waits",
                "build waits",
                "first build ends",
                "prune runs",
                "prune ends",
                "build runs"
            ]
        );
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
