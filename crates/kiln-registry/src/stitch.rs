//! Assembling an image index from images already in registries: what `kiln manifest create`
//! does for builds fanned out across machines.

use kiln_oci::{Descriptor, ImageConfig, ImageIndex, ImageManifest, media, to_json_bytes};

use crate::{Reference, RegistryClient, RegistryError};

/// Configs are small; anything larger is not a config.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

fn bad(r: &Reference, message: String) -> RegistryError {
    RegistryError::Http {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        action: "reading an image".into(),
        status: 200,
        message,
    }
}

/// An attestation manifest buildx attaches to an index (platform unknown/unknown): not an
/// image anyone can run.
fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
        || d.platform.as_ref().is_some_and(|p| p.os == "unknown")
}

/// The platform manifests a source contributes: its entries if it is an index (attestations
/// dropped), else itself, with the platform read from its config.
pub fn platform_manifests(
    client: &RegistryClient,
    source: &Reference,
) -> Result<Vec<(Reference, Descriptor)>, RegistryError> {
    let fetched = client.fetch_manifest(source)?;
    if media::is_index(&fetched.media_type) {
        let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| bad(source, format!("unreadable index: {e}")))?;
        return Ok(index
            .manifests
            .into_iter()
            .filter(|d| !is_attestation(d))
            .map(|d| (source.with_digest(d.digest.clone()), d))
            .collect());
    }
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| bad(source, format!("unreadable manifest: {e}")))?;
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(bad(source, "the image config is implausibly large".into()));
    }
    let config: ImageConfig =
        serde_json::from_slice(&client.fetch_small_blob(source, &manifest.config)?)
            .map_err(|e| bad(source, format!("unreadable image config: {e}")))?;
    let mut desc = Descriptor::new(
        &fetched.media_type,
        fetched.digest.clone(),
        fetched.bytes.len() as u64,
    );
    desc.platform = Some(config.platform().normalized());
    Ok(vec![(source.with_digest(fetched.digest), desc)])
}

/// Makes sure `target`'s repository holds the image `source` (pinned by digest) with all its
/// blobs, copying what is missing through a temp file.
pub fn copy_image(
    client: &RegistryClient,
    source: &Reference,
    target: &Reference,
    scratch: &std::path::Path,
) -> Result<(), RegistryError> {
    let fetched = client.fetch_manifest(source)?;
    let same_repo = source.registry == target.registry && source.repository == target.repository;
    if !same_repo {
        let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| bad(source, format!("unreadable manifest: {e}")))?;
        for blob in manifest.layers.iter().chain([&manifest.config]) {
            if client.blob_exists(target, &blob.digest)? {
                continue;
            }
            let path = scratch.join(blob.digest.hex());
            client.fetch_blob(source, blob, &path)?;
            let pushed = client.push_blob(target, blob, &path);
            let _ = std::fs::remove_file(&path);
            pushed?;
        }
    }
    client.push_manifest(
        &target.with_digest(fetched.digest),
        &fetched.media_type,
        &fetched.bytes,
    )?;
    Ok(())
}

/// An index over `entries`, in OCI media types unless every entry is a Docker manifest.
pub fn index_of(entries: &[Descriptor]) -> (String, Vec<u8>) {
    let docker = !entries.is_empty()
        && entries
            .iter()
            .all(|d| d.media_type == media::DOCKER_MANIFEST);
    let media_type = if docker {
        media::DOCKER_MANIFEST_LIST
    } else {
        media::OCI_INDEX
    };
    let index = ImageIndex::new(media_type, entries.to_vec());
    (media_type.to_string(), to_json_bytes(&index))
}
