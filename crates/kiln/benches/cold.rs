//! Cold-build benchmark (plain main; `cargo bench -p kiln --bench cold`): kiln and
//! `buildah bud --layers` side by side in the same run, each from an empty store, each
//! writing an OCI image layout, on the same Dockerfiles, contexts and base images:
//!
//! 1. a context of 20,000 files / 160 MiB (200 directories of 100 files of 8,389 bytes of
//!    pseudo-random data): `COPY` of all of it + a `RUN` that counts it;
//! 2. a base image of 50,000 files / 100 MiB (busybox + 500 directories of 100 files of
//!    2,048 bytes) + three small `RUN`s: the base's extraction is the work.
//!
//! Each build runs [`RUNS`] times per tool, alternating, each time with a new empty store
//! (kiln's root; buildah's containers-storage) and a new output dir, after a `sync` so that
//! one build's writeback does not land in the next one's time. Nothing is deleted until the
//! end: right after a mass deletion, ext4 spends most of a file creation scanning for
//! recently deleted inodes (`recently_deleted` in `perf`), which doubled whichever build came
//! next. Wall time and CPU time
//! (user + system of the tool and everything it waited for) per build; medians; ratios
//! kiln ÷ buildah. buildah's time includes `buildah push IMAGE oci:DIR` (its `bud` cannot
//! write a layout itself); kiln writes it with `-o type=oci,dest=DIR,tar=false`.
//!
//! The 50,000-file base is made once per run of the bench, by buildah from the busybox
//! fixture, so neither tool reads a layer it wrote itself. buildah runs RUN with
//! `--isolation chroot` (its default OCI runtime cannot run here: crun refuses cgroups in
//! hybrid mode).

mod common;

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    FILE_BYTES, Timed, WorkDir, busybox_base, header, load_average, median, row, table_head,
    write_tree,
};

const RUNS: usize = 5;

const COPY_DOCKERFILE: &str =
    "ARG BASE\nFROM $BASE\nCOPY data /data\nRUN find /data -type f | wc -l > /count\n";
const BIG_BASE_DOCKERFILE: &str = "ARG BASE\nFROM $BASE\nRUN echo one > /one\n\
     RUN echo two > /two\nRUN find /many -type f | wc -l > /count\n";

struct Bench {
    work: PathBuf,
    /// Dirs named so far by [`Bench::fresh`].
    made: Cell<usize>,
}

impl Bench {
    /// A new dir name under the work dir, for one build's store or output.
    fn fresh(&self, name: &str) -> PathBuf {
        let n = self.made.get() + 1;
        self.made.set(n);
        self.work.join(format!("{name}-{n}"))
    }

    fn kiln(&self, ctx: &Path, base: &Path) -> Timed {
        let root = self.fresh("kiln-root");
        let out = self.fresh("kiln-out");
        settle();
        let (timed, _) = common::timed(
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(["build", "--progress=plain", "-t", "app:1"])
                .arg("--build-arg")
                .arg(format!("BASE=oci-layout://{}:latest", base.display()))
                .arg("-o")
                .arg(format!("type=oci,dest={},tar=false", out.display()))
                .arg(ctx)
                .env("KILN_ROOT", &root)
                .env("NO_COLOR", "1"),
        );
        check_layout(&out);
        timed
    }

    fn buildah(&self, ctx: &Path, base: &Path) -> Timed {
        let root = self.fresh("buildah-root");
        let run = self.fresh("buildah-run");
        let out = self.fresh("buildah-out");
        settle();
        let storage = format!("--root {} --runroot {}", root.display(), run.display());
        let script = format!(
            "buildah {storage} bud --layers --isolation chroot -q -t app:1 \
             --build-arg BASE=oci:{base}:latest {ctx} && \
             buildah {storage} push -q app:1 oci:{out}:latest",
            base = base.display(),
            ctx = ctx.display(),
            out = out.display(),
        );
        let (timed, _) = common::timed(Command::new("sh").arg("-c").arg(script));
        check_layout(&out);
        timed
    }
}

/// Unmounts whatever is mounted under `dir`, deepest first (buildah's overlay driver leaves
/// its home mounted), so that the work dir can go.
fn unmount_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(point).status();
    }
}

/// Writes back what earlier builds left dirty, outside the timed part.
fn settle() {
    let status = Command::new("sync").status().expect("running sync");
    assert!(status.success(), "sync failed");
}

/// The build wrote an OCI layout with one manifest.
fn check_layout(out: &Path) {
    let index = fs::read_to_string(out.join("index.json"))
        .unwrap_or_else(|e| panic!("no index.json in {}: {e}", out.display()));
    assert!(
        index.contains("application/vnd.oci.image.manifest.v1+json")
            || index.contains("application/vnd.oci.image.index.v1+json"),
        "{}: not an image index:\n{index}",
        out.display()
    );
}

/// The busybox base plus `/many`: 500 directories of 100 files of 2,048 bytes, made by
/// buildah into the OCI layout `dest`.
fn big_base(bench: &Bench, busybox: &Path, dest: &Path) {
    let ctx = bench.work.join("big-base-ctx");
    write_tree(&ctx.join("many"), 500, 100, 2048);
    fs::write(
        ctx.join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nCOPY many /many\n",
    )
    .expect("Dockerfile");
    let root = bench.fresh("buildah-root");
    let run = bench.fresh("buildah-run");
    let storage = format!("--root {} --runroot {}", root.display(), run.display());
    let script = format!(
        "buildah {storage} bud -q -t big:1 --build-arg BASE=oci:{busybox}:latest {ctx} && \
         buildah {storage} push -q big:1 oci:{dest}:latest",
        busybox = busybox.display(),
        ctx = ctx.display(),
        dest = dest.display(),
    );
    common::timed(Command::new("sh").arg("-c").arg(script));
}

fn scenario(name: &str, bench: &Bench, ctx: &Path, base: &Path) {
    let (mut kiln, mut buildah) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        kiln.push(bench.kiln(ctx, base));
        buildah.push(bench.buildah(ctx, base));
    }
    println!("\n{name}");
    table_head();
    for (i, (k, b)) in kiln.iter().zip(&buildah).enumerate() {
        row(&format!("cold, run {}", i + 1), *k, *b);
    }
    row("**cold, median**", median(kiln), median(buildah));
}

fn main() {
    let scratch = WorkDir::new("cold");
    let bench = Bench {
        work: scratch.0.clone(),
        made: Cell::new(0),
    };
    let busybox = bench.work.join("base");
    busybox_base(&busybox);
    println!("{}", header());

    let copy_ctx = bench.work.join("copy");
    write_tree(&copy_ctx.join("data"), 200, 100, FILE_BYTES);
    fs::write(copy_ctx.join("Dockerfile"), COPY_DOCKERFILE).expect("Dockerfile");
    scenario(
        "20,000 files / 160 MiB: COPY + RUN, into an OCI layout",
        &bench,
        &copy_ctx,
        &busybox,
    );

    let big = bench.work.join("big-base");
    big_base(&bench, &busybox, &big);
    let big_ctx = bench.work.join("big");
    fs::create_dir(&big_ctx).expect("mkdir");
    fs::write(big_ctx.join("Dockerfile"), BIG_BASE_DOCKERFILE).expect("Dockerfile");
    scenario(
        "50,000-file base + three small RUNs, into an OCI layout",
        &bench,
        &big_ctx,
        &big,
    );
    println!("\nload average after: {}", load_average());
    unmount_under(&bench.work);
}
