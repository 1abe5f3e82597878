//! Single-image OCI layouts for `FROM oci-layout://`: the busybox fixture with its layers
//! recompressed by the Debian `gzip` and `zstd` tools (a base image as BuildKit and
//! containerd push with `compression=zstd`), or any config and layer bytes at all.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::fixtures::{busybox_fixtures, to_json_bytes, write_blob};

/// The OCI media type of a zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Writes at `dest` an OCI layout tagged `latest` holding the busybox fixture image for the
/// OCI architecture `arch`, each layer recompressed with `zstd` and given `layer_media_type`
/// (a gzip type makes a mislabelled layer, as some registries serve).
pub fn busybox_zstd_layout(dest: &Path, arch: &str, layer_media_type: &str) {
    let source = &busybox_fixtures().oci_layout;
    let blob = |digest: &Value| -> Vec<u8> {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        std::fs::read(source.join("blobs/sha256").join(hex)).unwrap()
    };
    let json = |bytes: Vec<u8>| -> Value { serde_json::from_slice(&bytes).unwrap() };
    let top = json(std::fs::read(source.join("index.json")).unwrap());
    let index = json(blob(&top["manifests"][0]["digest"]));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("the busybox fixture has no {arch} image"));
    let manifest = json(blob(&entry["digest"]));

    let config = &manifest["config"];
    let layers: Vec<(&str, Vec<u8>)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| (layer_media_type, gzip_to_zstd(&blob(&layer["digest"]))))
        .collect();
    write_image_layout(
        dest,
        &entry["platform"],
        (
            config["mediaType"].as_str().unwrap(),
            &blob(&config["digest"]),
        ),
        &layers,
    );
}

/// Writes at `dest` an OCI layout tagged `latest` holding one image for `platform`: its
/// config and its layers, each (media type, bytes) as they are.
pub fn write_image_layout(
    dest: &Path,
    platform: &Value,
    config: (&str, &[u8]),
    layers: &[(&str, Vec<u8>)],
) {
    std::fs::create_dir_all(dest.join("blobs/sha256")).unwrap();
    let config = write_blob(dest, config.0, config.1);
    let layers: Vec<Value> = layers
        .iter()
        .map(|(media_type, bytes)| write_blob(dest, media_type, bytes))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    let mut descriptor = write_blob(dest, OCI_MANIFEST, &to_json_bytes(&manifest));
    descriptor["platform"] = platform.clone();
    descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": "latest" });
    let layout_index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor],
    });
    std::fs::write(dest.join("index.json"), to_json_bytes(&layout_index)).unwrap();
    std::fs::write(
        dest.join("oci-layout"),
        to_json_bytes(&json!({ "imageLayoutVersion": "1.0.0" })),
    )
    .unwrap();
}

fn gzip_to_zstd(gz: &[u8]) -> Vec<u8> {
    let mut child = Command::new("sh")
        .args(["-c", "gzip -dc | zstd -q -c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let gz = gz.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&gz).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        output.status.success(),
        "gzip -dc | zstd failed (scripts/install-deps.sh installs zstd)"
    );
    output.stdout
}
