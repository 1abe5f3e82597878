//! Shared set-up for kiln's end-to-end tests: a real registry with the busybox fixtures, a
//! private kiln store per test, the kiln binary, and readers for what kiln produced (through
//! skopeo and umoci, never through kiln's own crates).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use kiln_testkit::{
    Registry, push_busybox, skopeo_inspect, skopeo_raw, skopeo_to_oci, umoci_unpack,
};
pub use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub struct Env {
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    /// Digest of the OCI image index tagged `busybox:latest`.
    pub busybox_index_digest: String,
    /// Digest of the Docker manifest list tagged `busybox:docker`.
    pub busybox_list_digest: String,
}

impl Env {
    /// A registry holding `busybox:latest` (OCI index) and `busybox:docker` (Docker list).
    pub fn new() -> Env {
        let registry = Registry::start();
        let (busybox_index_digest, busybox_list_digest) = push_busybox(&registry, "busybox");
        Env {
            registry,
            dir: tempfile::tempdir().unwrap(),
            busybox_index_digest,
            busybox_list_digest,
        }
    }

    pub fn reg(&self) -> &str {
        self.registry.addr()
    }

    /// `<registry>/<name>`, e.g. `tag("demo:1")`.
    pub fn tag(&self, name: &str) -> String {
        format!("{}/{name}", self.reg())
    }

    /// A path inside this test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A build context with these files (path, content); `$REG` in contents becomes the
    /// registry's address.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path(name);
        std::fs::create_dir_all(&ctx).unwrap();
        for (path, content) in files {
            let p = ctx.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content.replace("$REG", self.reg())).unwrap();
        }
        ctx
    }

    /// The store every `kiln` call of this test shares.
    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// Runs kiln with a store private to this test.
    pub fn kiln(&self, args: &[&str]) -> Output {
        kiln_with_root(&self.store(), args)
    }

    /// Builds `ctx` and pushes it as `<registry>/<name>`; panics unless kiln succeeds.
    pub fn build_and_push(&self, ctx: &Path, name: &str, extra: &[&str]) -> Output {
        let tag = self.tag(name);
        let mut args = vec!["build", "--push", "-t", &tag];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        let o = self.kiln(&args);
        assert_ok(&o);
        o
    }
}

pub fn kiln_command(root: &Path, args: &[&str]) -> Command {
    kiln_command_at(Path::new(env!("CARGO_BIN_EXE_kiln")), root, args)
}

/// `kiln_command` for a copy of the binary elsewhere (see `executable_by_anyone`).
pub fn kiln_command_at(binary: &Path, root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("KILN_ROOT", root)
        .env("NO_COLOR", "1");
    command
}

/// `kiln build -t app:1 -o type=oci,dest=DEST,tar=false [extra] CTX` on the kiln root `root`.
pub fn oci_build_command(root: &Path, ctx: &Path, dest: &Path, extra: &[&str]) -> Command {
    let dest_spec = format!("type=oci,dest={},tar=false", dest.display());
    let mut args = vec!["build", "-t", "app:1", "-o", &dest_spec];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    kiln_command(root, &args)
}

/// How many steps a build ran and how many came from the cache, from its summary line
/// (`build summary: N steps ran, M cached`).
pub fn ran_and_cached(stderr: &str) -> (usize, usize) {
    let summary = stderr
        .lines()
        .find_map(|l| l.strip_prefix("build summary: "))
        .unwrap_or_else(|| panic!("no build summary:\n{stderr}"));
    let numbers: Vec<usize> = summary
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

pub fn kiln_with_root(root: &Path, args: &[&str]) -> Output {
    kiln_command(root, args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr with the report's frame characters removed and all whitespace collapsed, so a
/// message the report wrapped over several lines can be searched as one string.
pub fn flat_stderr(o: &Output) -> String {
    stderr(o)
        .replace(['│', '×', '·', '╭', '╰', '─', '┬', '┴', '╯', '╮'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "kiln failed ({:?}):\n{}",
        o.status,
        stderr(o)
    );
}

/// Asserts kiln failed with exit code 1 and returns its flattened stderr.
pub fn assert_failed(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "kiln should have failed with exit code 1:\n{}",
        stderr(o)
    );
    // Shown when a later assertion fails (or with --nocapture).
    eprintln!("kiln's stderr:\n{}", stderr(o));
    flat_stderr(o)
}

/// Asserts `haystack` contains every needle, showing the haystack otherwise.
pub fn assert_contains_all(haystack: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            haystack.contains(needle),
            "expected {needle:?} in:\n{haystack}"
        );
    }
}

/// Unpacks `reference` from the registry for amd64 and returns its rootfs.
pub fn unpack_pushed(reference: &str, work: &Path) -> PathBuf {
    unpack_platform(reference, host_arch(), work)
}

/// Unpacks the `arch` image (`arm64`, `arm/v7`, ...) of `reference` and returns its rootfs.
pub fn unpack_platform(reference: &str, arch: &str, work: &Path) -> PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let layout = work.join("layout");
    skopeo_to_oci(reference, &layout, "img", Some(arch));
    umoci_unpack(&layout, "img", &work.join("bundle"))
}

/// The OCI architecture of this machine, as the fixtures name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no busybox fixture for {other}"),
    }
}

/// The manifest the registry serves for `reference`, parsed.
pub fn manifest(reference: &str) -> Value {
    serde_json::from_slice(&skopeo_raw(reference)).unwrap()
}

/// The image for this machine's architecture in the index `repository:tag` (e.g. the busybox
/// fixture's): its reference by digest and its manifest.
pub fn host_image(repository: &str, tag: &str) -> (String, Value) {
    let index = manifest(&format!("{repository}:{tag}"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == host_arch())
        .unwrap();
    let reference = format!("{repository}@{}", entry["digest"].as_str().unwrap());
    let image = manifest(&reference);
    (reference, image)
}

/// The image config of the single-platform image `reference`, as stored in the registry.
pub fn config(reference: &str) -> Value {
    let o = skopeo(
        &["inspect", "--config", "--raw", "--tls-verify=false"],
        reference,
    );
    assert!(
        o.status.success(),
        "skopeo inspect --config {reference}: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Whether the registry has a manifest for `reference`.
pub fn image_exists(reference: &str) -> bool {
    skopeo(&["inspect", "--raw", "--tls-verify=false"], reference)
        .status
        .success()
}

fn skopeo(args: &[&str], reference: &str) -> Output {
    Command::new("skopeo")
        .args(args)
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap()
}

/// The digests of a manifest's layers.
pub fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Permission bits of a file (symlinks not followed).
pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Sorted names in a directory.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs a tool and panics with its stderr unless it succeeds.
pub fn run_tool(command: &mut Command) -> Output {
    let o = command.output().unwrap();
    assert!(
        o.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Every file of the pushed image as skopeo copies it to an OCI layout (index, manifest,
/// config, layers), gzip layers also decompressed.
pub fn pushed_files(reference: &str, dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let layout = dir.join("layout");
    skopeo_to_oci(reference, &layout, "img", Some(host_arch()));
    let mut files = Vec::new();
    let mut pending = vec![layout];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut tar)
                .unwrap();
            files.push((format!("{name} (decompressed)"), tar));
        }
        files.push((name, bytes));
    }
    files
}

/// Whether a file or dir called `name` is anywhere below `dir` (symlinks not followed).
pub fn has_file_named(dir: &Path, name: &str) -> bool {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.file_name().is_some_and(|n| n == name) {
            return true;
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|e| e.path()));
        }
    }
    false
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex_string(&Sha256::digest(bytes)))
}

pub fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs curl for one request with `bytes` as the body; returns (status, Location header).
pub fn curl(
    env: &Env,
    method: &str,
    url: &str,
    content_type: &str,
    bytes: &[u8],
) -> (String, String) {
    let body = env.path(&format!("upload-{}", &sha256(bytes)[7..]));
    std::fs::write(&body, bytes).unwrap();
    let o = run_tool(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-X", method])
            .args(["-w", "%{http_code} %header{location}"])
            .args(["-H", &format!("Content-Type: {content_type}")])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(url),
    );
    let out = stdout(&o);
    let (status, location) = out.split_once(' ').unwrap_or((&out, ""));
    (status.to_string(), location.to_string())
}

/// Uploads a blob (POST, then PUT with the digest) and returns its digest.
pub fn put_blob(env: &Env, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let start = format!("http://{}/v2/{repo}/blobs/uploads/", env.reg());
    let (status, location) = curl(env, "POST", &start, "application/octet-stream", &[]);
    assert_eq!(status, "202", "starting an upload to {repo}");
    let location = if location.starts_with('/') {
        format!("http://{}{location}", env.reg())
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let (status, _) = curl(
        env,
        "PUT",
        &format!("{location}{separator}digest={digest}"),
        "application/octet-stream",
        bytes,
    );
    assert_eq!(status, "201", "uploading {digest}");
    digest
}

pub fn put_manifest(env: &Env, repo: &str, target: &str, media_type: &str, bytes: &[u8]) {
    let url = format!("http://{}/v2/{repo}/manifests/{target}", env.reg());
    let (status, _) = curl(env, "PUT", &url, media_type, bytes);
    assert_eq!(status, "201", "putting {repo}:{target}");
}
