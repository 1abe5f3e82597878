//! The build cache in a registry (`--cache-to` and `--cache-from type=registry`), for CI jobs
//! that start with an empty disk.
//!
//! A cache is one OCI image manifest under the cache ref. Its config (media type
//! [`CACHE_CONFIG_TYPE`]) holds the records, by cache key (see `key.rs`): what layer each op
//! made, when, and what the step was. Its layers are those records' layer blobs, so the
//! registry keeps them and `kiln copy` or skopeo can move the cache whole. A key already
//! covers the platform (through the base image and every input), so one ref holds the
//! records of every platform of a build.
//!
//! Importing reads the manifest and the config, never a layer: a hit gives the record, and
//! its blob is fetched from the cache ref only when a step must run on it or an image needs
//! it. Exporting uploads only the blobs the repository lacks, then the config, then the
//! manifest; a failure there never fails the build unless asked (`ignore-error=false`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kiln_oci::{Descriptor, ImageManifest, media, to_json_bytes};
use kiln_registry::{BlobTransfer, Reference, RegistryClient, RegistryError};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheBackend, KeyLock, LocalCache, Lookup, Record};
use crate::key::CacheKey;
use crate::{BaseRef, BuildError, CacheEntry, Progress, Store};

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

/// One `--cache-to` or `--cache-from`, in buildx's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    pub reference: Reference,
    pub mode: CacheMode,
    /// Whether a failed export is only a warning (the default).
    pub ignore_error: bool,
    /// Records older than this are misses when imported (kaniko's `--cache-ttl`; buildx's
    /// caches have none).
    pub ttl: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheSpecError {
    #[error("`{spec}`: {message}")]
    Invalid { spec: String, message: String },
}

impl CacheSpec {
    /// `type=registry,ref=REF[,mode=min|max][,ignore-error=true|false]`, or a bare `REF`
    /// (buildx reads that as the registry type). buildx's compression and media-type
    /// options are accepted and change nothing: kiln's cache layers are the gzip layers it
    /// built.
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
        match fields.remove("type").unwrap_or("registry") {
            "registry" => {}
            other => {
                return Err(invalid(format!(
                    "cache type `{other}` is not supported yet; kiln keeps caches in a \
                     registry (`type=registry,ref=REGISTRY/REPO:TAG`)"
                )));
            }
        }
        let written = fields
            .remove("ref")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| invalid("no `ref=` names the cache image".to_string()))?;
        let reference: Reference = written
            .parse()
            .map_err(|e| invalid(format!("ref `{written}`: {e}")))?;
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
            reference,
            mode,
            ignore_error,
            ttl: None,
        })
    }
}

/// The config of a cache manifest.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheDocument {
    /// Records by the hex form of their cache key.
    records: BTreeMap<String, Record>,
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
        specs: &[CacheSpec],
        progress: &Progress,
    ) -> RemoteCache {
        let mut cache = RemoteCache::default();
        for spec in specs {
            let reference = &spec.reference;
            match read_document(client, reference) {
                Ok(Some(mut document)) => {
                    let source = Arc::new(BaseRef::Registry {
                        written: reference.to_string(),
                        reference: reference.clone(),
                    });
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

/// The cache document at `reference`; `None` if there is no such tag.
fn read_document(
    client: &RegistryClient,
    reference: &Reference,
) -> Result<Option<CacheDocument>, String> {
    let fetched = match client.fetch_manifest(reference) {
        Ok(fetched) => fetched,
        Err(RegistryError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let manifest: ImageManifest = match media::is_index(&fetched.media_type) {
        true => return Err(not_a_cache(&fetched.media_type)),
        false => {
            serde_json::from_slice(&fetched.bytes).map_err(|e| format!("its manifest: {e}"))?
        }
    };
    if manifest.config.media_type != CACHE_CONFIG_TYPE {
        return Err(not_a_cache(&manifest.config.media_type));
    }
    let bytes = client
        .fetch_small_blob(reference, &manifest.config)
        .map_err(|e| e.to_string())?;
    let mut document: CacheDocument =
        serde_json::from_slice(&bytes).map_err(|e| format!("its records: {e}"))?;
    // A record kiln could not use: a key that is not one, a time that is not one (it goes
    // into the image's history), a layer of a kind kiln never makes.
    document.records.retain(|key, record| {
        crate::timefmt::parse_rfc3339(&record.created).is_some()
            && key.len() == 64
            && key
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && record
                .layer
                .as_ref()
                .is_none_or(|l| media::layer_compression(&l.media_type).is_some())
    });
    Ok(Some(document))
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
    let shown: String = media_type.chars().take(100).collect();
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
    pub uploaded: usize,
    pub mounted: usize,
    pub present: usize,
}

/// Exports `entries` (those `spec.mode` selects) to `spec.reference`: the layer blobs the
/// repository lacks (from the store, or from the cache ref a record came from), then the
/// config, then the manifest under the tag, last, so that a failure leaves the old cache.
pub fn export_cache(
    client: &RegistryClient,
    store: &Store,
    entries: &[CacheEntry],
    spec: &CacheSpec,
) -> Result<ExportStats, BuildError> {
    let target = &spec.reference;
    let mut stats = ExportStats::default();
    let mut document = CacheDocument::default();
    let mut layers: Vec<Descriptor> = Vec::new();
    for entry in entries {
        if spec.mode == CacheMode::Min && !entry.in_image {
            continue;
        }
        if document.records.contains_key(entry.key.hex()) {
            continue;
        }
        let mut record = entry.record.clone();
        record.last_used = record.created.clone();
        if let Some(layer) = &record.layer {
            let blob = layer.descriptor();
            if !layers.iter().any(|l| l.digest == blob.digest) {
                let done = match (entry.from.as_deref(), store.has_blob(&blob.digest)) {
                    (Some(BaseRef::Registry { reference, .. }), false) => {
                        let scratch = store.temp_dir("cache-export-")?;
                        client.copy_blob(reference, target, &blob, &scratch.path().join("blob"))?
                    }
                    _ => client.mount_or_push_blob(
                        target,
                        &blob,
                        &store.blob_path(&blob.digest),
                        None,
                    )?,
                };
                match done {
                    BlobTransfer::Uploaded => stats.uploaded += 1,
                    BlobTransfer::Mounted => stats.mounted += 1,
                    BlobTransfer::AlreadyPresent => stats.present += 1,
                }
                layers.push(blob);
            }
        }
        document.records.insert(entry.key.hex().to_string(), record);
    }
    stats.records = document.records.len();
    let config = store.put_json(CACHE_CONFIG_TYPE, &to_json_bytes(&document))?;
    client.push_blob(target, &config, &store.blob_path(&config.digest))?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config,
        layers,
        annotations: Default::default(),
    };
    client.push_manifest(target, media::OCI_MANIFEST, &to_json_bytes(&manifest))?;
    Ok(stats)
}

/// Exports the cache of a build to each of `specs`, after its images were delivered. A
/// failure is a warning naming the ref (the images are out already), or the error when the
/// spec says `ignore-error=false`.
pub fn export_caches(
    client: &RegistryClient,
    store: &Store,
    entries: &[CacheEntry],
    specs: &[CacheSpec],
    progress: &Progress,
) -> Result<(), BuildError> {
    for spec in specs {
        let reference = &spec.reference;
        match export_cache(client, store, entries, spec) {
            Ok(stats) => progress.info(&format!(
                "exported cache to {reference}: {} records; layers: {} uploaded, {} mounted, \
                 {} already there",
                stats.records, stats.uploaded, stats.mounted, stats.present
            )),
            Err(e) if spec.ignore_error => {
                progress.warning(&format!("the cache was not exported to {reference}: {e}"))
            }
            Err(e) => {
                return Err(BuildError::CacheExport {
                    reference: reference.to_string(),
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
        assert_eq!(spec.reference.to_string(), "reg:5000/app:cache");
        assert_eq!(spec.mode, CacheMode::Max);
        assert!(spec.ignore_error);
        // A bare ref is the registry type; buildx's default mode is min.
        let bare = CacheSpec::parse("reg:5000/app:cache").unwrap();
        assert_eq!(
            (bare.mode, bare.reference),
            (CacheMode::Min, spec.reference)
        );
        let strict = CacheSpec::parse("ref=r/a:c,ignore-error=false,compression=zstd").unwrap();
        assert!(!strict.ignore_error);
        for (bad, says) in [
            (
                "type=local,dest=/tmp/c",
                "cache type `local` is not supported yet",
            ),
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
