//! The build cache: what an op produced, by its cache key (see `key.rs`), so that a later
//! build with the same key runs nothing and reuses the stored layer.
//!
//! [`CacheBackend`] is the seam; [`LocalCache`] keeps records in the kiln root:
//!
//! - `<root>/cache/records/<hex of the key>.json`, one small JSON document per key:
//!   ```json
//!   {"layer": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
//!              "digest": "sha256:...", "size": 1234, "diff_id": "sha256:..."},
//!    "created": "2026-01-02T03:04:05Z", "last_used": "2026-01-09T10:11:12Z"}
//!   ```
//!   `layer` is `null` for an op that changed nothing (a RUN that wrote no file, a WORKDIR
//!   that existed). The layer's blob is `<root>/blobs/sha256/<hex>` and its extracted dir is
//!   `<root>/layers/<hex of diff_id>`. `created` is when the op ran (the image history shows
//!   it, so a rebuild from the cache gives the same image); `last_used` is the last build that
//!   used the record. A record is written by a temporary name in the build's scratch dir and
//!   a rename, after its blob and layer dir were stored (by rename as well), so a record on
//!   disk is always whole and never points to a layer that was not whole when it was written.
//! - `<root>/cache/locks/<hex of the key>.lock`: held (`flock`) by the build that runs the op,
//!   so that a second build needing the same op waits and then finds the record.
//!
//! Beside them, `<root>/cache/context/` holds one record per build context of what its files
//! hashed to (see `context_record.rs`), so that computing a COPY's key reads only the files
//! whose stat changed.
//!
//! A record is only a hit while its blob exists and hashes to the recorded digest, and its
//! layer dir exists: one that is unreadable, or whose layer went missing or is damaged, is
//! reported as [`Lookup::Unusable`] (the build warns, runs the op again and writes the
//! record anew).

use std::fs::{self, DirBuilder, File};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, DigestReader};
use serde::{Deserialize, Serialize};

use crate::key::CacheKey;
use crate::{BuildError, Store};

/// What an op produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub layer: Option<RecordLayer>,
    /// The step as shown when it ran (`RUN make`), for `kiln du`; absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When the op ran (RFC 3339).
    pub created: String,
    /// When a build last used this record (RFC 3339).
    pub last_used: String,
}

/// The layer an op added: its blob and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLayer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

impl RecordLayer {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, self.digest.clone(), self.size)
    }
}

/// The answer to a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Record),
    /// A record of a registry cache (`--cache-from`): its layer's blob is fetched from
    /// there, and only if a step must run on it or an image needs it.
    Remote(Record, std::sync::Arc<crate::BaseRef>),
    Miss,
    /// There is a record, but it cannot be used; the text says why, for a warning.
    Unusable(String),
}

/// Held while an op runs, so that another build (or thread) needing the same key waits for
/// its record instead of doing the same work.
pub struct KeyLock {
    _file: File,
}

/// Where records are kept.
pub trait CacheBackend: Sync {
    fn load(&self, key: &CacheKey) -> Lookup;
    fn save(&self, key: &CacheKey, record: &Record) -> Result<(), BuildError>;
    /// Takes the lock of `key`, calling `waiting` first if another holder makes it wait.
    fn lock(&self, key: &CacheKey, waiting: &dyn Fn()) -> Result<KeyLock, BuildError>;
}

/// A record is a few hundred bytes; anything much larger is not one of kiln's.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// Records in the kiln root (see the module docs for the layout).
pub struct LocalCache<'s> {
    store: &'s Store,
    records: PathBuf,
    locks: PathBuf,
}

impl<'s> LocalCache<'s> {
    pub fn open(store: &'s Store) -> Result<LocalCache<'s>, BuildError> {
        let records = store.root().join("cache/records");
        let locks = store.root().join("cache/locks");
        let mut private = DirBuilder::new();
        private.recursive(true).mode(0o700);
        for dir in [&records, &locks] {
            private
                .create(dir)
                .map_err(BuildError::io(format!("creating {}", dir.display())))?;
        }
        Ok(LocalCache {
            store,
            records,
            locks,
        })
    }

    fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.records.join(format!("{}.json", key.hex()))
    }

    /// Why `record` cannot be used, if it cannot.
    fn unusable(&self, record: &Record) -> Option<String> {
        let layer = record.layer.as_ref()?;
        let blob = self.store.blob_path(&layer.digest);
        match fs::metadata(&blob) {
            Err(e) => return Some(format!("its blob {} is missing ({e})", blob.display())),
            Ok(meta) if !meta.is_file() || meta.len() != layer.size => {
                return Some(format!(
                    "its blob {} is {} bytes, not the {} the record says",
                    blob.display(),
                    meta.len(),
                    layer.size
                ));
            }
            // A blob damaged in place keeps its size: only its bytes tell.
            Ok(_) => match hash_file(&blob) {
                Ok(digest) if digest == layer.digest => {}
                Ok(digest) => {
                    return Some(format!(
                        "its blob {} is damaged: it hashes to {digest}",
                        blob.display()
                    ));
                }
                Err(e) => return Some(format!("its blob {} cannot be read ({e})", blob.display())),
            },
        }
        let dir = self.store.layer_dir(&layer.diff_id);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => None,
            _ => Some(format!("its layer dir {} is missing", dir.display())),
        }
    }
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut reader = DigestReader::new(File::open(path)?);
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(reader.finish().0)
}

pub(crate) fn read_record(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_RECORD_BYTES >> 10
        )));
    }
    Ok(Some(bytes))
}

impl CacheBackend for LocalCache<'_> {
    fn load(&self, key: &CacheKey) -> Lookup {
        let path = self.record_path(key);
        let bytes = match read_record(&path) {
            Ok(None) => return Lookup::Miss,
            Ok(Some(bytes)) => bytes,
            Err(e) => {
                return Lookup::Unusable(format!(
                    "the cache record {} cannot be read: {e}",
                    path.display()
                ));
            }
        };
        let record: Record = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(e) => {
                return Lookup::Unusable(format!(
                    "the cache record {} is not a record: {e}",
                    path.display()
                ));
            }
        };
        match self.unusable(&record) {
            Some(why) => Lookup::Unusable(format!(
                "the cache record {} cannot be used: {why}",
                path.display()
            )),
            None => Lookup::Hit(record),
        }
    }

    fn save(&self, key: &CacheKey, record: &Record) -> Result<(), BuildError> {
        let path = self.record_path(key);
        let failed = BuildError::io(format!("writing the cache record {}", path.display()));
        let tmp = self.store.temp_path("record-")?;
        let bytes = serde_json::to_vec(record).expect("records always serialise");
        let written = File::create(&tmp).and_then(|mut file| file.write_all(&bytes));
        if let Err(e) = written {
            return Err(failed(e));
        }
        tmp.persist(&path).map_err(|e| failed(e.error))
    }

    fn lock(&self, key: &CacheKey, waiting: &dyn Fn()) -> Result<KeyLock, BuildError> {
        let path = self.locks.join(format!("{}.lock", key.hex()));
        let failed = BuildError::io(format!("locking {}", path.display()));
        let file = File::create(&path).map_err(BuildError::io(format!(
            "creating the lock {}",
            path.display()
        )))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                waiting();
                file.lock().map_err(failed)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
        Ok(KeyLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_oci::media;

    fn layer(store: &Store, content: &[u8]) -> RecordLayer {
        let digest = Digest::of(content);
        fs::write(store.blob_path(&digest), content).unwrap();
        let diff_id = Digest::of(b"diff");
        fs::create_dir_all(store.layer_dir(&diff_id)).unwrap();
        RecordLayer {
            media_type: media::OCI_LAYER_GZIP.into(),
            digest,
            size: content.len() as u64,
            diff_id,
        }
    }

    #[test]
    fn records_round_trip_and_are_hits_while_their_layer_is_whole() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let cache = LocalCache::open(&store).unwrap();
        let key = CacheKey::of("test", &"a");
        assert!(matches!(cache.load(&key), Lookup::Miss));
        let record = Record {
            layer: Some(layer(&store, b"blob")),
            description: Some("RUN make".into()),
            created: "2026-01-01T00:00:00Z".into(),
            last_used: "2026-01-02T00:00:00Z".into(),
        };
        cache.save(&key, &record).unwrap();
        match cache.load(&key) {
            Lookup::Hit(found) => assert_eq!(found, record),
            other => panic!("{other:?}"),
        }

        // A blob cut short.
        let blob = store.blob_path(&record.layer.as_ref().unwrap().digest);
        fs::write(&blob, b"blo").unwrap();
        match cache.load(&key) {
            Lookup::Unusable(why) => assert!(why.contains("3 bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
        fs::write(&blob, b"blob").unwrap();
        // A layer dir gone.
        fs::remove_dir(store.layer_dir(&record.layer.as_ref().unwrap().diff_id)).unwrap();
        match cache.load(&key) {
            Lookup::Unusable(why) => assert!(why.contains("layer dir"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Not JSON at all.
        fs::write(cache.record_path(&key), b"{\"layer\": nul").unwrap();
        match cache.load(&key) {
            Lookup::Unusable(why) => assert!(why.contains("not a record"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_second_holder_of_a_key_waits() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let cache = LocalCache::open(&store).unwrap();
        let key = CacheKey::of("test", &"b");
        let held = cache.lock(&key, &|| panic!("nobody holds it yet")).unwrap();
        let waited = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _second = cache
                    .lock(&key, &|| {
                        waited.store(true, std::sync::atomic::Ordering::SeqCst)
                    })
                    .unwrap();
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
    }
}
