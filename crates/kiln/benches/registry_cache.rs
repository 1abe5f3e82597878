//! Registry cache benchmark (plain main; `cargo bench -p kiln --bench registry_cache`): a CI
//! job on a fresh runner (an empty store) rebuilds a project of 20,000 files / 160 MiB with
//! one file changed, against a warm registry cache, and pushes; kiln
//! (`--cache-from`/`--cache-to type=registry`) and buildah (`bud --layers --cache-from
//! --cache-to`) side by side in the same run, on the same real registry (docker-registry on
//! 127.0.0.1), the same Dockerfile and the same base (busybox, pushed to that registry).
//!
//! Per tool, in a block of its own (kiln first): one warm-up job that fills its cache
//! (shown), then [`RUNS`] jobs, each with a new empty store, after rewriting one file (a
//! different one each time), and after `sync` (outside the timing) so that no job waits on
//! the writeback of the ones before. Each job is timed
//! from the start of the build to the end of the push; the bytes the registry served to it
//! (layer and config blobs, from the registry's access log) are reported beside. The bench
//! checks in each tool's output that the job reused FROM and ran the COPY and the RUN.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{
    FILE_BYTES, Timed, WorkDir, header, load_average, median, row, table_head, timed, write_file,
    write_tree,
};
use kiln_testkit::{Registry, push_busybox};

const RUNS: usize = 5;
const DOCKERFILE: &str =
    "ARG BASE\nFROM $BASE\nCOPY data /data\nRUN find /data -type f | wc -l > /count\n";

/// One job of `tool` against `registry`, with an empty store of its own under `work`.
fn job(tool: &str, registry: &Registry, work: &Path, ctx: &Path, n: usize) -> (Timed, u64) {
    // Each job starts with nothing waiting to be written back: on this machine's virtual
    // disk the gigabytes the jobs before wrote otherwise slow the later ones at random.
    let synced = Command::new("sync").status().expect("running sync");
    assert!(synced.success(), "sync");
    let served_before: u64 = registry.blob_gets_with_bytes().iter().map(|(_, b)| b).sum();
    let reg = registry.addr();
    let base = format!("BASE={reg}/busybox:latest");
    let store = work.join(format!("{tool}-store-{n}"));
    let (time, out) = match tool {
        "kiln" => {
            let cache = format!("{reg}/app:kiln-cache");
            timed(
                Command::new(env!("CARGO_BIN_EXE_kiln"))
                    .args(["build", "--progress=plain", "--push"])
                    .args(["-t", &format!("{reg}/app:kiln")])
                    .args(["--build-arg", &base])
                    .args(["--cache-from", &format!("type=registry,ref={cache}")])
                    .args(["--cache-to", &format!("type=registry,ref={cache},mode=max")])
                    .arg(ctx)
                    .env("KILN_ROOT", &store)
                    .env("NO_COLOR", "1"),
            )
        }
        _ => {
            let root = |what: &str| store.join(what);
            let buildah = |args: &[&str]| {
                let mut command = Command::new("buildah");
                command
                    .arg("--root")
                    .arg(root("root"))
                    .arg("--runroot")
                    .arg(root("run"))
                    .args(args);
                command
            };
            let cache = format!("{reg}/app-buildah-cache");
            let image = format!("{reg}/app:buildah");
            let ctx = ctx.to_str().unwrap();
            let script = format!(
                "{build:?} && {push:?}",
                build = buildah(&[
                    "bud",
                    "--layers",
                    "--isolation",
                    "chroot",
                    "--tls-verify=false",
                    "--cache-from",
                    &cache,
                    "--cache-to",
                    &cache,
                    "-t",
                    &image,
                    "--build-arg",
                    &base,
                    ctx,
                ]),
                push = buildah(&[
                    "push",
                    "--tls-verify=false",
                    &image,
                    &format!("docker://{image}")
                ]),
            );
            // Both commands timed as one job: `Command`'s Debug form is a shell word list.
            timed(Command::new("sh").arg("-c").arg(script))
        }
    };
    check(tool, &out, n);
    let served: u64 = registry.blob_gets_with_bytes().iter().map(|(_, b)| b).sum();
    (time, served - served_before)
}

/// The warm-up (`n == 0`) runs both steps; every later job reuses FROM and runs COPY + RUN
/// (the COPY's source changed).
fn check(tool: &str, out: &str, n: usize) {
    match tool {
        "kiln" => assert!(
            out.contains("build summary: 2 steps ran, 0 cached"),
            "kiln job {n}:\n{out}"
        ),
        _ => assert_eq!(
            out.matches("--> Using cache").count(),
            0,
            "buildah job {n}:\n{out}"
        ),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn main() {
    let scratch = WorkDir::new("registry-cache");
    let work = scratch.0.clone();
    let registry = Registry::start();
    push_busybox(&registry, "busybox");
    let ctx = work.join("project");
    write_tree(&ctx.join("data"), 200, 100, FILE_BYTES);
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
    println!("{}", header());

    // Each tool's jobs in a block of their own: buildah deletes its working containers (some
    // 40,000 files a job), and on ext4 files made in the minute after a mass deletion cost
    // far more (the inode allocator skips recently freed inodes: `recently_deleted` in a
    // profile of kiln's jobs). A fresh runner's disk has no such history.
    let mut changed = 0;
    let mut block = |tool: &str| {
        let warm = job(tool, &registry, &work, &ctx, 0);
        let mut jobs = Vec::new();
        for i in 0..RUNS {
            let file = ctx.join(format!("data/dir{:03}/file{changed:03}.bin", 17 * changed));
            write_file(&file, 2_000_000 + changed as u64);
            changed += 1;
            jobs.push(job(tool, &registry, &work, &ctx, i + 1));
        }
        (warm, jobs)
    };
    let (warm_kiln, kiln) = block("kiln");
    let (warm_buildah, buildah) = block("buildah");
    println!("\nA fresh runner rebuilds 20,000 files / 160 MiB with one file changed, and pushes");
    table_head();
    row("warm-up job (fills the cache)", warm_kiln.0, warm_buildah.0);
    for (i, (k, b)) in kiln.iter().zip(&buildah).enumerate() {
        row(&format!("one file changed, job {}", i + 1), k.0, b.0);
    }
    let times = |jobs: &[(Timed, u64)]| jobs.iter().map(|j| j.0).collect::<Vec<_>>();
    row(
        "**one file changed, median**",
        median(times(&kiln)),
        median(times(&buildah)),
    );
    println!("\n| downloaded from the registry | kiln | buildah |\n|---|---|---|");
    println!(
        "| warm-up job | {} | {} |",
        mib(warm_kiln.1),
        mib(warm_buildah.1)
    );
    for (i, (k, b)) in kiln.iter().zip(&buildah).enumerate() {
        println!(
            "| one file changed, job {} | {} | {} |",
            i + 1,
            mib(k.1),
            mib(b.1)
        );
    }
    println!("\nload average after: {}", load_average());
}
