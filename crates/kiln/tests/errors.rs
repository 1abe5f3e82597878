//! What a user sees when a build fails: exit code 1, a message on stderr that points at the
//! problem, and no image pushed.

mod common;

use common::*;

/// Builds a context holding only this Dockerfile, with `--push -t <reg>/<name>`.
fn build_failing(env: &Env, name: &str, dockerfile: &str) -> String {
    let ctx = env.context(name, &[("Dockerfile", dockerfile)]);
    let tag = env.tag(&format!("{name}:1"));
    let o = env.kiln(&["build", "--push", "-t", &tag, ctx.to_str().unwrap()]);
    let err = assert_failed(&o);
    assert!(!image_exists(&tag), "{tag} was pushed by a failed build");
    err
}

#[test]
fn dockerfile_mistakes_point_at_the_line() {
    let env = Env::new();

    let ctx = env.context(
        "syntax",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nCOPY --frm=x a.txt /\n",
        )],
    );
    let o = env.kiln(&["build", ctx.to_str().unwrap()]);
    assert_failed(&o);
    let raw = stderr(&o);
    assert!(
        raw.contains("Dockerfile:2:6: unknown flag --frm"),
        "no file:line:column:\n{raw}"
    );
    let source_line = raw
        .lines()
        .position(|l| l.ends_with("COPY --frm=x a.txt /"))
        .unwrap_or_else(|| panic!("the offending line is not shown:\n{raw}"));
    // Columns in characters: the report's frame characters are several bytes long.
    let char_col = |line: &str, needle: &str| line.find(needle).map(|b| line[..b].chars().count());
    let caret_line = raw.lines().nth(source_line + 1).unwrap();
    let caret_col = char_col(caret_line, "┬").or_else(|| char_col(caret_line, "^"));
    let bad_col = char_col(raw.lines().nth(source_line).unwrap(), "--frm");
    assert!(
        caret_col.is_some() && caret_col == bad_col,
        "no caret under `--frm`:\n{raw}"
    );

    let err = build_failing(&env, "typo", "FROM $REG/busybox:latest\nCOPPY a.txt /\n");
    assert_contains_all(
        &err,
        &[
            "Dockerfile:2:1",
            "unknown instruction: COPPY",
            "did you mean COPY?",
        ],
    );

    let err = build_failing(&env, "nofrom", "RUN echo hi\n");
    assert_contains_all(&err, &["Dockerfile:1:1", "FROM"]);
}

#[test]
fn missing_copy_source_and_stage_are_named() {
    let env = Env::new();
    let err = build_failing(
        &env,
        "nosource",
        "FROM $REG/busybox:latest\nCOPY not-there.txt /\n",
    );
    assert_contains_all(&err, &["Dockerfile:2", "not-there.txt", "not found"]);

    let err = build_failing(
        &env,
        "nostage",
        "FROM $REG/busybox:latest\nCOPY --from=nosuchstage /x /x\n",
    );
    assert_contains_all(&err, &["Dockerfile:2", "nosuchstage"]);
}

#[test]
fn missing_base_image_names_reference_and_registry() {
    let env = Env::new();
    let err = build_failing(&env, "nobase", "FROM $REG/does-not-exist:7\n");
    assert_contains_all(&err, &[&env.tag("does-not-exist:7"), env.reg()]);
}

#[test]
fn unreachable_registry_is_named() {
    let env = Env::new();
    let ctx = env.context(
        "unreachable",
        &[("Dockerfile", "FROM 127.0.0.1:1/busybox:latest\n")],
    );
    let o = env.kiln(&["build", ctx.to_str().unwrap()]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["127.0.0.1:1", "busybox"]);
}

#[test]
fn failing_run_shows_step_exit_code_and_output() {
    let env = Env::new();
    let err = build_failing(
        &env,
        "runfail",
        "FROM $REG/busybox:latest\nRUN echo before > /before\nRUN sh -c 'echo out1; echo boom >&2; exit 7'\n",
    );
    assert_contains_all(
        &err,
        &[
            "Dockerfile:3: step [stage-0 3/3] RUN sh -c 'echo out1; echo boom >&2; exit 7'",
            "exit code 7",
            "boom",
            "out1",
        ],
    );
    assert!(
        !err.contains("stage-0 stage-0"),
        "the stage is named twice: {err}"
    );
}

#[test]
fn a_dockerfile_or_dockerignore_symlinked_out_of_the_context_is_not_read() {
    let env = Env::new();
    // Files of the host a hostile context must not make kiln read: their first lines, or
    // the bad one, would be in the error, in the job's log.
    let outside = env.context(
        "outside",
        &[
            ("secret", "SECRET-TOKEN-1234\n"),
            ("bad-pattern", "[SECRET-TOKEN-5678\n"),
        ],
    );
    let ctx = env.context("ctx", &[]);
    std::os::unix::fs::symlink(outside.join("secret"), ctx.join("Dockerfile")).unwrap();
    let err = assert_failed(&env.kiln(&["build", ctx.to_str().unwrap()]));
    assert!(!err.contains("SECRET-TOKEN-1234"), "{err}");
    assert_contains_all(&err, &["Dockerfile", "out of the build context"]);

    let ctx = env.context("ignore", &[("Dockerfile", "FROM scratch\n")]);
    std::os::unix::fs::symlink(outside.join("bad-pattern"), ctx.join(".dockerignore")).unwrap();
    let err = assert_failed(&env.kiln(&["build", ctx.to_str().unwrap()]));
    assert!(!err.contains("SECRET-TOKEN-5678"), "{err}");
    assert_contains_all(&err, &[".dockerignore", "out of the build context"]);

    // The same beside the Dockerfile, named as users type it from inside the context.
    let ctx = env.context("beside", &[("Dockerfile", "FROM scratch\n")]);
    let beside = ctx.join("Dockerfile.dockerignore");
    std::os::unix::fs::symlink(outside.join("bad-pattern"), beside).unwrap();
    let out = kiln_command(&env.store(), &["build", "-f", "Dockerfile", "."])
        .current_dir(&ctx)
        .output()
        .unwrap();
    let err = assert_failed(&out);
    assert!(!err.contains("SECRET-TOKEN-5678"), "{err}");
    assert_contains_all(&err, &[".dockerignore", "out of the build context"]);
}

#[test]
fn a_dockerfile_named_by_f_inside_the_context_must_not_lead_out_of_it() {
    let env = Env::new();
    let outside = env.context("outside", &[("secret", "SECRET-TOKEN-1234\n")]);
    let ctx = env.context("ctx", &[]);
    // `-f Dockerfile .` typed from the context: the symlink is the context's, not the user's.
    std::os::unix::fs::symlink(outside.join("secret"), ctx.join("Dockerfile")).unwrap();
    // `-f link/secret .`: a directory of the context that is a symlink out of it.
    std::os::unix::fs::symlink(&outside, ctx.join("link")).unwrap();
    for file in ["Dockerfile", "link/secret"] {
        let out = kiln_command(&env.store(), &["build", "-f", file, "."])
            .current_dir(&ctx)
            .output()
            .unwrap();
        let err = assert_failed(&out);
        assert!(!err.contains("SECRET-TOKEN-1234"), "{file}: {err}");
        assert_contains_all(&err, &["Dockerfile", "out of the build context"]);
    }
    // A Dockerfile the user names outside the context is theirs: read, as typed.
    let out = kiln_command(
        &env.store(),
        &["build", "-f", outside.join("secret").to_str().unwrap(), "."],
    )
    .current_dir(&ctx)
    .output()
    .unwrap();
    assert_contains_all(&assert_failed(&out), &["SECRET-TOKEN-1234"]);
}

/// buildx flags kiln does not have get one line saying why and what instead, not clap's tip
/// to pass them as a value.
#[test]
fn buildx_flags_kiln_lacks_are_explained_in_one_line() {
    let env = Env::new();
    for (args, needle) in [
        (
            &["build", "--load", "."][..],
            "-o type=docker,dest=- . | podman load",
        ),
        (
            &["build", "-t", "a:1", "--builder=mybuilder", "."][..],
            "no builder instance",
        ),
        (
            &["build", "--allow=network.host", "."][..],
            "kiln grants no entitlements",
        ),
    ] {
        let o = env.kiln(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle) && !err.contains("tip:"), "{err}");
    }
    // Inside another flag's value it is not the flag.
    let o = env.kiln(&["build", "--build-arg", "X=--load", "/nonexistent-context"]);
    assert!(!stderr(&o).contains("podman load"), "{}", stderr(&o));
}

/// `kiln --version` and `kiln version` name the commit kiln was built from; `kiln
/// completion` prints scripts the shells take; `kiln build --help` has headings.
#[test]
fn the_version_names_the_commit_and_completion_scripts_are_shell_code() {
    let env = Env::new();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap().trim().to_string();
    for args in [&["--version"][..], &["version"][..]] {
        let o = env.kiln(args);
        assert_ok(&o);
        assert!(
            !head.is_empty() && stdout(&o).contains(&format!("(commit {head}, ")),
            "{args:?}: {} (HEAD {head})",
            stdout(&o)
        );
    }
    let bash = env.kiln(&["completion", "bash"]);
    assert_ok(&bash);
    let script = env.path("kiln.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    assert_ok(
        &std::process::Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap(),
    );
    assert!(stdout(&bash).contains("complete -F"), "{}", stdout(&bash));
    assert!(stdout(&env.kiln(&["completion", "zsh"])).starts_with("#compdef kiln"));
    assert!(stdout(&env.kiln(&["completion", "fish"])).contains("complete -c kiln"));
    // `kiln build --help` groups its flags under headings.
    let help = stdout(&env.kiln(&["build", "--help"]));
    for heading in [
        "Input:",
        "Output:",
        "Platforms:",
        "Cache:",
        "Registries:",
        "RUN steps:",
        "Progress:",
    ] {
        assert!(
            help.lines().any(|l| l == heading),
            "{heading} missing:\n{help}"
        );
    }
}

/// As kaniko does, a push that would be refused fails before the first step, naming the
/// registry and repository; `--skip-push-permission-check` builds anyway (and fails at the
/// push).
#[test]
fn a_destination_that_refuses_pushes_fails_before_any_step() {
    use kiln_testkit::{Fault, FaultProxy, FaultRule};
    let env = Env::new();
    let refuse = Fault::Status {
        status: 403,
        retry_after: None,
    };
    let proxy = FaultProxy::start(
        env.reg(),
        vec![FaultRule::new(
            Some("POST"),
            "/blobs/uploads/",
            refuse,
            1000,
        )],
    );
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM $REG/busybox\nRUN echo step-ran-here\n")],
    );
    let tag = format!("{}/team/app:1", proxy.addr());
    let o = env.kiln(&["build", "--push", "-t", &tag, ctx.to_str().unwrap()]);
    let err = assert_failed(&o);
    assert_contains_all(
        &err,
        &[
            &format!(
                "cannot push to {}/team/app with no credentials",
                proxy.addr()
            ),
            "nothing was built",
        ],
    );
    assert!(!err.contains("step-ran-here"), "a step ran:\n{err}");
    let o = env.kiln(&[
        "build",
        "--push",
        "--skip-push-permission-check",
        "-t",
        &tag,
        ctx.to_str().unwrap(),
    ]);
    let err = assert_failed(&o);
    assert!(err.contains("step-ran-here"), "{err}");
}
