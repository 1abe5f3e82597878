//! An index stitched from images already in a registry (`kiln manifest create --tag`,
//! `kiln imagetools create`) goes through the one push path: within a registry every blob is
//! mounted, never downloaded or uploaded again; the images go in by digest, and the index goes
//! to the tag last. Checked through a proxy in front of a real registry.

use std::collections::BTreeSet;

use kiln_oci::ImageManifest;
use kiln_registry::{ClientOptions, Reference, RegistryClient};
use kiln_testkit::{FaultProxy, Registry, push_busybox_to};
use kiln_transport::manifest_list::{push_entries, resolve_sources};

#[test]
fn stitching_within_a_registry_mounts_every_blob_and_tags_last() {
    let registry = Registry::start();
    push_busybox_to(registry.addr(), "src/app");
    let proxy = FaultProxy::start(registry.addr(), vec![]);
    let client = RegistryClient::new(&ClientOptions::default()).unwrap();
    let source = format!("{}/src/app:latest", proxy.addr());
    let entries = resolve_sources(&client, &[source], false).unwrap();
    assert!(entries.len() >= 2, "a multi-platform source");
    let mut blobs = BTreeSet::new();
    for entry in &entries {
        let at = entry
            .image_ref()
            .unwrap()
            .with_digest(entry.descriptor.digest.clone());
        let manifest: ImageManifest =
            serde_json::from_slice(&client.fetch_manifest(&at).unwrap().bytes).unwrap();
        blobs.extend(
            manifest
                .layers
                .iter()
                .chain([&manifest.config])
                .map(|d| d.digest.to_string()),
        );
    }
    let seen_before = proxy.requests().len();
    let target: Reference = format!("{}/dst/app:list", proxy.addr()).parse().unwrap();

    let digest = push_entries(&client, &entries, std::slice::from_ref(&target)).unwrap();

    let requests = proxy.requests()[seen_before..].to_vec();
    let mounts: BTreeSet<&str> = requests
        .iter()
        .filter(|r| r.contains("?mount="))
        .filter_map(|r| r.split("mount=").nth(1)?.split(['&', ' ']).next())
        .collect();
    let wanted: BTreeSet<&str> = blobs.iter().map(String::as_str).collect();
    assert_eq!(mounts, wanted, "every blob mounted: {requests:#?}");
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("PATCH") || r.starts_with("GET /v2/src/app/blobs/")),
        "nothing downloaded or uploaded: {requests:#?}"
    );
    let puts: Vec<&String> = requests.iter().filter(|r| r.starts_with("PUT")).collect();
    assert!(
        puts.last()
            .is_some_and(|r| r.starts_with("PUT /v2/dst/app/manifests/list")),
        "the tag last: {puts:#?}"
    );
    assert_eq!(
        puts.len(),
        entries.len() + 1,
        "each image by digest, then the index"
    );
    let pushed = client.fetch_manifest(&target).unwrap();
    assert_eq!(pushed.digest, digest);
}
