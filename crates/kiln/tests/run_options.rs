//! buildx's settings for every RUN step: `--add-host`, `--ulimit`, `--shm-size` and
//! `--network`, seen from inside real RUN steps.

mod common;

use common::*;

/// Each RUN writes what it sees into a file of the image, read back from a local output.
const DOCKERFILE: &str = "FROM $REG/busybox\n\
    RUN cat /etc/hosts > /hosts.txt; ulimit -n > /nofile.txt; ulimit -Hn > /nofile-hard.txt; \
        df -k /dev/shm | tail -n 1 > /shm.txt; \
        awk 'NR > 2 { sub(\":\", \"\", $1); print $1 }' /proc/net/dev > /net.txt\n\
    RUN --network=default awk 'NR > 2 { sub(\":\", \"\", $1); print $1 }' /proc/net/dev > /net-default.txt\n\
    RUN --network=host awk 'NR > 2 { sub(\":\", \"\", $1); print $1 }' /proc/net/dev > /net-host.txt\n";

/// Builds the context with `flags` into a fresh local output; the files the steps wrote.
fn seen(env: &Env, name: &str, flags: &[&str]) -> impl Fn(&str) -> String {
    let ctx = env.context(name, &[("Dockerfile", DOCKERFILE)]);
    let out = env.path(&format!("{name}-out"));
    let dest = format!("type=local,dest={}", out.display());
    let mut args = vec!["build", "-o", &dest];
    args.extend_from_slice(flags);
    args.push(ctx.to_str().unwrap());
    assert_ok(&env.kiln(&args));
    move |file| read(&out.join(file))
}

/// The size column of a `df -k` line, in KiB.
fn df_size_kib(line: &str) -> u64 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn add_host_ulimit_shm_size_and_network_reach_every_run_step() {
    let env = Env::new();
    let set = seen(
        &env,
        "set",
        &[
            "--add-host",
            "db.internal:10.1.2.3",
            "--add-host=v6.internal:fd00::7",
            "--ulimit",
            "nofile=512:1024",
            "--shm-size",
            "128m",
            "--network",
            "none",
        ],
    );
    let hosts = set("hosts.txt");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(
        hosts.ends_with("10.1.2.3\tdb.internal\nfd00::7\tv6.internal\n"),
        "{hosts}"
    );
    assert_eq!(set("nofile.txt"), "512\n");
    assert_eq!(set("nofile-hard.txt"), "1024\n");
    assert_eq!(df_size_kib(&set("shm.txt")), 128 * 1024);
    // Only loopback, for steps that say nothing and for `RUN --network=default`; a step's
    // own `--network=host` still wins.
    assert_eq!(set("net.txt"), "lo\n");
    assert_eq!(set("net-default.txt"), "lo\n");
    assert_ne!(set("net-host.txt"), "lo\n");

    // Without the flags: Docker's defaults, and the steps ran again rather than coming from
    // the cache of the build above.
    let plain = seen(&env, "plain", &[]);
    assert!(!plain("hosts.txt").contains("db.internal"));
    assert_ne!(plain("nofile.txt"), "512\n");
    assert_eq!(df_size_kib(&plain("shm.txt")), 64 * 1024);
    assert_ne!(plain("net.txt"), "lo\n", "the host has more than loopback");
    assert_eq!(plain("net-default.txt"), plain("net.txt"));
}

#[test]
fn bad_run_step_settings_are_named() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    let ctx = ctx.to_str().unwrap();
    for (flags, expected) in [
        (
            &["--add-host", "db.internal"][..],
            &["--add-host db.internal", "NAME:IP"][..],
        ),
        (
            &["--add-host", "gw:host-gateway"],
            &["host-gateway", "give the address"],
        ),
        (
            &["--ulimit", "files=10"],
            &["--ulimit files=10", "unknown limit", "nofile"],
        ),
        (&["--shm-size", "lots"], &["--shm-size lots", "64m"]),
        (
            &["--ulimit", "nofile=64:4000000000"],
            &["--ulimit nofile=64:4000000000", "kiln's own hard limit"],
        ),
    ] {
        let mut args = vec!["build"];
        args.extend_from_slice(flags);
        args.push(ctx);
        assert_contains_all(&assert_failed(&env.kiln(&args)), expected);
    }
}
