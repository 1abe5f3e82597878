//! `kiln du` and `kiln prune`, seen from outside: what du lists adds up to what `du(1)`
//! measures, what each way of pruning keeps and what the next build then reruns, prune
//! against a running build, a prune killed midway, and bad flag values.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Steps of each kind that leave a layer (WORKDIR, COPY, RUN) and one that leaves none.
const DOCKERFILE: &str = "FROM $REG/busybox\n\
     WORKDIR /app\n\
     COPY a.txt ./\n\
     RUN head -c 300000 /dev/urandom > big\n\
     RUN true\n";

/// The steps of `DOCKERFILE` that have cache records.
const STEPS: usize = 4;

/// What one build did, from its summary line.
struct Build {
    output: Output,
    ran: usize,
    cached: usize,
}

fn build(root: &Path, ctx: &Path, dest: &Path) -> Build {
    let output = oci_build_command(root, ctx, dest, &[]).output().unwrap();
    assert_ok(&output);
    let (ran, cached) = ran_and_cached(&stderr(&output));
    Build {
        output,
        ran,
        cached,
    }
}

/// A context whose Dockerfile is `dockerfile` (with `$REG`), plus `a.txt`.
fn context(env: &Env, name: &str, dockerfile: &str) -> PathBuf {
    env.context(name, &[("Dockerfile", dockerfile), ("a.txt", "a\n")])
}

/// `kiln du --format json` of `root`.
fn du_json(root: &Path) -> Value {
    let out = kiln_with_root(root, &["du", "--format", "json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entries<'a>(du: &'a Value, kind: &str) -> Vec<&'a Value> {
    du["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

/// What `du -csB1` (GNU coreutils) says the children of these dirs of `root` take on disk.
fn disk_usage(root: &Path, dirs: &[&str]) -> u64 {
    let mut paths = Vec::new();
    for dir in dirs {
        paths.extend(
            list_dir(&root.join(dir))
                .into_iter()
                .map(|n| root.join(dir).join(n)),
        );
    }
    if paths.is_empty() {
        return 0;
    }
    let out = run_tool(Command::new("du").arg("-csB1").args(&paths));
    let text = stdout(&out);
    let total = text.lines().last().unwrap();
    total.split_whitespace().next().unwrap().parse().unwrap()
}

/// Where the cache's content lives: every child of these is an object or a record.
const CACHE_DIRS: [&str; 5] = [
    "blobs/sha256",
    "layers",
    "cache/records",
    "cache/locks",
    "cache/images",
];

#[test]
fn du_lists_every_record_with_sizes_that_add_up_to_what_is_on_disk() {
    let env = Env::new();
    let ctx = context(&env, "ctx", DOCKERFILE);
    build(&env.store(), &ctx, &env.path("out"));

    let du = du_json(&env.store());
    let steps = entries(&du, "regular");
    assert_eq!(steps.len(), STEPS, "{du:#}");
    assert_eq!(list_dir(&env.store().join("cache/records")).len(), STEPS);
    for step in &steps {
        let id = step["id"].as_str().unwrap();
        assert!(
            env.store()
                .join(format!("cache/records/{id}.json"))
                .is_file()
        );
        assert_eq!(step["reclaimable"], true);
        assert!(step["last_used"].as_str().unwrap().ends_with('Z'));
    }
    // Each step is described by its instruction.
    let described: Vec<&str> = steps
        .iter()
        .map(|s| s["description"].as_str().unwrap_or_default())
        .collect();
    assert!(
        described.iter().any(|d| d.starts_with("RUN ")),
        "{described:?}"
    );
    assert!(
        described.iter().any(|d| d.starts_with("COPY ")),
        "{described:?}"
    );
    // The RUN that wrote 300 kB of random bytes holds a blob and a layer dir of that size.
    assert!(
        steps.iter().any(|s| s["size"].as_u64().unwrap() > 600_000),
        "{du:#}"
    );
    let images = entries(&du, "image");
    assert_eq!(images.len(), 1, "{du:#}");
    assert_eq!(images[0]["reclaimable"], false);
    let described = images[0]["description"].as_str().unwrap();
    assert!(described.contains("busybox"), "{described}");

    let summary = &du["summary"];
    let sizes: u64 = du["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .sum();
    assert_eq!(sizes, summary["private"].as_u64().unwrap());
    let total = summary["total"].as_u64().unwrap();
    assert_eq!(sizes + summary["shared"].as_u64().unwrap(), total);
    assert_eq!(total, disk_usage(&env.store(), &CACHE_DIRS));

    // The table: buildx's columns, one row per entry, the totals.
    let out = env.kiln(&["du"]);
    assert_ok(&out);
    let table = stdout(&out);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "RECLAIMABLE", "SIZE", "LAST", "ACCESSED"]);
    let rows = du["entries"].as_array().unwrap().len();
    assert_eq!(
        table.lines().filter(|l| l.contains(" ago")).count(),
        rows - 1
    );
    assert!(table.contains("\nTotal:"), "{table}");
    assert!(table.contains("\nReclaimable:"), "{table}");

    let verbose = stdout(&env.kiln(&["du", "--verbose"]));
    let types = verbose.lines().filter(|l| l.starts_with("Type:"));
    assert_eq!(types.filter(|l| l.ends_with(" regular")).count(), STEPS);
}

#[test]
fn keep_storage_keeps_the_most_recently_used_and_the_next_build_hits_them() {
    let env = Env::new();
    let old = context(
        &env,
        "old",
        "FROM $REG/busybox\nRUN head -c 2000000 /dev/urandom > /old\n",
    );
    let new = context(
        &env,
        "new",
        "FROM $REG/busybox\nRUN head -c 500000 /dev/urandom > /new\n",
    );
    build(&env.store(), &old, &env.path("out-old"));
    // Last uses are kept to the second.
    std::thread::sleep(Duration::from_millis(1100));
    build(&env.store(), &new, &env.path("out-new"));

    let du = du_json(&env.store());
    let total = du["summary"]["total"].as_u64().unwrap();
    let steps = entries(&du, "regular");
    let old_step = steps
        .iter()
        .max_by_key(|s| s["size"].as_u64().unwrap())
        .unwrap();
    // Room for everything but the old step.
    let keep = total - old_step["size"].as_u64().unwrap() / 2;
    let out = env.kiln(&["prune", "--keep-storage", &format!("{keep}B")]);
    assert_ok(&out);
    let printed = stdout(&out);
    let short_id: String = old_step["id"].as_str().unwrap().chars().take(12).collect();
    assert!(printed.contains(&short_id), "{printed}");
    assert!(
        printed.lines().last().unwrap().starts_with("Total:"),
        "{printed}"
    );

    let after = du_json(&env.store());
    assert!(after["summary"]["total"].as_u64().unwrap() <= keep);
    assert_eq!(entries(&after, "regular").len(), 1);
    assert_eq!(
        entries(&after, "image").len(),
        1,
        "base images stay without --all"
    );

    let new_again = build(&env.store(), &new, &env.path("out-new-2"));
    assert_eq!((new_again.ran, new_again.cached), (0, 1));
    let old_again = build(&env.store(), &old, &env.path("out-old-2"));
    assert_eq!(
        (old_again.ran, old_again.cached),
        (1, 0),
        "{}",
        stderr(&old_again.output)
    );
}

#[test]
fn filter_until_keeps_what_was_used_recently() {
    let env = Env::new();
    let old = context(&env, "old", "FROM $REG/busybox\nRUN echo old > /old\n");
    let new = context(&env, "new", "FROM $REG/busybox\nRUN echo new > /new\n");
    build(&env.store(), &old, &env.path("out-old"));
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    build(&env.store(), &new, &env.path("out-new"));
    // Older than the new build, younger than the old one.
    let until = started.elapsed().as_secs() + 2;
    let out = env.kiln(&["prune", "--filter", &format!("until={until}s")]);
    assert_ok(&out);

    assert_eq!(entries(&du_json(&env.store()), "regular").len(), 1);
    let new_again = build(&env.store(), &new, &env.path("out-new-2"));
    assert_eq!((new_again.ran, new_again.cached), (0, 1));
    let old_again = build(&env.store(), &old, &env.path("out-old-2"));
    assert_eq!((old_again.ran, old_again.cached), (1, 0));
}

#[test]
fn prune_all_empties_the_cache_and_the_next_build_reruns_everything() {
    let env = Env::new();
    let ctx = context(&env, "ctx", DOCKERFILE);
    build(&env.store(), &ctx, &env.path("out-1"));
    let before = du_json(&env.store())["summary"]["total"].as_u64().unwrap();

    let out = env.kiln(&["prune", "--all", "--force"]);
    assert_ok(&out);
    let printed = stdout(&out);
    let freed = printed.lines().last().unwrap();
    assert!(freed.starts_with("Total:"), "{printed}");
    for dir in CACHE_DIRS {
        assert_eq!(
            list_dir(&env.store().join(dir)),
            Vec::<String>::new(),
            "{dir}"
        );
    }
    let du = du_json(&env.store());
    assert_eq!(du["entries"], json!([]));
    assert_eq!(du["summary"]["total"], 0);
    assert!(before > 0);

    let again = build(&env.store(), &ctx, &env.path("out-2"));
    assert_eq!((again.ran, again.cached), (STEPS, 0));
    let work = env.path("unpacked");
    let rootfs = umoci_unpack(&env.path("out-2"), "1", &work.join("bundle"));
    assert_eq!(read(&rootfs.join("app/a.txt")), "a\n");
}

#[test]
fn cache_mounts_are_entries_whose_last_use_is_their_last_mount() {
    let env = Env::new();
    let fill = context(
        &env,
        "fill",
        "FROM $REG/busybox\n\
         RUN --mount=type=cache,id=c1,target=/cache head -c 100000 /dev/urandom > /cache/blob\n",
    );
    build(&env.store(), &fill, &env.path("out-1"));
    let du = du_json(&env.store());
    let mounts = entries(&du, "exec.cachemount");
    assert_eq!(mounts.len(), 1, "{du:#}");
    assert!(mounts[0]["size"].as_u64().unwrap() > 100_000);
    let dir = env
        .store()
        .join("cache")
        .join(mounts[0]["id"].as_str().unwrap());
    assert!(dir.join("blob").is_file());

    // Unused for three days: an `until=1h` prune would take it.
    let used = dir.with_extension("used");
    run_tool(Command::new("touch").args(["-d", "3 days ago"]).arg(&used));
    let old = ["du", "--format", "json", "--filter", "type=exec.cachemount"];
    let old: Vec<&str> = old.into_iter().chain(["--filter", "until=1h"]).collect();
    let listed = |env: &Env| {
        let out = env.kiln(&old);
        assert_ok(&out);
        let du: Value = serde_json::from_slice(&out.stdout).unwrap();
        du["entries"].as_array().unwrap().len()
    };
    assert_eq!(listed(&env), 1);
    // A step that mounts the cache uses it, even if it does not look inside.
    let read = context(
        &env,
        "read",
        "FROM $REG/busybox\nRUN --mount=type=cache,id=c1,target=/cache true\n",
    );
    build(&env.store(), &read, &env.path("out-2"));
    assert_eq!(listed(&env), 0);

    let out = env.kiln(&["prune", "--filter", "type=exec.cachemount"]);
    assert_ok(&out);
    assert!(!dir.exists());
    assert_eq!(entries(&du_json(&env.store()), "regular").len(), 2);
}

/// Spawns `kiln build` of `ctx` into `dest`, its output captured.
fn spawn_build(root: &Path, ctx: &Path, dest: &Path) -> std::process::Child {
    oci_build_command(root, ctx, dest, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn prune_waits_for_a_running_build_or_gives_up_after_its_timeout() {
    let env = Env::new();
    let ctx = context(
        &env,
        "ctx",
        "FROM $REG/busybox\nRUN touch /started && sleep 5 && echo done > /done\n",
    );
    let running = spawn_build(&env.store(), &ctx, &env.path("out"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !has_file_named(&env.store(), "started") {
        assert!(Instant::now() < deadline, "the RUN never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    let busy = env.kiln(&["prune", "--timeout", "1s"]);
    let err = assert_failed(&busy);
    assert_contains_all(
        &err,
        &[
            "builds are still using the kiln root",
            "nothing was removed",
        ],
    );

    let waited = env.kiln(&["prune"]);
    assert_ok(&waited);
    assert!(
        stderr(&waited).contains("waiting for the builds using"),
        "{}",
        stderr(&waited)
    );
    // The build succeeded whole, and prune ran after it: it removed the record the build
    // wrote at its end.
    let build = running.wait_with_output().unwrap();
    assert_ok(&build);
    let rootfs = umoci_unpack(&env.path("out"), "1", &env.path("bundle"));
    assert_eq!(read(&rootfs.join("done")), "done\n");
    assert_eq!(entries(&du_json(&env.store()), "regular").len(), 0);
    assert!(stdout(&waited).contains("Total:"));
}

#[test]
fn a_prune_killed_midway_leaves_a_root_the_next_build_uses() {
    let env = Env::new();
    // Layers of many files, so that removing them takes a while.
    let ctx = context(
        &env,
        "ctx",
        "FROM $REG/busybox\n\
         RUN mkdir /one && cd /one && seq 1 15000 | xargs touch\n\
         RUN mkdir /two && cd /two && seq 1 15000 | xargs touch\n\
         COPY a.txt /a.txt\n",
    );
    build(&env.store(), &ctx, &env.path("out-1"));
    for delay in [50, 150, 300, 600] {
        let mut prune = kiln_command(&env.store(), &["prune", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = prune.kill();
        prune.wait().unwrap();

        // Every record left holds a whole blob and layer dir (docs/cache.md's layout).
        assert_records_whole(&env.store());
        // So records still there are hits, and the rest reruns.
        let next = build(&env.store(), &ctx, &env.path(&format!("out-{delay}")));
        let err = stderr(&next.output);
        assert!(!err.contains("cannot be used"), "{err}");
        assert_eq!(next.ran + next.cached, 3);
        assert!(!entries(&du_json(&env.store()), "regular").is_empty());
        assert_eq!(list_dir(&env.store().join("tmp")), Vec::<String>::new());
    }
}

/// Checks that each step record in `root` names a blob of its size and a layer dir.
fn assert_records_whole(root: &Path) {
    for name in list_dir(&root.join("cache/records")) {
        let record: Value =
            serde_json::from_slice(&std::fs::read(root.join("cache/records").join(&name)).unwrap())
                .unwrap();
        let layer = &record["layer"];
        if layer.is_null() {
            continue;
        }
        let hex = |key: &str| {
            layer[key]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        };
        let blob = root.join("blobs/sha256").join(hex("digest"));
        let size = std::fs::metadata(&blob).map(|m| m.len()).ok();
        assert_eq!(size, layer["size"].as_u64(), "{name}: {blob:?}");
        let dir = root.join("layers").join(hex("diff_id"));
        assert!(dir.is_dir(), "{name}: {dir:?}");
    }
}

#[test]
fn bad_values_are_clear_errors_and_remove_nothing() {
    let env = tempfile::tempdir().unwrap();
    let root = env.path().join("root");
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["prune", "--keep-storage", "10XB"],
            &[
                "--keep-storage",
                "`10XB` is not a size",
                "unknown unit `XB`",
            ],
        ),
        (
            &["prune", "--filter", "until=soon"],
            &["--filter", "`soon` is not a duration"],
        ),
        (
            &["prune", "--filter", "colour=red"],
            &["unknown filter key `colour`", "until, id, type"],
        ),
        (
            &["prune", "--filter", "until=1h", "--filter", "until=2h"],
            &["until is given twice"],
        ),
        (
            &["du", "--filter", "type=layer"],
            &["unknown type `layer`", "exec.cachemount"],
        ),
        (
            &["prune", "--timeout", "forever"],
            &["--timeout", "`forever` is not a duration"],
        ),
    ];
    for (args, expected) in cases {
        let out = kiln_with_root(&root, args);
        // Flag values clap reads exit 2 (usage errors), the rest 1.
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert_contains_all(&err, expected);
        assert!(err.len() < 1000, "{err}");
    }
    // Nothing was even opened.
    assert!(!root.exists());
}
