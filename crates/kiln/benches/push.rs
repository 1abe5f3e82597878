//! Push benchmark (plain main; `cargo bench -p kiln --bench push`): a 1 GiB image of 8 layers
//! of 128 MiB each, copied from an OCI layout to a real registry on loopback by
//! `kiln copy` and by `skopeo copy` in the same run, each into a fresh registry so nothing is
//! skipped as already there. Prints the median of 3 runs per tool, their ratio, and the
//! peak resident memory of each tool's process (from `wait4`'s rusage).
//!
//! The layers are random bytes labelled as gzip layers: neither tool decompresses on copy,
//! and random bytes are what compressed layers look like to the network and the registry.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::{Noise, Registry};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const LAYERS: usize = 8;
const LAYER_BYTES: usize = 128 << 20;
const RUNS: usize = 3;
const TAG: &str = "bench";

/// Writes `len` pseudo-random bytes (xorshift) to `path`; returns their sha256 hex digest.
fn write_noise(path: &Path, len: usize, seed: u64) -> String {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut stream = Noise::new(seed);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        stream.fill(&mut block);
        let n = left.min(block.len());
        hasher.update(&block[..n]);
        out.write_all(&block[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores `bytes` as a blob of the layout and returns its descriptor.
fn put_json(blobs: &Path, media_type: &str, value: &serde_json::Value) -> serde_json::Value {
    let bytes = serde_json::to_vec(value).unwrap();
    let digest = hex(&Sha256::digest(&bytes));
    fs::write(blobs.join(&digest), &bytes).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len()})
}

/// An OCI layout in `dir` holding one image of `LAYERS` random layers under the name `TAG`.
fn make_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        let tmp = blobs.join(format!("layer-{i}.tmp"));
        let digest = write_noise(&tmp, LAYER_BYTES, 0x9E37_79B9_7F4A_7C15 ^ i as u64);
        fs::rename(&tmp, blobs.join(&digest)).unwrap();
        layers.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{digest}"),
            "size": LAYER_BYTES,
        }));
    }
    let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = put_json(
        &blobs,
        "application/vnd.oci.image.config.v1+json",
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }),
    );
    let mut manifest = put_json(
        &blobs,
        "application/vnd.oci.image.manifest.v1+json",
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        }),
    );
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": TAG});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [manifest]})).unwrap(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Runs `command` to completion; returns its wall time and peak RSS in bytes.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std's wait cannot replace: it reports rusage"
)]
fn measure(mut command: Command, log: &Path) -> (Duration, u64) {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::from(File::create(log).unwrap()))
        .stderr(Stdio::from(
            File::create(log.with_extension("err")).unwrap(),
        ))
        .spawn()
        .expect("start the tool");
    let mut status = 0;
    // SAFETY: rusage is plain old data, and all-zero bytes are a valid value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (not reaped elsewhere: `child` is never waited on)
    // and writes into the two locals above.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{command:?} failed:\n{}",
        fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
    // ru_maxrss is in KiB on Linux.
    (elapsed, usage.ru_maxrss as u64 * 1024)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let work = tempfile::Builder::new()
        .prefix("kiln-push-bench-")
        .tempdir()
        .unwrap();
    let layout = work.path().join("layout");
    let made = Instant::now();
    make_layout(&layout);
    eprintln!(
        "made a {} MiB image of {LAYERS} layers in {:.1}s",
        (LAYERS * LAYER_BYTES) >> 20,
        made.elapsed().as_secs_f64()
    );
    let source = format!("oci:{}:{TAG}", layout.display());
    let kiln_root = work.path().join("kiln-root");
    let (mut kiln_times, mut skopeo_times) = (Vec::new(), Vec::new());
    let (mut kiln_rss, mut skopeo_rss) = (0, 0);
    for run in 0..RUNS {
        // A fresh registry per push: nothing is already there.
        let registry = Registry::start();
        let mut kiln = Command::new(env!("CARGO_BIN_EXE_kiln"));
        kiln.env("KILN_ROOT", &kiln_root).args([
            "copy",
            &source,
            &format!("docker://{}/kiln/push:{run}", registry.addr()),
        ]);
        let (t, rss) = measure(kiln, &work.path().join(format!("kiln-{run}.log")));
        drop(registry);
        kiln_times.push(t);
        kiln_rss = kiln_rss.max(rss);

        let registry = Registry::start();
        let mut skopeo = Command::new("skopeo");
        skopeo.args([
            "--insecure-policy",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &source,
            &format!("docker://{}/skopeo/push:{run}", registry.addr()),
        ]);
        let (t, rss) = measure(skopeo, &work.path().join(format!("skopeo-{run}.log")));
        drop(registry);
        skopeo_times.push(t);
        skopeo_rss = skopeo_rss.max(rss);
        eprintln!(
            "run {}: kiln {:.2}s, skopeo {:.2}s",
            run + 1,
            kiln_times[run].as_secs_f64(),
            skopeo_times[run].as_secs_f64()
        );
    }
    let (kiln, skopeo) = (median(kiln_times), median(skopeo_times));
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "push of {LAYERS} x {} MiB layers to a loopback registry, median of {RUNS}:",
        LAYER_BYTES >> 20
    );
    println!("  kiln copy:   {:.2}s", kiln.as_secs_f64());
    println!("  skopeo copy: {:.2}s", skopeo.as_secs_f64());
    println!(
        "  kiln/skopeo time ratio: {:.2} (below 1 means kiln is faster)",
        kiln.as_secs_f64() / skopeo.as_secs_f64()
    );
    println!("  kiln peak RSS:   {:.1} MiB", mib(kiln_rss));
    println!("  skopeo peak RSS: {:.1} MiB", mib(skopeo_rss));
}
