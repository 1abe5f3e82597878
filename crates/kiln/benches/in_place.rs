//! In place against namespaces (plain main; `cargo bench -p kiln --bench in_place`): the same
//! Dockerfiles built by kiln inside a podman container (runc, as root), once under Docker's
//! default seccomp profile, where `--isolation auto` builds in place, and once under
//! podman's, where it uses kiln's namespaces. Both pay the same container start.
//!
//! 1. the busybox base + four RUN steps, one of which writes 3,000 files;
//! 2. a base of 50,000 files (busybox + 500 directories of 100 files of 2,048 bytes, built by
//!    kiln on this machine first) + three small RUN steps: in place, the first RUN lays the
//!    whole base out in `/` (kaniko extracts it there too), where overlayfs mounts it.
//!
//! Each build reruns every step (`--no-cache`) on a store that already holds the base's
//! layers, [`RUNS`] times per isolation, alternating; wall-time medians; the ratio in place ÷
//! namespaces. No CPU time: the container's processes are not podman's children, so
//! `getrusage` does not see them.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Timed, WorkDir, busybox_base, load_average, median, write_tree};
use kiln_testkit::{Pod, Profile};

const RUNS: usize = 5;
const KILN: &str = env!("CARGO_BIN_EXE_kiln");

const SMALL: &str = "ARG BASE\nFROM $BASE\n\
     RUN mkdir /data && i=0; while [ $i -lt 3000 ]; do echo $i > /data/f$i; i=$((i+1)); done\n\
     RUN echo two > /two\nRUN rm /data/f1* && echo three > /three\nRUN cat /two /three > /both\n";
const BIG_BASE: &str = "ARG BASE\nFROM $BASE\nRUN echo one > /one\n\
     RUN echo two > /two\nRUN find /many -type f | wc -l > /count\n";

fn build(work: &Path, ctx: &Path, base: &str, profile: Profile, tag: &str) -> Timed {
    // In place, kiln must run from its own directory (as in kiln's image); namespaces need
    // kiln's own executable as the sandbox helper, which the loader of `Pod::kiln_dir` is not.
    let pod = match profile {
        Profile::DockerDefault => Pod::kiln_dir(Path::new(KILN), profile),
        Profile::Podman => Pod::new(Path::new(KILN), profile),
    }
    .bind(work)
    .env("NO_COLOR", "1");
    let root = work.join(format!("root-{tag}"));
    let out = work.join(format!("out-{tag}"));
    let _ = fs::remove_dir_all(&out);
    let base_arg = format!("BASE={base}");
    let out_arg = format!("type=oci,dest={},tar=false", out.display());
    let args = [
        "build",
        "--progress=plain",
        "--no-cache",
        "--root",
        root.to_str().unwrap(),
        "--build-arg",
        &base_arg,
        "-t",
        "app:1",
        "-o",
        &out_arg,
        ctx.to_str().unwrap(),
    ];
    let (timed, log) = common::timed(&mut pod.command(&args));
    let in_place = log.contains("RUN steps run in place");
    assert_eq!(
        in_place,
        profile == Profile::DockerDefault,
        "the build did not use the isolation measured:\n{log}"
    );
    timed
}

fn secs(t: std::time::Duration) -> String {
    format!("{:.3} s", t.as_secs_f64())
}

/// `base`: the FROM reference.
fn scenario(name: &str, work: &Path, ctx: &Path, base: &str) {
    // Warm-up: each store gets the base's layers.
    build(work, ctx, base, Profile::DockerDefault, "in-place");
    build(work, ctx, base, Profile::Podman, "namespaces");
    let (mut in_place, mut namespaces) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        in_place.push(build(work, ctx, base, Profile::DockerDefault, "in-place"));
        namespaces.push(build(work, ctx, base, Profile::Podman, "namespaces"));
    }
    let (p, n) = (median(in_place), median(namespaces));
    println!("\n{name}");
    println!("| isolation | wall (median of {RUNS}) |");
    println!("|---|---|");
    println!("| in place (Docker's default profile) | {} |", secs(p.wall));
    println!("| namespaces (podman's profile) | {} |", secs(n.wall));
    println!(
        "| **in place ÷ namespaces** | {:.2} |",
        p.wall.as_secs_f64() / n.wall.as_secs_f64()
    );
}

fn main() {
    let scratch = WorkDir::new("in-place");
    let work = scratch.0.clone();
    let busybox = work.join("base");
    busybox_base(&busybox);
    println!(
        "{} cores; load average before: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );

    let small = work.join("small");
    fs::create_dir(&small).expect("mkdir");
    fs::write(small.join("Dockerfile"), SMALL).expect("Dockerfile");
    scenario(
        "busybox + 4 RUN steps (one writes 3,000 files), every step rerun",
        &work,
        &small,
        &format!("oci-layout://{}:latest", busybox.display()),
    );

    // The 50,000-file base, built by kiln on this machine (namespaces).
    let big_ctx = work.join("big-base-ctx");
    write_tree(&big_ctx.join("many"), 500, 100, 2048);
    fs::write(
        big_ctx.join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nCOPY many /many\n",
    )
    .expect("Dockerfile");
    let big = work.join("big-base");
    common::timed(
        Command::new(KILN)
            .args(["build", "--progress=plain", "-t", "big:1"])
            .arg("--build-arg")
            .arg(format!("BASE=oci-layout://{}:latest", busybox.display()))
            .arg("-o")
            .arg(format!("type=oci,dest={},tar=false", big.display()))
            .arg(&big_ctx)
            .env("KILN_ROOT", work.join("root-big"))
            .env("KILN_ISOLATION", "namespaces"),
    );
    let big_run = work.join("big");
    fs::create_dir(&big_run).expect("mkdir");
    fs::write(big_run.join("Dockerfile"), BIG_BASE).expect("Dockerfile");
    scenario(
        "50,000-file base + 3 small RUN steps, every step rerun",
        &work,
        &big_run,
        // kiln names the image in its layout by the tag of `-t big:1`.
        &format!("oci-layout://{}:1", big.display()),
    );
    println!("\nload average after: {}", load_average());
}
