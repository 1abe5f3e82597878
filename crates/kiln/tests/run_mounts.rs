//! `RUN --mount` and `RUN --network`, through real builds: what the step sees, and that
//! nothing mounted (least of all a secret) ends up in the pushed image.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use sha2::{Digest, Sha256};

/// The paths of every entry of every layer of the pushed image.
fn layer_entries(reference: &str, dir: &Path) -> Vec<String> {
    pushed_files(reference, dir)
        .into_iter()
        .filter(|(name, _)| name.ends_with("(decompressed)"))
        .flat_map(|(_, tar)| {
            tar::Archive::new(&tar[..])
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn build(env: &Env, ctx: &Path, name: &str, extra: &[&str]) -> Output {
    let tag = env.tag(name);
    let mut args = vec!["build", "--progress", "plain", "--push", "-t", &tag];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    env.kiln(&args)
}

/// Builds and pushes `ctx` as `name`, checks the build succeeded, and unpacks the pushed image.
fn build_and_unpack(env: &Env, ctx: &Path, name: &str, extra: &[&str]) -> PathBuf {
    assert_ok(&build(env, ctx, name, extra));
    unpack_pushed(&env.tag(name), &env.path("unpack"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn bind_from_context_is_seen_read_only_and_not_kept() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox\n\
                 ARG SRC=data\n\
                 RUN --mount=type=bind,source=$SRC,target=/ctx \
                 cat /ctx/in.txt > /copied.txt && test ! -e /ctx/ignored.txt \
                 && ! touch /ctx/new 2>/dev/null\n",
            ),
            ("data/in.txt", "context data\n"),
            ("data/ignored.txt", "ignored\n"),
            (".dockerignore", "data/ignored.txt\n"),
        ],
    );
    let rootfs = build_and_unpack(&env, &ctx, "bind:1", &[]);
    assert_eq!(read(&rootfs.join("copied.txt")), "context data\n");
    assert!(!rootfs.join("ctx").exists());
    assert!(!ctx.join("data/new").exists());
}

#[test]
fn bind_from_a_stage_is_writable_with_rw_and_writes_are_dropped() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox AS tools\n\
             RUN mkdir /out && echo built > /out/artifact\n\
             FROM $REG/busybox\n\
             RUN --mount=type=bind,from=tools,source=/out,target=/tools,rw \
             cp /tools/artifact /artifact && echo scribble > /tools/scribble\n\
             RUN --mount=type=bind,from=tools,source=/out,target=/tools \
             test ! -e /tools/scribble && cat /tools/artifact > /again\n",
        )],
    );
    let rootfs = build_and_unpack(&env, &ctx, "stagebind:1", &[]);
    assert_eq!(read(&rootfs.join("artifact")), "built\n");
    assert_eq!(read(&rootfs.join("again")), "built\n");
    assert!(!rootfs.join("tools").exists());
}

#[test]
fn cache_persists_across_builds_and_never_reaches_a_layer() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             ARG RUN_NUMBER\n\
             ARG CACHE=pkgs\n\
             RUN --mount=type=cache,id=$CACHE,target=/var/cache/pkgs,uid=1000,mode=0750 \
             echo $RUN_NUMBER >> /var/cache/pkgs/log && cp /var/cache/pkgs/log /seen \
             && stat -c '%u %a' /var/cache/pkgs > /cache-owner\n",
        )],
    );
    assert_ok(&build(
        &env,
        &ctx,
        "cache:1",
        &["--build-arg", "RUN_NUMBER=1"],
    ));
    assert_ok(&build(
        &env,
        &ctx,
        "cache:2",
        &["--build-arg", "RUN_NUMBER=2"],
    ));

    let rootfs = unpack_pushed(&env.tag("cache:2"), &env.path("unpack"));
    assert_eq!(read(&rootfs.join("seen")), "1\n2\n");
    assert_eq!(read(&rootfs.join("cache-owner")), "1000 750\n");
    assert!(!rootfs.join("var").exists());
    let entries = layer_entries(&env.tag("cache:2"), &env.path("layers"));
    assert!(entries.iter().any(|e| e.contains("seen")), "{entries:?}");
    assert!(
        !entries
            .iter()
            .any(|e| e.contains("var") || e.contains("log")),
        "{entries:?}"
    );
}

#[test]
fn locked_cache_is_used_by_one_build_at_a_time() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             ARG N\n\
             RUN --mount=type=cache,target=/c,sharing=locked \
             test ! -e /c/busy && touch /c/busy && sleep 2 && rm /c/busy && echo $N >> /c/log\n",
        )],
    );
    let builds: Vec<_> = ["1", "2"]
        .iter()
        .map(|n| {
            let tag = env.tag(&format!("locked:{n}"));
            let arg = format!("N={n}");
            kiln_command(
                &env.store(),
                &["build", "--build-arg", &arg, "-t", &tag, "--push"],
            )
            .arg(&ctx)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for build in builds {
        assert_ok(&build.wait_with_output().unwrap());
    }
}

#[test]
fn tmpfs_takes_writes_that_are_not_kept() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --mount=type=tmpfs,target=/scratch,size=1m \
             echo temp > /scratch/f && cat /scratch/f > /got\n",
        )],
    );
    let rootfs = build_and_unpack(&env, &ctx, "tmpfs:1", &[]);
    assert_eq!(read(&rootfs.join("got")), "temp\n");
    assert!(!rootfs.join("scratch").exists());
}

#[test]
fn secrets_reach_the_step_but_not_the_image_or_kilns_output() {
    let env = Env::new();
    let secret = format!("kiln-secret-{}", std::process::id() as u64 * 7919 + 104729);
    let env_secret = format!("kiln-env-secret-{}", std::process::id());
    let secret_file = env.path("token.txt");
    std::fs::write(&secret_file, &secret).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null \
             && test -s /run/secrets/tok && sha256sum < /run/secrets/tok > /file.sum \
             && stat -c '%a %u' /run/secrets/tok > /file.mode\n\
             RUN --mount=type=secret,id=envtok,env=TOKEN,required=true \
             test -n \"$TOKEN\" && printf %s \"$TOKEN\" | sha256sum > /env.sum \
             && test ! -e /run/secrets/envtok\n\
             RUN --mount=type=secret,id=absent echo optional secrets may be missing\n",
        )],
    );
    let tag = env.tag("secret:1");
    let src = format!("id=tok,src={}", secret_file.display());
    let output = kiln_command(
        &env.store(),
        &[
            "build",
            "--progress",
            "plain",
            "--push",
            "-t",
            &tag,
            "--secret",
            &src,
            "--secret",
            "id=envtok,env=KILN_TEST_TOKEN",
            ctx.to_str().unwrap(),
        ],
    )
    .env("KILN_TEST_TOKEN", &env_secret)
    .output()
    .unwrap();
    assert_ok(&output);

    let rootfs = unpack_pushed(&tag, &env.path("unpack"));
    let sum = |s: &str| format!("{}  -\n", sha256_hex(s.as_bytes()));
    assert_eq!(read(&rootfs.join("file.sum")), sum(&secret));
    assert_eq!(read(&rootfs.join("file.mode")), "400 0\n");
    assert_eq!(read(&rootfs.join("env.sum")), sum(&env_secret));
    assert!(!rootfs.join("run").exists());

    let logs = format!("{}{}", stdout(&output), stderr(&output));
    let files = pushed_files(&tag, &env.path("blobs"));
    assert!(files.len() >= 4, "{} files", files.len());
    for value in [&secret, &env_secret] {
        assert!(!logs.contains(value.as_str()), "kiln printed a secret");
        for (name, bytes) in &files {
            let found = bytes
                .windows(value.len())
                .any(|window| window == value.as_bytes());
            assert!(!found, "the secret is in {name}");
        }
    }
}

#[test]
fn required_secret_that_was_not_given_is_an_error_naming_it() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\nRUN --mount=type=secret,id=npm_token,required=true true\n",
        )],
    );
    let stderr = assert_failed(&build(&env, &ctx, "secret:missing", &[]));
    assert_contains_all(&stderr, &["npm_token", "required", "--secret"]);
}

#[test]
fn ssh_agent_socket_is_mounted_and_announced() {
    let env = Env::new();
    let socket = env.path("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --mount=type=ssh test -S /run/buildkit/ssh_agent.0 \
             && echo \"$SSH_AUTH_SOCK\" > /ssh-sock\n",
        )],
    );
    let ssh = format!("default={}", socket.display());
    let rootfs = build_and_unpack(&env, &ctx, "ssh:1", &["--ssh", &ssh]);
    assert_eq!(
        read(&rootfs.join("ssh-sock")),
        "/run/buildkit/ssh_agent.0\n"
    );
    assert!(!rootfs.join("run").exists());

    let required = env.context(
        "required",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\nRUN --mount=type=ssh,id=deploy,required=true true\n",
        )],
    );
    let stderr = assert_failed(&build(&env, &required, "ssh:missing", &["--ssh", &ssh]));
    assert_contains_all(&stderr, &["deploy", "required", "--ssh"]);
}

/// The agent's socket is the user's, on the host. Mounted writable, a step of kiln running as
/// root (uid 0 of the step is the host's) could chmod it for every local user, or chown it.
#[test]
fn ssh_agent_socket_on_the_host_cannot_be_changed() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let socket = env.path("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let metadata = || {
        let meta = std::fs::metadata(&socket).unwrap();
        (meta.mode(), meta.uid(), meta.ctime(), meta.ctime_nsec())
    };
    let before = metadata();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox
             RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" \
             && ! chmod 777 \"$SSH_AUTH_SOCK\" && ! chown 65534 \"$SSH_AUTH_SOCK\" \
             && ! touch -d @0 \"$SSH_AUTH_SOCK\"\n",
        )],
    );
    let ssh = format!("default={}", socket.display());
    let output = build(&env, &ctx, "ssh:meta", &["--ssh", &ssh]);
    assert_eq!(
        metadata(),
        before,
        "the step changed the host's agent socket"
    );
    assert_ok(&output);
    assert_contains_all(&stderr(&output), &["Read-only file system"]);
}

#[test]
fn network_none_isolates_the_step_and_default_reaches_the_registry() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --network=none cat /proc/net/dev > /dev-none && cat /proc/net/tcp* > /tcp-none\n\
             RUN cat /proc/net/tcp* > /tcp-default\n\
             RUN --network=host cat /proc/net/tcp* > /tcp-host\n",
        )],
    );
    let rootfs = build_and_unpack(&env, &ctx, "net:1", &[]);
    let port: u16 = env.reg().rsplit(':').next().unwrap().parse().unwrap();
    // /proc/net/tcp shows local addresses as HEXIP:HEXPORT; a listener has state 0A.
    let listens_on_registry = |table: &str| {
        table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&format!(":{port:04X}")) && fields[3] == "0A"
        })
    };
    assert!(listens_on_registry(&read(&rootfs.join("tcp-default"))));
    assert!(listens_on_registry(&read(&rootfs.join("tcp-host"))));
    assert!(!listens_on_registry(&read(&rootfs.join("tcp-none"))));
    let interfaces: Vec<String> = read(&rootfs.join("dev-none"))
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect();
    assert_eq!(interfaces, ["lo"]);
}

#[test]
fn bad_run_flags_are_errors_naming_them() {
    let env = Env::new();
    for (name, run, expected) in [
        (
            "option",
            "RUN --mount=type=bind,target=/x,colour=red true",
            &["colour", "unknown mount option"][..],
        ),
        (
            "type",
            "RUN --mount=type=volume,target=/x true",
            &["volume", "mount type"][..],
        ),
        (
            "network",
            "RUN --network=bridge true",
            &["--network=bridge"][..],
        ),
        (
            "security",
            "RUN --security=insecure true",
            &["--security=insecure", "not supported"][..],
        ),
        (
            "source",
            "RUN --mount=type=bind,source=nowhere,target=/x true",
            &["nowhere", "not found"][..],
        ),
    ] {
        let ctx = env.context(
            name,
            &[("Dockerfile", &format!("FROM $REG/busybox\n{run}\n"))],
        );
        let stderr = assert_failed(&build(&env, &ctx, &format!("bad:{name}"), &[]));
        assert_contains_all(&stderr, expected);
    }
}
