//! Reading the images an index is stitched from (what `kiln manifest create` does for builds
//! fanned out across machines), and the index over them. kiln-transport's `manifest_list`
//! pushes it, through the one push path.

use kiln_oci::{Descriptor, ImageConfig, ImageIndex, ImageManifest, media, to_json_bytes};

use crate::{Reference, RegistryClient, RegistryError};

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
pub fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
        || d.platform.as_ref().is_some_and(|p| p.os == "unknown")
}

/// The platform manifests a source contributes: its entries if it is an index (attestation
/// manifests dropped unless `keep_attestations`), else itself, with the platform read from its
/// config.
pub fn platform_manifests(
    client: &RegistryClient,
    source: &Reference,
    keep_attestations: bool,
) -> Result<Vec<(Reference, Descriptor)>, RegistryError> {
    let fetched = client.fetch_manifest(source)?;
    if media::is_index(&fetched.media_type) {
        let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| bad(source, format!("unreadable index: {e}")))?;
        return Ok(index
            .manifests
            .into_iter()
            .filter(|d| keep_attestations || !is_attestation(d))
            .map(|d| (source.with_digest(d.digest.clone()), d))
            .collect());
    }
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| bad(source, format!("unreadable manifest: {e}")))?;
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
