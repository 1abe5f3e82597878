//! Build secrets, seen from outside: what kiln prints and reports when a step prints a
//! secret, what a pushed image holds, and what a killed build leaves on the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A value no build prints by chance.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("kiln-{what}-{}-{nanos}", std::process::id())
}

/// Regular files under `dir` (symlinks not followed) whose content holds `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        {
            found.push(path);
        }
    }
    found
}

fn shm_is_tmpfs() -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T", "/dev/shm"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs")
}

#[test]
fn secrets_a_failing_step_prints_are_redacted_in_every_mode() {
    let env = Env::new();
    let file_secret = unique("file-secret");
    let env_secret = unique("env-secret");
    let key_lines = [unique("key-line-one"), unique("key-line-two")];
    let key = format!(
        "-----BEGIN TEST KEY-----\n{}\n{}\nab\n-----END TEST KEY-----\n",
        key_lines[0], key_lines[1]
    );
    std::fs::write(env.path("tok"), format!("{file_secret}\n")).unwrap();
    std::fs::write(env.path("key"), &key).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --mount=type=secret,id=tok --mount=type=secret,id=key,target=/key \
             --mount=type=secret,id=envtok,env=TOKEN \
             echo \"file:$(cat /run/secrets/tok)!\" && echo \"env=$TOKEN$TOKEN\" && cat /key \
             && exit 3\n",
        )],
    );
    let tok = format!("id=tok,src={}", env.path("tok").display());
    let key_spec = format!("id=key,src={}", env.path("key").display());
    for mode in ["plain", "quiet"] {
        let o = kiln_command(
            &env.store(),
            &[
                "build",
                "--progress",
                mode,
                "--secret",
                &tok,
                "--secret",
                &key_spec,
                "--secret",
                "id=envtok,env=KILN_TEST_TOKEN",
                "--secret",
                "id=pin,env=KILN_TEST_PIN",
                ctx.to_str().unwrap(),
            ],
        )
        .env("KILN_TEST_TOKEN", &env_secret)
        .env("KILN_TEST_PIN", "abc")
        .output()
        .unwrap();
        let err = assert_failed(&o);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        for secret in [&file_secret, &env_secret, &key_lines[0], &key_lines[1]] {
            assert!(
                !all.contains(secret.as_str()),
                "{mode}: kiln printed {secret}"
            );
        }
        // The error's tail shows the lines, redacted; every line of the key is long enough
        // to be redacted.
        assert_contains_all(&err, &["exit code 3", "file:****!", "env=****"]);
        assert!(!err.contains("TEST KEY"), "{mode}: {err}");
        assert_contains_all(
            &err,
            &["[warning] secret `pin` is shorter than 4 characters"],
        );
        // In plain mode the log shows them too, redacted the same way.
        let logged = stderr(&o).lines().any(|l| l.ends_with("| file:****!"));
        assert_eq!(logged, mode == "plain", "{mode}: {}", stderr(&o));
    }
}

#[test]
fn secrets_reach_no_layer_config_history_or_log() {
    let env = Env::new();
    let file_secret = unique("file-secret");
    let env_secret = unique("env-secret");
    std::fs::write(env.path("tok"), &file_secret).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --mount=type=secret,id=tok --mount=type=secret,id=envtok,env=TOKEN \
             cat /run/secrets/tok && echo && echo \"$TOKEN\" && echo used > /used\n",
        )],
    );
    let tag = env.tag("secrets:1");
    let tok = format!("id=tok,src={}", env.path("tok").display());
    let o = kiln_command(
        &env.store(),
        &[
            "build",
            "--progress",
            "plain",
            "--push",
            "-t",
            &tag,
            "--secret",
            &tok,
            "--secret",
            "id=envtok,env=KILN_TEST_TOKEN",
            ctx.to_str().unwrap(),
        ],
    )
    .env("KILN_TEST_TOKEN", &env_secret)
    .output()
    .unwrap();
    assert_ok(&o);
    let log = format!("{}{}", stdout(&o), stderr(&o));
    assert!(log.lines().any(|l| l.ends_with("| ****")), "{log}");

    let config = config(&tag);
    let history = config["history"].as_array().unwrap();
    let run = history.last().unwrap()["created_by"].as_str().unwrap();
    assert!(run.contains("cat /run/secrets/tok"), "{run}");
    let config_text = config.to_string();
    let files = pushed_files(&tag, &env.path("blobs"));
    assert!(
        files
            .iter()
            .any(|(name, _)| name.ends_with("(decompressed)"))
    );
    for secret in [&file_secret, &env_secret] {
        assert!(!log.contains(secret.as_str()), "kiln printed {secret}");
        assert!(
            !config_text.contains(secret.as_str()),
            "the config or its history holds {secret}"
        );
        for (name, bytes) in &files {
            let found = bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes());
            assert!(!found, "{secret} is in {name}");
        }
    }
}

#[test]
fn a_killed_build_leaves_no_secret_on_the_host() {
    let env = Env::new();
    let secret = unique("killed-secret");
    std::fs::write(env.path("tok"), &secret).unwrap();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox\n\
             RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok > /dev/null \
             && touch /kiln-step-started && sleep 20\n",
        )],
    );
    let tok = format!("id=tok,src={}", env.path("tok").display());
    let mut build = kiln_command(
        &env.store(),
        &["build", "--secret", &tok, ctx.to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !has_file_named(&env.store(), "kiln-step-started") {
        assert!(build.try_wait().unwrap().is_none(), "the build ended early");
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shm = Path::new("/dev/shm");
    let on_host = |what: &str| {
        let mut found = files_containing(&env.store(), &secret);
        found.extend(files_containing(shm, &secret));
        eprintln!("{what}: {found:?}");
        found
    };
    // While the step runs, its secret file exists, and only in memory when it can be.
    let during = on_host("while the step runs");
    assert!(!during.is_empty(), "the secret file was not found");
    let on_disk = files_containing(&env.store(), &secret);
    build.kill().unwrap();
    build.wait().unwrap();

    let next = env.context("next", &[("Dockerfile", "FROM $REG/busybox\nRUN true\n")]);
    assert_ok(&env.kiln(&["build", next.to_str().unwrap()]));
    assert_eq!(
        on_host("after the next build"),
        Vec::<PathBuf>::new(),
        "the killed build's secret is still on the host"
    );
    if shm_is_tmpfs() {
        assert_eq!(
            on_disk,
            Vec::<PathBuf>::new(),
            "the secret was written to disk in the store"
        );
    }
}
