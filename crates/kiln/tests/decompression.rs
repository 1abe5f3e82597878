//! Decompression of ADD archives and base layers: decompression bombs (testdata/hostile/bomb-*)
//! either fail naming the archive and the limit or extract, with the kiln process's peak
//! RSS under 100 MiB; zstd base layers (also mislabelled as gzip) build with the right files;
//! a zstd image copies into a docker archive. Checked with umoci and skopeo.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_testkit::{
    DECOMPRESSION_BOMBS, OCI_LAYER_ZSTD, busybox_fixtures, busybox_zstd_layout, run_measured,
    write_image_layout,
};
use sha2::{Digest, Sha256};

/// What the kiln process may take at its peak, whatever the archive.
const PEAK_RSS_LIMIT_MIB: u64 = 100;
/// The most dictionary or window kiln lets an xz or zstd stream ask for.
const HISTORY_LIMIT_MIB: u64 = 64;

/// Builds `ctx` into an OCI layout at `out` (tagged `1`) with the store `root`.
fn build_to_layout(root: &Path, ctx: &Path, out: &Path) -> std::process::Output {
    let spec = format!("type=oci,dest={},tar=false", out.display());
    kiln_with_root(
        root,
        &["build", "-t", "built:1", "-o", &spec, ctx.to_str().unwrap()],
    )
}

#[test]
fn add_of_a_decompression_bomb_fails_at_the_limit_or_extracts_under_100_mib() {
    let work = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();
    for bomb in DECOMPRESSION_BOMBS {
        let dir = work.path().join(bomb.name.replace('.', "-"));
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy(bomb.testdata(), ctx.join(bomb.name)).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM scratch\nADD {} /\n", bomb.name),
        )
        .unwrap();
        let out = dir.join("out");
        let spec = format!("type=oci,dest={},tar=false", out.display());
        let measured = run_measured(&mut kiln_command(
            &dir.join("store"),
            &["build", "-t", "bomb:1", "-o", &spec, ctx.to_str().unwrap()],
        ));
        let peak_mib = measured.peak_rss_kib / 1024;
        let size = std::fs::metadata(bomb.testdata()).unwrap().len();
        let refused = bomb.history_mib.is_some_and(|h| h > HISTORY_LIMIT_MIB);
        figures.push(format!(
            "{}: {size} bytes -> {} MiB, peak RSS {peak_mib} MiB, {}",
            bomb.name,
            bomb.zeros_mib,
            if refused { "refused" } else { "extracted" }
        ));
        assert!(
            peak_mib < PEAK_RSS_LIMIT_MIB,
            "{}: kiln's peak RSS was {peak_mib} MiB:\n{}",
            bomb.name,
            stderr(&measured.output)
        );
        if refused {
            let err = assert_failed(&measured.output);
            assert_contains_all(&err, &[bomb.name, "kiln allows", "64 MiB"]);
            assert!(err.len() < 2000, "a bounded message: {err}");
        } else {
            assert_ok(&measured.output);
            let rootfs = umoci_unpack(&out, "1", &dir.join("bundle"));
            let zeros = rootfs.join("zeros");
            assert_eq!(
                std::fs::metadata(&zeros).unwrap().len(),
                bomb.zeros_mib << 20,
                "{}",
                bomb.name
            );
            let mut file = std::fs::File::open(&zeros).unwrap();
            let mut chunk = vec![0u8; 1 << 20];
            while let n @ 1.. = file.read(&mut chunk).unwrap() {
                assert!(chunk[..n].iter().all(|b| *b == 0), "{}", bomb.name);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // The figures docs/security.md records.
    eprintln!("{}", figures.join("\n"));
}

#[test]
fn a_base_layer_over_the_limit_fails_naming_the_layer_and_the_limit() {
    let work = tempfile::tempdir().unwrap();
    let platform = json!({ "architecture": host_arch(), "os": "linux" });
    // The xz bomb labelled as gzip: the bytes decide, as for every layer.
    for (bomb, media_type) in [
        ("bomb-zstd-window-128mib.tar.zst", OCI_LAYER_ZSTD),
        (
            "bomb-xz-dict-3gib.tar.xz",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
    ] {
        let bomb = DECOMPRESSION_BOMBS.iter().find(|b| b.name == bomb).unwrap();
        let layer = std::fs::read(bomb.testdata()).unwrap();
        let layer_digest = format!("sha256:{:x}", Sha256::digest(&layer));
        // Never reached: kiln refuses the layer before it could check what it uncompresses to.
        let diff_id = format!("sha256:{}", "0".repeat(64));
        let config = json!({
            "architecture": host_arch(),
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        });
        let layout = work.path().join(bomb.name);
        write_image_layout(
            &layout,
            &platform,
            (
                "application/vnd.oci.image.config.v1+json",
                &serde_json::to_vec(&config).unwrap(),
            ),
            &[(media_type, layer)],
        );
        let ctx = work.path().join(format!("{}-ctx", bomb.name));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            // WORKDIR looks the directory up in the base, so the base must be unpacked.
            format!(
                "FROM oci-layout://{}:latest\nWORKDIR /kiln-probe\n",
                layout.display()
            ),
        )
        .unwrap();
        let measured = run_measured(&mut kiln_command(
            &work.path().join("store"),
            &["build", ctx.to_str().unwrap()],
        ));
        let err = assert_failed(&measured.output);
        assert_contains_all(&err, &[&layer_digest, "kiln allows", "64 MiB"]);
        assert!(measured.peak_rss_kib / 1024 < PEAK_RSS_LIMIT_MIB);
    }
}

/// Every entry under `root`: (kind and mode, owner, content digest or link target).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, String)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else if meta.is_file() {
                format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()))
            } else {
                if meta.is_dir() {
                    pending.push(path.clone());
                }
                String::new()
            };
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            entries.insert(rel, (meta.mode(), meta.uid(), meta.gid(), content));
        }
    }
    entries
}

/// The busybox fixture's rootfs for this machine, unpacked by skopeo and umoci alone.
fn fixture_rootfs(work: &Path) -> PathBuf {
    let layout = work.join("fixture-layout");
    run_tool(
        Command::new("skopeo")
            .args(["--insecure-policy", "--override-os=linux"])
            .arg(format!("--override-arch={}", host_arch()))
            .args(["copy", "-q"])
            .arg(format!(
                "oci:{}:latest",
                busybox_fixtures().oci_layout.display()
            ))
            .arg(format!("oci:{}:x", layout.display())),
    );
    umoci_unpack(&layout, "x", &work.join("fixture-bundle"))
}

#[test]
fn a_zstd_base_layer_builds_and_its_files_are_right_even_mislabelled() {
    let work = tempfile::tempdir().unwrap();
    let expected = tree(&fixture_rootfs(work.path()));
    assert!(expected.contains_key(Path::new("bin/busybox")));
    for (name, media_type) in [
        ("zstd", OCI_LAYER_ZSTD),
        ("mislabelled", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ] {
        let layout = work.path().join(name);
        busybox_zstd_layout(&layout, host_arch(), media_type);
        let from = format!("oci-layout://{}:latest", layout.display());

        // Its rootfs, copied whole into a gzip layer that umoci can read.
        let ctx = work.path().join(format!("{name}-copy"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM scratch\nCOPY --from={from} / /\n"),
        )
        .unwrap();
        let out = work.path().join(format!("{name}-out"));
        let store = work.path().join(format!("{name}-store"));
        assert_ok(&build_to_layout(&store, &ctx, &out));
        let rootfs = umoci_unpack(&out, "1", &work.path().join(format!("{name}-bundle")));
        assert!(tree(&rootfs) == expected, "{name}: the rootfs differs");

        // And as a base whose rootfs a step runs in.
        let ctx = work.path().join(format!("{name}-from"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {from}\nRUN /bin/busybox sha256sum /bin/busybox > /sum\n"),
        )
        .unwrap();
        assert_ok(&kiln_with_root(&store, &["build", ctx.to_str().unwrap()]));
    }
}

#[test]
fn a_zstd_image_copies_into_a_docker_archive_uncompressed() {
    let work = tempfile::tempdir().unwrap();
    let expected = tree(&fixture_rootfs(work.path()));
    let layout = work.path().join("zstd");
    busybox_zstd_layout(&layout, host_arch(), OCI_LAYER_ZSTD);
    let archive = work.path().join("busybox.tar");
    let o = kiln_with_root(
        &work.path().join("store"),
        &[
            "copy",
            &format!("oci:{}:latest", layout.display()),
            &format!("docker-archive:{}:busybox:zstd", archive.display()),
        ],
    );
    assert_ok(&o);
    let unpacked = work.path().join("from-archive");
    run_tool(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("oci:{}:x", unpacked.display())),
    );
    let rootfs = umoci_unpack(&unpacked, "x", &work.path().join("bundle"));
    assert!(tree(&rootfs) == expected, "the rootfs differs");
}
