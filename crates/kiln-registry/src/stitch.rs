//! Assembling an image index from images already in registries: what `kiln manifest create`
//! does for builds fanned out across machines.

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

/// How many blobs are copied at once.
const BLOBS_IN_FLIGHT: usize = 4;

/// Makes sure `target`'s repository holds the image `source` (pinned by digest) with all its
/// blobs: mounted when both are on one registry, else copied through a temp file, several at
/// once. The manifest goes last, once every blob is there.
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
        let blobs: Vec<&Descriptor> = manifest.layers.iter().chain([&manifest.config]).collect();
        crate::each_in_parallel(&blobs, BLOBS_IN_FLIGHT, |blob| {
            let path = scratch.join(blob.digest.hex());
            client.copy_blob(source, target, blob, &path).map(|_| ())
        })?;
    }
    client.push_manifest(
        &target.with_digest(fetched.digest),
        &fetched.media_type,
        &fetched.bytes,
    )?;
    Ok(())
}

/// Copies every entry (pinned by digest) into each target's repository, then pushes the index
/// over them to every target, last, so no target tag ever names content that is missing.
/// Returns the index's digest.
pub fn push_index(
    client: &RegistryClient,
    entries: &[(Reference, Descriptor)],
    targets: &[Reference],
    scratch: &std::path::Path,
) -> Result<kiln_oci::Digest, RegistryError> {
    for target in targets {
        for (at, _) in entries {
            copy_image(client, at, target, scratch)?;
        }
    }
    let descriptors: Vec<Descriptor> = entries.iter().map(|(_, d)| d.clone()).collect();
    let (media_type, bytes) = index_of(&descriptors);
    let mut digest = kiln_oci::Digest::of(&bytes);
    for target in targets {
        digest = client.push_manifest(target, &media_type, &bytes)?;
    }
    Ok(digest)
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
