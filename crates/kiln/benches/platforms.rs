//! Multi-platform benchmarks (plain main; `cargo bench -p kiln --bench platforms`), each run
//! side by side with its peer against a real registry on loopback:
//!
//! 1. Compiling a Go program (`benches/go-inventory`: encoding/json, text/template, regexp,
//!    compress/gzip, crypto/sha256) for linux/arm64: `go build` executed under QEMU in an arm64
//!    stage, against the same build cross-compiled (`GOOS`/`GOARCH`) in a
//!    `FROM --platform=$BUILDPLATFORM` stage whose binary is copied into a busybox arm64 image.
//!    The Go fixture has no precompiled standard library (Go 1.20 and later ship none), so both
//!    cases compile the same packages. Every build gets a fresh `KILN_ROOT`, so nothing is cached
//!    between runs and each timing includes pulling and unpacking the base images. Each build
//!    writes an OCI layout, whose `/app` must be an aarch64 ELF.
//! 2. One `--platform linux/amd64,linux/arm64` build against two single-platform builds, the
//!    RUN step being busybox `gzip -6` over 48 MiB of generated data, then `sha256sum`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testkit::{Registry, push_busybox, push_go};
use serde_json::Value;

const WORK: &str = "i=0; while [ $i -lt 48 ]; do head -c 1048576 /bin/busybox; i=$((i+1)); done | gzip -6 | sha256sum > /out";
const RUNS: usize = 3;
const GO_MAIN: &str = include_str!("go-inventory/main.go");
const GO_MOD: &str = include_str!("go-inventory/go.mod");
const ELF_MACHINE_AARCH64: u16 = 0xB7;

fn kiln(store: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_ROOT", store)
        .output()
        .expect("run kiln");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn seconds(runs: &[Duration]) -> String {
    let all: Vec<String> = runs
        .iter()
        .map(|run| format!("{:.1}s", run.as_secs_f64()))
        .collect();
    all.join(", ")
}

fn context(dir: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = dir.join(name);
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx.display().to_string()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob_path(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The first bytes of `/app` in the linux/arm64 image of the OCI layout `layout`, from the
/// topmost layer that has it.
fn app_header_in_layout(layout: &Path) -> Vec<u8> {
    let mut manifest = read_json(&blob_path(
        layout,
        &read_json(&layout.join("index.json"))["manifests"][0],
    ));
    if let Some(platforms) = manifest["manifests"].as_array() {
        let arm64 = platforms
            .iter()
            .find(|m| m["platform"]["architecture"] == "arm64")
            .unwrap_or_else(|| panic!("no arm64 image in {manifest}"));
        manifest = read_json(&blob_path(layout, arm64));
    }
    let config = read_json(&blob_path(layout, &manifest["config"]));
    assert_eq!(config["architecture"], "arm64", "{}", layout.display());
    let layers = manifest["layers"].as_array().expect("manifest layers");
    for layer in layers.iter().rev() {
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        assert!(
            media_type.ends_with("gzip"),
            "unexpected layer {media_type}"
        );
        let gz = fs::File::open(blob_path(layout, layer)).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            if path == Path::new("app") || path == Path::new("./app") {
                let mut header = Vec::new();
                entry.take(64).read_to_end(&mut header).unwrap();
                return header;
            }
        }
    }
    panic!("no /app in the arm64 image of {}", layout.display());
}

/// Panics unless `/app` in `layout` is an aarch64 ELF executable.
fn assert_app_is_aarch64(layout: &Path) {
    let header = app_header_in_layout(layout);
    assert!(
        header.len() >= 20 && header.starts_with(b"\x7fELF"),
        "/app in {} is not ELF: {header:02x?}",
        layout.display()
    );
    let machine = u16::from_le_bytes([header[18], header[19]]);
    assert_eq!(
        machine,
        ELF_MACHINE_AARCH64,
        "/app in {} is not aarch64 (e_machine {machine:#x})",
        layout.display()
    );
}

/// Builds `ctx` for linux/arm64 `RUNS` times, each with a fresh store, into an OCI layout
/// whose `/app` is checked afterwards. Returns the time of each whole `kiln build`.
fn timed_go_builds(work: &Path, name: &str, ctx: &str) -> Vec<Duration> {
    (0..RUNS)
        .map(|run| {
            let store = work.join(format!("store-{name}-{run}"));
            let layout = work.join(format!("out-{name}-{run}"));
            let output = format!("type=oci,dest={},tar=false", layout.display());
            let args = [
                "build",
                "--progress=quiet",
                "--platform",
                "linux/arm64",
                "-o",
                &output,
                ctx,
            ];
            let elapsed = kiln(&store, &args);
            assert_app_is_aarch64(&layout);
            for dir in [&store, &layout] {
                fs::remove_dir_all(dir).unwrap();
            }
            eprintln!("  {name} run {}: {:.1}s", run + 1, elapsed.as_secs_f64());
            elapsed
        })
        .collect()
}

fn go_context(dir: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = context(dir, name, dockerfile);
    fs::write(Path::new(&ctx).join("main.go"), GO_MAIN).unwrap();
    fs::write(Path::new(&ctx).join("go.mod"), GO_MOD).unwrap();
    ctx
}

fn compile_benchmark(registry: &Registry, tmp: &Path) {
    let started = Instant::now();
    push_go(registry, "golang");
    println!(
        "Go fixture ready (built unless cached) and pushed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let reg = registry.addr();
    let emulated = go_context(
        tmp,
        "go-emulated",
        &format!(
            "FROM {reg}/golang:latest\nWORKDIR /src\nCOPY main.go go.mod ./\n\
             RUN CGO_ENABLED=0 go build -o /app .\n"
        ),
    );
    let cross = go_context(
        tmp,
        "go-cross",
        &format!(
            "FROM --platform=$BUILDPLATFORM {reg}/golang:latest AS build\n\
             ARG TARGETOS\nARG TARGETARCH\nWORKDIR /src\nCOPY main.go go.mod ./\n\
             RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /app .\n\
             FROM {reg}/busybox:latest\nCOPY --from=build /app /app\n"
        ),
    );
    let cross_runs = timed_go_builds(tmp, "cross", &cross);
    let emulated_runs = timed_go_builds(tmp, "emulated", &emulated);
    let (e, c) = (median(emulated_runs.clone()), median(cross_runs.clone()));
    println!("go build for linux/arm64 (median of {RUNS} whole builds, each with a fresh store):");
    println!(
        "  emulated under QEMU in the arm64 stage:          {:.2}s  (runs: {})",
        e.as_secs_f64(),
        seconds(&emulated_runs)
    );
    println!(
        "  cross-compiled in a $BUILDPLATFORM stage:        {:.2}s  (runs: {})",
        c.as_secs_f64(),
        seconds(&cross_runs)
    );
    println!(
        "  ratio: emulated takes {:.1}x as long; /app is aarch64 ELF in both",
        e.as_secs_f64() / c.as_secs_f64()
    );
}

fn main() {
    let registry = Registry::start();
    push_busybox(&registry, "busybox");
    let tmp = tempfile::tempdir().unwrap();

    compile_benchmark(&registry, tmp.path());

    let reg = registry.addr();
    let store = tmp.path().join("store");
    let gzip_work = context(
        tmp.path(),
        "gzip-work",
        &format!("FROM {reg}/busybox:latest\nRUN {WORK}\n"),
    );
    // Pull and extract the base images once, outside the measurements.
    kiln(
        &store,
        &[
            "build",
            "--progress=quiet",
            "--platform",
            "linux/amd64,linux/arm64",
            &gzip_work,
        ],
    );

    let mut both = Vec::new();
    let mut amd = Vec::new();
    let mut arm64 = Vec::new();
    for _ in 0..RUNS {
        both.push(kiln(
            &store,
            &[
                "build",
                "--progress=quiet",
                "--platform",
                "linux/amd64,linux/arm64",
                &gzip_work,
            ],
        ));
        amd.push(kiln(
            &store,
            &[
                "build",
                "--progress=quiet",
                "--platform",
                "linux/amd64",
                &gzip_work,
            ],
        ));
        arm64.push(kiln(
            &store,
            &[
                "build",
                "--progress=quiet",
                "--platform",
                "linux/arm64",
                &gzip_work,
            ],
        ));
    }
    let (both, amd, arm64) = (median(both), median(amd), median(arm64));
    let slower = amd.max(arm64);
    println!("Two platforms, same Dockerfile (median of {RUNS}):");
    println!(
        "  --platform linux/amd64,linux/arm64: {:.2}s",
        both.as_secs_f64()
    );
    println!(
        "  --platform linux/amd64 alone:       {:.2}s",
        amd.as_secs_f64()
    );
    println!(
        "  --platform linux/arm64 alone:       {:.2}s",
        arm64.as_secs_f64()
    );
    println!(
        "  sum of the two single builds:       {:.2}s",
        (amd + arm64).as_secs_f64()
    );
    println!(
        "  combined / slower single build: {:.2} (target: at most 1.20)",
        both.as_secs_f64() / slower.as_secs_f64()
    );
}
