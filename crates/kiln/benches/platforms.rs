//! Multi-platform benchmarks (plain main; `cargo bench -p kiln --bench platforms`), each run
//! side by side with its peer against a real registry on loopback:
//!
//! 1. CPU-bound work in a RUN step for linux/arm64: executed under QEMU in the target stage,
//!    against the same work in a `FROM --platform=$BUILDPLATFORM` stage whose result is
//!    copied into the arm64 image.
//! 2. One `--platform linux/amd64,linux/arm64` build against two single-platform builds.
//!
//! The busybox fixtures carry no compiler, so the work is busybox `gzip -6` over 48 MiB of
//! generated data, then `sha256sum`: compiled code running for seconds, as a compiler does.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testkit::{Registry, push_busybox};

const WORK: &str = "i=0; while [ $i -lt 48 ]; do head -c 1048576 /bin/busybox; i=$((i+1)); done | gzip -6 | sha256sum > /out";
const RUNS: usize = 3;

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

fn context(dir: &Path, name: &str, dockerfile: &str) -> String {
    let ctx = dir.join(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx.display().to_string()
}

fn main() {
    let registry = Registry::start();
    push_busybox(&registry, "busybox");
    let reg = registry.addr();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");

    let emulated = context(
        tmp.path(),
        "emulated",
        &format!("FROM {reg}/busybox:latest\nRUN {WORK}\n"),
    );
    let cross = context(
        tmp.path(),
        "cross",
        &format!(
            "FROM --platform=$BUILDPLATFORM {reg}/busybox:latest AS build\nRUN {WORK}\n\
             FROM {reg}/busybox:latest\nCOPY --from=build /out /out\n"
        ),
    );
    // Pull and extract the base images once, outside the measurements.
    kiln(
        &store,
        &[
            "build",
            "--progress=quiet",
            "--platform",
            "linux/amd64,linux/arm64",
            &cross,
        ],
    );

    let arm = ["build", "--progress=quiet", "--platform", "linux/arm64"];
    let mut e = Vec::new();
    let mut c = Vec::new();
    for _ in 0..RUNS {
        e.push(kiln(&store, &[&arm[..], &[emulated.as_str()]].concat()));
        c.push(kiln(&store, &[&arm[..], &[cross.as_str()]].concat()));
    }
    let (e, c) = (median(e), median(c));
    println!("CPU-bound RUN for linux/arm64 (median of {RUNS} whole builds):");
    println!(
        "  emulated under QEMU in the arm64 stage:          {:.2}s",
        e.as_secs_f64()
    );
    println!(
        "  on the build platform, copied into arm64 image:  {:.2}s",
        c.as_secs_f64()
    );
    println!(
        "  ratio: emulated takes {:.1}x as long",
        e.as_secs_f64() / c.as_secs_f64()
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
                &emulated,
            ],
        ));
        amd.push(kiln(
            &store,
            &[
                "build",
                "--progress=quiet",
                "--platform",
                "linux/amd64",
                &emulated,
            ],
        ));
        arm64.push(kiln(
            &store,
            &[
                "build",
                "--progress=quiet",
                "--platform",
                "linux/arm64",
                &emulated,
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
