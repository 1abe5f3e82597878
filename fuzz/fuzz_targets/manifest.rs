//! Any bytes as a registry's manifest or index, read the way kiln reads them: the media type
//! from the body or a Content-Type, then the manifest, index or config types. What parses is
//! written back and read again to the same value; platform selection and attestation checks
//! on an index never panic.
#![no_main]

use kiln_oci::{ImageConfig, ImageIndex, ImageManifest, Platform, media, to_json_bytes};
use libfuzzer_sys::fuzz_target;

const PLATFORMS: [&str; 4] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "windows/amd64",
];

fuzz_target!(|data: &[u8]| {
    for content_type in [None, Some(media::OCI_INDEX), Some("text/plain; charset=x")] {
        let _ = kiln_registry::manifest_media_type(data, content_type);
    }
    if let Ok(index) = serde_json::from_slice::<ImageIndex>(data) {
        for platform in PLATFORMS {
            let platform: Platform = platform.parse().expect("a valid platform");
            let _ = kiln_transport::select_platform(&index, &platform);
        }
        for entry in &index.manifests {
            let _ = kiln_registry::stitch::is_attestation(entry);
            let _ = entry.platform.as_ref().map(Platform::normalized);
        }
        let again: ImageIndex =
            serde_json::from_slice(&to_json_bytes(&index)).expect("kiln reads the index it wrote");
        assert_eq!(again, index);
    }
    if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(data) {
        for layer in &manifest.layers {
            let _ = media::layer_compression(&layer.media_type);
        }
        let again: ImageManifest = serde_json::from_slice(&to_json_bytes(&manifest))
            .expect("kiln reads the manifest it wrote");
        assert_eq!(again, manifest);
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let _ = config.platform().normalized();
        let _ = config.platform().compatible();
    }
});
