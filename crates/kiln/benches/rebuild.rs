//! Rebuild benchmark (plain main; `cargo bench -p kiln --bench rebuild`): kiln and
//! `buildah bud --layers` side by side in the same run, on the same Dockerfile, context and
//! base image, each with a store of its own:
//!
//! 1. a small context (one file): `COPY` + `RUN`;
//! 2. a context of 20,000 files / 160 MiB (200 directories of 100 files of 8,389 bytes of
//!    pseudo-random data): `COPY` of all of it + a `RUN` that lists it.
//!
//! For each: one cold build (shown, not the point here), then [`RUNS`] rebuilds with nothing
//! changed, then [`RUNS`] rebuilds after rewriting one file (a different one each time), in
//! which only the `COPY` and the `RUN` may run again: the bench checks that in both tools'
//! output. Wall time and CPU time (user + system of the tool and everything it waited for)
//! per build; medians; ratios kiln ÷ buildah.
//!
//! The base is the busybox fixture (kiln-testkit), copied by skopeo into a single-platform
//! OCI layout that kiln reads as `oci-layout://DIR:latest` and buildah as `oci:DIR:latest`.
//! Neither tool exports: each leaves the image in its own store (kiln's root, buildah's
//! containers-storage), as `buildah bud` does by default. buildah runs RUN with
//! `--isolation chroot` (its default OCI runtime cannot run here: crun refuses cgroups in
//! hybrid mode).
//!
//! `KILN_BENCH_KEEP=1` keeps the work dir (for `strace -c -f` of a rebuild by hand).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    FILE_BYTES, Timed, WorkDir, busybox_base, header, load_average, median, row, table_head, timed,
    write_file, write_tree,
};

const RUNS: usize = 3;
const DIRS: usize = 200;
const FILES_PER_DIR: usize = 100;

const SMALL_DOCKERFILE: &str = "ARG BASE\nFROM $BASE\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b\n";
const LARGE_DOCKERFILE: &str =
    "ARG BASE\nFROM $BASE\nCOPY data /data\nRUN find /data -type f | wc -l > /count\n";

/// The two tools, each with its own store under `work`.
struct Tools {
    work: PathBuf,
    base: PathBuf,
}

impl Tools {
    fn kiln(&self, ctx: &Path) -> (Timed, String) {
        let base = format!("BASE=oci-layout://{}:latest", self.base.display());
        timed(
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args([
                    "build",
                    "--progress=plain",
                    "-t",
                    "app:1",
                    "--build-arg",
                    &base,
                ])
                .arg(ctx)
                .env("KILN_ROOT", self.work.join("kiln-root"))
                .env("NO_COLOR", "1"),
        )
    }

    fn buildah(&self, ctx: &Path) -> (Timed, String) {
        let base = format!("BASE=oci:{}:latest", self.base.display());
        timed(
            Command::new("buildah")
                .arg("--root")
                .arg(self.work.join("buildah-root"))
                .arg("--runroot")
                .arg(self.work.join("buildah-run"))
                .args(["bud", "--layers", "--isolation", "chroot", "-t", "app:1"])
                .args(["--build-arg", &base])
                .arg(ctx),
        )
    }
}

/// Whether kiln's output says its FROM was reused and the COPY and RUN ran (`ran`) or came
/// from the cache (`!ran`).
fn check_kiln(output: &str, ran: bool) {
    let expected = match ran {
        true => "build summary: 2 steps ran, 0 cached",
        false => "build summary: 0 steps ran, 2 cached",
    };
    assert!(output.contains(expected), "kiln:\n{output}");
}

/// The same for buildah, which prints `--> Using cache` for each step it reuses.
fn check_buildah(output: &str, ran: bool) {
    let cached = output.matches("--> Using cache").count();
    assert_eq!(cached, if ran { 0 } else { 2 }, "buildah:\n{output}");
}

fn large_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("large");
    write_tree(&ctx.join("data"), DIRS, FILES_PER_DIR, FILE_BYTES);
    fs::write(ctx.join("Dockerfile"), LARGE_DOCKERFILE).expect("Dockerfile");
    ctx
}

fn small_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("small");
    fs::create_dir_all(&ctx).expect("mkdir");
    fs::write(ctx.join("a.txt"), "a\n").expect("a.txt");
    fs::write(ctx.join("Dockerfile"), SMALL_DOCKERFILE).expect("Dockerfile");
    ctx
}

/// Cold build, no-op rebuilds and one-file rebuilds of `ctx` with both tools; `change(i)`
/// rewrites one file for the `i`th one-file rebuild.
fn scenario(name: &str, ctx: &Path, tools: &Tools, change: &dyn Fn(usize)) {
    // Context files changed within 2 s of hashing are read again next time (coarse
    // timestamps); a checkout is normally older than that.
    std::thread::sleep(Duration::from_millis(2100));
    let (kiln_cold, out) = tools.kiln(ctx);
    check_kiln(&out, true);
    let (buildah_cold, out) = tools.buildah(ctx);
    check_buildah(&out, true);

    let (mut kiln_noop, mut buildah_noop) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (t, out) = tools.kiln(ctx);
        check_kiln(&out, false);
        kiln_noop.push(t);
        let (t, out) = tools.buildah(ctx);
        check_buildah(&out, false);
        buildah_noop.push(t);
    }
    let (mut kiln_one, mut buildah_one) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        change(i);
        let (t, out) = tools.kiln(ctx);
        check_kiln(&out, true);
        kiln_one.push(t);
        let (t, out) = tools.buildah(ctx);
        check_buildah(&out, true);
        buildah_one.push(t);
    }
    println!("\n{name}");
    table_head();
    row("cold (1 run)", kiln_cold, buildah_cold);
    for (i, (k, b)) in kiln_noop.iter().zip(&buildah_noop).enumerate() {
        row(&format!("nothing changed, run {}", i + 1), *k, *b);
    }
    row(
        "**nothing changed, median**",
        median(kiln_noop),
        median(buildah_noop),
    );
    for (i, (k, b)) in kiln_one.iter().zip(&buildah_one).enumerate() {
        row(&format!("one file changed, run {}", i + 1), *k, *b);
    }
    row(
        "**one file changed, median**",
        median(kiln_one),
        median(buildah_one),
    );
}

fn main() {
    let scratch = WorkDir::new("rebuild");
    let work = scratch.0.clone();
    let base = work.join("base");
    busybox_base(&base);
    let tools = Tools {
        work: work.clone(),
        base,
    };
    println!("{}", header());

    let small = small_context(&work);
    scenario(
        "Small context (one file): COPY + RUN",
        &small,
        &tools,
        &|i| {
            fs::write(small.join("a.txt"), format!("changed {i}\n")).expect("a.txt");
        },
    );
    let large = large_context(&work);
    scenario("20,000 files / 160 MiB: COPY + RUN", &large, &tools, &|i| {
        let file = large.join(format!("data/dir{:03}/file{i:03}.bin", 17 * i));
        write_file(&file, 1_000_000 + i as u64);
    });
    println!("\nload average after: {}", load_average());
}
