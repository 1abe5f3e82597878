//! What the kiln root holds, and freeing it: `kiln du` and `kiln prune`, as buildx has them.
//!
//! The root's content is a set of *entries*, each holding *objects* (blobs in
//! `blobs/sha256/`, layer dirs in `layers/`) that several entries may share:
//!
//! | type | what | kept by a plain `kiln prune` |
//! |---|---|---|
//! | `regular` | a step's cache record (`cache/records/<key>.json`, see `cache.rs`) with its layer's blob and dir | no |
//! | `exec.cachemount` | a `RUN --mount=type=cache` dir (`cache/<sha256 of its id>`, last used when `<that>.used` was touched) | no |
//! | `image` | a base image a build used (`cache/images/<manifest>.json`, written by every build) with its layer blobs and dirs | yes (`--all` removes it) |
//! | `internal` | a build context's record of file digests (`cache/context/`) | yes (`--all` removes it) |
//! | `unreferenced` | what no entry holds: configs and manifests of built and base images, layers of steps whose record is gone, lock files of such steps, leftovers of killed builds | no |
//!
//! An entry's size is what only it holds (its record and the objects no other entry holds);
//! what several hold is counted once, as shared. Sizes are the disk blocks used, counting a
//! hard-linked file once, as `du` counts them.
//!
//! Prune removes entries least recently used first. It holds the root exclusively (see
//! [`Hold`](crate::store::Hold)), so no build runs meanwhile, and it removes an entry's
//! record before the objects that only it held, and an object only once no remaining entry
//! holds it: a prune killed at any moment leaves records whose layers are whole, and
//! objects that nothing holds, which the next prune removes. A dir is first renamed into the
//! prune's scratch dir, so a half-removed dir is never seen under its name; a killed
//! prune's scratch dir is removed by the next kiln that opens the root.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_oci::Digest;
use serde::{Deserialize, Serialize, Serializer};

use crate::cache::{Record, read_record};
use crate::plan::{OpKind, Plan, Source};
use crate::units::{UnitError, human_ago, human_size, parse_duration};
use crate::{BuildError, Store, timefmt};

/// What kind of cache an entry is, named as BuildKit names its record types where one fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EntryKind {
    #[serde(rename = "regular")]
    Step,
    #[serde(rename = "exec.cachemount")]
    CacheMount,
    #[serde(rename = "image")]
    BaseImage,
    #[serde(rename = "internal")]
    Internal,
    #[serde(rename = "unreferenced")]
    Unreferenced,
}

const KINDS: [EntryKind; 5] = [
    EntryKind::Step,
    EntryKind::CacheMount,
    EntryKind::BaseImage,
    EntryKind::Internal,
    EntryKind::Unreferenced,
];

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Step => "regular",
            EntryKind::CacheMount => "exec.cachemount",
            EntryKind::BaseImage => "image",
            EntryKind::Internal => "internal",
            EntryKind::Unreferenced => "unreferenced",
        }
    }

    /// Whether a plain `kiln prune` removes it; base images and internal records only go
    /// with `--all`.
    pub fn reclaimable(self) -> bool {
        !matches!(self, EntryKind::BaseImage | EntryKind::Internal)
    }
}

/// One entry of the root.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// The key of a step or a cache mount, the manifest digest of an image, `unreferenced`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Whether a plain `kiln prune` removes it.
    pub reclaimable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(serialize_with = "as_rfc3339")]
    pub created: Option<i64>,
    /// When a build last used it (seconds since the epoch); unknown counts as long ago.
    #[serde(serialize_with = "as_rfc3339")]
    pub last_used: Option<i64>,
    /// Bytes that only this entry holds (what removing it alone frees).
    pub size: u64,
    /// Whether it holds objects that other entries hold too (not counted in `size`).
    pub shared: bool,
    /// Paths that are the entry itself (its record, its lock, a cache mount's dir), removed
    /// first, and their bytes.
    #[serde(skip)]
    own: Vec<PathBuf>,
    #[serde(skip)]
    own_bytes: u64,
    /// The objects it holds (indices into [`Usage::objects`]).
    #[serde(skip)]
    objects: Vec<usize>,
}

fn as_rfc3339<S: Serializer>(time: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    time.map(timefmt::rfc3339).serialize(s)
}

/// A blob or layer dir, with how many entries hold it.
#[derive(Debug)]
struct Object {
    path: PathBuf,
    size: u64,
    holders: usize,
}

/// Everything the root holds.
#[derive(Debug)]
pub struct Usage {
    pub entries: Vec<Entry>,
    objects: Vec<Object>,
}

/// The totals `kiln du` ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Bytes held by more than one entry (counted once).
    pub shared: u64,
    /// Bytes held by one entry: the sum of the entries' sizes.
    pub private: u64,
    /// What a plain `kiln prune` would free, at least.
    pub reclaimable: u64,
    pub total: u64,
}

/// A base image a build used, recorded so that its blobs and layer dirs are entries of
/// their own with a last use (`cache/images/<hex of manifest digest>.json`).
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    reference: String,
    platform: String,
    manifest: Digest,
    layers: Vec<ImageLayer>,
    created: String,
    last_used: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageLayer {
    digest: Digest,
    diff_id: Digest,
}

/// Where records of base images live.
fn images_dir(root: &Path) -> PathBuf {
    root.join("cache/images")
}

/// Records (or refreshes the last use of) every base image in `plan`, so that `kiln du` and
/// `kiln prune` see its layers as an entry used now.
pub(crate) fn note_base_images(store: &Store, plan: &Plan) -> Result<(), BuildError> {
    let dir = images_dir(store.root());
    fs::create_dir_all(&dir).map_err(BuildError::io(format!("creating {}", dir.display())))?;
    let now = timefmt::rfc3339(timefmt::now_secs());
    let mut seen = HashSet::new();
    for op in &plan.ops {
        let OpKind::Source(Source::Image(image)) = &op.kind else {
            continue;
        };
        if !seen.insert(image.manifest.clone()) {
            continue;
        }
        let path = dir.join(format!("{}.json", image.manifest.hex()));
        let created = read_record(&path)
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<ImageRecord>(&bytes).ok())
            .map_or_else(|| now.clone(), |old| old.created);
        let record = ImageRecord {
            reference: image.source.to_string(),
            platform: image.platform.to_string(),
            manifest: image.manifest.clone(),
            layers: image
                .layers
                .iter()
                .map(|(blob, diff_id)| ImageLayer {
                    digest: blob.digest.clone(),
                    diff_id: diff_id.clone(),
                })
                .collect(),
            created,
            last_used: now.clone(),
        };
        let failed = || BuildError::io(format!("writing {}", path.display()));
        let tmp = store.temp_path("image-record-")?;
        fs::write(
            &tmp,
            serde_json::to_vec(&record).expect("records always serialise"),
        )
        .map_err(failed())?;
        tmp.persist(&path).map_err(|e| failed()(e.error))?;
    }
    Ok(())
}

/// Notes that a step mounts the cache dir `dir` now: `kiln du` shows it as the cache's last
/// use, and `kiln prune --filter until=` and `--keep-storage` go by it. The time is the
/// mtime of `<dir>.used` beside it, not the dir's own atime or mtime: a step sees those, and
/// reading the dir (as `kiln du` does) moves its atime. Best effort: a cache whose use
/// cannot be noted only looks older than it is.
pub(crate) fn mark_used(dir: &Path) {
    let marker = dir.with_extension("used");
    let _ = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(marker)
        .and_then(|file| file.set_modified(std::time::SystemTime::now()));
}

/// Adds up disk blocks, each inode once.
#[derive(Default)]
struct Sizer {
    /// Files with several links already counted, by (device, inode).
    seen: HashSet<(u64, u64)>,
}

impl Sizer {
    /// The bytes `path` and everything below it use on disk. What vanishes meanwhile (a
    /// build renaming its own files while `kiln du` reads) counts as nothing.
    fn size(&mut self, path: &Path) -> u64 {
        let mut total = 0;
        let mut pending = vec![path.to_path_buf()];
        while let Some(path) = pending.pop() {
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_dir() && meta.nlink() > 1 && !self.seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir()
                && let Ok(children) = fs::read_dir(&path)
            {
                pending.extend(children.flatten().map(|child| child.path()));
            }
        }
        total
    }
}

/// The names and paths in `dir`; none when it does not exist.
fn children(dir: &Path) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BuildError::io(format!("reading {}", dir.display()))(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BuildError::io(format!("reading {}", dir.display())))?;
        found.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    found.sort();
    Ok(found)
}

fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How much of an unreadable record's error an entry's description quotes.
const DESCRIPTION_CHARS: usize = 200;

fn cut(text: String) -> String {
    match text.char_indices().nth(DESCRIPTION_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Reads what the root holds, while it is built from or not.
struct Reader {
    sizer: Sizer,
    objects: Vec<Object>,
    blobs: HashMap<String, usize>,
    layers: HashMap<String, usize>,
    entries: Vec<Entry>,
}

impl Reader {
    /// Adds every child of `dir` as an object; returns them by name.
    fn objects_in(&mut self, dir: &Path) -> Result<HashMap<String, usize>, BuildError> {
        let mut by_name = HashMap::new();
        for (name, path) in children(dir)? {
            let size = self.sizer.size(&path);
            self.objects.push(Object {
                path,
                size,
                holders: 0,
            });
            by_name.insert(name, self.objects.len() - 1);
        }
        Ok(by_name)
    }

    /// The objects of a layer (those on disk).
    fn layer_objects(&self, digest: &Digest, diff_id: &Digest) -> Vec<usize> {
        let blob = self.blobs.get(digest.hex());
        let dir = self.layers.get(diff_id.hex());
        blob.into_iter().chain(dir).copied().collect()
    }

    fn entry(&mut self, id: String, kind: EntryKind, own: Vec<PathBuf>) -> &mut Entry {
        let own_bytes = own.iter().map(|p| self.sizer.size(p)).sum();
        self.entries.push(Entry {
            id,
            kind,
            reclaimable: kind.reclaimable(),
            description: None,
            created: None,
            last_used: None,
            size: 0,
            shared: false,
            own,
            own_bytes,
            objects: Vec::new(),
        });
        self.entries.last_mut().expect("just pushed")
    }

    fn steps(&mut self, root: &Path, garbage: &mut Vec<PathBuf>) -> Result<(), BuildError> {
        let locks = root.join("cache/locks");
        let mut keys = HashSet::new();
        for (name, path) in children(&root.join("cache/records"))? {
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            keys.insert(key.to_string());
            let lock = locks.join(format!("{key}.lock"));
            let mut own = vec![path.clone()];
            if lock.exists() {
                own.push(lock);
            }
            let record = read_record(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Record>(&bytes.unwrap_or_default())
                        .map_err(|e| e.to_string())
                });
            let objects = match &record {
                Ok(Record {
                    layer: Some(layer), ..
                }) => self.layer_objects(&layer.digest, &layer.diff_id),
                _ => Vec::new(),
            };
            let entry = self.entry(key.to_string(), EntryKind::Step, own);
            entry.objects = objects;
            match record {
                Ok(record) => {
                    entry.description = record.description;
                    entry.created = timefmt::parse_rfc3339(&record.created);
                    entry.last_used = timefmt::parse_rfc3339(&record.last_used);
                }
                Err(e) => entry.description = Some(cut(format!("unreadable record: {e}"))),
            }
        }
        // The locks of steps that have no record (they failed, or their record was pruned).
        for (name, path) in children(&locks)? {
            if !name.strip_suffix(".lock").is_some_and(|k| keys.contains(k)) {
                garbage.push(path);
            }
        }
        Ok(())
    }

    fn images(&mut self, root: &Path) -> Result<(), BuildError> {
        for (name, path) in children(&images_dir(root))? {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let record = read_record(&path)
                .ok()
                .flatten()
                .and_then(|bytes| serde_json::from_slice::<ImageRecord>(&bytes).ok());
            let objects = record.as_ref().map_or_else(Vec::new, |r| {
                r.layers
                    .iter()
                    .flat_map(|l| self.layer_objects(&l.digest, &l.diff_id))
                    .collect()
            });
            let entry = self.entry(id.to_string(), EntryKind::BaseImage, vec![path]);
            entry.objects = objects;
            if let Some(record) = record {
                entry.description =
                    Some(cut(format!("{} ({})", record.reference, record.platform)));
                entry.created = timefmt::parse_rfc3339(&record.created);
                entry.last_used = timefmt::parse_rfc3339(&record.last_used);
            }
        }
        Ok(())
    }

    /// Cache mounts and what else lies in `cache/` (see `mounts.rs` for their layout).
    fn cache_dirs(&mut self, root: &Path, garbage: &mut Vec<PathBuf>) -> Result<(), BuildError> {
        let cache = root.join("cache");
        for (name, path) in children(&cache)? {
            if is_key(&name) {
                let mut own = vec![path.clone()];
                own.extend(
                    ["lock", "used"]
                        .map(|ext| path.with_extension(ext))
                        .into_iter()
                        .filter(|p| p.exists()),
                );
                // See `mark_used`; a cache never marked counts from when it was made.
                let used = fs::metadata(path.with_extension("used"))
                    .or_else(|_| fs::symlink_metadata(&path))
                    .ok()
                    .map(|m| m.mtime());
                let entry = self.entry(name, EntryKind::CacheMount, own);
                entry.last_used = used;
            } else if name.rsplit_once('.').is_some_and(|(key, ext)| {
                is_key(key) && matches!(ext, "lock" | "used") && !cache.join(key).exists()
            }) || name.starts_with(".new-")
            {
                garbage.push(path);
            }
        }
        for (name, path) in children(&cache.join("context"))? {
            let modified = fs::symlink_metadata(&path).ok().map(|m| m.mtime());
            let entry = self.entry(name, EntryKind::Internal, vec![path]);
            entry.description = Some("build context record".into());
            entry.last_used = modified;
        }
        Ok(())
    }
}

impl Usage {
    /// Reads what `root` holds. A root that does not exist holds nothing.
    pub fn read(root: &Path) -> Result<Usage, BuildError> {
        let mut reader = Reader {
            sizer: Sizer::default(),
            objects: Vec::new(),
            blobs: HashMap::new(),
            layers: HashMap::new(),
            entries: Vec::new(),
        };
        reader.blobs = reader.objects_in(&root.join("blobs/sha256"))?;
        reader.layers = reader.objects_in(&root.join("layers"))?;
        let mut garbage = Vec::new();
        reader.steps(root, &mut garbage)?;
        reader.images(root)?;
        reader.cache_dirs(root, &mut garbage)?;
        let Reader {
            objects,
            mut entries,
            mut sizer,
            ..
        } = reader;
        let mut usage = Usage {
            entries: Vec::new(),
            objects,
        };
        for entry in &entries {
            for &object in &entry.objects {
                usage.objects[object].holders += 1;
            }
        }
        let orphans: Vec<usize> = (0..usage.objects.len())
            .filter(|&o| usage.objects[o].holders == 0)
            .collect();
        if !orphans.is_empty() || !garbage.is_empty() {
            for &object in &orphans {
                usage.objects[object].holders = 1;
            }
            let own_bytes = garbage.iter().map(|p| sizer.size(p)).sum();
            entries.push(Entry {
                id: "unreferenced".into(),
                kind: EntryKind::Unreferenced,
                reclaimable: true,
                description: Some(
                    "held by no entry: configs and manifests of built and base images, layers \
                     of steps whose record is gone, leftovers of killed builds"
                        .into(),
                ),
                created: None,
                last_used: None,
                size: 0,
                shared: false,
                own: garbage,
                own_bytes,
                objects: orphans,
            });
        }
        for entry in &mut entries {
            let (private, shared): (Vec<usize>, Vec<usize>) = entry
                .objects
                .iter()
                .partition(|&&o| usage.objects[o].holders == 1);
            entry.size =
                entry.own_bytes + private.iter().map(|&o| usage.objects[o].size).sum::<u64>();
            entry.shared = !shared.is_empty();
        }
        entries.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
        usage.entries = entries;
        Ok(usage)
    }

    pub fn summary(&self) -> Summary {
        let shared = self
            .objects
            .iter()
            .filter(|o| o.holders > 1)
            .map(|o| o.size)
            .sum();
        let private = self.entries.iter().map(|e| e.size).sum();
        let reclaimable = self
            .entries
            .iter()
            .filter(|e| e.reclaimable)
            .map(|e| e.size)
            .sum();
        Summary {
            shared,
            private,
            reclaimable,
            total: shared + private,
        }
    }

    /// Removes entry `index` and the objects only it held; returns the bytes freed.
    fn remove(&mut self, index: usize, trash: &Path) -> Result<u64, BuildError> {
        let entry = &self.entries[index];
        let mut freed = entry.own_bytes;
        let (own, objects) = (entry.own.clone(), entry.objects.clone());
        // The record first: from here on no build can take the entry for a hit, and what it
        // held is unreferenced if prune stops now.
        for path in &own {
            remove_path(path, trash)?;
        }
        for object in objects {
            let object = &mut self.objects[object];
            object.holders -= 1;
            if object.holders == 0 {
                remove_path(&object.path, trash)?;
                freed += object.size;
            }
        }
        Ok(freed)
    }
}

/// Removes a file, or a dir by renaming it into `trash` first, so that it is never seen
/// half-removed under its name. Gone already is fine.
fn remove_path(path: &Path, trash: &Path) -> Result<(), BuildError> {
    let failed = || BuildError::io(format!("removing {}", path.display()));
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed()(e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(failed());
    }
    let name = path.file_name().expect("store paths have names");
    let moved = trash.join(name);
    fs::rename(path, &moved).map_err(failed())?;
    fs::remove_dir_all(&moved).map_err(failed())
}

/// Which entries `kiln du` lists and `kiln prune` removes, from `--filter KEY=VALUE`s:
/// `until` at most once; `id` and `type` may repeat (any of their values matches); every
/// key given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only entries not used for this long.
    pub until: Option<Duration>,
    /// Only entries whose id starts with one of these.
    pub ids: Vec<String>,
    /// Only entries of one of these types.
    pub kinds: Vec<EntryKind>,
}

/// Why a `--filter` cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`{0}` is not KEY=VALUE (e.g. until=24h)")]
    NotKeyValue(String),
    #[error("unknown filter key `{0}` (kiln's filter keys: until, id, type)")]
    UnknownKey(String),
    #[error("until: {0}")]
    Until(UnitError),
    #[error("until is given twice ({0} and {1}); give it once")]
    UntilTwice(String, String),
    #[error("unknown type `{0}` (types: regular, exec.cachemount, image, internal, unreferenced)")]
    UnknownType(String),
}

impl Filters {
    pub fn parse(specs: &[String]) -> Result<Filters, FilterError> {
        let mut filters = Filters::default();
        let mut until_text: Option<&str> = None;
        for spec in specs {
            let shown = cut(spec.clone());
            let Some((key, value)) = spec.split_once('=') else {
                return Err(FilterError::NotKeyValue(shown));
            };
            match key.trim() {
                "until" => {
                    if let Some(first) = until_text {
                        return Err(FilterError::UntilTwice(
                            cut(first.into()),
                            cut(value.into()),
                        ));
                    }
                    until_text = Some(value);
                    filters.until = Some(parse_duration(value).map_err(FilterError::Until)?);
                }
                "id" => filters.ids.push(value.trim().to_string()),
                "type" => filters.kinds.push(
                    KINDS
                        .into_iter()
                        .find(|k| k.name() == value.trim())
                        .ok_or_else(|| FilterError::UnknownType(cut(value.into())))?,
                ),
                other => return Err(FilterError::UnknownKey(cut(other.into()))),
            }
        }
        Ok(filters)
    }

    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }

    /// Whether `entry` passes, at `now` (seconds since the epoch). An entry whose last use
    /// is unknown counts as used long ago.
    pub fn matches(&self, entry: &Entry, now: i64) -> bool {
        let old_enough = self.until.is_none_or(|until| {
            entry
                .last_used
                .is_none_or(|used| now.saturating_sub(used) >= until.as_secs() as i64)
        });
        old_enough
            && (self.ids.is_empty() || self.ids.iter().any(|id| entry.id.starts_with(id)))
            && (self.kinds.is_empty() || self.kinds.contains(&entry.kind))
    }
}

/// What `kiln prune` removes.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Base images and internal records too.
    pub all: bool,
    /// Stop once the root holds no more than this many bytes.
    pub keep_storage: Option<u64>,
    pub filters: Filters,
}

/// What a prune removed: each entry with the bytes its removal freed, in the order removed.
pub struct Pruned {
    pub removed: Vec<Entry>,
    pub freed: u64,
}

/// Removes from `store`'s root what `opts` selects, least recently used first. `store` must
/// be held exclusively ([`Hold::Exclusive`](crate::store::Hold)), so no build runs meanwhile.
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<Pruned, BuildError> {
    let now = timefmt::now_secs();
    let mut usage = Usage::read(store.root())?;
    let mut order: Vec<usize> = (0..usage.entries.len())
        .filter(|&i| {
            let entry = &usage.entries[i];
            (opts.all || entry.reclaimable) && opts.filters.matches(entry, now)
        })
        .collect();
    order.sort_by_key(|&i| {
        let entry = &usage.entries[i];
        (entry.last_used.unwrap_or(i64::MIN), entry.id.clone())
    });
    let mut total = usage.summary().total;
    let trash = store.temp_dir("trash-")?;
    let mut removed = Vec::new();
    let mut freed = 0;
    for index in order {
        if opts.keep_storage.is_some_and(|keep| total <= keep) {
            break;
        }
        let bytes = usage.remove(index, trash.path())?;
        total = total.saturating_sub(bytes);
        freed += bytes;
        removed.push(Entry {
            size: bytes,
            ..usage.entries[index].clone()
        });
    }
    Ok(Pruned { removed, freed })
}

/// How many characters of an id the table shows (the whole id is in `--verbose`).
const SHORT_ID: usize = 12;

/// Entries as `docker buildx du` lists them: ID, RECLAIMABLE, SIZE (`*` when the entry
/// also holds shared objects), LAST ACCESSED.
pub fn render_table(entries: &[Entry], now: i64) -> String {
    let mut out = format!(
        "{:<14}{:<13}{:<12}{}\n",
        "ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"
    );
    for entry in entries {
        let id: String = entry.id.chars().take(SHORT_ID).collect();
        let size = human_size(entry.size) + if entry.shared { "*" } else { "" };
        let used = entry
            .last_used
            .map(|t| human_ago(now - t))
            .unwrap_or_default();
        let row = format!("{id:<14}{:<13}{size:<12}{used}", entry.reclaimable);
        out += row.trim_end();
        out.push('\n');
    }
    out
}

fn field(out: &mut String, key: &str, value: impl std::fmt::Display) {
    *out += &format!("{:<16}{value}\n", format!("{key}:"));
}

/// Entries as `docker buildx du --verbose` shows them, one block each.
pub fn render_verbose(entries: &[Entry], now: i64) -> String {
    let mut out = String::new();
    for entry in entries {
        field(&mut out, "ID", &entry.id);
        if let Some(created) = entry.created {
            field(&mut out, "Created at", timefmt::rfc3339(created));
        }
        field(&mut out, "Reclaimable", entry.reclaimable);
        field(&mut out, "Shared", entry.shared);
        field(&mut out, "Size", human_size(entry.size));
        if let Some(description) = &entry.description {
            field(&mut out, "Description", description);
        }
        if let Some(used) = entry.last_used {
            field(&mut out, "Last used", human_ago(now - used));
        }
        field(&mut out, "Type", entry.kind.name());
        out.push('\n');
    }
    out
}

impl Summary {
    /// The totals as `docker buildx du` ends: Shared and Private when something is shared,
    /// then Reclaimable and Total.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.shared > 0 {
            field(&mut out, "Shared", human_size(self.shared));
            field(&mut out, "Private", human_size(self.private));
        }
        field(&mut out, "Reclaimable", human_size(self.reclaimable));
        field(&mut out, "Total", human_size(self.total));
        out
    }
}

/// The last line of `kiln prune` and of a filtered `kiln du`: `Total:` and the bytes.
pub fn render_total(bytes: u64) -> String {
    let mut out = String::new();
    field(&mut out, "Total", human_size(bytes));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hold;
    use crate::cache::RecordLayer;
    use kiln_oci::media;

    /// A kiln root, and records, blobs and layer dirs written into it as builds write them.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            crate::LocalCache::open(&store).unwrap();
            Fixture { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// A layer: a blob of `blob_bytes` and a layer dir holding a file of `dir_bytes`.
        fn layer(&self, name: &str, blob_bytes: usize, dir_bytes: usize) -> RecordLayer {
            let content = format!("{name}{}", "b".repeat(blob_bytes));
            let digest = Digest::of(content.as_bytes());
            fs::write(
                self.root().join("blobs/sha256").join(digest.hex()),
                &content,
            )
            .unwrap();
            let diff_id = Digest::of(format!("diff {name}").as_bytes());
            let dir = self.root().join("layers").join(diff_id.hex());
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("file"), "d".repeat(dir_bytes)).unwrap();
            RecordLayer {
                media_type: media::OCI_LAYER_GZIP.into(),
                digest,
                size: content.len() as u64,
                diff_id,
            }
        }

        fn step(&self, key: &str, layer: Option<&RecordLayer>, last_used: i64) -> String {
            let key = Digest::of(key.as_bytes()).hex().to_string();
            let record = Record {
                layer: layer.cloned(),
                description: None,
                created: timefmt::rfc3339(last_used - 10),
                last_used: timefmt::rfc3339(last_used),
            };
            fs::write(
                self.root()
                    .join("cache/records")
                    .join(format!("{key}.json")),
                serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
            fs::write(
                self.root().join("cache/locks").join(format!("{key}.lock")),
                "",
            )
            .unwrap();
            key
        }

        fn image(&self, layers: &[&RecordLayer], last_used: i64) -> String {
            let manifest = Digest::of(format!("{layers:?}").as_bytes());
            let record = ImageRecord {
                reference: "registry.test/base:1".into(),
                platform: "linux/amd64".into(),
                manifest: manifest.clone(),
                layers: layers
                    .iter()
                    .map(|l| ImageLayer {
                        digest: l.digest.clone(),
                        diff_id: l.diff_id.clone(),
                    })
                    .collect(),
                created: timefmt::rfc3339(last_used),
                last_used: timefmt::rfc3339(last_used),
            };
            let dir = images_dir(self.root());
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join(format!("{}.json", manifest.hex())),
                serde_json::to_vec(&record).unwrap(),
            )
            .unwrap();
            manifest.hex().to_string()
        }

        fn usage(&self) -> Usage {
            Usage::read(self.root()).unwrap()
        }

        fn entry(&self, id: &str) -> Option<Entry> {
            self.usage().entries.into_iter().find(|e| e.id == id)
        }

        fn prune(&self, opts: &PruneOptions) -> Pruned {
            let store =
                Store::open_holding(self.root(), Hold::Exclusive { timeout: None }, &|| {
                    panic!("nobody holds the root")
                })
                .unwrap();
            prune(&store, opts).unwrap()
        }

        fn exists(&self, layer: &RecordLayer) -> (bool, bool) {
            (
                self.root()
                    .join("blobs/sha256")
                    .join(layer.digest.hex())
                    .exists(),
                self.root()
                    .join("layers")
                    .join(layer.diff_id.hex())
                    .exists(),
            )
        }
    }

    fn blocks(path: &Path) -> u64 {
        Sizer::default().size(path)
    }

    const HOUR: i64 = 3600;

    #[test]
    fn sizes_count_what_each_entry_alone_holds_and_shared_objects_once() {
        let f = Fixture::new();
        let now = timefmt::now_secs();
        let only = f.layer("only", 10_000, 20_000);
        let shared = f.layer("shared", 30_000, 5_000);
        let a = f.step("a", Some(&only), now);
        let b = f.step("b", Some(&shared), now);
        let c = f.step("c", Some(&shared), now);
        let empty = f.step("empty", None, now);
        let orphan = f.layer("orphan", 1_000, 1_000);

        let usage = f.usage();
        let a_entry = f.entry(&a).unwrap();
        let record = |key: &str| f.root().join(format!("cache/records/{key}.json"));
        assert_eq!(
            a_entry.size,
            blocks(&record(&a))
                + blocks(&f.root().join("blobs/sha256").join(only.digest.hex()))
                + blocks(&f.root().join("layers").join(only.diff_id.hex()))
        );
        assert!(!a_entry.shared);
        let b_entry = f.entry(&b).unwrap();
        assert_eq!(b_entry.size, blocks(&record(&b)));
        assert!(b_entry.shared);
        assert!(f.entry(&c).unwrap().shared);
        assert_eq!(f.entry(&empty).unwrap().size, blocks(&record(&empty)));
        assert_eq!(a_entry.created, Some(now - 10));
        assert_eq!(a_entry.last_used, Some(now));
        let unreferenced = f.entry("unreferenced").unwrap();
        assert_eq!(
            unreferenced.size,
            blocks(&f.root().join("blobs/sha256").join(orphan.digest.hex()))
                + blocks(&f.root().join("layers").join(orphan.diff_id.hex()))
        );

        let summary = usage.summary();
        assert_eq!(
            summary.shared,
            blocks(&f.root().join("blobs/sha256").join(shared.digest.hex()))
                + blocks(&f.root().join("layers").join(shared.diff_id.hex()))
        );
        let everything: u64 = ["blobs/sha256", "layers", "cache/records", "cache/locks"]
            .iter()
            .flat_map(|dir| fs::read_dir(f.root().join(dir)).unwrap())
            .map(|e| blocks(&e.unwrap().path()))
            .sum();
        assert_eq!(summary.total, everything);
        assert_eq!(summary.private + summary.shared, summary.total);
        assert_eq!(summary.reclaimable, summary.private);
    }

    #[test]
    fn keep_storage_removes_least_recently_used_first_and_shared_layers_last() {
        let f = Fixture::new();
        let now = timefmt::now_secs();
        let old = f.layer("old", 50_000, 50_000);
        let shared = f.layer("shared", 50_000, 50_000);
        let new = f.layer("new", 50_000, 50_000);
        let oldest = f.step("oldest", Some(&old), now - 5 * HOUR);
        let older = f.step("older", Some(&shared), now - 4 * HOUR);
        let newer = f.step("newer", Some(&shared), now - HOUR);
        let newest = f.step("newest", Some(&new), now);
        let total = f.usage().summary().total;
        let size = |key: &str| f.entry(key).unwrap().size;

        // Room for all but the two oldest: `older` frees only its record, since `newer`
        // still holds its layer.
        let pruned = f.prune(&PruneOptions {
            keep_storage: Some(total - size(&oldest) - size(&older)),
            ..Default::default()
        });
        let ids: Vec<&str> = pruned.removed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [oldest.as_str(), older.as_str()]);
        assert_eq!(f.exists(&old), (false, false));
        assert_eq!(f.exists(&shared), (true, true));
        assert!(f.entry(&newer).is_some() && f.entry(&newest).is_some());
        assert!(f.entry(&older).is_none());
        assert!(!f.root().join(format!("cache/locks/{oldest}.lock")).exists());
        let after = f.usage().summary().total;
        assert_eq!(total - after, pruned.freed);
        assert_eq!(
            pruned.removed.iter().map(|e| e.size).sum::<u64>(),
            pruned.freed
        );

        // Already small enough: nothing goes.
        let pruned = f.prune(&PruneOptions {
            keep_storage: Some(after),
            ..Default::default()
        });
        assert!(pruned.removed.is_empty());
        assert_eq!(pruned.freed, 0);
    }

    #[test]
    fn until_keeps_what_was_used_recently_and_all_takes_base_images_too() {
        let f = Fixture::new();
        let now = timefmt::now_secs();
        let base = f.layer("base", 10_000, 10_000);
        let run = f.layer("run", 10_000, 10_000);
        let image = f.image(&[&base], now - 48 * HOUR);
        let old = f.step("old", Some(&run), now - 48 * HOUR);
        let recent = f.step("recent", None, now - HOUR);
        let config_blob = f.root().join("blobs/sha256").join(Digest::of(b"cfg").hex());
        fs::write(&config_blob, "cfg").unwrap();
        let base_entry = f.entry(&image).unwrap();
        assert_eq!(base_entry.kind, EntryKind::BaseImage);
        assert!(!base_entry.reclaimable);
        assert_eq!(
            base_entry.description.as_deref(),
            Some("registry.test/base:1 (linux/amd64)")
        );

        let pruned = f.prune(&PruneOptions {
            filters: Filters::parse(&["until=24h".into()]).unwrap(),
            ..Default::default()
        });
        let mut ids: Vec<String> = pruned.removed.into_iter().map(|e| e.id).collect();
        ids.sort();
        let mut expected = vec![old.clone(), "unreferenced".to_string()];
        expected.sort();
        assert_eq!(ids, expected);
        assert!(f.entry(&recent).is_some());
        assert_eq!(f.exists(&run), (false, false));
        assert_eq!(f.exists(&base), (true, true));
        assert!(!config_blob.exists());

        f.prune(&PruneOptions {
            all: true,
            ..Default::default()
        });
        assert!(f.usage().entries.is_empty());
        assert_eq!(f.exists(&base), (false, false));
        assert_eq!(f.usage().summary().total, 0);
    }

    #[test]
    fn cache_mounts_are_entries_used_when_mounted() {
        let f = Fixture::new();
        let id = Digest::of(b"go-build").hex().to_string();
        let dir = f.root().join("cache").join(&id);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("obj"), "x".repeat(9000)).unwrap();
        let past = std::time::SystemTime::now() - Duration::from_secs(100 * 3600);
        fs::File::open(&dir).unwrap().set_modified(past).unwrap();
        let entry = f.entry(&id).unwrap();
        assert_eq!(entry.kind, EntryKind::CacheMount);
        assert_eq!(entry.size, blocks(&dir));
        assert!(timefmt::now_secs() - entry.last_used.unwrap() >= 100 * 3600 - 5);
        mark_used(&dir);
        let marker = f.root().join("cache").join(format!("{id}.used"));
        assert!(marker.is_file());
        let entry = f.entry(&id).unwrap();
        assert!(timefmt::now_secs() - entry.last_used.unwrap() < 5);
        // Reading it (as `kiln du` does) is no use.
        fs::File::open(&marker).unwrap().set_modified(past).unwrap();
        f.usage();
        let entry = f.entry(&id).unwrap();
        assert!(timefmt::now_secs() - entry.last_used.unwrap() >= 100 * 3600 - 5);

        let pruned = f.prune(&PruneOptions {
            filters: Filters::parse(&["type=exec.cachemount".into()]).unwrap(),
            ..Default::default()
        });
        assert_eq!(pruned.removed.len(), 1);
        assert!(!dir.exists() && !marker.exists());
        // The dir went through the prune's scratch dir, which is gone with the prune.
        assert_eq!(fs::read_dir(f.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn filters_are_checked_when_read() {
        assert_eq!(
            Filters::parse(&["until=24h".into(), "id=ab".into(), "type=regular".into()]),
            Ok(Filters {
                until: Some(Duration::from_secs(86_400)),
                ids: vec!["ab".into()],
                kinds: vec![EntryKind::Step],
            })
        );
        let err = |spec: &[&str]| {
            Filters::parse(&spec.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["until=soon"]).contains("`soon` is not a duration"));
        assert!(err(&["colour=red"]).contains("unknown filter key `colour`"));
        assert!(err(&["until"]).contains("not KEY=VALUE"));
        assert!(err(&["until=1h", "until=2h"]).contains("until is given twice"));
        assert!(err(&["type=layer"]).contains("unknown type `layer`"));
        assert!(err(&[&format!("{}=1", "k".repeat(100_000))]).len() < 400);
    }
}
