//! The busybox fixtures: a five-platform base image in OCI and Docker flavours, pushable to
//! the registry and unpackable by umoci into a rootfs with the right binaries.

use std::fs;
use std::path::Path;

use kiln_testkit::{
    FIXTURE_ARCHES, Registry, busybox_fixtures, push_busybox, skopeo_inspect, skopeo_raw,
    skopeo_to_oci, umoci_unpack,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ELF_MACHINE_X86_64: u16 = 0x3E;
const ELF_MACHINE_AARCH64: u16 = 0xB7;

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        hex,
        "blob content does not match digest"
    );
    bytes
}

/// Returns the image index a layout tags `latest`, checking the index.json entry.
fn latest_index(layout: &Path, expected_media_type: &str) -> Value {
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let layout_index = read_json(&layout.join("index.json"));
    let entries = layout_index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{layout_index}");
    let entry = &entries[0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    assert_eq!(entry["mediaType"], expected_media_type);
    let index: Value =
        serde_json::from_slice(&blob(layout, entry["digest"].as_str().unwrap())).unwrap();
    assert_eq!(index["mediaType"], expected_media_type);
    index
}

fn assert_platforms(index: &Value) {
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), FIXTURE_ARCHES.len(), "{index}");
    for &(deb_arch, oci_arch, variant) in FIXTURE_ARCHES {
        let found = manifests
            .iter()
            .find(|m| m["platform"]["architecture"] == oci_arch);
        let manifest =
            found.unwrap_or_else(|| panic!("no {oci_arch} ({deb_arch}) manifest in {index}"));
        assert_eq!(manifest["platform"]["os"], "linux");
        assert_eq!(
            manifest["platform"]["variant"].as_str(),
            variant,
            "{oci_arch}"
        );
    }
}

#[test]
fn oci_layout_indexes_one_image_per_platform() {
    let layout = &busybox_fixtures().oci_layout;
    let index = latest_index(layout, "application/vnd.oci.image.index.v1+json");
    assert_platforms(&index);
    for descriptor in index["manifests"].as_array().unwrap() {
        assert_eq!(
            descriptor["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let manifest: Value =
            serde_json::from_slice(&blob(layout, descriptor["digest"].as_str().unwrap())).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let config: Value = serde_json::from_slice(&blob(
            layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ))
        .unwrap();
        assert_eq!(
            config["architecture"],
            descriptor["platform"]["architecture"]
        );
        assert_eq!(config["variant"], descriptor["platform"]["variant"]);
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        // diff_id is the digest of the uncompressed layer.
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(
                &blob(layout, layers[0]["digest"].as_str().unwrap())[..],
            ),
            &mut tar,
        )
        .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
    }
}

#[test]
fn docker_layout_uses_docker_media_types() {
    let layout = &busybox_fixtures().docker_layout;
    let index = latest_index(
        layout,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    );
    assert_platforms(&index);
    for descriptor in index["manifests"].as_array().unwrap() {
        assert_eq!(
            descriptor["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let manifest: Value =
            serde_json::from_slice(&blob(layout, descriptor["digest"].as_str().unwrap())).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.docker.container.image.v1+json"
        );
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
}

#[test]
fn pushed_tags_serve_an_oci_index_and_a_docker_manifest_list() {
    let registry = Registry::start();
    let (oci_digest, docker_digest) = push_busybox(&registry, "fixtures/busybox");
    assert_ne!(oci_digest, docker_digest);

    for (tag, digest, media_type) in [
        (
            "latest",
            &oci_digest,
            "application/vnd.oci.image.index.v1+json",
        ),
        (
            "docker",
            &docker_digest,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ] {
        let raw = skopeo_raw(&format!("{}/fixtures/busybox:{tag}", registry.addr()));
        assert_eq!(
            &format!("sha256:{}", hex::encode(Sha256::digest(&raw))),
            digest,
            "{tag}"
        );
        let index: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(index["mediaType"], media_type, "{tag}");
        assert_platforms(&index);
    }

    let arm = skopeo_inspect(
        &format!("{}/fixtures/busybox:latest", registry.addr()),
        Some("arm/v7"),
    );
    assert_eq!(arm["Architecture"], "arm");
    assert_eq!(
        arm["Env"][0],
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
}

/// e_machine of an ELF file (little- or big-endian, per EI_DATA).
fn elf_machine(path: &Path) -> u16 {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    let machine = [bytes[18], bytes[19]];
    match bytes[5] {
        1 => u16::from_le_bytes(machine),
        2 => u16::from_be_bytes(machine),
        other => panic!("bad EI_DATA {other}"),
    }
}

#[test]
fn unpacked_images_hold_busybox_for_their_platform() {
    let registry = Registry::start();
    push_busybox(&registry, "unpack/busybox");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    for (arch, machine) in [
        ("amd64", ELF_MACHINE_X86_64),
        ("arm64", ELF_MACHINE_AARCH64),
    ] {
        skopeo_to_oci(
            &format!("{}/unpack/busybox:latest", registry.addr()),
            &layout,
            arch,
            Some(arch),
        );
        let rootfs = umoci_unpack(&layout, arch, &work.path().join(format!("bundle-{arch}")));
        assert_eq!(elf_machine(&rootfs.join("bin/busybox")), machine, "{arch}");
        assert_eq!(
            fs::read_link(rootfs.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(
            passwd.contains("builder:x:1000:1000::/home/builder:/bin/sh\n"),
            "{passwd}"
        );
        assert!(
            passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"),
            "{passwd}"
        );
        let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
        assert!(group.contains("nogroup:x:65534:\n"), "{group}");

        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let home = fs::metadata(rootfs.join("home/builder")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        assert_eq!(
            fs::metadata(rootfs.join("tmp"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o1777
        );
        assert_eq!(
            fs::metadata(rootfs.join("root"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o700
        );
    }
}
