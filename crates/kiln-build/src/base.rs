use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;

use kiln_oci::{
    Descriptor, Digest, DigestReader, ImageConfig, ImageIndex, ImageManifest, Platform, media,
};
use kiln_registry::{Reference, RegistryClient};

use crate::progress::Progress;
use crate::{BuildError, Store};

/// One layer of an image under construction: its extracted dir and its stored blob.
#[derive(Clone, Debug)]
pub(crate) struct LayerRef {
    pub dir: PathBuf,
    pub blob: Descriptor,
}

/// A base image resolved for one platform, with every layer extracted.
pub(crate) struct BaseImage {
    pub config: ImageConfig,
    pub layers: Vec<LayerRef>,
}

fn bad(reference: &Reference, message: impl Into<String>) -> BuildError {
    BuildError::BadImage {
        reference: reference.to_string(),
        message: message.into(),
    }
}

fn base_err(reference: &Reference) -> impl FnOnce(kiln_registry::RegistryError) -> BuildError + '_ {
    move |source| BuildError::BaseImage {
        reference: reference.to_string(),
        source: Box::new(source),
    }
}

/// Picks the manifest for `platform` from an index, or says which platforms there are.
pub(crate) fn select_platform<'a>(
    reference: &Reference,
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, BuildError> {
    // Exact variant first, then the compatible lower ones (arm), as containerd picks.
    platform
        .compatible()
        .iter()
        .find_map(|want| {
            index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        })
        .ok_or_else(|| BuildError::PlatformMissing {
            reference: reference.to_string(),
            wanted: platform.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| p.normalized().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

pub(crate) fn pull(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    progress: &Progress,
) -> Result<BaseImage, BuildError> {
    let mut fetched = client
        .fetch_manifest(reference)
        .map_err(base_err(reference))?;
    if media::is_index(&fetched.media_type) {
        let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| bad(reference, format!("unreadable index: {e}")))?;
        let chosen = select_platform(reference, &index, platform)?;
        let pinned = reference.with_digest(chosen.digest.clone());
        fetched = client
            .fetch_manifest(&pinned)
            .map_err(base_err(reference))?;
    }
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| bad(reference, format!("unreadable manifest: {e}")))?;
    let resolved = reference.with_digest(fetched.digest.clone());

    ensure_blob(client, store, &resolved, &manifest.config)?;
    let config: ImageConfig = serde_json::from_slice(
        &std::fs::read(store.blob_path(&manifest.config.digest))
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

    let mut layers = Vec::new();
    for (blob, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        if media::layer_compression(&blob.media_type).is_none() {
            return Err(bad(
                reference,
                format!(
                    "layer {} has unsupported media type {}",
                    blob.digest, blob.media_type
                ),
            ));
        }
        ensure_blob(client, store, &resolved, blob)?;
        let dir = store.layer_dir(diff_id);
        if !dir.exists() {
            progress.detail(&format!("extracting {}", blob.digest));
            extract(store, blob, diff_id, reference)?;
        }
        layers.push(LayerRef {
            dir,
            blob: blob.clone(),
        });
    }
    Ok(BaseImage { config, layers })
}

fn ensure_blob(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    blob: &Descriptor,
) -> Result<(), BuildError> {
    if store.has_blob(&blob.digest) {
        return Ok(());
    }
    client
        .fetch_blob(reference, blob, &store.blob_path(&blob.digest))
        .map_err(base_err(reference))
}

/// Extracts a stored layer blob into its layer dir, checking the uncompressed stream hashes to
/// the diff_id the config promised.
fn extract(
    store: &Store,
    blob: &Descriptor,
    diff_id: &Digest,
    reference: &Reference,
) -> Result<(), BuildError> {
    let file = File::open(store.blob_path(&blob.digest))
        .map_err(BuildError::io("opening a layer blob"))?;
    let tmp = store.temp_dir("extract-")?;
    let target = tmp.path().join("layer");
    std::fs::create_dir(&target).map_err(BuildError::io("creating a layer dir"))?;
    let stream = kiln_snapshot::decompress(BufReader::new(file))
        .map_err(|e| bad(reference, format!("layer {}: {e}", blob.digest)))?;
    let mut hashed = DigestReader::new(stream);
    kiln_snapshot::extract_layer(&mut hashed, &target)
        .map_err(|e| bad(reference, format!("layer {}: {e}", blob.digest)))?;
    // Tar readers may stop at the end-of-archive marker; the digest covers the padding too.
    io::copy(&mut hashed, &mut io::sink()).map_err(BuildError::io("reading a layer blob"))?;
    let (actual, _) = hashed.finish();
    if &actual != diff_id {
        return Err(bad(
            reference,
            format!(
                "layer {} uncompresses to {actual}, but the config says {diff_id}",
                blob.digest
            ),
        ));
    }
    store.commit_layer_dir(&target, diff_id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[&str]) -> ImageIndex {
        ImageIndex::new(
            media::OCI_INDEX,
            platforms
                .iter()
                .map(|p| {
                    let mut d =
                        Descriptor::new(media::OCI_MANIFEST, kiln_oci::Digest::of(p.as_bytes()), 1);
                    d.platform = Some(p.parse().unwrap());
                    d
                })
                .collect(),
        )
    }

    fn pick(idx: &ImageIndex, want: &str) -> Result<String, String> {
        let r: Reference = "registry.example/base:1".parse().unwrap();
        select_platform(&r, idx, &want.parse().unwrap())
            .map(|d| d.platform.as_ref().unwrap().to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn exact_variant_wins_then_lower_arm_variants() {
        let idx = index(&["linux/arm/v6", "linux/arm/v7", "linux/arm64"]);
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), "linux/arm/v7");
        let idx = index(&["linux/arm/v5", "linux/arm/v6", "linux/arm64"]);
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), "linux/arm/v6");
        // Never a higher variant, and never 32-bit arm for arm64.
        let idx = index(&["linux/arm/v7"]);
        let err = pick(&idx, "linux/arm/v6").unwrap_err();
        assert!(
            err.contains("linux/arm/v6") && err.contains("it has: linux/arm/v7"),
            "{err}"
        );
        assert!(pick(&idx, "linux/arm64").is_err());
    }
}
