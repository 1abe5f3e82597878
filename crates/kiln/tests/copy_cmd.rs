//! `kiln copy` between registries, OCI layouts and archives, and `kiln build` taking its base
//! images from a layout with no registry reachable. Results are checked with skopeo and umoci.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `skopeo` run on a non-registry location (or a registry with TLS off), its stdout.
fn skopeo_local(args: &[&str]) -> Vec<u8> {
    let mut c = Command::new("skopeo");
    c.args(args);
    run_tool(&mut c).stdout
}

fn inspect_local(location: &str) -> Value {
    serde_json::from_slice(&skopeo_local(&["inspect", location])).unwrap()
}

fn raw_local(location: &str) -> Vec<u8> {
    skopeo_local(&["inspect", "--raw", location])
}

/// Copies with kiln, asserting success; returns the digest kiln printed.
fn kiln_copy(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["copy"];
    all.extend_from_slice(args);
    let o = env.kiln(&all);
    assert_ok(&o);
    stdout(&o).trim().to_string()
}

/// The entry of the registry index `reference` for `arch`: its manifest digest.
fn platform_entry(reference: &str, arch: &str) -> String {
    manifest(reference)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("{reference} has no {arch} entry"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The manifest.json of a `docker save` archive.
fn archive_listing(archive: &Path) -> Value {
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in ar.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap() == Path::new("manifest.json") {
            return serde_json::from_reader(entry).unwrap();
        }
    }
    panic!("{} has no manifest.json", archive.display())
}

fn assert_busybox_rootfs(rootfs: &Path) {
    assert!(
        rootfs.join("bin/busybox").is_file(),
        "no bin/busybox in {}: {:?}",
        rootfs.display(),
        list_dir(rootfs)
    );
}

#[test]
fn copy_all_through_a_layout_keeps_the_index_digest_and_bytes() {
    let env = Env::new();
    let layout = env.path("mirror");
    let at_layout = format!("oci:{}:busybox:latest", layout.display());
    let digest = kiln_copy(
        &env,
        &[
            "--all",
            &format!("docker://{}", env.tag("busybox:latest")),
            &at_layout,
        ],
    );
    assert_eq!(digest, env.busybox_index_digest);
    // skopeo reads the layout kiln wrote, and sees the registry's exact index.
    let source_raw = skopeo_raw(&env.tag("busybox:latest"));
    assert_eq!(raw_local(&at_layout), source_raw);

    let back = kiln_copy(
        &env,
        &[
            "--all",
            &at_layout,
            &format!("docker://{}", env.tag("copied:1")),
        ],
    );
    assert_eq!(back, env.busybox_index_digest);
    assert_eq!(skopeo_raw(&env.tag("copied:1")), source_raw);
    // Every platform image came along: skopeo reads each one from the copy.
    for arch in ["amd64", "arm64"] {
        let copied = skopeo_inspect(&env.tag("copied:1"), Some(arch));
        let original = skopeo_inspect(&env.tag("busybox:latest"), Some(arch));
        assert_eq!(copied["Architecture"], arch);
        assert_eq!(copied["Layers"], original["Layers"]);
    }
}

#[test]
fn copy_within_one_registry_mounts_blobs_instead_of_moving_them() {
    let env = Env::new();
    let proxy = kiln_testkit::FaultProxy::start(env.reg(), Vec::new());
    let digest = kiln_copy(
        &env,
        &[
            "--all",
            &format!("docker://{}/busybox:latest", proxy.addr()),
            &format!("docker://{}/mirror/busybox:1", proxy.addr()),
        ],
    );
    assert_eq!(digest, env.busybox_index_digest);
    assert_eq!(
        skopeo_raw(&env.tag("mirror/busybox:1")),
        skopeo_raw(&env.tag("busybox:latest"))
    );
    let requests = proxy.requests();
    let mounts = requests
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("mount=") && r.contains("from=busybox"))
        .count();
    // Five platforms: a config and a layer each.
    assert_eq!(mounts, 10, "{requests:#?}");
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("PATCH ") || (r.starts_with("GET ") && r.contains("/blobs/"))),
        "blob bytes moved: {requests:#?}"
    );
}

#[test]
fn copy_all_through_an_oci_archive_keeps_a_docker_manifest_list() {
    let env = Env::new();
    let archive = env.path("carry/busybox.tar");
    let at_archive = format!("oci-archive:{}:bb", archive.display());
    kiln_copy(
        &env,
        &[
            "--all",
            &format!("docker://{}", env.tag("busybox:docker")),
            &at_archive,
        ],
    );
    assert!(archive.is_file());
    let back = kiln_copy(
        &env,
        &[
            "--all",
            &at_archive,
            &format!("docker://{}", env.tag("carried:docker")),
        ],
    );
    assert_eq!(back, env.busybox_list_digest);
    assert_eq!(
        skopeo_raw(&env.tag("carried:docker")),
        skopeo_raw(&env.tag("busybox:docker"))
    );
}

#[test]
fn platform_copies_only_that_image() {
    let env = Env::new();
    let layout = env.path("arm");
    let digest = kiln_copy(
        &env,
        &[
            "--platform",
            "linux/arm64",
            &format!("docker://{}", env.tag("busybox:latest")),
            &format!("oci:{}:arm", layout.display()),
        ],
    );
    let arm64 = platform_entry(&env.tag("busybox:latest"), "arm64");
    assert_eq!(digest, arm64);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["digest"], arm64.as_str());
    let inspected = inspect_local(&format!("oci:{}:arm", layout.display()));
    assert_eq!(inspected["Architecture"], "arm64");
    // Only one image's blobs: the amd64 layers are not there.
    let amd64: Value = serde_json::from_slice(&skopeo_raw(&format!(
        "{}@{}",
        env.tag("busybox"),
        platform_entry(&env.tag("busybox:latest"), "amd64")
    )))
    .unwrap();
    for layer in layer_digests(&amd64) {
        let hex = layer.strip_prefix("sha256:").unwrap();
        assert!(!layout.join("blobs/sha256").join(hex).exists(), "{layer}");
    }
}

#[test]
fn archives_kiln_writes_are_read_by_skopeo() {
    let env = Env::new();
    let source = format!("docker://{}", env.tag("busybox:latest"));
    let arch = host_arch();
    let platform = format!("linux/{arch}");
    let expected = platform_entry(&env.tag("busybox:latest"), arch);

    let oci_archive = env.path("bb-oci.tar");
    let digest = kiln_copy(
        &env,
        &[
            "--platform",
            &platform,
            &source,
            &format!("oci-archive:{}:bb", oci_archive.display()),
        ],
    );
    assert_eq!(digest, expected);
    let inspected = inspect_local(&format!("oci-archive:{}:bb", oci_archive.display()));
    assert_eq!(inspected["Digest"], expected.as_str());
    assert_eq!(inspected["Architecture"], arch);

    let docker_archive = env.path("bb-docker.tar");
    kiln_copy(
        &env,
        &[
            &source,
            &format!(
                "docker-archive:{}:busybox:carried",
                docker_archive.display()
            ),
        ],
    );
    let inspected = inspect_local(&format!("docker-archive:{}", docker_archive.display()));
    assert_eq!(inspected["Architecture"], arch);
    assert_eq!(
        archive_listing(&docker_archive)[0]["RepoTags"],
        json!(["busybox:carried"])
    );
    // A whole index does not fit in a docker archive, and a refused copy writes nothing.
    let refused = env.path("all.tar");
    let o = env.kiln(&[
        "copy",
        "--all",
        &source,
        &format!("docker-archive:{}", refused.display()),
    ]);
    assert_contains_all(&assert_failed(&o), &["holds one image", "--platform"]);
    assert!(!refused.exists());

    // skopeo unpacks it to a layout umoci turns into busybox's filesystem.
    let layout = env.path("from-docker-archive");
    skopeo_local(&[
        "--insecure-policy",
        "copy",
        "-q",
        &format!("docker-archive:{}", docker_archive.display()),
        &format!("oci:{}:x", layout.display()),
    ]);
    assert_busybox_rootfs(&umoci_unpack(&layout, "x", &env.path("bundle")));
}

#[test]
fn kiln_reads_archives_skopeo_wrote() {
    let env = Env::new();
    let arch = host_arch();
    let source = format!("docker://{}", env.tag("busybox:latest"));
    let oci_archive = env.path("skopeo-oci.tar");
    let docker_archive = env.path("skopeo-docker.tar");
    for destination in [
        format!("oci-archive:{}:bb", oci_archive.display()),
        format!("docker-archive:{}:busybox:skopeo", docker_archive.display()),
    ] {
        skopeo_local(&[
            "--insecure-policy",
            "--override-arch",
            arch,
            "copy",
            "-q",
            "--src-tls-verify=false",
            &source,
            &destination,
        ]);
    }

    let from_oci = kiln_copy(
        &env,
        &[
            &format!("oci-archive:{}:bb", oci_archive.display()),
            &format!("docker://{}", env.tag("from-oci:1")),
        ],
    );
    assert_eq!(from_oci, platform_entry(&env.tag("busybox:latest"), arch));
    assert_busybox_rootfs(&unpack_pushed(&env.tag("from-oci:1"), &env.path("u1")));

    kiln_copy(
        &env,
        &[
            &format!("docker-archive:{}:busybox:skopeo", docker_archive.display()),
            &format!("docker://{}", env.tag("from-docker:1")),
        ],
    );
    assert_eq!(
        config(&env.tag("from-docker:1"))["rootfs"],
        config(&format!(
            "{}@{}",
            env.tag("busybox"),
            platform_entry(&env.tag("busybox:latest"), arch)
        ))["rootfs"],
        "the layers' diff_ids survive the docker archive"
    );
    assert_busybox_rootfs(&unpack_pushed(&env.tag("from-docker:1"), &env.path("u2")));
}

/// A layout holding busybox (all platforms) as `busybox:latest`, with one layer of the host
/// platform's image overwritten; returns the layout and that layer's digest.
fn corrupted_layout(env: &Env) -> (std::path::PathBuf, String) {
    let layout = env.path("corrupt");
    kiln_copy(
        env,
        &[
            "--all",
            &format!("docker://{}", env.tag("busybox:latest")),
            &format!("oci:{}:busybox:latest", layout.display()),
        ],
    );
    let image = manifest(&format!(
        "{}@{}",
        env.tag("busybox"),
        platform_entry(&env.tag("busybox:latest"), host_arch())
    ));
    let layer = layer_digests(&image)[0].clone();
    let path = layout
        .join("blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    (layout, layer)
}

#[test]
fn a_corrupted_blob_fails_naming_its_digest_and_writes_nothing() {
    let env = Env::new();
    let (layout, layer) = corrupted_layout(&env);
    let source = format!("oci:{}:busybox:latest", layout.display());

    // Into a new layout: it never appears.
    let fresh = env.path("out/fresh");
    let o = env.kiln(&[
        "copy",
        "--all",
        &source,
        &format!("oci:{}", fresh.display()),
    ]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &[&layer, "does not match its digest"]);
    assert!(!fresh.exists());
    assert!(
        list_dir(&env.path("out")).is_empty(),
        "{:?}",
        list_dir(&env.path("out"))
    );

    // Into an existing layout: its index.json is untouched.
    let existing = env.path("existing");
    kiln_copy(
        &env,
        &[
            "--platform",
            "linux/arm64",
            &format!("docker://{}", env.tag("busybox:latest")),
            &format!("oci:{}:arm", existing.display()),
        ],
    );
    let before = std::fs::read(existing.join("index.json")).unwrap();
    let o = env.kiln(&[
        "copy",
        "--platform",
        &format!("linux/{}", host_arch()),
        &source,
        &format!("oci:{}:host", existing.display()),
    ]);
    assert_contains_all(&assert_failed(&o), &[&layer]);
    assert_eq!(std::fs::read(existing.join("index.json")).unwrap(), before);
    let hex = layer.strip_prefix("sha256:").unwrap();
    assert!(!existing.join("blobs/sha256").join(hex).exists());

    // A build from it fails the same way, and the store never holds the bad blob.
    let ctx = env.context("ctx", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let o = env.kiln(&[
        "build",
        "--base-dir",
        layout.to_str().unwrap(),
        "-o",
        &format!("type=oci,dest={}", env.path("img.tar").display()),
        ctx.to_str().unwrap(),
    ]);
    assert_contains_all(&assert_failed(&o), &[&layer, "does not match its digest"]);
    assert!(!env.store().join("blobs/sha256").join(hex).exists());
    assert!(!env.path("img.tar").exists());
}

/// Builds `ctx` into an OCI layout tagged `1` and returns its unpacked rootfs.
fn build_offline(env: &Env, ctx: &Path, extra: &[&str]) -> std::path::PathBuf {
    let out = env.path("built");
    let spec = format!("type=oci,dest={},tar=false", out.display());
    let mut args = vec!["build", "-t", "built:1", "-o", &spec];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    assert_ok(&env.kiln(&args));
    umoci_unpack(&out, "1", &env.path("built-bundle"))
}

#[test]
fn build_takes_from_images_from_a_base_dir_with_no_registry() {
    let env = Env::new();
    // A registry that is gone by the time the build runs.
    let gone = Registry::start();
    push_busybox(&gone, "busybox");
    let dead_ref = format!("{}/busybox:latest", gone.addr());
    let layout = env.path("bases");
    kiln_copy(
        &env,
        &[
            "--all",
            &format!("docker://{dead_ref}"),
            &format!("oci:{}:{dead_ref}", layout.display()),
        ],
    );
    kiln_copy(
        &env,
        &[
            "--all",
            &format!("docker://{dead_ref}"),
            &format!("oci:{}:busybox:latest", layout.display()),
        ],
    );
    drop(gone);
    assert!(!image_exists(&dead_ref), "the registry is still up");

    // Named as written in the Dockerfile, and as Docker shows a Docker Hub name.
    for from in [dead_ref.as_str(), "busybox"] {
        let ctx = env.context(
            &format!("ctx-{}", from.len()),
            &[(
                "Dockerfile",
                &format!("FROM {from}\nRUN echo offline > /proof && ls /bin/busybox\n"),
            )],
        );
        let store = env.store();
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_dir_all(env.path("built"));
        let _ = std::fs::remove_dir_all(env.path("built-bundle"));
        let rootfs = build_offline(&env, &ctx, &["--base-dir", layout.to_str().unwrap()]);
        assert_busybox_rootfs(&rootfs);
        assert_eq!(read(&rootfs.join("proof")), "offline\n", "FROM {from}");
    }
    // With only config steps no base layer is needed while building: the output still
    // takes them from the layout, not from the registry the name points at.
    let ctx = env.context(
        "ctx-config-only",
        &[("Dockerfile", &format!("FROM {dead_ref}\nENV OFFLINE=1\n"))],
    );
    let _ = std::fs::remove_dir_all(env.store());
    let _ = std::fs::remove_dir_all(env.path("built"));
    let _ = std::fs::remove_dir_all(env.path("built-bundle"));
    let rootfs = build_offline(&env, &ctx, &["--base-dir", layout.to_str().unwrap()]);
    assert_busybox_rootfs(&rootfs);
}

#[test]
fn from_oci_layout_reference_builds_with_no_registry() {
    let env = Env::new();
    let gone = Registry::start();
    let (index_digest, _) = push_busybox(&gone, "busybox");
    let layout = env.path("ctx-layout");
    kiln_copy(
        &env,
        &[
            "--all",
            &format!("docker://{}/busybox:latest", gone.addr()),
            &format!("oci:{}:v1", layout.display()),
        ],
    );
    drop(gone);
    for (n, from) in [
        format!("oci-layout://{}:v1", layout.display()),
        format!("oci-layout://{}@{index_digest}", layout.display()),
    ]
    .iter()
    .enumerate()
    {
        let ctx = env.context(
            &format!("ctx{n}"),
            &[(
                "Dockerfile",
                &format!("FROM {from}\nRUN echo layout > /proof\n"),
            )],
        );
        let _ = std::fs::remove_dir_all(env.path("built"));
        let _ = std::fs::remove_dir_all(env.path("built-bundle"));
        let rootfs = build_offline(&env, &ctx, &[]);
        assert_busybox_rootfs(&rootfs);
        assert_eq!(read(&rootfs.join("proof")), "layout\n", "FROM {from}");
    }
    let busybox = std::fs::read(env.path("built-bundle/rootfs/bin/busybox")).unwrap();

    // COPY --from takes an oci-layout:// image as well.
    let ctx = env.context(
        "ctx-copy",
        &[(
            "Dockerfile",
            &format!(
                "FROM scratch\nCOPY --from=oci-layout://{}:v1 /bin/busybox /copied\n",
                layout.display()
            ),
        )],
    );
    let _ = std::fs::remove_dir_all(env.path("built"));
    let _ = std::fs::remove_dir_all(env.path("built-bundle"));
    let rootfs = build_offline(&env, &ctx, &[]);
    assert_eq!(std::fs::read(rootfs.join("copied")).unwrap(), busybox);
}
