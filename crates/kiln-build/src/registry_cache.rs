//! The build cache outside the kiln root (`--cache-to`, `--cache-from`), for CI jobs that
//! start with an empty disk: in a registry (`type=registry`), an OCI layout (`type=local`,
//! for GitLab's `cache:` paths), or the built image's config (`type=inline`).
//!
//! A cache is one OCI image manifest under the cache ref (or the layout's tag). Its config
//! (media type [`CACHE_CONFIG_TYPE`]) holds the records, by cache key (see `key.rs`): what
//! layer each op made, when, and what the step was. Its layers are those records' layer
//! blobs, so the registry keeps them and `kiln copy` or skopeo can move the cache whole. A
//! key already covers the platform (through the base image and every input), so one ref
//! holds the records of every platform of a build.
//!
//! Importing reads the manifest and the config, never a layer: a hit gives the record, and
//! its blob is fetched from the cache only when a step must run on it or an image needs it.
//! Exporting copies the cache image out of the store through `kiln_transport`, as outputs
//! are: only the blobs the destination lacks, the manifest last; a failure there never
//! fails the build unless asked (`ignore-error=false`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use std::path::PathBuf;
use std::sync::Mutex;

use kiln_oci::{Descriptor, Digest, ImageIndex, ImageManifest, media, to_json_bytes};
use kiln_registry::{BlobTransfer, MAX_CONFIG_BYTES, Reference, RegistryClient, RegistryError};
use kiln_transport::{
    ImageDestination, ImageSource, LayoutName, LayoutRef, OciDirDestination, OciLayoutSource,
    RegistryDestination, RegistrySource, Selection, TransportError,
};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheBackend, KeyLock, LocalCache, Lookup, Record};
use crate::key::CacheKey;
use crate::{BaseRef, BuildError, CacheEntry, OriginClients, Progress, Store, StoreSource};

/// The media type of a cache manifest's config.
pub const CACHE_CONFIG_TYPE: &str = "application/vnd.kiln.build-cache.config.v1+json";

/// Which records `--cache-to` exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Only the steps whose layers are in the built images (buildx's default).
    Min,
    /// Every step of every stage.
    Max,
}

/// Where a cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=REF`.
    Registry(Reference),
    /// `type=local,dest=DIR` (or `src=DIR`): an OCI layout, the cache under `tag`.
    Local { dir: PathBuf, tag: String },
    /// `type=inline` (export only): the records of each image's steps go into its config,
    /// and `--cache-from` names the image.
    Inline,
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(reference) => write!(f, "{reference}"),
            CacheLocation::Local { dir, tag } => write!(f, "{}:{tag}", dir.display()),
            CacheLocation::Inline => write!(f, "the image's config (inline)"),
        }
    }
}

/// The registry refs among `specs` (`--cache-from`'s, read with the cache client).
pub fn registry_refs(specs: &[CacheSpec]) -> Vec<Reference> {
    specs
        .iter()
        .filter_map(|spec| match &spec.location {
            CacheLocation::Registry(reference) => Some(reference.clone()),
            _ => None,
        })
        .collect()
}

impl CacheLocation {
    /// The directory of a local cache (kept by in-place builds, as outputs are).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            CacheLocation::Registry(_) | CacheLocation::Inline => None,
            CacheLocation::Local { dir, .. } => Some(dir),
        }
    }

    /// The cache as an image source, for reading and for fetching its blobs.
    fn base_ref(&self) -> Option<BaseRef> {
        match self {
            CacheLocation::Registry(reference) => Some(BaseRef::Registry {
                written: reference.to_string(),
                reference: reference.clone(),
            }),
            CacheLocation::Local { dir, tag } => Some(BaseRef::Layout {
                dir: dir.clone(),
                which: LayoutRef::Name(tag.clone()),
            }),
            CacheLocation::Inline => None,
        }
    }
}

/// One `--cache-to` or `--cache-from`, in buildx's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    pub location: CacheLocation,
    pub mode: CacheMode,
    /// Whether a failed export is only a warning (the default).
    pub ignore_error: bool,
    /// Records older than this are misses when imported (kaniko's `--cache-ttl`; buildx's
    /// caches have none).
    pub ttl: Option<std::time::Duration>,
    /// Whether RUN steps' records are exported (kaniko's `--cache-run-layers`).
    pub run_steps: bool,
    /// Whether the other steps' records (COPY, ADD, WORKDIR) are exported (kaniko's
    /// `--cache-copy-layers`).
    pub copy_steps: bool,
    /// Whether an export keeps the records already at a registry ref (kaniko's cache repo,
    /// which the projects sharing it add to), rather than replacing them (buildx).
    pub merge: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheSpecError {
    #[error("`{spec}`: {message}")]
    Invalid { spec: String, message: String },
}

impl CacheSpec {
    /// `type=registry,ref=REF[,mode=min|max][,ignore-error=true|false]`, or a bare `REF`
    /// (buildx reads that as the registry type); `type=local,dest=DIR` or `src=DIR`, with
    /// `tag=` (default `latest`). buildx's compression and media-type options are accepted
    /// and change nothing: kiln's cache layers are the gzip layers it built.
    pub fn parse(spec: &str) -> Result<CacheSpec, CacheSpecError> {
        let invalid = |message: String| CacheSpecError::Invalid {
            spec: spec.to_string(),
            message,
        };
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        if !spec.contains('=') {
            fields.insert("ref", spec.trim());
        } else {
            for field in spec.split(',') {
                let (key, value) = field
                    .split_once('=')
                    .ok_or_else(|| invalid(format!("`{field}` is not KEY=VALUE")))?;
                if fields.insert(key.trim(), value.trim()).is_some() {
                    return Err(invalid(format!("`{key}` is given twice")));
                }
            }
        }
        let location = match fields.remove("type").unwrap_or("registry") {
            "registry" => {
                let written = fields
                    .remove("ref")
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| invalid("no `ref=` names the cache image".to_string()))?;
                let reference: Reference = written
                    .parse()
                    .map_err(|e| invalid(format!("ref `{written}`: {e}")))?;
                CacheLocation::Registry(reference)
            }
            "local" => {
                let dir = match (fields.remove("dest"), fields.remove("src")) {
                    (Some(dir), None) | (None, Some(dir)) if !dir.is_empty() => dir,
                    _ => {
                        return Err(invalid(
                            "a local cache needs its directory: `dest=DIR` or `src=DIR`"
                                .to_string(),
                        ));
                    }
                };
                let tag = fields.remove("tag").unwrap_or("latest").to_string();
                if tag.is_empty() || tag.contains(['/', ':', '@']) {
                    return Err(invalid(format!("tag `{tag}`: a plain name")));
                }
                CacheLocation::Local {
                    dir: PathBuf::from(dir),
                    tag,
                }
            }
            "inline" => CacheLocation::Inline,
            other => {
                return Err(invalid(format!(
                    "cache type `{other}` is not supported yet; kiln keeps caches in a \
                     registry (`type=registry,ref=REGISTRY/REPO:TAG`), an OCI layout \
                     (`type=local,dest=DIR`) or the image (`type=inline`)"
                )));
            }
        };
        let mode = match fields.remove("mode").unwrap_or("min") {
            "min" => CacheMode::Min,
            "max" => CacheMode::Max,
            other => return Err(invalid(format!("mode `{other}`: min or max"))),
        };
        let ignore_error = match fields.remove("ignore-error").unwrap_or("true") {
            "true" => true,
            "false" => false,
            other => return Err(invalid(format!("ignore-error `{other}`: true or false"))),
        };
        const NO_EFFECT: [&str; 5] = [
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
            "image-manifest",
        ];
        if let Some(unknown) = fields.keys().find(|key| !NO_EFFECT.contains(key)) {
            return Err(invalid(format!("unknown option `{unknown}`")));
        }
        Ok(CacheSpec {
            location,
            mode,
            ignore_error,
            ttl: None,
            run_steps: true,
            copy_steps: true,
            merge: false,
        })
    }
}

/// The config of a cache manifest, and what `type=inline` puts into an image's config.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheDocument {
    /// Records by the hex form of their cache key.
    records: BTreeMap<String, Record>,
}

impl CacheDocument {
    /// Adds the record of `entry`, as it ran (its last use is no one else's business).
    fn add(&mut self, entry: &CacheEntry) {
        let mut record = entry.record.clone();
        record.last_used = record.created.clone();
        self.records.insert(entry.key.hex().to_string(), record);
    }
}

impl CacheSpec {
    /// Whether this export takes the record of `entry`.
    fn exports(&self, entry: &CacheEntry) -> bool {
        (self.mode == CacheMode::Max || entry.in_image)
            && (if entry.is_run {
                self.run_steps
            } else {
                self.copy_steps
            })
    }
}

/// With `--cache-to type=inline` among `specs`: the records of `entries` (an image's own
/// steps) as they go into its config under [`INLINE_CACHE_KEY`].
pub fn inline_records(specs: &[CacheSpec], entries: &[&CacheEntry]) -> Option<serde_json::Value> {
    let spec = specs.iter().find(|s| s.location == CacheLocation::Inline)?;
    let mut document = CacheDocument::default();
    for entry in entries.iter().filter(|e| spec.exports(e)) {
        document.add(entry);
    }
    Some(serde_json::to_value(&document).expect("records always serialise"))
}

/// The records of the `--cache-from` refs, with the ref each came from.
#[derive(Default)]
pub struct RemoteCache {
    records: HashMap<String, (Record, Arc<BaseRef>)>,
}

impl RemoteCache {
    /// Reads the records of each ref in `specs`; the first ref with a key wins. A ref that
    /// does not exist yet is an empty cache (one info line); one that cannot be read, or is
    /// not a kiln cache, is a warning and a miss.
    pub fn import(
        client: &RegistryClient,
        store: &Store,
        specs: &[CacheSpec],
        progress: &Progress,
    ) -> RemoteCache {
        let mut cache = RemoteCache::default();
        for spec in specs {
            let reference = &spec.location;
            let Some(base_ref) = reference.base_ref() else {
                progress.warning(
                    "--cache-from type=inline names no image: give the image's reference \
                     (`--cache-from REGISTRY/REPO:TAG`)",
                );
                continue;
            };
            match read_document(client, store, reference) {
                Ok(Some(mut document)) => {
                    let source = Arc::new(base_ref);
                    let count = document.records.len();
                    let expired = match spec.ttl {
                        Some(ttl) => expire(&mut document, ttl),
                        None => 0,
                    };
                    if expired > 0 {
                        progress.info(&format!(
                            "{expired} records of {reference} are older than the cache TTL \
                             ({}s): their steps run again",
                            spec.ttl.unwrap_or_default().as_secs()
                        ));
                    }
                    for (key, record) in document.records {
                        cache
                            .records
                            .entry(key)
                            .or_insert_with(|| (record, source.clone()));
                    }
                    progress.info(&format!(
                        "importing cache from {reference}: {count} records"
                    ));
                }
                Ok(None) => progress.info(&format!(
                    "the cache {reference} does not exist yet: building without it"
                )),
                Err(why) => progress.warning(&format!(
                    "cannot use the cache {reference}: {why}; building without it"
                )),
            }
        }
        cache
    }

    fn get(&self, key: &CacheKey) -> Option<&(Record, Arc<BaseRef>)> {
        self.records.get(key.hex())
    }
}

/// Where the records of an image built with `--cache-to type=inline` are, in its config.
pub const INLINE_CACHE_KEY: &str = "dev.kiln.build-cache.v1";

/// How many images of an index an import looks into for inline records.
const MAX_INLINE_IMAGES: usize = 32;

/// The cache document at `location`; `None` if there is no such tag (or layout). A kiln
/// cache image, or an image (or index of images) built with `--cache-to type=inline`.
fn read_document(
    client: &RegistryClient,
    store: &Store,
    location: &CacheLocation,
) -> Result<Option<CacheDocument>, String> {
    let source: Box<dyn ImageSource + '_> = match location {
        CacheLocation::Registry(reference) => {
            Box::new(RegistrySource::new(client, reference.clone()))
        }
        CacheLocation::Local { dir, tag } => {
            let listed = OciLayoutSource::ref_names(dir).unwrap_or_default();
            if !listed.contains(tag) {
                return Ok(None);
            }
            let which = LayoutRef::Name(tag.clone());
            Box::new(OciLayoutSource::open(dir, which).map_err(|e| e.to_string())?)
        }
        CacheLocation::Inline => return Ok(None),
    };
    let top = match source.top() {
        Ok(top) => top,
        Err(TransportError::Registry(RegistryError::NotFound { .. })) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let manifests = match media::is_index(&top.media_type) {
        false => vec![top],
        true => {
            let index: ImageIndex =
                serde_json::from_slice(&top.bytes).map_err(|e| format!("its index: {e}"))?;
            index
                .manifests
                .iter()
                .filter(|m| !media::is_index(&m.media_type))
                .take(MAX_INLINE_IMAGES)
                .map(|m| source.manifest(m).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let scratch = store.temp_dir("cache-import-").map_err(|e| e.to_string())?;
    // However many images an index lists, the records read stay within one config's bound.
    let mut budget = MAX_CONFIG_BYTES;
    let mut document = CacheDocument::default();
    // Why the last image looked at holds no records, until one does.
    let mut none_here = None;
    let mut any = false;
    for (i, raw) in manifests.iter().enumerate() {
        let manifest: ImageManifest =
            serde_json::from_slice(&raw.bytes).map_err(|e| format!("its manifest: {e}"))?;
        let kind = manifest.config.media_type.as_str();
        let inline = kind == media::OCI_CONFIG || kind == media::DOCKER_CONFIG;
        if kind != CACHE_CONFIG_TYPE && !inline {
            none_here = Some(not_a_cache(kind));
            continue;
        }
        if manifest.config.size > budget {
            return Err(format!(
                "its records are larger than {} MiB",
                MAX_CONFIG_BYTES >> 20
            ));
        }
        budget -= manifest.config.size;
        let path = scratch.path().join(format!("config-{i}"));
        source
            .blob_to_file(&manifest.config, &path)
            .map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut records: CacheDocument = match inline {
            false => serde_json::from_slice(&bytes).map_err(|e| format!("its records: {e}"))?,
            true => {
                let mut config: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&bytes).map_err(|e| format!("its config: {e}"))?;
                match config.remove(INLINE_CACHE_KEY) {
                    Some(records) => serde_json::from_value(records)
                        .map_err(|e| format!("its inline records: {e}"))?,
                    None => {
                        none_here = Some(
                            "it is not a kiln build cache (an image without kiln's inline \
                             records)"
                                .to_string(),
                        );
                        continue;
                    }
                }
            }
        };
        keep_usable(&mut records, &manifest);
        document.records.append(&mut records.records);
        any = true;
    }
    match (any, none_here) {
        (false, Some(why)) => Err(why),
        _ => Ok(Some(document)),
    }
}

/// Drops the records kiln could not use: a key that is not one, a time that is not one (it
/// goes into the image's history), a layer of a kind kiln never makes, or a layer
/// `manifest` does not list. A registry takes a manifest only when it holds every blob
/// listed, so a listed layer is there to fetch; an unlisted digest could name a blob only
/// this store holds (another build's, a private image's), which must not stand in for it.
fn keep_usable(document: &mut CacheDocument, manifest: &ImageManifest) {
    let listed: HashSet<(&Digest, u64)> = manifest
        .layers
        .iter()
        .map(|l| (&l.digest, l.size))
        .collect();
    document.records.retain(|key, record| {
        record
            .layer
            .as_ref()
            .is_none_or(|l| listed.contains(&(&l.digest, l.size)))
            && crate::timefmt::parse_rfc3339(&record.created).is_some()
            && key.len() == 64
            && key
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && record
                .layer
                .as_ref()
                .is_none_or(|l| media::layer_compression(&l.media_type).is_some())
    });
}

/// Drops the records that ran longer than `ttl` ago; returns how many.
fn expire(document: &mut CacheDocument, ttl: std::time::Duration) -> usize {
    let oldest = crate::timefmt::now_secs().saturating_sub(ttl.as_secs() as i64);
    let before = document.records.len();
    document.records.retain(|_, record| {
        crate::timefmt::parse_rfc3339(&record.created).is_some_and(|created| created >= oldest)
    });
    before - document.records.len()
}

fn not_a_cache(media_type: &str) -> String {
    // The registry's text: no control character reaches the log (escapes, forged lines).
    let shown: String = media_type
        .chars()
        .take(100)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("it is not a kiln build cache (it holds `{shown}`)")
}

/// The local records first, then those of the `--cache-from` refs. What a build records
/// goes to the local cache.
pub struct ChainedCache<'a> {
    pub local: &'a LocalCache<'a>,
    pub remote: &'a RemoteCache,
}

impl CacheBackend for ChainedCache<'_> {
    fn load(&self, key: &CacheKey) -> Lookup {
        let local = self.local.load(key);
        match (local, self.remote.get(key)) {
            (Lookup::Hit(record), _) => Lookup::Hit(record),
            (_, Some((record, source))) => Lookup::Remote(record.clone(), source.clone()),
            (other, None) => other,
        }
    }

    fn save(&self, key: &CacheKey, record: &Record) -> Result<(), BuildError> {
        self.local.save(key, record)
    }

    fn lock(&self, key: &CacheKey, waiting: &dyn Fn()) -> Result<KeyLock, BuildError> {
        self.local.lock(key, waiting)
    }
}

/// What an export did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub records: usize,
    /// Layer and config blobs by how they reached a registry (nothing for a layout).
    pub uploaded: usize,
    pub mounted: usize,
    pub present: usize,
}

/// Exports `entries` (those `spec.mode` selects) to `spec.location`: the cache image is
/// made in the store and copied out as any output is (`clients`: for pulls, for pushes).
/// A layer blob the store lacks is taken from the registry cache its record came from.
pub fn export_cache(
    clients: (&RegistryClient, &RegistryClient),
    store: &Store,
    entries: &[CacheEntry],
    spec: &CacheSpec,
) -> Result<ExportStats, BuildError> {
    let (pull, push) = clients;
    let mut document = CacheDocument::default();
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut origins: BTreeMap<Digest, Reference> = BTreeMap::new();
    for entry in entries.iter().filter(|entry| spec.exports(entry)) {
        if document.records.contains_key(entry.key.hex()) {
            continue;
        }
        if let Some(layer) = &entry.record.layer {
            let blob = layer.descriptor();
            if !store.has_blob(&blob.digest)
                && let Some(BaseRef::Registry { reference, .. }) = entry.from.as_deref()
            {
                origins.insert(blob.digest.clone(), reference.clone());
            }
            if !layers.iter().any(|l| l.digest == blob.digest) {
                layers.push(blob);
            }
        }
        document.add(entry);
    }
    if spec.merge
        && let CacheLocation::Registry(reference) = &spec.location
    {
        keep_earlier_records(
            pull,
            store,
            spec,
            reference,
            &mut document,
            &mut layers,
            &mut origins,
        );
    }
    let config = store.put_json(CACHE_CONFIG_TYPE, &to_json_bytes(&document))?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config,
        layers,
        annotations: Default::default(),
    };
    let top = store.put_json(media::OCI_MANIFEST, &to_json_bytes(&manifest))?;
    // The records' origins are caches read with `pull`, the cache client.
    let source = StoreSource::with_origins(store, top, OriginClients::single(pull), &origins);
    let transfers = Mutex::new(ExportStats {
        records: document.records.len(),
        ..Default::default()
    });
    let copied = match &spec.location {
        CacheLocation::Inline => Ok(()),
        CacheLocation::Registry(reference) => {
            let dest = RegistryDestination::to_all(push, vec![reference.clone()])
                .expect("one target")
                .on_blob(|_, _, how| {
                    let mut stats = transfers.lock().unwrap();
                    match how {
                        BlobTransfer::Uploaded => stats.uploaded += 1,
                        BlobTransfer::Mounted => stats.mounted += 1,
                        BlobTransfer::AlreadyPresent => stats.present += 1,
                    }
                });
            copy_out(&source, dest)
        }
        CacheLocation::Local { dir, tag } => {
            OciDirDestination::create(dir, vec![LayoutName::new(tag.clone())])
                .and_then(|dest| copy_out(&source, dest))
        }
    };
    copied.map_err(|source| BuildError::Export {
        action: format!("exporting the build cache to {}", spec.location),
        source: Box::new(source),
    })?;
    Ok(transfers.into_inner().unwrap())
}

/// At most this many records stay in a merged cache; the oldest go first.
const MAX_MERGED_RECORDS: usize = 10_000;

/// Adds to `document` the records of the cache at `reference` that it lacks (those within
/// the TTL, newest first, up to [`MAX_MERGED_RECORDS`]); their blobs are in that repository
/// already. A cache that cannot be read adds nothing.
fn keep_earlier_records(
    client: &RegistryClient,
    store: &Store,
    spec: &CacheSpec,
    reference: &Reference,
    document: &mut CacheDocument,
    layers: &mut Vec<Descriptor>,
    origins: &mut BTreeMap<Digest, Reference>,
) {
    let Ok(Some(mut earlier)) = read_document(client, store, &spec.location) else {
        return;
    };
    if let Some(ttl) = spec.ttl {
        expire(&mut earlier, ttl);
    }
    let mut kept: Vec<(String, Record)> = earlier
        .records
        .into_iter()
        .filter(|(key, _)| !document.records.contains_key(key))
        .collect();
    kept.sort_by(|a, b| b.1.created.cmp(&a.1.created));
    kept.truncate(MAX_MERGED_RECORDS.saturating_sub(document.records.len()));
    for (key, record) in kept {
        if let Some(layer) = &record.layer {
            let blob = layer.descriptor();
            if !layers.iter().any(|l| l.digest == blob.digest) {
                if !store.has_blob(&blob.digest) {
                    origins.insert(blob.digest.clone(), reference.clone());
                }
                layers.push(blob);
            }
        }
        document.records.insert(key, record);
    }
}

fn copy_out(
    source: &StoreSource<'_>,
    mut dest: impl ImageDestination,
) -> Result<(), TransportError> {
    kiln_transport::copy(source, &mut dest, &Selection::All).map(drop)
}

/// Exports the cache of a build to each of `specs`, after its images were delivered. A
/// failure is a warning naming the cache (the images are out already), or the error when
/// the spec says `ignore-error=false`.
pub fn export_caches(
    clients: (&RegistryClient, &RegistryClient),
    store: &Store,
    entries: &[CacheEntry],
    specs: &[CacheSpec],
    progress: &Progress,
) -> Result<(), BuildError> {
    for spec in specs.iter().filter(|s| s.location != CacheLocation::Inline) {
        let location = &spec.location;
        match export_cache(clients, store, entries, spec) {
            Ok(stats) => progress.info(&format!(
                "exported cache to {location}: {} records; blobs: {} uploaded, {} mounted, \
                 {} already there",
                stats.records, stats.uploaded, stats.mounted, stats.present
            )),
            Err(e) if spec.ignore_error => {
                progress.warning(&format!("the cache was not exported to {location}: {e}"))
            }
            Err(e) => {
                return Err(BuildError::CacheExport {
                    reference: location.to_string(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_specs_parse_and_bad_ones_say_why() {
        let spec = CacheSpec::parse("type=registry,ref=reg:5000/app:cache,mode=max").unwrap();
        assert_eq!(spec.location.to_string(), "reg:5000/app:cache");
        assert_eq!(spec.mode, CacheMode::Max);
        assert!(spec.ignore_error);
        // A bare ref is the registry type; buildx's default mode is min.
        let bare = CacheSpec::parse("reg:5000/app:cache").unwrap();
        assert_eq!((bare.mode, bare.location), (CacheMode::Min, spec.location));
        let strict = CacheSpec::parse("ref=r/a:c,ignore-error=false,compression=zstd").unwrap();
        assert!(!strict.ignore_error);
        assert_eq!(
            CacheSpec::parse("type=inline").unwrap().location,
            CacheLocation::Inline
        );
        let local = CacheSpec::parse("type=local,src=/ci/cache").unwrap();
        assert_eq!(
            local.location,
            CacheLocation::Local {
                dir: "/ci/cache".into(),
                tag: "latest".into()
            }
        );
        for (bad, says) in [
            ("type=gha", "cache type `gha` is not supported yet"),
            ("type=local", "`dest=DIR` or `src=DIR`"),
            ("type=local,dest=/c,tag=a/b", "tag `a/b`"),
            ("type=registry", "no `ref=`"),
            ("ref=r/a:c,mode=all", "mode `all`"),
            ("ref=r/a:c,ref=r/b:c", "`ref` is given twice"),
            ("ref=r/a:c,colour=blue", "unknown option `colour`"),
            ("ref=r/a:c,oops", "`oops` is not KEY=VALUE"),
            ("ref=UPPER/case", "ref `UPPER/case`"),
        ] {
            let err = CacheSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
        }
    }
}
