//! Layer compression (`compression=`, `compression-level=`, `force-compression=`, kaniko's
//! `--compression`): what kiln pushes is read back by the reference tools (`zstd -d`, GNU
//! gzip and tar, skopeo), every form builds again as a base image, and a base layer kiln
//! cannot read is named with its media type.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A context adding one file to busybox.
fn context(env: &Env) -> PathBuf {
    env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox:latest\nCOPY data.txt /data/\n",
            ),
            ("data.txt", "compressed by kiln\n"),
        ],
    )
}

/// busybox's image for this host (its tag is an index): (reference by digest, manifest).
fn busybox(env: &Env) -> (String, Value) {
    host_image(&env.tag("busybox"), "latest")
}

/// `skopeo copy` of an image into a `dir:` layout (blobs kept as they are); the manifest.
fn copy_to_dir(reference: &str, dir: &Path) -> Value {
    run_tool(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("dir:{}", dir.display()),
    ]));
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The blob of `digest` in a `dir:` layout.
fn blob(dir: &Path, digest: &Value) -> PathBuf {
    dir.join(digest.as_str().unwrap().strip_prefix("sha256:").unwrap())
}

/// Runs a shell pipeline; its standard output.
fn sh(script: &str) -> Vec<u8> {
    run_tool(Command::new("sh").args(["-c", script])).stdout
}

#[test]
fn zstd_estargz_and_uncompressed_layers_are_read_by_the_reference_tools() {
    let env = Env::new();
    let ctx = context(&env);
    let (zstd, estargz, plain) = (env.tag("z:1"), env.tag("e:1"), env.tag("u:1"));
    let o = env.kiln(&[
        "build",
        "--progress=plain",
        "-o",
        &format!("type=registry,name={zstd},compression=zstd,compression-level=7"),
        "-o",
        &format!("type=registry,name={estargz},compression=estargz"),
        "-o",
        &format!("type=registry,name={plain},compression=uncompressed"),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let (_, busybox) = busybox(&env);
    let busybox_layer = |m: &Value| {
        // Without force-compression the base layer is busybox's own blob.
        assert_eq!(m["layers"][0]["digest"], busybox["layers"][0]["digest"]);
        assert_eq!(m["layers"][0]["mediaType"], GZIP);
    };

    // zstd: the reference decompressor reads the layer, which holds the file.
    let dir = env.path("zstd");
    let m = copy_to_dir(&zstd, &dir);
    busybox_layer(&m);
    assert_eq!(m["layers"][1]["mediaType"], ZSTD);
    let layer = blob(&dir, &m["layers"][1]["digest"]);
    let listing = sh(&format!("zstd -dc {} | tar -t", layer.display()));
    assert_eq!(
        String::from_utf8_lossy(&listing).trim(),
        "data/\ndata/data.txt"
    );
    let tar = sh(&format!("zstd -dc {}", layer.display()));
    assert_eq!(
        config(&zstd)["rootfs"]["diff_ids"][1],
        sha256(&tar).as_str()
    );

    // eStargz: gzip to every reader, with its table of contents as the last entry and the
    // annotations a lazy-pulling snapshotter reads.
    let dir = env.path("estargz");
    let m = copy_to_dir(&estargz, &dir);
    busybox_layer(&m);
    let new = &m["layers"][1];
    assert_eq!(new["mediaType"], GZIP);
    let layer = blob(&dir, &new["digest"]);
    let listing = sh(&format!("gzip -dc {} | tar -t", layer.display()));
    assert_eq!(
        String::from_utf8_lossy(&listing).trim(),
        ".no.prefetch.landmark\ndata/\ndata/data.txt\nstargz.index.json"
    );
    let toc = sh(&format!(
        "gzip -dc {} | tar -xO stargz.index.json",
        layer.display()
    ));
    let annotations = &new["annotations"];
    assert_eq!(
        annotations["containerd.io/snapshot/stargz/toc.digest"],
        sha256(&toc).as_str()
    );
    let tar = sh(&format!("gzip -dc {}", layer.display()));
    assert_eq!(
        annotations["io.containers.estargz.uncompressed-size"],
        tar.len().to_string().as_str()
    );
    let toc: Value = serde_json::from_slice(&toc).unwrap();
    let file = toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "data/data.txt")
        .unwrap();
    assert_eq!(file["digest"], sha256(b"compressed by kiln\n").as_str());
    // The file's payload starts a gzip member at the offset the TOC gives.
    let at = file["offset"].as_u64().unwrap();
    let payload = sh(&format!(
        "tail -c +{} {} | gzip -dc 2>/dev/null | head -c 19",
        at + 1,
        layer.display()
    ));
    assert_eq!(payload, b"compressed by kiln\n");
    // The tar changed (it holds the TOC), so the config names its new diff_id.
    assert_eq!(
        config(&estargz)["rootfs"]["diff_ids"][1],
        sha256(&tar).as_str()
    );

    // Uncompressed: the blob is the tar, its digest the diff_id.
    let dir = env.path("plain");
    let m = copy_to_dir(&plain, &dir);
    assert_eq!(m["layers"][1]["mediaType"], TAR);
    let tar = std::fs::read(blob(&dir, &m["layers"][1]["digest"])).unwrap();
    assert_eq!(m["layers"][1]["digest"], sha256(&tar).as_str());
    assert_eq!(
        config(&plain)["rootfs"]["diff_ids"][1],
        sha256(&tar).as_str()
    );

    // Each builds again as a base image, from a fresh store (so its layers are pulled and
    // extracted), and its file is there.
    for (name, image) in [("zstd", &zstd), ("estargz", &estargz), ("plain", &plain)] {
        let ctx = env.context(
            &format!("from-{name}"),
            &[(
                "Dockerfile",
                &format!("FROM {image}\nRUN cat /data/data.txt > /data/copy.txt\n"),
            )],
        );
        let out = env.path(&format!("files-{name}"));
        let o = kiln_with_root(
            &env.path(&format!("store-{name}")),
            &[
                "build",
                "-o",
                &format!("type=local,dest={}", out.display()),
                ctx.to_str().unwrap(),
            ],
        );
        assert_ok(&o);
        assert_eq!(
            read(&out.join("data/copy.txt")),
            "compressed by kiln\n",
            "{name}"
        );
    }
}

#[test]
fn force_compression_reencodes_base_layers_once_and_keeps_their_tars() {
    let env = Env::new();
    let ctx = context(&env);
    let forced = env.tag("forced:1");
    let spec =
        |name: &str| format!("type=registry,name={name},compression=zstd,force-compression=true");
    let o = env.kiln(&[
        "build",
        "--progress=plain",
        "-o",
        &spec(&forced),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let m = manifest(&forced);
    for layer in m["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], ZSTD, "{layer}");
    }
    // busybox's layer was re-encoded, not rewritten: its diff_id is busybox's.
    let (busybox, busybox_manifest) = busybox(&env);
    assert_eq!(
        config(&forced)["rootfs"]["diff_ids"][0],
        config(&busybox)["rootfs"]["diff_ids"][0]
    );
    let busybox_layer = busybox_manifest["layers"][0]["digest"].clone();
    let reencoded = format!("compressing layer {}", busybox_layer.as_str().unwrap());
    assert!(stderr(&o).contains(&reencoded), "{}", stderr(&o));

    // A second build of another name takes the re-encoded blob kiln kept: no work, same bytes.
    let again = env.tag("forced-again:1");
    let o = env.kiln(&[
        "build",
        "--progress=plain",
        "-o",
        &spec(&again),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(!stderr(&o).contains("compressing layer"), "{}", stderr(&o));
    assert_eq!(manifest(&again), m);

    // A gzip output of the same build re-encodes the new zstd layer (the first output's
    // compression is what the build writes); without force the base stays as it is.
    let both = env.tag("both:1");
    let gz = env.tag("gz:1");
    let o = env.kiln(&[
        "build",
        "--progress=plain",
        "--no-cache",
        "-o",
        &format!("type=registry,name={both},compression=zstd"),
        "-o",
        &format!("type=registry,name={gz}"),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let zstd_layer = &manifest(&both)["layers"][1];
    assert_eq!(zstd_layer["mediaType"], ZSTD);
    let gzip_layer = &manifest(&gz)["layers"][1];
    assert_eq!(gzip_layer["mediaType"], GZIP);
    assert_eq!(
        config(&both)["rootfs"]["diff_ids"],
        config(&gz)["rootfs"]["diff_ids"]
    );
    assert_eq!(manifest(&gz)["layers"][0], busybox_manifest["layers"][0]);
}

#[test]
fn kanikos_compression_flags_pick_the_layer_compression() {
    let env = Env::new();
    let ctx = context(&env);
    let name = env.tag("kaniko-zstd:1");
    let o = env.kiln(&[
        "executor",
        "--context",
        ctx.to_str().unwrap(),
        "--destination",
        &name,
        "--compression",
        "zstd",
        "--compression-level",
        "9",
    ]);
    assert_ok(&o);
    assert_eq!(manifest(&name)["layers"][1]["mediaType"], ZSTD);
    let o = env.kiln(&[
        "executor",
        "--context",
        ctx.to_str().unwrap(),
        "--destination",
        &name,
        "--compression",
        "lz4",
    ]);
    let err = assert_failed(&o);
    assert!(
        err.contains(
            "--compression: unknown compression `lz4` (accepted: gzip, zstd, estargz, uncompressed)"
        ),
        "{err}"
    );
}

#[test]
fn a_bad_compression_is_refused_before_the_build_and_pushes_nothing() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM $REG/busybox:latest\nRUN sleep 30\n")],
    );
    let name = env.tag("never:1");
    for (spec, says) in [
        (
            format!("type=registry,name={name},compression=brotli"),
            "unknown compression `brotli` (accepted: gzip, zstd, estargz, uncompressed)",
        ),
        (
            format!("type=registry,name={name},compression=zstd,oci-mediatypes=false"),
            "zstd layers have no Docker media type",
        ),
        (
            format!("type=registry,name={name},compression=gzip,compression-level=11"),
            "compression-level=11 is out of range for gzip (0 to 9)",
        ),
    ] {
        let o = env.kiln(&["build", "-o", &spec, ctx.to_str().unwrap()]);
        let err = assert_failed(&o);
        assert!(err.contains(says), "{spec}: {err}");
        assert!(!err.contains("RUN sleep 30"), "the build ran: {err}");
    }
    assert!(!image_exists(&name));
}

/// Pushes `repo:1`, an image whose one layer is `blob` (of `media_type`) and whose config
/// says that layer's tar is `diff_id`, whatever it is; the layer's digest.
fn push_one_layer(env: &Env, repo: &str, blob: &[u8], media_type: &str, diff_id: &str) -> String {
    let layer_digest = put_blob(env, repo, blob);
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {}
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(env, repo, &config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len()
        },
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": blob.len()}]
    });
    put_manifest(
        env,
        repo,
        "1",
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    layer_digest
}

/// A gzip layer holding `/a.txt` with `text`: (blob, diff_id).
fn gzip_layer(env: &Env, text: &str) -> (Vec<u8>, String) {
    let dir = env.path(&format!("layer-{}", &sha256(text.as_bytes())[7..19]));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), text).unwrap();
    let tar = sh(&format!("tar -C {} -cf - a.txt", dir.display()));
    let blob = sh(&format!("tar -C {} -cf - a.txt | gzip -n", dir.display()));
    (blob, sha256(&tar))
}

#[test]
fn a_base_layer_that_lies_about_its_diff_id_does_not_poison_force_compression() {
    let env = Env::new();
    // `genuine` is an honest image; `liar`'s config claims genuine's diff_id for a layer
    // holding other files. Neither build runs a step, so no layer is extracted.
    let (genuine_blob, genuine_diff_id) = gzip_layer(&env, "genuine\n");
    let (planted_blob, _) = gzip_layer(&env, "planted\n");
    push_one_layer(&env, "genuine", &genuine_blob, GZIP, &genuine_diff_id);
    push_one_layer(&env, "liar", &planted_blob, GZIP, &genuine_diff_id);
    let build = |from: &str, name: &str| {
        let ctx = env.context(
            &format!("from-{from}"),
            &[("Dockerfile", &format!("FROM $REG/{from}:1\nLABEL x=1\n"))],
        );
        let spec = format!("type=registry,name={name},compression=zstd,force-compression=true");
        env.kiln(&[
            "build",
            "--progress=plain",
            "-o",
            &spec,
            ctx.to_str().unwrap(),
        ])
    };

    let lied = env.tag("lied:1");
    let err = assert_failed(&build("liar", &lied));
    assert!(
        err.contains(&format!("but the config says {genuine_diff_id}")),
        "{err}"
    );
    assert!(!image_exists(&lied));
    // The same store then builds from the honest image: its layer, not the liar's.
    let honest = env.tag("honest:1");
    assert_ok(&build("genuine", &honest));
    let dir = env.path("honest");
    let m = copy_to_dir(&honest, &dir);
    let layer = blob(&dir, &m["layers"][0]["digest"]);
    let text = sh(&format!("zstd -dc {} | tar -xO a.txt", layer.display()));
    assert_eq!(String::from_utf8_lossy(&text), "genuine\n");

    // A record an older kiln wrote from the liar (its blob, under genuine's diff_id) is
    // not taken as genuine's.
    let record = env
        .store()
        .join("cache/variants")
        .join(genuine_diff_id.strip_prefix("sha256:").unwrap())
        .join("zstd-3");
    let (_, planted_diff_id) = gzip_layer(&env, "planted\n");
    let variant = json!({
        "blob": {"mediaType": GZIP, "digest": sha256(&planted_blob), "size": planted_blob.len()},
        "diff_id": planted_diff_id,
    });
    std::fs::write(&record, serde_json::to_vec(&variant).unwrap()).unwrap();
    let again = env.tag("honest:2");
    assert_ok(&build("genuine", &again));
    assert_eq!(
        manifest(&again)["layers"][0]["digest"],
        m["layers"][0]["digest"]
    );
}

#[test]
fn a_base_layer_in_a_compression_kiln_cannot_read_is_named_with_its_media_type() {
    let env = Env::new();
    // An image whose one layer claims lz4, which kiln does not read.
    let layer = b"not really lz4";
    let media_type = "application/vnd.oci.image.layer.v1.tar+lz4";
    let layer_digest = push_one_layer(&env, "lz4img", layer, media_type, &sha256(layer));
    let ctx = env.context("ctx", &[("Dockerfile", "FROM $REG/lz4img:1\nRUN true\n")]);
    let o = env.kiln(&["build", ctx.to_str().unwrap()]);
    let err = assert_failed(&o);
    assert_contains_all(
        &err,
        &[
            &format!("layer {layer_digest}"),
            &format!("unsupported media type {media_type}"),
            "lz4img:1",
        ],
    );
}

#[test]
fn attestations_name_the_manifest_each_output_re_encoded() {
    let env = Env::new();
    let ctx = context(&env);
    let (zstd, gzip) = (env.tag("attested-zstd:1"), env.tag("attested-gzip:1"));
    let o = env.kiln(&[
        "build",
        "--attest",
        "type=provenance",
        "-o",
        &format!("type=registry,name={zstd},compression=zstd,force-compression=true"),
        "-o",
        &format!("type=registry,name={gzip},compression=estargz"),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let mut images = Vec::new();
    for name in [&zstd, &gzip] {
        let index = manifest(name);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{index}");
        let (image, attestation) = (&entries[0], &entries[1]);
        let digest = image["digest"].as_str().unwrap();
        assert_eq!(
            attestation["annotations"]["vnd.docker.reference.digest"], digest,
            "{name}"
        );
        let repository = name.rsplit_once(':').unwrap().0;
        let statement_layer = &manifest(&format!(
            "{repository}@{}",
            attestation["digest"].as_str().unwrap()
        ))["layers"][0];
        let statement: Value = serde_json::from_slice(&sh(&format!(
            "curl -sf http://{}/v2/{}/blobs/{}",
            env.reg(),
            repository.split_once('/').unwrap().1,
            statement_layer["digest"].as_str().unwrap()
        )))
        .unwrap();
        assert_eq!(
            statement["subject"][0]["digest"]["sha256"],
            digest.strip_prefix("sha256:").unwrap(),
            "{name}"
        );
        images.push(digest.to_string());
    }
    assert_ne!(images[0], images[1], "two encodings, two manifests");
}
