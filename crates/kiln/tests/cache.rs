//! The build cache, seen from outside: what a rebuild reruns after each kind of change, that
//! a rebuild with nothing changed gives the same image, `--no-cache` and
//! `--no-cache-filter`, two builds sharing one root, and a root left behind by a killed or
//! failed build.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A small Dockerfile whose every kind of step can be cached: FROM, WORKDIR, COPY, RUN, and
/// a build arg first used by the last RUN.
const DOCKERFILE: &str = "FROM $REG/busybox\n\
     WORKDIR /app\n\
     COPY a.txt ./\n\
     RUN cat a.txt > copied && od -An -N8 -tx8 /dev/urandom > ran-1\n\
     COPY b.txt ./\n\
     RUN cat b.txt > copied-b && od -An -N8 -tx8 /dev/urandom > ran-2\n\
     ARG FLAVOUR=plain\n\
     RUN echo $FLAVOUR > flavour && od -An -N8 -tx8 /dev/urandom > ran-3\n\
     ENV DONE=1\n";

/// What one build did, from its summary line and its progress.
struct Build {
    output: Output,
    ran: usize,
    cached: usize,
    /// The instructions shown as `CACHED [label] ...`, in order.
    cached_steps: Vec<String>,
    /// The index digest of the written OCI layout.
    index: String,
}

fn ctx(env: &Env) -> PathBuf {
    env.context(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
            (".dockerignore", "ignored.txt\n"),
            ("ignored.txt", "first\n"),
        ],
    )
}

/// `kiln build -t app:1 -o type=oci,dest=DEST,tar=false [extra] CTX` on the kiln root `root`.
impl Build {
    /// Checks how many steps ran and how many were cached, showing the build's output if not.
    fn assert_counts(&self, ran: usize, cached: usize) {
        assert_eq!(
            (self.ran, self.cached),
            (ran, cached),
            "steps (ran, cached):\n{}",
            stderr(&self.output)
        );
    }
}

fn build_in(root: &Path, ctx: &Path, dest: &Path, extra: &[&str]) -> Build {
    let output = oci_build_command(root, ctx, dest, extra).output().unwrap();
    assert_ok(&output);
    summarize(output, dest)
}

fn summarize(output: Output, dest: &Path) -> Build {
    let err = stderr(&output);
    let (ran, cached) = ran_and_cached(&err);
    let cached_steps = err
        .lines()
        .filter_map(|l| l.strip_prefix("CACHED "))
        .map(|l| l.split_once("] ").map_or(l, |(_, step)| step).to_string())
        .collect();
    let index = std::fs::read(dest.join("index.json")).unwrap();
    Build {
        output,
        ran,
        cached,
        cached_steps,
        index: format!("sha256:{}", sha256_hex(&index)),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// The content of `path` in the image written to `dest` (unpacked by umoci).
fn file_in(dest: &Path, work: &Path, path: &str) -> String {
    let bundle = work.join(format!("bundle-{}", sha256_hex(path.as_bytes())));
    let _ = std::fs::remove_dir_all(&bundle);
    let rootfs = umoci_unpack(dest, "1", &bundle);
    read(&rootfs.join(path.trim_start_matches('/')))
}

#[test]
fn a_rebuild_with_nothing_changed_runs_nothing_and_gives_the_same_digests() {
    let env = Env::new();
    let ctx = ctx(&env);
    let first = build_in(&env.store(), &ctx, &env.path("out-1"), &[]);
    first.assert_counts(6, 0);
    let second = build_in(&env.store(), &ctx, &env.path("out-2"), &[]);
    second.assert_counts(0, 6);
    assert_eq!(
        second.cached_steps,
        [
            "WORKDIR /app",
            "COPY a.txt ./",
            "RUN cat a.txt > copied && od -An -N8 -tx8 /dev/urandom > ran-1",
            "COPY b.txt ./",
            "RUN cat b.txt > copied-b && od -An -N8 -tx8 /dev/urandom > ran-2",
            "RUN echo $FLAVOUR > flavour && od -An -N8 -tx8 /dev/urandom > ran-3",
        ]
    );
    // The index names the manifest by digest, which names the config and layers by digest.
    assert_eq!(first.index, second.index);
    // The ran-* files carry the time the RUN ran: the same in both images.
    let work = env.path("unpacked");
    for file in ["/app/ran-1", "/app/ran-3"] {
        assert_eq!(
            file_in(&env.path("out-1"), &work, file),
            file_in(&env.path("out-2"), &work, file)
        );
    }
}

#[test]
fn a_changed_context_file_reruns_its_copy_and_what_follows() {
    let env = Env::new();
    let ctx = ctx(&env);
    let first = build_in(&env.store(), &ctx, &env.path("out-1"), &[]);
    std::fs::write(ctx.join("b.txt"), "b changed\n").unwrap();
    let second = build_in(&env.store(), &ctx, &env.path("out-2"), &[]);
    assert_eq!(
        second.cached_steps,
        [
            "WORKDIR /app",
            "COPY a.txt ./",
            "RUN cat a.txt > copied && od -An -N8 -tx8 /dev/urandom > ran-1"
        ],
        "{}",
        stderr(&second.output)
    );
    second.assert_counts(3, 3);
    assert_ne!(first.index, second.index);
    let work = env.path("unpacked");
    assert_eq!(
        file_in(&env.path("out-2"), &work, "/app/copied-b"),
        "b changed\n"
    );
    assert_eq!(
        file_in(&env.path("out-1"), &work, "/app/ran-1"),
        file_in(&env.path("out-2"), &work, "/app/ran-1")
    );
    assert_ne!(
        file_in(&env.path("out-1"), &work, "/app/ran-3"),
        file_in(&env.path("out-2"), &work, "/app/ran-3")
    );
}

#[test]
fn an_ignored_file_or_a_touched_file_changes_nothing() {
    let env = Env::new();
    let ctx = ctx(&env);
    let first = build_in(&env.store(), &ctx, &env.path("out-1"), &[]);
    std::fs::write(ctx.join("ignored.txt"), "second\n").unwrap();
    // Only the mtime of a.txt changes: the content is what counts, as in BuildKit.
    let a = std::fs::File::options()
        .write(true)
        .open(ctx.join("a.txt"))
        .unwrap();
    a.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    let second = build_in(&env.store(), &ctx, &env.path("out-2"), &[]);
    second.assert_counts(0, 6);
    assert_eq!(first.index, second.index);
}

#[test]
fn a_changed_build_arg_reruns_from_its_first_use() {
    let env = Env::new();
    let ctx = ctx(&env);
    build_in(&env.store(), &ctx, &env.path("out-1"), &[]);
    let second = build_in(
        &env.store(),
        &ctx,
        &env.path("out-2"),
        &["--build-arg", "FLAVOUR=spicy"],
    );
    assert_eq!(second.cached_steps.len(), 5, "{}", stderr(&second.output));
    second.assert_counts(1, 5);
    let work = env.path("unpacked");
    assert_eq!(
        file_in(&env.path("out-2"), &work, "/app/flavour"),
        "spicy\n"
    );
}

#[test]
fn a_base_tag_moved_to_another_digest_reruns_from_from() {
    let env = Env::new();
    let base = env.tag("base:1");
    let make_base = |marker: &str| {
        let ctx = env.context(
            &format!("base-{marker}"),
            &[(
                "Dockerfile",
                &format!("FROM $REG/busybox\nRUN echo {marker} > /marker\n"),
            )],
        );
        let o = env.kiln(&["build", "--push", "-t", &base, ctx.to_str().unwrap()]);
        assert_ok(&o);
    };
    make_base("one");
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/base:1\nRUN cat /marker > /seen\nCOPY f /f\n",
            ),
            ("f", "f\n"),
        ],
    );
    let root = env.path("app-root");
    let first = build_in(&root, &ctx, &env.path("out-1"), &[]);
    first.assert_counts(2, 0);
    let again = build_in(&root, &ctx, &env.path("out-2"), &[]);
    again.assert_counts(0, 2);
    make_base("two");
    let moved = build_in(&root, &ctx, &env.path("out-3"), &[]);
    moved.assert_counts(2, 0);
    let work = env.path("unpacked");
    assert_eq!(file_in(&env.path("out-3"), &work, "/seen"), "two\n");
}

#[test]
fn no_cache_runs_everything_and_no_cache_filter_only_its_stage() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox AS tools\n\
             RUN echo tools > /tools\n\
             FROM $REG/busybox AS app\n\
             COPY --from=tools /tools /tools\n\
             RUN cat /tools > /seen\n",
        )],
    );
    let first = build_in(&env.store(), &ctx, &env.path("out-1"), &[]);
    first.assert_counts(3, 0);
    let all = build_in(&env.store(), &ctx, &env.path("out-2"), &["--no-cache"]);
    all.assert_counts(3, 0);
    let filtered = build_in(
        &env.store(),
        &ctx,
        &env.path("out-3"),
        &["--no-cache-filter", "app"],
    );
    assert_eq!(filtered.cached_steps, ["RUN echo tools > /tools"]);
    filtered.assert_counts(2, 1);
    // What --no-cache ran was recorded: the next build hits everything.
    let after = build_in(&env.store(), &ctx, &env.path("out-4"), &[]);
    after.assert_counts(0, 3);

    let unknown = env.kiln(&["build", "--no-cache-filter", "tols", ctx.to_str().unwrap()]);
    let err = assert_failed(&unknown);
    assert_contains_all(&err, &["tols", "tools", "app"]);
}

#[test]
fn two_builds_on_one_root_at_once_both_succeed_and_share_the_work() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox\nRUN sleep 3 && od -An -N8 -tx8 /dev/urandom > /ran\nCOPY f /f\n",
            ),
            ("f", "f\n"),
        ],
    );
    let spawn = |dest: &str| {
        oci_build_command(&env.store(), &ctx, &env.path(dest), &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let one = spawn("out-1");
    let two = spawn("out-2");
    let one = summarize(one.wait_with_output().unwrap(), &env.path("out-1"));
    let two = summarize(two.wait_with_output().unwrap(), &env.path("out-2"));
    assert_ok(&one.output);
    assert_ok(&two.output);
    // The RUN ran once: one build ran it, the other waited for it and took its record.
    assert_eq!(
        one.ran + two.ran,
        2,
        "{}\n{}",
        stderr(&one.output),
        stderr(&two.output)
    );
    assert_eq!(one.cached + two.cached, 2);
    assert_eq!(one.index, two.index);
}

#[test]
fn a_build_killed_during_a_run_leaves_a_root_the_next_build_uses() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\nCOPY f /f\nRUN touch /started && sleep 30 && echo done > /done\n",
        ), ("f", "f\n")],
    );
    let mut child = oci_build_command(&env.store(), &ctx, &env.path("out-1"), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the RUN's command has started (its `touch` is in some upper dir), then kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_file_named(&env.store(), "started") {
        assert!(Instant::now() < deadline, "the RUN never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The COPY finished before the kill and is reused; the RUN runs again, in full.
    let ctx_fast = ctx.clone();
    std::fs::write(
        ctx_fast.join("Dockerfile"),
        DOCKERFILE_AFTER_KILL.replace("$REG", env.reg()),
    )
    .unwrap();
    let next = build_in(&env.store(), &ctx_fast, &env.path("out-2"), &[]);
    assert_eq!(next.cached_steps, ["COPY f /f"], "{}", stderr(&next.output));
    assert_eq!(next.ran, 1);
    let work = env.path("unpacked");
    assert_eq!(file_in(&env.path("out-2"), &work, "/done"), "done\n");
}

/// The killed build's Dockerfile with a shorter sleep: the COPY is the same step.
const DOCKERFILE_AFTER_KILL: &str =
    "FROM $REG/busybox\nCOPY f /f\nRUN touch /started && sleep 1 && echo done > /done\n";

#[test]
fn a_record_whose_layer_is_gone_or_corrupt_is_a_warning_and_a_rerun() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\nRUN echo one > /one\nRUN echo two > /two\n",
        )],
    );
    // Layer times clamped, so a rerun of a step makes the same layer whatever the clock says.
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    build_in(&env.store(), &ctx, &env.path("out-1"), &epoch);
    // Remove the first RUN's layer dir: a warning, and that step runs again.
    let one = layer_dir_holding(&env.store(), "one");
    std::fs::remove_dir_all(&one).unwrap();
    let second = build_in(&env.store(), &ctx, &env.path("out-2"), &epoch);
    let err = stderr(&second.output);
    assert!(
        err.contains("[warning]") && err.contains("is missing"),
        "{err}"
    );
    assert_eq!(err.matches("is missing").count(), 1, "one warning: {err}");
    // The rerun made the same layer again, so the step on top of it still hits.
    second.assert_counts(1, 1);
    // Damage the blob of the first RUN's layer in place, keeping its size: the same.
    let blob = blob_of_step(&env.store(), "RUN echo one > /one");
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let damaged = build_in(&env.store(), &ctx, &env.path("out-2b"), &epoch);
    let err = stderr(&damaged.output);
    assert!(
        err.contains("[warning]") && err.contains("is damaged"),
        "{err}"
    );
    damaged.assert_counts(1, 1);
    assert_eq!(
        file_in(&env.path("out-2b"), &env.path("unpacked-2b"), "/one"),
        "one\n",
        "the rerun stored a whole blob again"
    );
    let records: Vec<PathBuf> = std::fs::read_dir(env.store().join("cache/records"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(records.len() >= 2, "{records:?}");
    for record in &records {
        std::fs::write(record, b"{not json").unwrap();
    }
    let third = build_in(&env.store(), &ctx, &env.path("out-3"), &epoch);
    let err = stderr(&third.output);
    assert!(err.contains("is not a record"), "{err}");
    third.assert_counts(2, 0);
    let work = env.path("unpacked");
    assert_eq!(file_in(&env.path("out-3"), &work, "/two"), "two\n");
}

/// The blob in the store of the layer the record of `step` (as its progress line shows it)
/// points to.
fn blob_of_step(root: &Path, step: &str) -> PathBuf {
    for entry in std::fs::read_dir(root.join("cache/records")).unwrap() {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        if record["description"]
            .as_str()
            .is_some_and(|d| d.contains(step))
        {
            let digest = record["layer"]["digest"].as_str().unwrap();
            return root
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
        }
    }
    panic!("no cache record for {step}");
}

/// The layer dir in the store that holds a file named `name` at its top.
fn layer_dir_holding(root: &Path, name: &str) -> PathBuf {
    std::fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join(name).exists())
        .unwrap_or_else(|| panic!("no layer dir holds /{name}"))
}

#[test]
fn a_full_disk_fails_naming_the_path_and_the_root_stays_usable() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\nRUN echo small > /small\nCOPY big /big\n",
        )],
    );
    // 20 MB that do not compress, for a root on a 16 MiB tmpfs.
    let random = std::process::Command::new("head")
        .args(["-c", "20000000", "/dev/urandom"])
        .output()
        .unwrap();
    std::fs::write(ctx.join("big"), random.stdout).unwrap();
    let root = env.path("small-root");
    std::fs::create_dir(&root).unwrap();
    let dest = env.path("out");
    // The tmpfs is mounted in a mount namespace of this test's own, gone when it ends.
    let script = format!(
        "mount -t tmpfs -o size=16m,mode=0700 tmpfs {root} && \
         KILN_ROOT={root} {kiln} build -t app:1 -o type=oci,dest={dest},tar=false {ctx}; \
         echo \"exit=$?\"; \
         KILN_ROOT={root} {kiln} build -t app:1 -o type=oci,dest={dest},tar=false {ctx_small}",
        root = root.display(),
        kiln = env!("CARGO_BIN_EXE_kiln"),
        dest = dest.display(),
        ctx = ctx.display(),
        ctx_small = small_ctx(&env).display(),
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(out.contains("exit=1"), "{out}\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&root.display().to_string()), "{err}");
    // The second build, on the same root, reuses what the first recorded and succeeds: the
    // failed build left none of its partial layer behind.
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("CACHED [stage-0 2/2] RUN echo small > /small"),
        "{err}"
    );
}

fn small_ctx(env: &Env) -> PathBuf {
    env.context(
        "ctx-small",
        &[("Dockerfile", "FROM $REG/busybox\nRUN echo small > /small\n")],
    )
}

/// A COPY and a RUN's bind mount of the same 300 context files.
const HASHED_CONTEXT: &str = "FROM $REG/busybox\n\
     COPY src /src\n\
     RUN --mount=type=bind,source=src,target=/m cat /m/f7 /m/f8 > /mounted\n";

/// What each step said it read of the build context (`N entries checked, M files read`).
fn context_reads(build: &Build) -> Vec<String> {
    stderr(&build.output)
        .lines()
        .filter_map(|l| l.strip_prefix("  - build context: "))
        .map(str::to_string)
        .collect()
}

/// Files changed within 2 s of being hashed are read again next time (their coarse
/// timestamps could hide a second change); the test lets each change settle, as a checkout
/// usually has long before its build.
fn settle() {
    std::thread::sleep(Duration::from_millis(2100));
}

/// Rewrites `path` with `content` of the same size and gives it back its old mtime.
fn rewrite_keeping_size_and_mtime(path: &Path, content: &str, replace: bool) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), content.len() as u64);
    let written = match replace {
        // A new file (a new inode) renamed over the old one, as editors save.
        true => path.with_extension("new"),
        false => path.to_path_buf(),
    };
    std::fs::write(&written, content).unwrap();
    let file = std::fs::File::options().write(true).open(&written).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    if replace {
        std::fs::rename(&written, path).unwrap();
    }
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
}

#[test]
fn a_rebuild_reads_only_the_context_files_whose_stat_changed() {
    let env = Env::new();
    let names: Vec<(String, String)> = (0..300)
        .map(|i| (format!("src/f{i}"), format!("file {i:03}\n")))
        .collect();
    let mut files: Vec<(&str, &str)> = vec![("Dockerfile", HASHED_CONTEXT)];
    files.extend(names.iter().map(|(n, c)| (n.as_str(), c.as_str())));
    let ctx = env.context("ctx", &files);
    settle();
    let first = build_in(&env.store(), &ctx, &env.path("out-1"), &[]);
    // The COPY reads every file; the RUN's mount of the same files finds them all recorded.
    assert_eq!(
        context_reads(&first),
        [
            "301 entries checked, 300 files read (2.6 KiB)",
            "301 entries checked, 0 files read"
        ],
        "{}",
        stderr(&first.output)
    );
    let records = env.store().join("cache/context");
    assert_eq!(mode(&records), 0o700, "private, as the rest of the root");
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        1,
        "one record for the one context"
    );

    // Nothing changed: nothing is read, everything hits.
    let second = build_in(&env.store(), &ctx, &env.path("out-2"), &[]);
    assert_eq!((second.ran, second.cached), (0, 2));
    assert_eq!(
        context_reads(&second),
        ["301 entries checked, 0 files read"; 2]
    );
    assert_eq!(first.index, second.index);

    // Same size, same mtime, new content: the ctime (in place) or the inode (replaced)
    // gives it away, so the file is read and the COPY and the RUN run again.
    let work = env.path("unpacked");
    for (round, (name, content, replace)) in
        [("f7", "FILE 007\n", false), ("f8", "FILE 008\n", true)]
            .into_iter()
            .enumerate()
    {
        rewrite_keeping_size_and_mtime(&ctx.join("src").join(name), content, replace);
        settle();
        let dest = env.path(&format!("out-changed-{round}"));
        let changed = build_in(&env.store(), &ctx, &dest, &[]);
        let err = stderr(&changed.output);
        assert_eq!((changed.ran, changed.cached), (2, 0), "{name}: {err}");
        assert_eq!(
            context_reads(&changed),
            [
                "301 entries checked, 1 file read (9 B)",
                "301 entries checked, 0 files read"
            ],
            "{name}: {err}"
        );
        assert_eq!(file_in(&dest, &work, &format!("/src/{name}")), content);
        assert!(file_in(&dest, &work, "/mounted").contains(content));
    }
}
