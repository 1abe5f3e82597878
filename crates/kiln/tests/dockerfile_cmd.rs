//! `kiln dockerfile parse --json`: the parser's view of a file, for editors and tools.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `kiln dockerfile parse --json FILE`, which must succeed, as JSON.
fn parse_json(file: &str) -> Value {
    let out = kiln(&["dockerfile", "parse", "--json", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn prints_instructions_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "Dockerfile",
        "# check=skip=all\nFROM --platform=$BUILDPLATFORM golang AS build\nRUN go build \\\n  # why\n  -o /app .\nENV A=\"x y\" B=2\nONBUILD RUN [\"make\"]\nCOPY <<'EOF' /f\n$x\nEOF\n",
    );
    let v = parse_json(&file);
    assert_eq!(
        v["directives"],
        json!({"syntax": null, "escape": "\\", "check": "skip=all"})
    );
    let instructions = v["instructions"].as_array().unwrap();
    assert_eq!(instructions.len(), 5);
    assert_eq!(
        instructions[0]["flags"],
        json!(["--platform=$BUILDPLATFORM"])
    );
    assert_eq!(instructions[0]["args"], json!(["golang", "AS", "build"]));
    assert_eq!(instructions[1]["args"], json!(["go build   -o /app ."]));
    assert_eq!(
        (&instructions[1]["start_line"], &instructions[1]["end_line"]),
        (&json!(3), &json!(5))
    );
    assert_eq!(instructions[2]["args"], json!(["A", "\"x y\"", "B", "2"]));
    assert_eq!(instructions[3]["trigger"]["keyword"], "run");
    assert_eq!(instructions[3]["trigger"]["args"], json!(["make"]));
    assert_eq!(
        instructions[4]["heredocs"],
        json!([{"name": "EOF", "content": "$x\n", "expand": false}])
    );
    assert_eq!(instructions[4]["end_line"], json!(10));
}

#[test]
fn parse_errors_point_at_the_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "Dockerfile", "FROM a\nRUN <<EOF\necho hi\n");
    let out = kiln(&["dockerfile", "parse", "--json", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "Dockerfile:2:5: unterminated heredoc EOF",
        "RUN <<EOF",
        "end the here-document with a line containing only EOF",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
}

/// Syntax only, as BuildKit's parser: a file without FROM, and flags the builder does not
/// take, parse; the flags are shown as written. (`kiln build` refuses both.)
#[test]
fn parsing_is_syntax_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "Dockerfile",
        "RUN --frobnicate=yes echo hi\nCOPY --chown=1:1 --unknown a b\n",
    );
    let v = parse_json(&file);
    let instructions = v["instructions"].as_array().unwrap();
    assert_eq!(instructions[0]["flags"], json!(["--frobnicate=yes"]));
    assert_eq!(
        instructions[1]["flags"],
        json!(["--chown=1:1", "--unknown"])
    );
    assert_eq!(instructions[1]["args"], json!(["a", "b"]));

    // A keyword BuildKit's builder does not know parses too (its parser takes any); `check`
    // and `build` refuse it.
    let unknown = write(
        dir.path(),
        "Unknown.Dockerfile",
        "FROM busybox\nFROOM --flag=1 x y\nRUN true\n",
    );
    let v = parse_json(&unknown);
    let froom = &v["instructions"][1];
    assert_eq!(froom["keyword"], "froom");
    assert_eq!(froom["flags"], json!(["--flag=1"]));
    assert_eq!(froom["args"], json!(["x", "y"]));
    assert_eq!(froom["start_line"], 2);
    assert_eq!(v["instructions"][2]["keyword"], "run");
    let check = kiln(&["check", "-f", &unknown, dir.path().to_str().unwrap()]);
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("unknown instruction: FROOM"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let build = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", dir.path().to_str().unwrap()])
        .env("KILN_ROOT", dir.path().join("root"))
        .output()
        .unwrap();
    assert!(!build.status.success());
}
