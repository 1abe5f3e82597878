//! `kiln manifest` (docker manifest's verbs, manifest-tool's push-spec) and `kiln imagetools`
//! against a real registry, checked with skopeo.

mod common;

use std::path::Path;

use common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `busybox:latest` entry for `arch` (`amd64`, `arm64`, `arm`, ...).
fn busybox_entry(env: &Env, arch: &str) -> Value {
    manifest(&env.tag("busybox:latest"))["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("busybox has no {arch} entry"))
        .clone()
}

/// `<registry>/busybox@<digest of the arch entry>`.
fn busybox_image(env: &Env, arch: &str) -> String {
    let digest = busybox_entry(env, arch)["digest"]
        .as_str()
        .unwrap()
        .to_string();
    format!("{}@{digest}", env.tag("busybox"))
}

/// Pushes `busybox:attested`: an OCI index of the amd64 and arm64 images plus a buildx-style
/// attestation manifest for amd64 (platform unknown/unknown). Returns the attestation's digest.
fn push_attested_index(env: &Env) -> String {
    let amd64 = busybox_entry(env, "amd64");
    let config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let statement = br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2","subject":[],"predicate":{}}"#;
    let config_digest = put_blob(env, "busybox", config);
    let statement_digest = put_blob(env, "busybox", statement);
    let attestation = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json",
                    "digest": statement_digest, "size": statement.len(),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    }))
    .unwrap();
    let attestation_digest = sha256(&attestation);
    put_manifest(
        env,
        "busybox",
        &attestation_digest,
        OCI_MANIFEST,
        &attestation,
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            amd64,
            busybox_entry(env, "arm64"),
            {"mediaType": OCI_MANIFEST, "digest": attestation_digest, "size": attestation.len(),
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.digest": amd64["digest"],
                             "vnd.docker.reference.type": "attestation-manifest"}},
        ],
    }))
    .unwrap();
    put_manifest(env, "busybox", "attested", OCI_INDEX, &index);
    attestation_digest
}

fn digests(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The local list directories kept under the store.
fn local_lists(store: &Path) -> Vec<String> {
    let dir = store.join("manifests");
    if dir.exists() {
        list_dir(&dir)
    } else {
        Vec::new()
    }
}

#[test]
fn create_annotate_push_gives_an_index_with_the_annotated_platform() {
    let env = Env::new();
    let list = env.tag("app:1");
    let (amd64, arm64) = (busybox_image(&env, "amd64"), busybox_image(&env, "arm64"));
    assert_ok(&env.kiln(&["manifest", "create", &list, &amd64, &arm64]));
    // Nothing is pushed until `push`.
    assert!(!image_exists(&list));
    assert_eq!(local_lists(&env.store()).len(), 1);
    assert_ok(&env.kiln(&[
        "manifest",
        "annotate",
        &list,
        &arm64,
        "--variant",
        "v8",
        "--os-version",
        "6.1",
        "--os-features",
        "sse4,avx",
    ]));
    let o = env.kiln(&["manifest", "push", &list]);
    assert_ok(&o);
    let pushed = manifest(&list);
    assert_eq!(pushed["mediaType"], OCI_INDEX);
    let entries = pushed["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{pushed}");
    assert_eq!(
        entries[0]["platform"],
        json!({"architecture": "amd64", "os": "linux"})
    );
    assert_eq!(
        entries[1]["platform"],
        json!({"architecture": "arm64", "os": "linux", "variant": "v8",
               "os.version": "6.1", "os.features": ["sse4", "avx"]})
    );
    // Printed digest is the index's digest, and the images were copied into app's repository.
    assert_eq!(stdout(&o).trim(), sha256(&skopeo_raw(&list)));
    let arm = skopeo_inspect(&list, Some("arm64"));
    assert_eq!(arm["Architecture"], "arm64");
    // Without --purge the list stays; with it, it is gone.
    assert_eq!(local_lists(&env.store()).len(), 1);
    assert_ok(&env.kiln(&["manifest", "push", "--purge", &list]));
    assert!(local_lists(&env.store()).is_empty());
}

#[test]
fn annotate_rejects_unknown_platforms_and_unknown_entries() {
    let env = Env::new();
    let list = env.tag("app:1");
    let amd64 = busybox_image(&env, "amd64");
    assert_ok(&env.kiln(&["manifest", "create", &list, &amd64]));
    let err = assert_failed(&env.kiln(&["manifest", "annotate", &list, &amd64, "--arch", "sparc"]));
    assert_contains_all(&err, &["unknown architecture `sparc`", "arm64"]);
    let other = busybox_image(&env, "s390x");
    let err = assert_failed(&env.kiln(&["manifest", "annotate", &list, &other, "--os", "linux"]));
    assert_contains_all(&err, &["has no entry", &other[..30]]);
}

#[test]
fn an_index_source_contributes_all_its_platforms() {
    let env = Env::new();
    let list = env.tag("mirror:1");
    let source = env.tag("busybox:latest");
    assert_ok(&env.kiln(&["manifest", "create", &list, &source]));
    // An index source gave several entries: annotate needs one named by digest.
    let err = assert_failed(&env.kiln(&["manifest", "annotate", &list, &source, "--os", "linux"]));
    assert_contains_all(&err, &["name one by digest"]);
    assert_ok(&env.kiln(&["manifest", "push", &list]));
    let original = manifest(&source);
    let pushed = manifest(&list);
    assert_eq!(digests(&pushed), digests(&original));
    assert_eq!(pushed["manifests"].as_array().unwrap().len(), 5);
    let arm = skopeo_inspect(&list, Some("arm/v7"));
    assert_eq!(arm["Architecture"], "arm");
}

#[test]
fn attestation_manifests_are_dropped_unless_kept() {
    let env = Env::new();
    let attestation = push_attested_index(&env);
    let source = env.tag("busybox:attested");
    let amd64 = busybox_entry(&env, "amd64")["digest"].clone();

    let plain = env.tag("plain:1");
    assert_ok(&env.kiln(&["manifest", "create", &plain, &source]));
    assert_ok(&env.kiln(&["manifest", "push", &plain]));
    let index = manifest(&plain);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    assert!(!digests(&index).contains(&attestation));

    let kept = env.tag("kept:1");
    assert_ok(&env.kiln(&["manifest", "create", "--keep-attestations", &kept, &source]));
    assert_ok(&env.kiln(&["manifest", "push", &kept]));
    let index = manifest(&kept);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{index}");
    assert_eq!(entries[2]["digest"], attestation.as_str());
    assert_eq!(
        entries[2]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        entries[2]["annotations"]["vnd.docker.reference.digest"],
        amd64
    );
    // The attestation manifest and its blobs were copied into kept's repository.
    assert!(image_exists(&format!("{}@{attestation}", env.tag("kept"))));

    // imagetools inspect shows the attestation with its annotations, as buildx does.
    let o = env.kiln(&["imagetools", "inspect", &source]);
    assert_ok(&o);
    assert_contains_all(
        &stdout(&o),
        &[
            "\n  Name:        ",
            "\n  Platform:    unknown/unknown\n  Annotations:\n",
            &format!(
                "\n    vnd.docker.reference.digest: {}\n",
                amd64.as_str().unwrap()
            ),
            "\n    vnd.docker.reference.type:   attestation-manifest\n",
        ],
    );

    // imagetools create follows the same rule.
    let merged = env.tag("merged:1");
    assert_ok(&env.kiln(&["imagetools", "create", "-t", &merged, &source]));
    assert_eq!(manifest(&merged)["manifests"].as_array().unwrap().len(), 2);
    let merged_kept = env.tag("merged:kept");
    assert_ok(&env.kiln(&[
        "imagetools",
        "create",
        "--keep-attestations",
        "-t",
        &merged_kept,
        &source,
    ]));
    assert!(digests(&manifest(&merged_kept)).contains(&attestation));
}

#[test]
fn inspect_shows_local_lists_and_registry_images() {
    let env = Env::new();
    let list = env.tag("app:1");
    let (amd64, arm64) = (busybox_image(&env, "amd64"), busybox_image(&env, "arm64"));
    assert_ok(&env.kiln(&["manifest", "create", &list, &amd64, &arm64]));

    // A local list: the index push would send, docker-indented; --raw gives its exact bytes.
    let o = env.kiln(&["manifest", "inspect", &list]);
    assert_ok(&o);
    let shown: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(shown["manifests"].as_array().unwrap().len(), 2);
    assert!(
        stdout(&o).contains("\n   \"schemaVersion\": 2"),
        "{}",
        stdout(&o)
    );
    let raw = env.kiln(&["manifest", "inspect", "--raw", &list]);
    assert_ok(&raw);
    assert_ok(&env.kiln(&["manifest", "push", &list]));
    assert_eq!(raw.stdout, skopeo_raw(&list));

    // A registry index: --raw is byte-exact, --verbose has each manifest with its content.
    let busybox = env.tag("busybox:latest");
    let raw = env.kiln(&["manifest", "inspect", "--raw", &busybox]);
    assert_ok(&raw);
    assert_eq!(raw.stdout, skopeo_raw(&busybox));
    let verbose = env.kiln(&["manifest", "inspect", "--verbose", &busybox]);
    assert_ok(&verbose);
    let all: Value = serde_json::from_slice(&verbose.stdout).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0]["Descriptor"]["platform"]["architecture"], "amd64");
    assert!(all[0]["Ref"].as_str().unwrap().contains("@sha256:"));
    assert!(
        !all[0]["OCIManifest"]["layers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A single image: one object, Docker content under SchemaV2Manifest.
    let docker_amd64 = format!(
        "{}@{}",
        env.tag("busybox"),
        manifest(&env.tag("busybox:docker"))["manifests"][0]["digest"]
            .as_str()
            .unwrap()
    );
    let verbose = env.kiln(&["manifest", "inspect", "-v", &docker_amd64]);
    assert_ok(&verbose);
    let one: Value = serde_json::from_slice(&verbose.stdout).unwrap();
    assert_eq!(one["Ref"], docker_amd64.as_str());
    assert_eq!(
        one["SchemaV2Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // Two names: the entry of the local list.
    assert_ok(&env.kiln(&["manifest", "create", &env.tag("app:2"), &amd64]));
    let entry = env.kiln(&["manifest", "inspect", "--raw", &env.tag("app:2"), &amd64]);
    assert_ok(&entry);
    assert_eq!(entry.stdout, skopeo_raw(&amd64));

    // imagetools: buildx's human output, raw bytes, JSON.
    let o = env.kiln(&["imagetools", "inspect", &busybox]);
    assert_ok(&o);
    let text = stdout(&o);
    let digest = sha256(&skopeo_raw(&busybox));
    assert!(
        text.starts_with(&format!(
            "Name:      {busybox}\nMediaType: {OCI_INDEX}\nDigest:    {digest}\n\nManifests:\n  Name:      {}@",
            busybox
        )),
        "{text}"
    );
    assert_contains_all(
        &text,
        &[
            "  Platform:  linux/amd64\n",
            "  Platform:  linux/arm/v7\n",
            "  MediaType: application/vnd.oci.image.manifest.v1+json\n",
        ],
    );
    let raw = env.kiln(&["imagetools", "inspect", "--raw", &busybox]);
    assert_eq!(raw.stdout, skopeo_raw(&busybox));
    let o = env.kiln(&["imagetools", "inspect", "--format", "json", &busybox]);
    assert_ok(&o);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["name"], busybox.as_str());
    assert_eq!(j["manifest"]["digest"], digest.as_str());
    assert_eq!(j["manifest"]["manifests"].as_array().unwrap().len(), 5);
    assert_eq!(j["image"]["linux/arm/v7"]["architecture"], "arm");
}

#[test]
fn create_refuses_an_existing_list_unless_amended_and_rm_deletes_lists() {
    let env = Env::new();
    let list = env.tag("app:1");
    let (amd64, arm64) = (busybox_image(&env, "amd64"), busybox_image(&env, "arm64"));
    assert_ok(&env.kiln(&["manifest", "create", &list, &amd64]));
    let err = assert_failed(&env.kiln(&["manifest", "create", &list, &arm64]));
    assert_contains_all(&err, &["exists already", "--amend"]);
    assert_ok(&env.kiln(&["manifest", "create", "--amend", &list, &arm64]));
    let o = env.kiln(&["manifest", "inspect", &list]);
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let arches: Vec<&str> = shown["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);

    let second = env.tag("app:2");
    assert_ok(&env.kiln(&["manifest", "create", &second, &amd64]));
    assert_eq!(local_lists(&env.store()).len(), 2);
    let missing = env.tag("nothere:1");
    let err = assert_failed(&env.kiln(&["manifest", "rm", &list, &missing]));
    assert_contains_all(&err, &["no local list", &missing]);
    assert_eq!(local_lists(&env.store()).len(), 1);
    assert_ok(&env.kiln(&["manifest", "rm", &second]));
    assert!(local_lists(&env.store()).is_empty());
    // With the list gone, push has nothing to push.
    let err = assert_failed(&env.kiln(&["manifest", "push", &list]));
    assert_contains_all(&err, &["no local list"]);
}

#[test]
fn push_spec_pushes_manifest_tool_yaml_with_its_tags() {
    let env = Env::new();
    let spec = env.path("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "image: {reg}/spec:1.0\ntags: ['latest', 'stable']\nmanifests:\n  -\n    image: {amd64}\n    platform:\n      architecture: amd64\n      os: linux\n  -\n    image: {arm64}\n    platform:\n      architecture: arm64\n      os: linux\n      variant: v8\n      features: [sse4]\n      osversion: '1.2'\n",
            reg = env.reg(),
            amd64 = busybox_image(&env, "amd64"),
            arm64 = busybox_image(&env, "arm64"),
        ),
    )
    .unwrap();
    let o = env.kiln(&["manifest", "push-spec", spec.to_str().unwrap()]);
    assert_ok(&o);
    let image = env.tag("spec:1.0");
    let index = manifest(&image);
    assert!(
        stdout(&o).starts_with(&format!("Digest: {} ", sha256(&skopeo_raw(&image)))),
        "{}",
        stdout(&o)
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[1]["platform"],
        json!({"architecture": "arm64", "os": "linux", "variant": "v8",
               "os.version": "1.2", "os.features": ["sse4"]})
    );
    for tag in ["spec:latest", "spec:stable"] {
        assert_eq!(skopeo_raw(&env.tag(tag)), skopeo_raw(&image), "{tag}");
    }
}

#[test]
fn a_missing_source_is_named_and_nothing_is_stored_or_pushed() {
    let env = Env::new();
    let missing = format!("{}@sha256:{}", env.tag("busybox"), "0".repeat(64));
    let amd64 = busybox_image(&env, "amd64");
    let list = env.tag("app:1");
    let err = assert_failed(&env.kiln(&["manifest", "create", &list, &amd64, &missing]));
    assert_contains_all(&err, &[&missing, "not found"]);
    assert!(local_lists(&env.store()).is_empty());

    let err = assert_failed(&env.kiln(&["imagetools", "create", "-t", &list, &amd64, &missing]));
    assert_contains_all(&err, &[&missing, "not found"]);
    assert!(!image_exists(&list));

    let spec = env.path("spec.yaml");
    std::fs::write(
        &spec,
        format!("image: {list}\nmanifests:\n  - image: {amd64}\n  - image: {missing}\n"),
    )
    .unwrap();
    let err = assert_failed(&env.kiln(&["manifest", "push-spec", spec.to_str().unwrap()]));
    assert_contains_all(&err, &[&missing, "not found"]);
    assert!(!image_exists(&list));
}

#[test]
fn imagetools_create_dry_run_prints_the_index_and_pushes_nothing() {
    let env = Env::new();
    let target = env.tag("dry:1");
    let (amd64, arm64) = (busybox_image(&env, "amd64"), busybox_image(&env, "arm64"));
    let o = env.kiln(&[
        "imagetools",
        "create",
        "--dry-run",
        "-t",
        &target,
        &amd64,
        &arm64,
    ]);
    assert_ok(&o);
    let index: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(
        digests(&index),
        [&amd64, &arm64].map(|s| s.rsplit('@').next().unwrap().to_string())
    );
    assert!(!image_exists(&target));
    // Two sources for one platform are refused.
    let err = assert_failed(&env.kiln(&[
        "imagetools",
        "create",
        "-t",
        &target,
        &amd64,
        &env.tag("busybox:latest"),
    ]));
    assert_contains_all(&err, &["two sources provide linux/amd64"]);
}
