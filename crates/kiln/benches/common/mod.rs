//! What the benchmarks that run kiln beside buildah share: timing of whole processes (wall
//! and CPU), medians, generated trees of pseudo-random files, the busybox base as an OCI
//! layout both tools read, and the table rows.

// Each bench compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_testkit::{Noise, busybox_fixtures};
use nix::sys::resource::{UsageWho, getrusage};

/// Files of this size: 20,000 of them make 160 MiB.
pub const FILE_BYTES: usize = 8389;

#[derive(Clone, Copy)]
pub struct Timed {
    pub wall: Duration,
    pub cpu: Duration,
}

fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let time =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

/// Runs `command` to its end; panics unless it succeeds. Returns its stdout + stderr, and its
/// wall time and CPU time (user + system of it and of everything it waited for).
pub fn timed(command: &mut Command) -> (Timed, String) {
    let cpu = children_cpu();
    let started = Instant::now();
    let out = command.output().expect("running a build");
    let wall = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    let cpu = children_cpu() - cpu;
    (Timed { wall, cpu }, text)
}

/// The median wall time and the median CPU time (each of its own run).
pub fn median(mut runs: Vec<Timed>) -> Timed {
    runs.sort_by_key(|t| t.wall);
    let wall = runs[runs.len() / 2].wall;
    runs.sort_by_key(|t| t.cpu);
    Timed {
        wall,
        cpu: runs[runs.len() / 2].cpu,
    }
}

/// Writes [`FILE_BYTES`] of pseudo-random data (incompressible, as built artifacts mostly are).
pub fn write_file(path: &Path, seed: u64) {
    write_sized(path, seed, FILE_BYTES);
}

fn write_sized(path: &Path, seed: u64, size: usize) {
    let mut bytes = vec![0u8; size];
    Noise::new(seed).fill(&mut bytes);
    fs::write(path, bytes).expect("writing a generated file");
}

/// `dirs` directories `dirNNN` of `files` files `fileNNN.bin` of `size` bytes each, under
/// `root`.
pub fn write_tree(root: &Path, dirs: usize, files: usize, size: usize) {
    for d in 0..dirs {
        let sub = root.join(format!("dir{d:03}"));
        fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..files {
            write_sized(
                &sub.join(format!("file{f:03}.bin")),
                (d * files + f) as u64,
                size,
            );
        }
    }
}

/// The busybox fixture copied by skopeo into a single-platform OCI layout at `dest`, which
/// kiln reads as `oci-layout://DEST:latest` and buildah as `oci:DEST:latest`.
pub fn busybox_base(dest: &Path) {
    let fixture = &busybox_fixtures().oci_layout;
    let copied = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", fixture.display()))
        .arg(format!("oci:{}:latest", dest.display()))
        .status()
        .expect("running skopeo");
    assert!(
        copied.success(),
        "skopeo could not copy the busybox fixture"
    );
}

/// `buildah --version`, the cores and the load average: the header of a bench's report.
pub fn header() -> String {
    let buildah_version = Command::new("buildah")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{buildah_version}; {} cores; load average before: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    )
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn secs(t: Duration) -> String {
    format!("{:.3} s", t.as_secs_f64())
}

/// The table the rows below fill.
pub fn table_head() {
    println!(
        "| build | kiln wall | kiln CPU | buildah wall | buildah CPU | wall ratio | CPU ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
}

pub fn row(what: &str, kiln: Timed, buildah: Timed) {
    println!(
        "| {what} | {} | {} | {} | {} | {:.3} | {:.3} |",
        secs(kiln.wall),
        secs(kiln.cpu),
        secs(buildah.wall),
        secs(buildah.cpu),
        kiln.wall.as_secs_f64() / buildah.wall.as_secs_f64(),
        kiln.cpu.as_secs_f64() / buildah.cpu.as_secs_f64(),
    );
}

/// A bench's work dir under the temp dir, removed at the end unless `KILN_BENCH_KEEP` is set.
/// Lower case only: buildah names an `oci:` base after its path, and refuses capitals.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn new(bench: &str) -> WorkDir {
        let dir = std::env::temp_dir().join(format!("kiln-bench-{bench}-{}", std::process::id()));
        fs::create_dir(&dir).expect("creating the work dir");
        WorkDir(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        match std::env::var_os("KILN_BENCH_KEEP") {
            Some(_) => println!("kept {}", self.0.display()),
            None => {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
    }
}
