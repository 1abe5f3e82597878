//! A `docker save` archive: kiln indexes the tar, reads manifest.json, describes the image's
//! config and layers, and copies each blob out verified. Opening it with no tag and with a
//! tag, then reading every blob, must return results or errors, never panic.
#![no_main]

use kiln_oci::ImageManifest;
use kiln_registry::Reference;
use kiln_transport::{DockerArchiveSource, ImageSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive.tar");
    std::fs::write(&archive, data).unwrap();
    let tagged: Reference = "busybox:latest".parse().unwrap();
    for reference in [None, Some(&tagged)] {
        let Ok(source) = DockerArchiveSource::open(&archive, reference) else {
            continue;
        };
        let top = source.top().unwrap();
        let manifest: ImageManifest = serde_json::from_slice(&top.bytes).unwrap();
        for (n, blob) in std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .enumerate()
        {
            let _ = source.blob_to_file(blob, &tmp.path().join(format!("blob-{n}")));
        }
    }
});
