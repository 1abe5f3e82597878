//! Snapshot benchmarks (plain main, `cargo bench -p kiln-snapshot`):
//! 1. snapshot of a RUN that changed one file over a 50,000-file rootfs: kiln's overlay upper
//!    dir -> `write_layer`, against a kaniko-style walk + lstat + compare of the whole rootfs;
//! 2. peak memory (ru_maxrss of a child process) and wall time of building a 1 GiB COPY layer;
//! 3. the in-place snapshot (part 7) of a RUN that changed one file over a 100,000-file rootfs:
//!    kiln's [`Inventory`] (a stat walk on every core, compared with the record taken before
//!    the step) against a kaniko-style serial walk that hashes every file, as kaniko's default
//!    `--snapshot-mode=full` does.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_snapshot::{
    CopyOptions, Inventory, LayerOptions, LayerStack, copy_into_layer, write_layer,
};
use sha2::{Digest, Sha256};

const DIRS: usize = 500;
const FILES_PER_DIR: usize = 100;
const COPY_SIZE: u64 = 1 << 30;
/// Set in the re-executed child that builds the 1 GiB COPY layer: the source file's path.
const CHILD_ENV: &str = "KILN_BENCH_COPY_SOURCE";

fn main() {
    if let Ok(source) = std::env::var(CHILD_ENV) {
        copy_layer_child(Path::new(&source));
        return;
    }
    let scratch = tempfile::tempdir().expect("temp dir");
    one_changed_file(scratch.path());
    copy_layer_memory(scratch.path());
    in_place_snapshot(scratch.path());
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Stat fields kaniko compares to decide whether a file changed.
type StatKey = (i64, i64, u64, u32, u32, u32, u64);

fn stat_key(md: &fs::Metadata) -> StatKey {
    (
        md.mtime(),
        md.mtime_nsec(),
        md.size(),
        md.mode(),
        md.uid(),
        md.gid(),
        md.ino(),
    )
}

/// One thread walks the whole tree, as kaniko's snapshotter does, and lstats each entry.
fn serial_walk(root: &Path, mut visit: impl FnMut(PathBuf, &fs::Metadata)) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let md = fs::symlink_metadata(&path).expect("lstat");
            if md.is_dir() {
                stack.push(path.clone());
            }
            visit(path, &md);
        }
    }
}

/// Walk the whole rootfs, lstat everything and compare with the recorded map: the work a
/// full-filesystem snapshotter does before it writes anything.
fn walk_and_compare(root: &Path, recorded: &HashMap<PathBuf, StatKey>) -> Vec<PathBuf> {
    let mut changed = Vec::new();
    serial_walk(root, |path, md| {
        if recorded.get(&path) != Some(&stat_key(md)) {
            changed.push(path);
        }
    });
    changed
}

fn record(root: &Path, map: &mut HashMap<PathBuf, StatKey>) {
    serial_walk(root, |path, md| {
        map.insert(path, stat_key(md));
    });
}

/// `dirs` directories of [`FILES_PER_DIR`] small files under `rootfs/usr/lib`.
fn make_rootfs(rootfs: &Path, dirs: usize) {
    let t = Instant::now();
    for d in 0..dirs {
        let dir = rootfs.join(format!("usr/lib/d{d:03}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES_PER_DIR {
            fs::write(dir.join(format!("f{f:03}")), format!("file {d} {f}\n")).expect("write");
        }
    }
    println!(
        "rootfs: {} files in {dirs} dirs, built in {:.1?}",
        dirs * FILES_PER_DIR,
        t.elapsed()
    );
}

fn one_changed_file(scratch: &Path) {
    let rootfs = scratch.join("rootfs");
    let upper = scratch.join("upper");
    make_rootfs(&rootfs, DIRS);
    let mut recorded = HashMap::new();
    record(&rootfs, &mut recorded);

    // The RUN step rewrites one file. With overlayfs, the upper dir holds that file and its
    // copied-up parent dirs; without it, the rootfs itself changes.
    let changed_rel = "usr/lib/d250/f050";
    fs::create_dir_all(upper.join("usr/lib/d250")).expect("mkdir upper");
    fs::write(upper.join(changed_rel), b"changed by RUN\n").expect("write upper");
    std::thread::sleep(Duration::from_millis(10));
    fs::write(rootfs.join(changed_rel), b"changed by RUN\n").expect("write rootfs");

    let opts = LayerOptions::default();
    let kiln: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            write_layer(&upper, io::sink(), &opts).expect("write_layer");
            t.elapsed()
        })
        .collect();
    let full: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let changed = walk_and_compare(&rootfs, &recorded);
            let elapsed = t.elapsed();
            assert!(
                changed.contains(&rootfs.join(changed_rel)),
                "walk found the change"
            );
            elapsed
        })
        .collect();
    let (kiln, full) = (median(kiln), median(full));
    println!(
        "snapshot of a RUN that changed 1 file (rootfs of {} files):",
        DIRS * FILES_PER_DIR
    );
    println!("  kiln (overlay upper dir -> layer tar.gz), median of 20: {kiln:.3?}");
    println!("  full walk + lstat + compare (kaniko-style), median of 5: {full:.3?}");
    println!(
        "  ratio: full walk takes {:.0}x as long",
        full.as_secs_f64() / kiln.as_secs_f64()
    );
}

/// Child process: COPY a 1 GiB file into a fresh layer dir and write that layer as tar.gz.
fn copy_layer_child(source: &Path) {
    let work = source.parent().expect("source has a parent");
    let layer = work.join("copy-layer");
    fs::create_dir(&layer).expect("mkdir layer");
    let t = Instant::now();
    copy_into_layer(
        source,
        &layer,
        Path::new("/data/blob.bin"),
        &LayerStack::new(Vec::new()),
        &CopyOptions::default(),
    )
    .expect("copy_into_layer");
    let copied = t.elapsed();
    let out = BufWriter::new(File::create(work.join("layer.tar.gz")).expect("create output"));
    let blob = write_layer(&layer, out, &LayerOptions::default()).expect("write_layer");
    println!(
        "  copy_into_layer {copied:.2?}, total with write_layer {:.2?}; blob {} MiB, {}",
        t.elapsed(),
        blob.size >> 20,
        blob.digest
    );
}

fn copy_layer_memory(scratch: &Path) {
    let source = scratch.join("big.bin");
    // Random-looking 1 MiB block (xorshift), repeated: gzip cannot shrink it (its window is 32 KiB).
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let mut file = BufWriter::new(File::create(&source).expect("create source"));
    for _ in 0..COPY_SIZE / block.len() as u64 {
        file.write_all(&block).expect("write source");
    }
    file.into_inner().expect("flush").sync_all().expect("sync");
    drop(block);

    println!("1 GiB COPY layer (child process: copy_into_layer + write_layer, gzip -6):");
    let exe = std::env::current_exe().expect("current exe");
    let t = Instant::now();
    let status = Command::new(exe)
        .env(CHILD_ENV, &source)
        .status()
        .expect("spawn child");
    let wall = t.elapsed();
    assert!(status.success(), "child failed: {status}");
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    println!(
        "  peak RSS of the child: {:.1} MiB; wall time {wall:.2?}",
        usage.ru_maxrss as f64 / 1024.0
    );
}

/// A file's hash as a content-hashing snapshotter keeps it: mode, owner, mtime and contents.
fn hash_entry(path: &Path, md: &fs::Metadata) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(md.mode().to_le_bytes());
    hasher.update(md.uid().to_le_bytes());
    hasher.update(md.gid().to_le_bytes());
    hasher.update(md.mtime().to_le_bytes());
    if md.is_file() {
        hasher.update(fs::read(path).expect("read"));
    }
    hasher.finalize().into()
}

/// kaniko's full snapshot: one thread walks the tree and hashes every entry.
fn hash_walk(root: &Path) -> HashMap<PathBuf, [u8; 32]> {
    let mut hashes = HashMap::new();
    serial_walk(root, |path, md| {
        let hash = hash_entry(&path, md);
        hashes.insert(path, hash);
    });
    hashes
}

fn in_place_snapshot(scratch: &Path) {
    const IN_PLACE_DIRS: usize = 1000;
    let rootfs = scratch.join("in-place");
    make_rootfs(&rootfs, IN_PLACE_DIRS);
    let changed_rel = Path::new("usr/lib/d500/f050");
    let mut record = Vec::new();
    let mut kiln = Vec::new();
    let mut hashed = Vec::new();
    for run in 0..5 {
        // Before the step: each tool's record.
        let t = Instant::now();
        let before = Inventory::take(&rootfs, &[]).expect("inventory");
        record.push(t.elapsed());
        assert_eq!(before.len(), IN_PLACE_DIRS * (FILES_PER_DIR + 1) + 2);
        let recorded = hash_walk(&rootfs);
        // The step rewrites one file.
        fs::write(rootfs.join(changed_rel), format!("changed by RUN {run}\n")).expect("write");
        // The snapshot: what changed.
        let t = Instant::now();
        let (changes, _) = before.changes(&rootfs, &[], &[]).expect("changes");
        kiln.push(t.elapsed());
        assert_eq!(changes.changed, [changed_rel], "kiln found the change");
        let t = Instant::now();
        let now = hash_walk(&rootfs);
        let differ: Vec<&PathBuf> = now
            .iter()
            .filter(|(p, h)| recorded.get(*p) != Some(*h))
            .map(|(p, _)| p)
            .collect();
        hashed.push(t.elapsed());
        assert!(
            differ.contains(&&rootfs.join(changed_rel)),
            "the hashing walk found the change"
        );
    }
    let (record, kiln, hashed) = (median(record), median(kiln), median(hashed));
    println!(
        "in-place snapshot of a RUN that changed 1 file (rootfs of {} files), median of 5, {} threads:",
        IN_PLACE_DIRS * FILES_PER_DIR,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("  kiln Inventory, record before the step: {record:.3?}");
    println!("  kiln Inventory, changes after the step: {kiln:.3?}");
    println!("  serial walk hashing every file (kaniko-style): {hashed:.3?}");
    println!(
        "  ratio: the hashing walk takes {:.1}x as long as kiln's snapshot",
        hashed.as_secs_f64() / kiln.as_secs_f64()
    );
}
