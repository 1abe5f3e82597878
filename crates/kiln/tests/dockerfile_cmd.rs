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

#[test]
fn prints_instructions_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "Dockerfile",
        "# check=skip=all\nFROM --platform=$BUILDPLATFORM golang AS build\nRUN go build \\\n  # why\n  -o /app .\nENV A=\"x y\" B=2\nONBUILD RUN [\"make\"]\nCOPY <<'EOF' /f\n$x\nEOF\n",
    );
    let out = kiln(&["dockerfile", "parse", "--json", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
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
    let file = write(dir.path(), "Dockerfile", "FROM a\nCOPPY x /\n");
    let out = kiln(&["dockerfile", "parse", "--json", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "Dockerfile:2:1: unknown instruction: COPPY",
        "COPPY x /",
        "did you mean COPY?",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
}
