//! `kiln check`: findings on stdout as `FILE:LINE: Rule: message`, exit code by level.

use std::path::Path;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

const EMULATED_BUILD: &str = "FROM golang:1.23 AS build\nRUN curl -LO https://example.com/tool-linux-amd64.tar.gz\nRUN go build -o /app .\nCMD /app\n";

#[test]
fn warnings_are_listed_and_exit_zero() {
    let ctx = context(EMULATED_BUILD);
    let out = kiln(&["check", path(ctx.path())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let dockerfile = ctx.path().join("Dockerfile");
    let name = dockerfile.display();
    for expected in [
        format!("{name}:2: HardcodedArchitecture: RUN hardcodes the architecture \"amd64\""),
        format!("{name}:3: CompilerInTargetStage: `go build` runs in stage 'build'"),
        format!("{name}:4: JSONArgsRecommended: JSON arguments recommended for CMD"),
        " 3 | RUN go build -o /app .".to_string(),
    ] {
        assert!(
            stdout.contains(&expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 warning(s)"));
}

#[test]
fn error_true_directive_fails_the_check() {
    let ctx = context(&format!("# check=error=true\n{EMULATED_BUILD}"));
    let out = kiln(&["check", path(ctx.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(":5: JSONArgsRecommended:"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 check(s) failed as errors"));
}

#[test]
fn skipped_rules_stay_silent() {
    let ctx = context(&format!(
        "# check=skip=HardcodedArchitecture,CompilerInTargetStage,JSONArgsRecommended;error=true\n{EMULATED_BUILD}"
    ));
    let out = kiln(&["check", path(ctx.path())]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn dockerfile_flag_and_parse_errors() {
    let ctx = tempfile::tempdir().unwrap();
    let custom = ctx.path().join("ci.Dockerfile");
    std::fs::write(&custom, "FROM a\nMAINTAINER me\n").unwrap();
    let out = kiln(&["check", "-f", custom.to_str().unwrap(), path(ctx.path())]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ci.Dockerfile:2: MaintainerDeprecated:")
    );

    std::fs::write(&custom, "FROM a\nRUN\n").unwrap();
    let out = kiln(&["check", "-f", custom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ci.Dockerfile:2:1: RUN requires at least one argument")
    );

    let out = kiln(&["check", path(&ctx.path().join("missing"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the Dockerfile"));
}

#[test]
fn a_dockerfile_symlinked_out_of_the_context_is_not_read() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "SECRET-TOKEN-1234\n").unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), ctx.path().join("Dockerfile"))
        .unwrap();
    let out = kiln(&["check", path(ctx.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("SECRET-TOKEN-1234"), "{err}");
    assert!(err.contains("out of the build context"), "{err}");
}
