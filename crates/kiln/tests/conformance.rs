//! The Dockerfile conformance suite: every directory under `testdata/conformance/` is one
//! case, and one test of this harness (named after the directory), compared with the case's
//! `expect.json`, whose values come from Docker's documented behaviour.
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
//! - `error`: substrings of kiln's error for a build that must fail (nothing else is checked).
//!
//! A case that checks only the config, the layer count or an error is checked against the
//! plan alone when the plan decides it: `kiln_build::lower` makes the plan (resolving base
//! images from the test registry) and nothing is built. An expected error must then come from
//! parsing or lowering, and the image must need no step run (only base images), so that its
//! config and layers are all known. Every other case is built with the `kiln` binary into an
//! OCI layout and unpacked with umoci.
//!
//! Every build gets `--build-arg REG=<registry>`, so Dockerfiles say `FROM ${REG}/busybox:latest`;
//! in `args`, `$REG`, `$BUSYBOX_DIGEST` (the fixture index's digest) and `$CASE` (the case's
//! directory) are replaced.
//!
//! The harness takes libtest's arguments (through libtest-mimic): `cargo test -p kiln --test
//! conformance -- 066-workdir` runs the cases whose name contains `066-workdir`, `--exact`,
//! `--skip`, `--list` and `--test-threads` work as usual.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use common::*;
use kiln_build::{
    BuildError, BuildOptions, OpKind, Plan, Progress, ProgressMode, RegistryResolver, Secrets,
    Source, Store,
};
use kiln_oci::Platform;
use kiln_registry::{ClientOptions, RegistryClient};
use libtest_mimic::{Arguments, Failed, Trial};
use sha2::{Digest as _, Sha256};

const MINIMUM_CASES: usize = 150;

/// The fields of `expect.json` a plan can answer; `image` fields are all plan facts except
/// those the build fills in.
const PLAN_CHECKS: &[&str] = &["config", "image", "layers", "error"];
const IMAGE_FIELDS_OF_THE_BUILD: &[&str] = &["created", "history", "rootfs"];

fn main() {
    let args = Arguments::from_args();
    let cases = case_dirs();
    assert!(
        cases.len() >= MINIMUM_CASES,
        "the suite has {} cases, fewer than {MINIMUM_CASES}",
        cases.len()
    );
    let suite = Arc::new(Suite {
        verbose: args.nocapture,
        ..Suite::default()
    });
    let trials = cases
        .into_iter()
        .enumerate()
        .map(|(index, case)| {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            let suite = suite.clone();
            Trial::test(name, move || suite.run(index, &case).map_err(Failed::from))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let (planned, built) = (
        suite.planned.load(Ordering::SeqCst),
        suite.built.load(Ordering::SeqCst),
    );
    if planned + built > 0 {
        eprintln!("conformance: {planned} cases checked on the plan alone, {built} built");
    }
    // The registry and the temp dirs go before the process exits.
    drop(suite);
    conclusion.exit()
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

/// What the cases share, made when the first case needs it: the registry with the fixtures,
/// and the client and store the plans resolve base images with.
#[derive(Default)]
struct Suite {
    /// `--nocapture`: say how each case was checked and how long it took.
    verbose: bool,
    env: OnceLock<Env>,
    planner: OnceLock<(RegistryClient, Store)>,
    planned: AtomicUsize,
    built: AtomicUsize,
}

/// A case's expectations and the `kiln build` arguments it adds.
struct Case<'a> {
    dir: &'a Path,
    index: usize,
    expect: Value,
    args: Vec<String>,
}

impl Suite {
    fn env(&self) -> &Env {
        self.env.get_or_init(|| {
            let env = Env::new();
            std::fs::create_dir_all(env.path("empty-context")).unwrap();
            env
        })
    }

    /// Checks one case; the error lists what differed from its expectations.
    fn run(&self, index: usize, dir: &Path) -> Result<(), String> {
        let started = std::time::Instant::now();
        let expect: Value = std::fs::read(dir.join("expect.json"))
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            .map_err(|e| format!("expect.json: {e}"))?;
        let env = self.env();
        let args = std::fs::read_to_string(dir.join("args"))
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                line.replace("$REG", env.reg())
                    .replace("$BUSYBOX_DIGEST", &env.busybox_index_digest)
                    .replace("$CASE", dir.to_str().unwrap())
            })
            .collect();
        let case = Case {
            dir,
            index,
            expect,
            args,
        };
        let (how, problems) = match self.check_plan(&case) {
            Ok(problems) => {
                self.planned.fetch_add(1, Ordering::SeqCst);
                ("checked on the plan".to_string(), problems)
            }
            Err(why) => {
                self.built.fetch_add(1, Ordering::SeqCst);
                (format!("built: {why}"), self.check_build(&case))
            }
        };
        if self.verbose {
            eprintln!(
                "{}: {how}; {} problems, {:.1?}",
                dir.file_name().unwrap().to_string_lossy(),
                problems.len(),
                started.elapsed()
            );
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("\n")),
        }
    }

    /// What differs from the case's expectations in its plan, or why the plan cannot decide
    /// the case and it must be built.
    fn check_plan(&self, case: &Case) -> Result<Vec<String>, &'static str> {
        let not_planned = "it checks what only a build makes";
        let expect = case.expect.as_object().ok_or(not_planned)?;
        let answerable = expect.keys().all(|k| PLAN_CHECKS.contains(&k.as_str()))
            && expect
                .get("image")
                .and_then(Value::as_object)
                .is_none_or(|fields| {
                    fields
                        .keys()
                        .all(|k| !IMAGE_FIELDS_OF_THE_BUILD.contains(&k.as_str()))
                });
        if !answerable {
            return Err(not_planned);
        }
        let env = self.env();
        let mut build_args = BTreeMap::from([("REG".to_string(), env.reg().to_string())]);
        let mut target = None;
        let unmodelled = "its args are more than --build-arg K=V and --target";
        let mut args = case.args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(unmodelled)?.clone();
            match flag.as_str() {
                "--build-arg" => {
                    let (k, v) = value.split_once('=').ok_or(unmodelled)?;
                    build_args.insert(k.to_string(), v.to_string());
                }
                "--target" => target = Some(value),
                _ => return Err(unmodelled),
            }
        }
        let dockerfile = case.dir.join("Dockerfile");
        let source_date_epoch = build_args
            .get("SOURCE_DATE_EPOCH")
            .and_then(|v| v.parse().ok());
        let opts = BuildOptions {
            dockerfile_path: dockerfile.display().to_string(),
            context_dir: case.dir.join("context"),
            // The plan reads nothing of the context.
            ignore_file: None,
            build_args,
            target,
            platforms: vec![Platform::host()],
            jobs: 1,
            qemu_dir: None,
            sandbox_helper: PathBuf::from(env!("CARGO_BIN_EXE_kiln")),
            source_date_epoch,
            secrets: Secrets::default(),
            ssh: BTreeMap::new(),
            base_dir: None,
            base_cache: None,
            annotations: Default::default(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            labels: BTreeMap::new(),
            isolation: Default::default(),
            in_place: Default::default(),
            network: Default::default(),
            step_options: Default::default(),
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            layer_encoding: Default::default(),
            attestations: Default::default(),
            named_contexts: BTreeMap::new(),
        };
        let text =
            std::fs::read_to_string(&dockerfile).map_err(|_| "its Dockerfile is unreadable")?;
        let (client, store) = self.planner.get_or_init(|| {
            let client = RegistryClient::new(&ClientOptions::default()).unwrap();
            let store = Store::open(&env.path("plan-store")).unwrap();
            (client, store)
        });
        let progress = Progress::new(ProgressMode::Quiet);
        let resolver = RegistryResolver::new(client, store, &progress);
        let lowered = kiln_dockerfile::parse(&opts.dockerfile_path, &text)
            .map_err(BuildError::Parse)
            .and_then(|df| kiln_build::lower(&df, &opts, &resolver));
        match (lowered, expect.get("error")) {
            (Err(e), Some(needles)) => Ok(check_error(&error_text(&e), needles)),
            (Err(e), None) => Ok(vec![format!("kiln failed: {}", error_text(&e))]),
            (Ok(_), Some(_)) => Err("its error is not found before steps run"),
            (Ok(plan), None) => {
                let (config, layers) = plan_image(&plan).ok_or("its image needs steps run")?;
                Ok(check_image(&case.expect, &config, layers))
            }
        }
    }

    /// Builds the case with the kiln binary and checks what it made.
    fn check_build(&self, case: &Case) -> Vec<String> {
        let env = self.env();
        let context = match case.dir.join("context") {
            dir if dir.is_dir() => dir,
            _ => env.path("empty-context"),
        };
        let index = case.index;
        let layout = env.path(&format!("out/{index}"));
        let tag = index.to_string();
        let output = format!("type=oci,dest={},tar=false", layout.display());
        let reg_arg = format!("REG={}", env.reg());
        let dockerfile = case.dir.join("Dockerfile");
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
        args.extend(case.args.iter().map(String::as_str));
        args.push(context.to_str().unwrap());
        let o = env.kiln(&args);

        let expect = &case.expect;
        if let Some(needles) = expect.get("error") {
            if o.status.success() {
                return vec!["the build should have failed but succeeded".to_string()];
            }
            return check_error(&flat_stderr(&o), needles);
        }
        if !o.status.success() {
            return vec![format!("kiln failed ({}):\n{}", o.status, stderr(&o))];
        }

        let (manifest, config) = read_image(&layout);
        let layers = manifest["layers"].as_array().map_or(0, Vec::len);
        let mut problems = check_image(expect, &config, layers);
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
}

/// An error as a person reads it, flattened as `flat_stderr` flattens kiln's report: the
/// position, the message and a parse error's hint.
fn error_text(e: &BuildError) -> String {
    let text = match e {
        BuildError::Parse(p) => format!(
            "{}:{}:{}: {} {}",
            p.path,
            p.line,
            p.column,
            p.message,
            p.hint.as_deref().unwrap_or_default()
        ),
        other => other.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The config (as JSON) and layer count of the plan's image, when the plan knows them: the
/// image needs nothing run, so it is its base image (or scratch) with a new config.
fn plan_image(plan: &Plan) -> Option<(Value, usize)> {
    let [image] = plan.images.as_slice() else {
        return None;
    };
    let only_sources = plan
        .ops_for(image)
        .into_iter()
        .all(|id| matches!(plan.op(id).kind, OpKind::Source(_)));
    if !only_sources {
        return None;
    }
    let layers = match &plan.op(image.result).kind {
        OpKind::Source(Source::Image(base)) => base.layers.len(),
        _ => 0,
    };
    Some((serde_json::to_value(&image.config).unwrap(), layers))
}

/// Compares the layer count and the config fields `expect` names with the image's.
fn check_image(expect: &Value, config: &Value, layers: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(wanted) = expect.get("layers")
        && Some(layers as u64) != wanted.as_u64()
    {
        problems.push(format!("layers: expected {wanted}, got {layers}"));
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
    problems
}

/// The needles of `expect.error` that `error` lacks.
fn check_error(error: &str, needles: &Value) -> Vec<String> {
    let missing: Vec<String> = needles
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|needle| !error.contains(needle))
        .map(|needle| format!("the error lacks {needle:?}"))
        .collect();
    if missing.is_empty() {
        return missing;
    }
    let mut problems = missing;
    problems.push(format!("the error was: {error}"));
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
