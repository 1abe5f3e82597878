//! Wrappers around skopeo and umoci, the independent tools tests check kiln's output with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::fixtures::{busybox_fixtures, go_fixtures};
use crate::registry::Registry;

/// Pushes both fixture layouts to `registry`: the OCI index as `<repo>:latest` and the Docker
/// manifest list as `<repo>:docker`, digests preserved. Returns their digests (OCI, Docker).
pub fn push_busybox(registry: &Registry, repo: &str) -> (String, String) {
    push_busybox_to(registry.addr(), repo)
}

/// [`push_busybox`] to a registry at `addr` (`host:port`) that something else started.
pub fn push_busybox_to(addr: &str, repo: &str) -> (String, String) {
    push_busybox_as(addr, repo, None)
}

/// [`push_busybox_to`] with these credentials (`user`, `password`) when given.
pub fn push_busybox_as(addr: &str, repo: &str, creds: Option<(&str, &str)>) -> (String, String) {
    let fixtures = busybox_fixtures();
    let oci_digest = layout_index_digest(&fixtures.oci_layout);
    skopeo_push_all(
        &format!("oci:{}:latest", fixtures.oci_layout.display()),
        &format!("{addr}/{repo}:latest"),
        creds,
    );
    // skopeo 1.9's `oci:` transport only accepts OCI media types in index.json, so the Docker
    // flavour goes through a `dir:` view of the same blobs.
    let docker_digest = layout_index_digest(&fixtures.docker_layout);
    let view = dir_transport_view(&fixtures.docker_layout, &docker_digest);
    skopeo_push_all(
        &format!("dir:{}", view.path().display()),
        &format!("{addr}/{repo}:docker"),
        creds,
    );
    (oci_digest, docker_digest)
}

/// Pushes the Go toolchain layout (linux/amd64 and linux/arm64, see [`go_fixtures`]) to
/// `registry` as `<repo>:latest`, digests preserved, and returns that reference.
pub fn push_go(registry: &Registry, repo: &str) -> String {
    let reference = format!("{}/{repo}:latest", registry.addr());
    skopeo_push_all(
        &format!("oci:{}:latest", go_fixtures().oci_layout.display()),
        &reference,
        None,
    );
    reference
}

fn skopeo_push_all(source: &str, destination: &str, creds: Option<(&str, &str)>) {
    run_checked(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--all", "--preserve-digests"])
            .args(["--dest-tls-verify=false", "-q", source])
            .args(creds.map(|(user, password)| format!("--dest-creds={user}:{password}")))
            .arg(format!("docker://{destination}")),
    );
}

/// A skopeo `dir:` image (format 1.1) of the index `index_digest` in `layout`, made of
/// symlinks: `manifest.json` is the index, `<hex>.manifest.json` each platform manifest, and
/// `<hex>` every blob.
fn dir_transport_view(layout: &Path, index_digest: &str) -> tempfile::TempDir {
    let view = tempfile::Builder::new()
        .prefix("kiln-skopeo-dir-")
        .tempdir()
        .expect("creating a temp dir for the skopeo dir: view");
    let blobs = layout.join("blobs/sha256");
    let blob_path = |digest: &str| blobs.join(digest.trim_start_matches("sha256:"));
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, view.path().join(name))
            .unwrap_or_else(|e| panic!("linking {} into the dir: view: {e}", target.display()));
    };
    std::fs::write(
        view.path().join("version"),
        "Directory Transport Version: 1.1\n",
    )
    .expect("writing the dir: version file");
    link(&blob_path(index_digest), "manifest.json");
    let index = read_json(&blob_path(index_digest));
    for manifest in index["manifests"]
        .as_array()
        .expect("index lists manifests")
    {
        let digest = manifest["digest"].as_str().expect("manifest digest");
        link(
            &blob_path(digest),
            &format!("{}.manifest.json", digest.trim_start_matches("sha256:")),
        );
    }
    for entry in std::fs::read_dir(&blobs).expect("listing layout blobs") {
        let entry = entry.expect("reading a layout blob entry");
        link(&entry.path(), &entry.file_name().to_string_lossy());
    }
    view
}

/// The digest of the image index a layout's `index.json` tags as `latest`.
fn layout_index_digest(layout: &Path) -> String {
    let index = read_json(&layout.join("index.json"));
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{} has no manifest digest", layout.display()))
        .to_string()
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The raw manifest (or index) bytes the registry serves for `reference` (`host/repo:tag`).
pub fn skopeo_raw(reference: &str) -> Vec<u8> {
    run_checked(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}")),
    )
    .stdout
}

/// `skopeo inspect` of `reference`, for the platform `platform_arch` when it names one
/// (`"arm64"`, or `"arm/v7"` to pick a variant too).
pub fn skopeo_inspect(reference: &str, platform_arch: Option<&str>) -> Value {
    let output = run_checked(
        Command::new("skopeo")
            .args(platform_flags(platform_arch))
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{reference}")),
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("skopeo inspect {reference} printed invalid JSON: {e}"))
}

/// Copies the image `reference` from a registry into the OCI layout `dir` as `tag`; with
/// `arch` (`"arm64"`, `"arm/v7"`), only that platform's image is copied from an index.
pub fn skopeo_to_oci(reference: &str, dir: &Path, tag: &str, arch: Option<&str>) {
    run_checked(
        Command::new("skopeo")
            .args(platform_flags(arch))
            .args(["--insecure-policy", "copy", "--src-tls-verify=false", "-q"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:{tag}", dir.display())),
    );
}

/// Unpacks `<layout>:<tag>` (a single-platform image) with `umoci unpack` into the bundle dir
/// `bundle` and returns the bundle's rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    run_checked(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(bundle),
    );
    bundle.join("rootfs")
}

/// skopeo's global flags that choose one platform out of an index.
fn platform_flags(platform_arch: Option<&str>) -> Vec<String> {
    let Some(platform) = platform_arch else {
        return Vec::new();
    };
    let mut flags = vec!["--override-os=linux".to_string()];
    match platform.split_once('/') {
        Some((arch, variant)) => {
            flags.push(format!("--override-arch={arch}"));
            flags.push(format!("--override-variant={variant}"));
        }
        None => flags.push(format!("--override-arch={platform}")),
    }
    flags
}

/// Runs a tool and panics with its command line and stderr unless it succeeds.
fn run_checked(command: &mut Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().unwrap_or_else(|e| {
        panic!("running {program}: {e} (is it installed? run scripts/install-deps.sh)")
    });
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Copies a program that a test will run. The copy is written by a child process: a write
/// descriptor opened in the (multi-threaded) test process would be inherited by any other
/// thread's fork until that child's exec, and running the copy meanwhile fails with ETXTBSY.
pub fn copy_executable(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("running cp: {e}"));
    assert!(
        status.success(),
        "cp {} {} failed: {status}",
        from.display(),
        to.display()
    );
}

/// A copy of `binary` that any user can execute, in a temp dir of its own. Tests that drop to
/// an unprivileged uid cannot exec a binary inside a checkout only root may enter (as one
/// cloned under `mktemp -d` is). Keep the returned dir alive while the copy is in use.
pub fn executable_by_anyone(binary: &Path) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("kiln-exe-")
        .tempdir()
        .expect("create a temp dir for the binary");
    let copy = dir
        .path()
        .join(binary.file_name().expect("a binary file name"));
    copy_executable(binary, &copy);
    for (path, mode) in [(dir.path(), 0o755), (copy.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
    (dir, copy)
}
