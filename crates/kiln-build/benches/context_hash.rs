//! Context hashing benchmark (plain main, `cargo bench -p kiln-build --bench context_hash`).
//!
//! Builds a context of 20,000 files / 160 MiB (200 directories of 100 files, 4 to 12 KiB of
//! incompressible bytes each) and times `BuildContext::digest` of `COPY . /app`:
//! 1. the first build: empty record, every file read;
//! 2. a rebuild with nothing changed, as a new process would do it (new `BuildContext`, same
//!    record dir), median of 5: one `lstat` per entry, nothing read;
//! 3. a rebuild after one file changed;
//! 4. the peers, which re-read everything each time: kiln without a record, and
//!    `tar -c . | sha256sum`.
//!
//! Wall time and CPU time (user + system, all threads) for each. `KILN_BENCH_NOOP_ONLY=<n>`
//! runs n no-op rebuilds after the first build and stops, for `perf record` or `strace -c -f`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_build::BuildContext;
use nix::sys::resource::{UsageWho, getrusage};

const DIRS: usize = 200;
const FILES_PER_DIR: usize = 100;
const MEAN_SIZE: usize = 8 * 1024 + 197; // 20,000 of these: 160 MiB

/// Wall and CPU time of one run.
#[derive(Clone, Copy)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

fn cpu_time(who: UsageWho) -> Duration {
    let usage = getrusage(who).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    t(usage.user_time()) + t(usage.system_time())
}

fn timed<T>(who: UsageWho, f: impl FnOnce() -> T) -> (T, Timed) {
    let (cpu0, wall0) = (cpu_time(who), Instant::now());
    let out = f();
    let timed = Timed {
        wall: wall0.elapsed(),
        cpu: cpu_time(who) - cpu0,
    };
    (out, timed)
}

fn median(mut runs: Vec<Timed>) -> Timed {
    runs.sort_by_key(|t| t.wall);
    runs[runs.len() / 2]
}

fn make_context(root: &Path) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: incompressible, reproducible bytes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for d in 0..DIRS {
        let dir = root.join(format!("dir{d:03}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES_PER_DIR {
            let size = MEAN_SIZE - 4096 + (next() % 8192) as usize;
            let bytes: Vec<u8> = (0..size.div_ceil(8))
                .flat_map(|_| next().to_le_bytes())
                .take(size)
                .collect();
            fs::write(dir.join(format!("file{f:03}.bin")), bytes).expect("write");
        }
    }
}

fn digest(root: &Path, records: Option<&Path>) -> (String, u64, u64) {
    let mut context = BuildContext::open(root, None).expect("open the context");
    if let Some(records) = records {
        context = context.with_records_in(records);
    }
    let sources = context.sources(".");
    let hashed = context.digest(&sources, None).expect("digest");
    let stats = hashed.stats;
    (
        hashed.digest.to_string(),
        stats.files_read,
        stats.bytes_read,
    )
}

fn show(what: &str, t: Timed, read: Option<(u64, u64)>) {
    let read = read.map_or(String::new(), |(files, bytes)| {
        format!(
            "  ({files} files / {:.1} MiB read)",
            bytes as f64 / 1048576.0
        )
    });
    println!(
        "{what:<44} wall {:>8.1} ms  cpu {:>8.1} ms{read}",
        t.wall.as_secs_f64() * 1e3,
        t.cpu.as_secs_f64() * 1e3
    );
}

fn main() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let root = scratch.path().join("context");
    let records = scratch.path().join("records");
    make_context(&root);
    // Files changed within the last 2 s are not recorded (coarse timestamps): let them settle.
    std::thread::sleep(Duration::from_millis(2100));
    println!(
        "context: {} files, {:.0} MiB; {} cores",
        DIRS * FILES_PER_DIR,
        (DIRS * FILES_PER_DIR * MEAN_SIZE) as f64 / 1048576.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let ((first, files, bytes), t) = timed(UsageWho::RUSAGE_SELF, || digest(&root, Some(&records)));
    show("kiln, first build (empty record)", t, Some((files, bytes)));

    // For profiling (`perf record`, `strace -c -f`): that many more no-op rebuilds, then stop.
    if let Ok(n) = std::env::var("KILN_BENCH_NOOP_ONLY") {
        for _ in 0..n.parse::<usize>().expect("KILN_BENCH_NOOP_ONLY=<runs>") {
            digest(&root, Some(&records));
        }
        return;
    }

    let mut runs = Vec::new();
    for _ in 0..5 {
        let ((again, files, bytes), t) =
            timed(UsageWho::RUSAGE_SELF, || digest(&root, Some(&records)));
        assert_eq!(again, first, "nothing changed");
        assert_eq!((files, bytes), (0, 0), "a no-op rebuild reads nothing");
        runs.push(t);
    }
    let noop = median(runs);
    show("kiln, nothing changed (median of 5)", noop, Some((0, 0)));

    fs::write(root.join("dir123/file045.bin"), b"changed").expect("change a file");
    let ((changed, files, bytes), t) =
        timed(UsageWho::RUSAGE_SELF, || digest(&root, Some(&records)));
    assert_ne!(changed, first);
    show("kiln, one file changed", t, Some((files, bytes)));

    let mut runs = Vec::new();
    for _ in 0..3 {
        let ((full, files, bytes), t) = timed(UsageWho::RUSAGE_SELF, || digest(&root, None));
        assert_eq!(full, changed, "the record changes nothing but the time");
        assert_eq!(files as usize, DIRS * FILES_PER_DIR);
        runs.push(t);
        let _ = bytes;
    }
    let full = median(runs);
    show("peer: kiln without a record (median of 3)", full, None);

    let mut runs = Vec::new();
    for _ in 0..3 {
        let (status, t) = timed(UsageWho::RUSAGE_CHILDREN, || {
            Command::new("sh")
                .arg("-c")
                .arg("tar -cf - -C \"$0\" . | sha256sum >/dev/null")
                .arg(&root)
                .status()
                .expect("run tar")
        });
        assert!(status.success());
        runs.push(t);
    }
    let tar = median(runs);
    show("peer: tar -c . | sha256sum (median of 3)", tar, None);

    let ratio = |peer: Timed| peer.wall.as_secs_f64() / noop.wall.as_secs_f64();
    println!(
        "no-op rebuild: {:.0}x faster than re-reading without a record, {:.0}x faster than tar | sha256sum",
        ratio(full),
        ratio(tar)
    );
}
