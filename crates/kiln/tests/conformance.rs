//! The Dockerfile conformance suite: every directory under `testdata/conformance/` is one
//! case, built with kiln into an OCI layout, unpacked with umoci and compared with the
//! case's `expect.json`, whose values come from Docker's documented behaviour.
//!
//! A case holds `Dockerfile`, an optional `context/` (the build context; empty otherwise), an
//! optional `args` file (extra `kiln build` arguments, one per line) and `expect.json`:
//! - `files`: entries `{path, type: file|dir|symlink, mode: "0644", uid, gid, content | sha256,
//!   target}`; every key given must match the unpacked rootfs.
//! - `absent`: paths that must not exist.
//! - `config`: fields of the image config's `config` object that must be equal; `null` means
//!   the field must be unset.
//! - `image`: top-level fields of the image config (such as `author`) that must be equal.
//! - `layers`: the exact number of layers.
//! - `error`: substrings of kiln's stderr for a build that must fail (nothing else is checked).
//!
//! Every build gets `--build-arg REG=<registry>`, so Dockerfiles say `FROM ${REG}/busybox:latest`;
//! in `args`, `$REG`, `$BUSYBOX_DIGEST` (the fixture index's digest) and `$CASE` (the case's
//! directory) are replaced.

mod common;

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest as _, Sha256};

const MINIMUM_CASES: usize = 150;

#[test]
fn dockerfile_conformance_suite() {
    let env = Env::new();
    let cases = case_dirs();
    assert!(
        cases.len() >= MINIMUM_CASES,
        "the suite has {} cases, fewer than {MINIMUM_CASES}",
        cases.len()
    );
    let empty_context = env.path("empty-context");
    std::fs::create_dir_all(&empty_context).unwrap();

    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let started = std::time::Instant::now();
        let problems = run_case(&env, case, index, &empty_context);
        // Progress, shown with --nocapture.
        eprintln!(
            "{name}: {} problems, {:.1?}",
            problems.len(),
            started.elapsed()
        );
        if !problems.is_empty() {
            failures.push(format!("{name}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn case_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/conformance");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("listing {}: {e}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    cases
}

/// Builds one case and returns what differed from its expectations.
fn run_case(env: &Env, case: &Path, index: usize, empty_context: &Path) -> Vec<String> {
    let expect: Value = match std::fs::read(case.join("expect.json")) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(e) => return vec![format!("expect.json: {e}")],
        },
        Err(e) => return vec![format!("expect.json: {e}")],
    };
    let context = match case.join("context") {
        dir if dir.is_dir() => dir,
        _ => empty_context.to_path_buf(),
    };
    let extra: Vec<String> = std::fs::read_to_string(case.join("args"))
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.replace("$REG", env.reg())
                .replace("$BUSYBOX_DIGEST", &env.busybox_index_digest)
                .replace("$CASE", case.to_str().unwrap())
        })
        .collect();

    let layout = env.path(&format!("out/{index}"));
    let tag = index.to_string();
    let output = format!("type=oci,dest={},tar=false", layout.display());
    let reg_arg = format!("REG={}", env.reg());
    let dockerfile = case.join("Dockerfile");
    let image_name = format!("conf:{tag}");
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "-f",
        dockerfile.to_str().unwrap(),
        "-o",
        &output,
        "-t",
        &image_name,
        "--build-arg",
        &reg_arg,
    ];
    args.extend(extra.iter().map(String::as_str));
    args.push(context.to_str().unwrap());
    let o = env.kiln(&args);

    if let Some(needles) = expect.get("error") {
        return check_error(&o, needles);
    }
    if !o.status.success() {
        return vec![format!("kiln failed ({}):\n{}", o.status, stderr(&o))];
    }

    let mut problems = Vec::new();
    let (manifest, config) = read_image(&layout);
    if let Some(layers) = expect.get("layers") {
        let actual = manifest["layers"].as_array().map_or(0, Vec::len);
        if Some(actual as u64) != layers.as_u64() {
            problems.push(format!("layers: expected {layers}, got {actual}"));
        }
    }
    if let Some(fields) = expect.get("config").and_then(Value::as_object) {
        let actual = &config["config"];
        for (field, wanted) in fields {
            let got = actual.get(field).unwrap_or(&Value::Null);
            if got != wanted {
                problems.push(format!("config.{field}: expected {wanted}, got {got}"));
            }
        }
    }
    if let Some(fields) = expect.get("image").and_then(Value::as_object) {
        for (field, wanted) in fields {
            let got = config.get(field).unwrap_or(&Value::Null);
            if got != wanted {
                problems.push(format!("{field}: expected {wanted}, got {got}"));
            }
        }
    }
    let wants_rootfs = expect.get("files").is_some() || expect.get("absent").is_some();
    if wants_rootfs {
        let rootfs = umoci_unpack(&layout, &tag, &env.path(&format!("bundle/{index}")));
        for entry in expect["files"].as_array().into_iter().flatten() {
            check_file(&rootfs, entry, &mut problems);
        }
        for path in expect["absent"].as_array().into_iter().flatten() {
            let path = path.as_str().unwrap();
            if std::fs::symlink_metadata(rootfs.join(path.trim_start_matches('/'))).is_ok() {
                problems.push(format!("{path}: should not exist"));
            }
        }
    }
    problems
}

fn check_error(o: &std::process::Output, needles: &Value) -> Vec<String> {
    if o.status.success() {
        return vec!["the build should have failed but succeeded".to_string()];
    }
    let flat = flat_stderr(o);
    let missing: Vec<String> = needles
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|needle| !flat.contains(needle))
        .map(|needle| format!("stderr lacks {needle:?}"))
        .collect();
    if missing.is_empty() {
        return missing;
    }
    let mut problems = missing;
    problems.push(format!("stderr was: {flat}"));
    problems
}

/// The manifest and the config of the single image in an OCI layout.
fn read_image(layout: &Path) -> (Value, Value) {
    let blob = |descriptor: &Value| -> Value {
        let digest = descriptor["digest"].as_str().unwrap();
        let (algorithm, hex) = digest.split_once(':').unwrap();
        let bytes = std::fs::read(layout.join("blobs").join(algorithm).join(hex)).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifest = blob(&index["manifests"][0]);
    // A nested index (one platform) leads to the manifest.
    while manifest.get("manifests").is_some() {
        manifest = blob(&manifest["manifests"][0]);
    }
    let config = blob(&manifest["config"]);
    (manifest, config)
}

/// Compares one `files` entry of expect.json with the unpacked rootfs.
fn check_file(rootfs: &Path, entry: &Value, problems: &mut Vec<String>) {
    let path = entry["path"].as_str().unwrap();
    let full = rootfs.join(path.trim_start_matches('/'));
    let metadata = match std::fs::symlink_metadata(&full) {
        Ok(metadata) => metadata,
        Err(e) => {
            problems.push(format!("{path}: {e}"));
            return;
        }
    };
    let mut differ = |what: &str, wanted: &dyn std::fmt::Display, got: &dyn std::fmt::Display| {
        let mut line = String::new();
        write!(line, "{path}: {what} expected {wanted}, got {got}").unwrap();
        problems.push(line);
    };
    let file_type = metadata.file_type();
    let kind = if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_file() {
        "file"
    } else {
        "other"
    };
    if let Some(wanted) = entry.get("type").and_then(Value::as_str)
        && wanted != kind
    {
        differ("type", &wanted, &kind);
    }
    if let Some(wanted) = entry.get("mode").and_then(Value::as_str) {
        let got = format!("{:04o}", metadata.mode() & 0o7777);
        if got != wanted {
            differ("mode", &wanted, &got);
        }
    }
    if let Some(wanted) = entry.get("uid").and_then(Value::as_u64)
        && wanted != u64::from(metadata.uid())
    {
        differ("uid", &wanted, &metadata.uid());
    }
    if let Some(wanted) = entry.get("gid").and_then(Value::as_u64)
        && wanted != u64::from(metadata.gid())
    {
        differ("gid", &wanted, &metadata.gid());
    }
    if let Some(wanted) = entry.get("target").and_then(Value::as_str) {
        let got = std::fs::read_link(&full)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("<{e}>"));
        if got != wanted {
            differ("target", &format!("{wanted:?}"), &format!("{got:?}"));
        }
    }
    if let Some(wanted) = entry.get("content").and_then(Value::as_str) {
        let got = std::fs::read(&full)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<{e}>"));
        if got != wanted {
            differ("content", &format!("{wanted:?}"), &format!("{got:?}"));
        }
    }
    if let Some(wanted) = entry.get("sha256").and_then(Value::as_str) {
        let got = std::fs::read(&full)
            .map(|b| {
                Sha256::digest(b)
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<String>()
            })
            .unwrap_or_else(|e| format!("<{e}>"));
        if got != wanted.trim_start_matches("sha256:") {
            differ("sha256", &wanted, &got);
        }
    }
}
