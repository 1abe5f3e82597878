//! Layer compression on the 160 MiB scenario of the build benches (200 directories of 100
//! pseudo-random files of 8,389 bytes, as `crates/kiln/benches` write them): `write_layer`
//! of that directory as gzip (level 6), zstd (level 3), eStargz and uncompressed, to a file,
//! beside GNU tar piped into `gzip -6` and into `zstd -3 -T<cores>` in the same run. Wall
//! and CPU time (median of 3) and blob size. `cargo bench -p kiln-snapshot --bench
//! compression`.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_snapshot::{LayerEncoding, LayerOptions, write_layer};
use kiln_testkit::Noise;
use nix::sys::resource::{UsageWho, getrusage};

const DIRS: usize = 200;
const FILES: usize = 100;
const FILE_BYTES: usize = 8389;
const RUNS: usize = 3;

/// User + system CPU of this process and of the children it waited for.
fn cpu() -> Duration {
    let time =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            let usage = getrusage(who).expect("getrusage");
            time(usage.user_time()) + time(usage.system_time())
        })
        .sum()
}

/// Median wall time, median CPU time and the output's size over [`RUNS`] runs of `run`,
/// which writes `out`.
fn measure(out: &Path, mut run: impl FnMut()) -> (Duration, Duration, u64) {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..RUNS {
        let _ = fs::remove_file(out);
        Command::new("sync").status().expect("sync");
        let (wall, used) = (Instant::now(), cpu());
        run();
        walls.push(wall.elapsed());
        cpus.push(cpu() - used);
    }
    walls.sort();
    cpus.sort();
    let size = fs::metadata(out).expect("output").len();
    (walls[RUNS / 2], cpus[RUNS / 2], size)
}

fn main() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let data = scratch.path().join("layer");
    let mut bytes = vec![0u8; FILE_BYTES];
    for d in 0..DIRS {
        let dir = data.join(format!("data/dir{d:03}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES {
            Noise::new((d * FILES + f) as u64).fill(&mut bytes);
            fs::write(dir.join(format!("file{f:03}.bin")), &bytes).expect("write");
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} cores; {} files, {} MiB",
        cores,
        DIRS * FILES,
        (DIRS * FILES * FILE_BYTES) >> 20
    );
    println!("| writer | wall | CPU | blob | MiB/s (wall) |");
    println!("|---|---|---|---|---|");
    let out = scratch.path().join("blob");
    let row = |what: &str, (wall, cpu, size): (Duration, Duration, u64)| {
        let mib = (DIRS * FILES * FILE_BYTES) as f64 / f64::from(1 << 20);
        println!(
            "| {what} | {:.3} s | {:.3} s | {:.2} MB | {:.0} |",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            size as f64 / 1e6,
            mib / wall.as_secs_f64()
        );
    };
    for encoding in [
        LayerEncoding::Gzip { level: 6 },
        LayerEncoding::Zstd { level: 3 },
        LayerEncoding::Estargz { level: 6 },
        LayerEncoding::Uncompressed,
    ] {
        let opts = LayerOptions {
            encoding,
            source_date_epoch: None,
        };
        let figures = measure(&out, || {
            let file = BufWriter::new(File::create(&out).expect("blob"));
            write_layer(&data, file, &opts).expect("write_layer");
        });
        row(&format!("kiln write_layer, {encoding}"), figures);
    }
    for (what, compressor) in [
        ("GNU tar into gzip -6", "gzip -6".to_string()),
        (
            &*format!("GNU tar into zstd -3 -T{cores}"),
            format!("zstd -q -3 -T{cores}"),
        ),
    ] {
        let script = format!(
            "tar -C {} -cf - . | {compressor} > {}",
            data.display(),
            out.display()
        );
        let figures = measure(&out, || {
            let status = Command::new("sh")
                .args(["-c", &script])
                .status()
                .expect("sh");
            assert!(status.success(), "{script}");
        });
        row(what, figures);
    }
}
