//! The work kiln does per file when it copies a context into a layer and when it extracts a
//! base layer, counted in syscalls with `strace -f -c` over a whole build. Each file of a
//! COPY is created, written and given its owner, mode and times through one descriptor, with
//! no search for holes in a file that has none; each file of an extracted layer the same, in
//! a directory held open while its entries go in, with its times put back once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_testkit::{busybox_fixtures, umoci_unpack, wrapped};

const DIRS: usize = 20;
const FILES_PER_DIR: usize = 100;
const FILES: usize = DIRS * FILES_PER_DIR;

/// Runs `command` under `strace -f -c`; panics unless it succeeds. Returns the calls per
/// syscall name.
fn syscall_counts(command: Command, work: &Path, name: &str) -> BTreeMap<String, usize> {
    let report = work.join(format!("{name}.strace"));
    let mut traced = wrapped(
        "strace",
        &[
            "-f".as_ref(),
            "-c".as_ref(),
            "-o".as_ref(),
            report.as_os_str(),
        ],
        &command,
    );
    let out = traced
        .output()
        .expect("running strace (scripts/install-deps.sh installs it)");
    assert_ok(&out);
    // `% time  seconds  usecs/call  calls  [errors]  syscall`
    std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let calls = fields.get(3)?.parse().ok()?;
            let name = fields.last()?;
            (*name != "total").then(|| (name.to_string(), calls))
        })
        .collect()
}

fn per_file(counts: &BTreeMap<String, usize>, syscall: &str) -> f64 {
    counts.get(syscall).copied().unwrap_or(0) as f64 / FILES as f64
}

#[test]
fn copy_and_extraction_make_a_few_syscalls_per_file() {
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    for d in 0..DIRS {
        let dir = ctx.join(format!("many/d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            std::fs::write(dir.join(format!("f{f:03}")), format!("file {d} {f}\n")).unwrap();
        }
    }
    let busybox = &busybox_fixtures().oci_layout;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:latest\nCOPY many /many\n",
            busybox.display()
        ),
    )
    .unwrap();
    let base = work.path().join("base");
    let copy = syscall_counts(
        oci_build_command(&work.path().join("root-1"), &ctx, &base, &[]),
        work.path(),
        "copy",
    );
    // Without the hole search: 4 lseek and an ftruncate per file.
    assert!(per_file(&copy, "lseek") < 0.1, "COPY: {copy:?}");
    assert!(per_file(&copy, "ftruncate") < 0.1, "COPY: {copy:?}");
    // Mode through the open file, not a second open of it through /proc.
    assert!(per_file(&copy, "fchmod") >= 1.0, "COPY: {copy:?}");
    assert!(per_file(&copy, "fchmodat") < 0.1, "COPY: {copy:?}");

    let from_base = work.path().join("from-base");
    std::fs::create_dir(&from_base).unwrap();
    std::fs::write(
        from_base.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:1\nRUN cat /many/d07/f042 > /seen\n",
            base.display()
        ),
    )
    .unwrap();
    let extract = syscall_counts(
        oci_build_command(
            &work.path().join("root-2"),
            &from_base,
            &work.path().join("out"),
            &[],
        ),
        work.path(),
        "extract",
    );
    // One open per file (its creation), none of its directory (the RUN step adds a few).
    assert!(
        per_file(&extract, "openat2") < 0.1,
        "extraction: {extract:?}"
    );
    let opens = per_file(&extract, "openat");
    assert!((1.0..1.3).contains(&opens), "extraction: {extract:?}");
    // Its own times once; its directory's, once per directory.
    let times = per_file(&extract, "utimensat");
    assert!((1.0..1.2).contains(&times), "extraction: {extract:?}");
    // No lookup before the creation, and none of the directory.
    let stats = per_file(&extract, "newfstatat")
        + per_file(&extract, "statx")
        + per_file(&extract, "fstat");
    assert!(stats < 0.3, "extraction: {extract:?}");

    // And the RUN step saw what was copied.
    let tree = umoci_unpack(&work.path().join("out"), "1", &work.path().join("bundle"));
    assert_eq!(read(&tree.join("seen")), "file 7 42\n");
}
