//! Base images: how FROM (and `--from`) references are read, the [`ImageResolver`] seam the
//! plan resolves them through, its registry and OCI layout implementation, and the extraction
//! of a stored layer blob into a layer dir.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_oci::{
    Descriptor, Digest, DigestReader, ImageConfig, ImageIndex, ImageManifest, Platform, media,
};
use kiln_registry::{DOCKER_HUB, MAX_CONFIG_BYTES, Reference, RegistryClient};
use kiln_transport::{
    BaseImageCache, CachedImage, DockerArchiveSource, ImageSource, LayoutRef, OciLayoutSource,
    RawManifest, RegistrySource, TransportError, select_platform,
};

use crate::progress::Progress;
use crate::{BuildError, Store};

/// A base image resolved for one platform: what a plan needs to know of it. Its layers are
/// not fetched here: the solver fetches and extracts a layer only when a step must run on top
/// of it or an output needs its blob.
#[derive(Debug)]
pub struct ResolvedImage {
    /// Where it was found.
    pub source: BaseRef,
    pub platform: Platform,
    /// The digest of its manifest (for an index, of the manifest chosen for `platform`).
    pub manifest: Digest,
    pub config: ImageConfig,
    /// Its layer blobs, bottom first, each with the diff_id the config gives it.
    pub layers: Vec<(Descriptor, Digest)>,
}

/// Finds base images: the plan calls [`ImageResolver::resolve`] for every FROM, `COPY
/// --from` and `RUN --mount=from=` image; the solver calls [`ImageResolver::fetch_blob`] for
/// the layers it needs. [`RegistryResolver`] reads registries and OCI layouts; tests may
/// answer from a map.
pub trait ImageResolver: Sync {
    /// Resolves `image` for `platform`, reading its index, manifest and config but no layer.
    fn resolve(&self, image: &BaseRef, platform: &Platform) -> Result<ResolvedImage, BuildError>;

    /// Stores the blob `blob` of the image (or cache) at `source` in `store`, verified on
    /// the way in.
    fn fetch_blob(
        &self,
        source: &BaseRef,
        blob: &Descriptor,
        store: &Store,
    ) -> Result<(), BuildError>;

    /// The registry repository `source`'s blobs are read from, if they are read from one
    /// (not from a layout, nor from `--base-dir`): an output can take them from there.
    fn registry_origin(&self, _source: &BaseRef) -> Option<Reference> {
        None
    }
}

/// BuildKit's scheme for an image in a local OCI layout.
pub(crate) const OCI_LAYOUT_SCHEME: &str = "oci-layout://";

/// Where a FROM image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseRef {
    /// A registry reference, as written and normalised.
    Registry {
        written: String,
        reference: Reference,
    },
    /// `oci-layout://DIR[:TAG|@sha256:...]`: an image in a local OCI layout (or archive).
    Layout { dir: PathBuf, which: LayoutRef },
}

impl BaseRef {
    pub fn parse(image: &str) -> Result<BaseRef, String> {
        let Some(rest) = image.strip_prefix(OCI_LAYOUT_SCHEME) else {
            return Ok(BaseRef::Registry {
                written: image.to_string(),
                reference: image
                    .parse()
                    .map_err(|e: kiln_registry::ReferenceError| e.to_string())?,
            });
        };
        // A tag follows the last `:` after the last `/`; a digest follows `@`.
        let (dir, which) = if let Some((dir, digest)) = rest.rsplit_once('@') {
            let digest: Digest = digest.parse().map_err(|e| format!("{image}: {e}"))?;
            (dir, LayoutRef::Digest(digest))
        } else {
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[last_slash..].rfind(':') {
                Some(i) => (
                    &rest[..last_slash + i],
                    LayoutRef::Name(rest[last_slash + i + 1..].to_string()),
                ),
                None => (rest, LayoutRef::Only),
            }
        };
        if dir.is_empty() {
            return Err(format!("{image}: the layout path is empty"));
        }
        Ok(BaseRef::Layout {
            dir: PathBuf::from(dir),
            which,
        })
    }
}

impl fmt::Display for BaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseRef::Registry { reference, .. } => write!(f, "{reference}"),
            BaseRef::Layout { dir, which } => {
                write!(f, "{OCI_LAYOUT_SCHEME}{}", dir.display())?;
                match which {
                    LayoutRef::Only => Ok(()),
                    LayoutRef::Name(n) => write!(f, ":{n}"),
                    LayoutRef::Digest(d) => write!(f, "@{d}"),
                }
            }
        }
    }
}

/// The names a `--base-dir` layout may list a registry image under, in the order tried: as
/// the Dockerfile writes it, fully qualified (`docker.io/library/busybox:latest`), and as
/// Docker shows it (`busybox:latest`).
fn layout_names(written: &str, reference: &Reference) -> Vec<String> {
    let mut names = vec![written.to_string(), reference.to_string()];
    if reference.registry == DOCKER_HUB {
        let short = reference
            .repository
            .strip_prefix("library/")
            .unwrap_or(&reference.repository);
        let full = reference.to_string();
        let suffix = &full[DOCKER_HUB.len() + 1 + reference.repository.len()..];
        names.push(format!("{short}{suffix}"));
    }
    names
}

fn bad(reference: &(impl fmt::Display + ?Sized), message: impl Into<String>) -> BuildError {
    BuildError::BadImage {
        reference: reference.to_string(),
        message: message.into(),
    }
}

fn base_err(reference: &BaseRef) -> impl FnOnce(TransportError) -> BuildError + '_ {
    move |source| BuildError::BaseImage {
        reference: reference.to_string(),
        source: Box::new(source),
    }
}

/// Where to read `base` from: a `--base-dir` layout naming it, an `oci-layout://` layout,
/// or its registry.
fn open_source<'c>(
    client: &'c RegistryClient,
    base: &BaseRef,
    base_dir: Option<&Path>,
    progress: &Progress,
) -> Result<Box<dyn ImageSource + 'c>, BuildError> {
    match base {
        BaseRef::Registry { written, reference } => {
            if let Some(dir) = base_dir {
                let listed = OciLayoutSource::ref_names(dir).map_err(base_err(base))?;
                if let Some(name) = layout_names(written, reference)
                    .into_iter()
                    .find(|n| listed.contains(n))
                {
                    let source = OciLayoutSource::open(dir, LayoutRef::Name(name))
                        .map_err(base_err(base))?;
                    progress.detail(&format!("using {}", source.describe()));
                    return Ok(Box::new(source));
                }
            }
            Ok(Box::new(RegistrySource::new(client, reference.clone())))
        }
        BaseRef::Layout { dir, which } => Ok(Box::new(
            OciLayoutSource::open(dir, which.clone()).map_err(base_err(base))?,
        )),
    }
}

/// Resolves images from registries and OCI layouts, storing their configs (and, when asked,
/// their blobs) in the store.
pub struct RegistryResolver<'a> {
    pub client: &'a RegistryClient,
    pub store: &'a Store,
    /// `--base-dir`: a layout consulted before any registry.
    pub base_dir: Option<&'a Path>,
    pub progress: &'a Progress,
    /// The registry caches (`--cache-from`) and the client that reads them, when that is
    /// not `client` (kaniko reaches its cache repo with its push flags).
    pub caches: Option<(&'a RegistryClient, Vec<Reference>)>,
    /// kaniko's `--cache-dir`: registry images found there by their manifest's digest.
    pub base_cache: Option<&'a BaseImageCache>,
    from_base_cache: Mutex<FromBaseCache>,
}

/// What [`RegistryResolver`] took from the `--cache-dir`: the archive each blob is read from,
/// and the references whose blobs are read there.
#[derive(Default)]
struct FromBaseCache {
    /// Each image's archive, read once and shared by its layers: a manifest of 4 MiB can list
    /// thousands of layers, and scanning the archive again for each would be as many scans.
    blobs: HashMap<Digest, Arc<DockerArchiveSource>>,
    references: Vec<BaseRef>,
}

impl<'a> RegistryResolver<'a> {
    /// A resolver reading registries with `client`, with no `--base-dir`, no caches and no
    /// `--cache-dir`.
    pub fn new(
        client: &'a RegistryClient,
        store: &'a Store,
        progress: &'a Progress,
    ) -> RegistryResolver<'a> {
        RegistryResolver {
            client,
            store,
            base_dir: None,
            progress,
            caches: None,
            base_cache: None,
            from_base_cache: Mutex::default(),
        }
    }

    /// The image `manifest` from the `--cache-dir`, if a fresh entry holds it; the archive's
    /// blobs are then read instead of the registry's.
    fn in_base_cache(
        &self,
        reference: &BaseRef,
        manifest: &RawManifest,
    ) -> Option<DockerArchiveSource> {
        let cache = self.base_cache?;
        let path = match cache.lookup(&manifest.digest) {
            CachedImage::Fresh(path) => path,
            CachedImage::Expired(path) => {
                self.progress.info(&format!(
                    "{} is older than --cache-ttl: pulling {reference}",
                    path.display()
                ));
                return None;
            }
            CachedImage::Missing => return None,
        };
        match DockerArchiveSource::of_manifest(&path, manifest.clone()) {
            Ok(source) => {
                self.progress
                    .detail(&format!("using {} for {reference}", source.describe()));
                Some(source)
            }
            Err(e) => {
                self.base_cache_failed(&e, reference);
                None
            }
        }
    }

    /// What the `--cache-dir` could not give (`e`) is pulled from `reference` instead.
    fn base_cache_failed(&self, e: &TransportError, reference: &BaseRef) {
        self.progress
            .warning(&format!("--cache-dir: {e}; pulling it from {reference}"));
    }

    /// The image manifest `reference` pins by digest, when the `--cache-dir` holds it: such
    /// an image is read without any registry.
    fn pinned_in_base_cache(&self, reference: &BaseRef) -> Option<RawManifest> {
        match reference {
            BaseRef::Registry { reference, .. } => {
                self.base_cache?.manifest(reference.digest.as_ref()?)
            }
            BaseRef::Layout { .. } => None,
        }
    }
    /// The client that reads `source`: the caches' for a cache, else the pull client.
    fn client_for(&self, source: &BaseRef) -> &'a RegistryClient {
        match (source, &self.caches) {
            (BaseRef::Registry { reference, .. }, Some((client, caches)))
                if caches.contains(reference) =>
            {
                client
            }
            _ => self.client,
        }
    }
}

impl ImageResolver for RegistryResolver<'_> {
    fn resolve(
        &self,
        reference: &BaseRef,
        platform: &Platform,
    ) -> Result<ResolvedImage, BuildError> {
        self.progress
            .detail(&format!("resolving {reference} for {platform}"));
        let source = open_source(self.client, reference, self.base_dir, self.progress)?;
        let mut fetched = match self.pinned_in_base_cache(reference) {
            Some(manifest) => manifest,
            None => source.top().map_err(base_err(reference))?,
        };
        if media::is_index(&fetched.media_type) {
            let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
                .map_err(|e| bad(reference, format!("unreadable index: {e}")))?;
            let chosen =
                select_platform(&index, platform).map_err(|m| BuildError::PlatformMissing {
                    reference: reference.to_string(),
                    wanted: m.wanted,
                    available: m.available,
                })?;
            fetched = source.manifest(chosen).map_err(base_err(reference))?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| bad(reference, format!("unreadable manifest: {e}")))?;
        let cached = match reference {
            BaseRef::Registry { .. } => self.in_base_cache(reference, &fetched).map(Arc::new),
            BaseRef::Layout { .. } => None,
        };

        // The config is read into memory whole: as large as a registry client reads, no larger.
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(bad(
                reference,
                format!(
                    "the image config is larger than {} MiB ({} bytes)",
                    MAX_CONFIG_BYTES >> 20,
                    manifest.config.size
                ),
            ));
        }
        // A config the archive does not hold as the manifest names it is pulled, as a layer is.
        if let Some(archive) = &cached
            && !self.store.has_blob(&manifest.config.digest)
            && let Err(e) = archive.blob_to_file(
                &manifest.config,
                &self.store.blob_path(&manifest.config.digest),
            )
        {
            self.base_cache_failed(&e, reference);
        }
        ensure_blob(source.as_ref(), self.store, reference, &manifest.config)?;
        let config: ImageConfig = serde_json::from_slice(
            &std::fs::read(self.store.blob_path(&manifest.config.digest))
                .map_err(BuildError::io("reading a base image config"))?,
        )
        .map_err(|e| bad(reference, format!("unreadable image config: {e}")))?;
        if !platform
            .compatible()
            .iter()
            .any(|p| p.matches(&config.platform()))
        {
            return Err(BuildError::PlatformMissing {
                reference: reference.to_string(),
                wanted: platform.to_string(),
                available: config.platform().normalized().to_string(),
            });
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(bad(
                reference,
                "config lists a different number of layers than the manifest",
            ));
        }
        if let Some(blob) = manifest
            .layers
            .iter()
            .find(|blob| media::layer_compression(&blob.media_type).is_none())
        {
            return Err(bad(
                reference,
                format!(
                    "layer {} has unsupported media type {}",
                    blob.digest, blob.media_type
                ),
            ));
        }
        if let Some(archive) = &cached {
            let mut taken = self
                .from_base_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for blob in &manifest.layers {
                taken.blobs.insert(blob.digest.clone(), Arc::clone(archive));
            }
            if !taken.references.contains(reference) {
                taken.references.push(reference.clone());
            }
        }
        let layers = manifest
            .layers
            .into_iter()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        Ok(ResolvedImage {
            source: reference.clone(),
            platform: platform.clone(),
            manifest: Digest::of(&fetched.bytes),
            config,
            layers,
        })
    }

    fn fetch_blob(
        &self,
        reference: &BaseRef,
        blob: &Descriptor,
        store: &Store,
    ) -> Result<(), BuildError> {
        let cached = self
            .from_base_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blobs
            .get(&blob.digest)
            .cloned();
        if let Some(archive) = cached {
            match archive.blob_to_file(blob, &store.blob_path(&blob.digest)) {
                Ok(()) => return Ok(()),
                Err(e) => self.base_cache_failed(&e, reference),
            }
        }
        let client = self.client_for(reference);
        let source = open_source(client, reference, self.base_dir, self.progress)?;
        ensure_blob(source.as_ref(), store, reference, blob)
    }

    fn registry_origin(&self, source: &BaseRef) -> Option<Reference> {
        let BaseRef::Registry { written, reference } = source else {
            return None;
        };
        // Blobs a --cache-dir holds are taken from there, not from the registry.
        let taken = self
            .from_base_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if taken.references.contains(source) {
            return None;
        }
        let in_base_dir = self.base_dir.is_some_and(|dir| {
            // An unreadable --base-dir answers yes: the blobs are fetched into the store.
            OciLayoutSource::ref_names(dir).map_or(true, |listed| {
                layout_names(written, reference)
                    .iter()
                    .any(|name| listed.contains(name))
            })
        });
        (!in_base_dir).then(|| reference.clone())
    }
}

/// Stores a blob of the base image unless the store has it; it is verified on the way in,
/// so a corrupt blob never enters the store.
fn ensure_blob(
    source: &dyn ImageSource,
    store: &Store,
    reference: &BaseRef,
    blob: &Descriptor,
) -> Result<(), BuildError> {
    if store.has_blob(&blob.digest) {
        return Ok(());
    }
    source
        .blob_to_file(blob, &store.blob_path(&blob.digest))
        .map_err(base_err(reference))
}

/// Extracts a stored layer blob into its layer dir, checking the uncompressed stream hashes to
/// the diff_id the config promised. `reference` names the image the layer is from in errors.
pub(crate) fn extract(
    store: &Store,
    blob: &Descriptor,
    diff_id: &Digest,
    reference: &str,
) -> Result<(), BuildError> {
    let file = File::open(store.blob_path(&blob.digest))
        .map_err(BuildError::io("opening a layer blob"))?;
    let tmp = store.temp_dir("extract-")?;
    let target = tmp.path().join("layer");
    std::fs::create_dir(&target).map_err(BuildError::io("creating a layer dir"))?;
    // Decompression and hashing on a second thread, extraction on this one.
    let (sender, mut reader) = kiln_snapshot::chunk_pipe();
    let (decompressed, extracted) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> io::Result<Option<Digest>> {
            let stream = kiln_snapshot::decompress(BufReader::new(file))?;
            let mut hashed = DigestReader::new(stream);
            Ok(sender.pump(&mut hashed).then(|| hashed.finish().0))
        });
        let extracted = kiln_snapshot::extract_layer(&mut reader, &target).and_then(|_| {
            // Tar readers may stop at the end-of-archive marker; the digest covers the
            // padding too.
            io::copy(&mut reader, &mut io::sink())
                .map(drop)
                .map_err(kiln_snapshot::SnapshotError::TarStream)
        });
        // The producer stops at once if extraction stopped early.
        drop(reader);
        (producer.join(), extracted)
    });
    let layer_err = |e: &dyn fmt::Display| bad(reference, format!("layer {}: {e}", blob.digest));
    let decompressed = match decompressed {
        Ok(result) => result.map_err(|e| layer_err(&e))?,
        Err(_) => return Err(layer_err(&"the decompressing thread panicked")),
    };
    extracted.map_err(|e| layer_err(&e))?;
    let actual = decompressed.expect("read to its end, since extraction succeeded");
    same_diff_id(reference, blob, &actual, diff_id)?;
    store.note_diff_id(&blob.digest, diff_id)?;
    store.commit_layer_dir(&target, diff_id)?;
    Ok(())
}

/// An error unless the layer `blob` decompressed to the `diff_id` its image promised.
pub(crate) fn same_diff_id(
    reference: &str,
    blob: &Descriptor,
    actual: &Digest,
    diff_id: &Digest,
) -> Result<(), BuildError> {
    match actual == diff_id {
        true => Ok(()),
        false => Err(bad(
            reference,
            format!(
                "layer {} uncompresses to {actual}, but the config says {diff_id}",
                blob.digest
            ),
        )),
    }
}

/// Makes the layer dir of `blob` ready: extracts it when there is none (calling `extracting`
/// first), else checks (once) that `blob` decompresses to the `diff_id` of the dir there.
pub(crate) fn ensure_extracted(
    store: &Store,
    blob: &Descriptor,
    diff_id: &Digest,
    reference: &str,
    extracting: impl FnOnce(),
) -> Result<(), BuildError> {
    if !store.layer_dir(diff_id).is_dir() {
        extracting();
        return extract(store, blob, diff_id, reference);
    }
    if store.checked_diff_id(&blob.digest).as_ref() != Some(diff_id) {
        check_diff_id(store, blob, diff_id, reference)?;
    }
    Ok(())
}

/// Checks that a stored layer blob decompresses to `diff_id` (without extracting it) and
/// notes it: for a layer dir already there under that diff_id, made from another blob.
pub(crate) fn check_diff_id(
    store: &Store,
    blob: &Descriptor,
    diff_id: &Digest,
    reference: &str,
) -> Result<(), BuildError> {
    let layer_err = |e: &dyn fmt::Display| bad(reference, format!("layer {}: {e}", blob.digest));
    let file = File::open(store.blob_path(&blob.digest))
        .map_err(BuildError::io("opening a layer blob"))?;
    let stream = kiln_snapshot::decompress(BufReader::new(file)).map_err(|e| layer_err(&e))?;
    let mut hashed = DigestReader::new(stream);
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| layer_err(&e))?;
    let actual = hashed.finish().0;
    same_diff_id(reference, blob, &actual, diff_id)?;
    store.note_diff_id(&blob.digest, diff_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_layout_references_name_a_tag_or_digest() {
        let layout = |s: &str| match BaseRef::parse(s).unwrap() {
            BaseRef::Layout { dir, which } => (dir.display().to_string(), which),
            other => panic!("{s} parsed as {other}"),
        };
        assert_eq!(
            layout("oci-layout:///srv/img:v1.2"),
            ("/srv/img".into(), LayoutRef::Name("v1.2".into()))
        );
        assert_eq!(
            layout("oci-layout://./a:b/img"),
            ("./a:b/img".into(), LayoutRef::Only)
        );
        let d = Digest::of(b"m");
        assert_eq!(
            layout(&format!("oci-layout://img@{d}")),
            ("img".into(), LayoutRef::Digest(d.clone()))
        );
        assert_eq!(
            BaseRef::parse(&format!("oci-layout://img@{d}"))
                .unwrap()
                .to_string(),
            format!("oci-layout://img@{d}")
        );
        assert!(BaseRef::parse("oci-layout://img@sha256:12").is_err());
        assert!(BaseRef::parse("oci-layout://").is_err());
    }

    #[test]
    fn base_dir_names_tried_for_a_registry_image() {
        let names = |s: &str| {
            let BaseRef::Registry { written, reference } = BaseRef::parse(s).unwrap() else {
                panic!("{s} is not a registry image")
            };
            layout_names(&written, &reference)
        };
        assert_eq!(
            names("busybox"),
            [
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest"
            ]
        );
        assert_eq!(
            names("127.0.0.1:5000/app:1"),
            ["127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"]
        );
        let d = Digest::of(b"m");
        assert_eq!(names(&format!("user/app@{d}"))[2], format!("user/app@{d}"));
    }
}
