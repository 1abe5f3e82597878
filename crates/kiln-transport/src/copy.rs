use kiln_oci::{Digest, ImageIndex, ImageManifest, Platform, media};

use crate::{ImageDestination, ImageSource, RawManifest, TransportError, select_platform};

/// Which images of an index to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The index and every image in it, byte for byte: the copy has the source's digest.
    All,
    /// The image for this platform only (it keeps its own manifest digest).
    Platform(Platform),
    /// The image for the platform kiln runs on, as skopeo picks by default.
    Default,
}

/// What a copy wrote.
#[derive(Clone, Debug)]
pub struct CopyReport {
    /// The digest of the top-level manifest or index at the destination.
    pub digest: Digest,
    pub media_type: String,
    /// How many image manifests were copied.
    pub images: usize,
}

/// Copies an image from `source` to `dest`. Manifests and indexes are copied as the exact
/// bytes the source holds, so digests are preserved; every blob is verified against its
/// digest as it streams. A single-image source is copied as it is, whatever the selection.
pub fn copy(
    source: &dyn ImageSource,
    dest: &mut dyn ImageDestination,
    selection: &Selection,
) -> Result<CopyReport, TransportError> {
    let top = source.top()?;
    let (written, images) = if !media::is_index(&top.media_type) {
        copy_image(source, dest, &top)?;
        (top, 1)
    } else {
        match selection {
            Selection::All => {
                let images = copy_index_children(source, dest, &top)?;
                (top, images)
            }
            Selection::Platform(p) => (copy_platform(source, dest, &top, p)?, 1),
            Selection::Default => (copy_platform(source, dest, &top, &Platform::host())?, 1),
        }
    };
    dest.commit(&written)?;
    Ok(CopyReport {
        digest: written.digest,
        media_type: written.media_type,
        images,
    })
}

/// Copies the image or index `manifest` of `source` into `dest`: its blobs (and, for an
/// index, its images), then the manifest itself by digest. Nothing is committed: this is one
/// entry of an index stitched together from several sources, which the caller commits last.
pub fn put_manifest_tree(
    source: &dyn ImageSource,
    dest: &mut dyn ImageDestination,
    manifest: &RawManifest,
) -> Result<(), TransportError> {
    if media::is_index(&manifest.media_type) {
        copy_index_children(source, dest, manifest)?;
    } else {
        copy_image(source, dest, manifest)?;
    }
    dest.put_manifest(manifest)
}

fn parse_index(
    source: &dyn ImageSource,
    index: &RawManifest,
) -> Result<ImageIndex, TransportError> {
    serde_json::from_slice(&index.bytes).map_err(|e| {
        TransportError::invalid(
            source.describe(),
            format!("unreadable index {}: {e}", index.digest),
        )
    })
}

/// Copies the image for `platform` out of `index` and returns its manifest.
fn copy_platform(
    source: &dyn ImageSource,
    dest: &mut dyn ImageDestination,
    index: &RawManifest,
    platform: &Platform,
) -> Result<RawManifest, TransportError> {
    let manifest = platform_manifest(source, index, platform)?;
    copy_image(source, dest, &manifest)?;
    Ok(manifest)
}

/// The image manifest for `platform` that `top` names: `top` itself unless it is an index.
pub fn platform_manifest(
    source: &dyn ImageSource,
    top: &RawManifest,
    platform: &Platform,
) -> Result<RawManifest, TransportError> {
    if !media::is_index(&top.media_type) {
        return Ok(top.clone());
    }
    let parsed = parse_index(source, top)?;
    let chosen =
        select_platform(&parsed, platform).map_err(|m| TransportError::PlatformMissing {
            location: source.describe(),
            wanted: m.wanted,
            available: m.available,
        })?;
    source.manifest(chosen)
}

/// How many bytes of manifests a copy holds back while their images' blobs go first.
const HELD_MANIFEST_BYTES: usize = 16 << 20;

/// Copies everything an index points to (nested indexes too); returns the number of images.
/// The manifests of an index's images are held back (up to [`HELD_MANIFEST_BYTES`]) until
/// the blobs of all of them are in, so that a registry receives the blobs of every platform
/// in one batch, several at once.
fn copy_index_children(
    source: &dyn ImageSource,
    dest: &mut dyn ImageDestination,
    index: &RawManifest,
) -> Result<usize, TransportError> {
    let mut images = 0;
    let mut held: Vec<RawManifest> = Vec::new();
    let put_held = |dest: &mut dyn ImageDestination, held: &mut Vec<RawManifest>| {
        held.drain(..).try_for_each(|m| dest.put_manifest(&m))
    };
    for child in parse_index(source, index)?.manifests {
        let manifest = source.manifest(&child)?;
        if media::is_index(&child.media_type) {
            // Nothing stays held while a nested index is copied.
            put_held(dest, &mut held)?;
            images += copy_index_children(source, dest, &manifest)?;
            dest.put_manifest(&manifest)?;
            continue;
        }
        copy_image(source, dest, &manifest)?;
        images += 1;
        held.push(manifest);
        if held.iter().map(|m| m.bytes.len()).sum::<usize>() > HELD_MANIFEST_BYTES {
            put_held(dest, &mut held)?;
        }
    }
    put_held(dest, &mut held)?;
    Ok(images)
}

/// Copies an image manifest's layers and config (not the manifest itself).
fn copy_image(
    source: &dyn ImageSource,
    dest: &mut dyn ImageDestination,
    manifest: &RawManifest,
) -> Result<(), TransportError> {
    let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes).map_err(|e| {
        TransportError::invalid(
            source.describe(),
            format!("unreadable manifest {}: {e}", manifest.digest),
        )
    })?;
    for blob in parsed.layers.iter().chain([&parsed.config]) {
        dest.put_blob(source, blob)?;
    }
    Ok(())
}
