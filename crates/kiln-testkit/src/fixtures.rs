//! Multi-arch base images built once per machine from Debian packages and written as OCI image
//! layouts: busybox (one layout with OCI media types, one with Docker schema 2 types), and a Go
//! toolchain image that adds Debian's Go packages on top of the busybox rootfs; and what every
//! fixture is built with (`debian.rs` too): apt with private lists, the per-machine cache, a
//! writer of deterministic rootfs layers and the layout writer.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tar::HeaderMode;

/// (Debian architecture, OCI architecture, OCI variant) of every fixture image.
pub const FIXTURE_ARCHES: &[(&str, &str, Option<&str>)] = &[
    ("amd64", "amd64", None),
    ("arm64", "arm64", Some("v8")),
    ("armhf", "arm", Some("v7")),
    ("ppc64el", "ppc64le", None),
    ("s390x", "s390x", None),
];

/// Paths of the cached fixture layouts; both hold the tag `latest`.
pub struct Fixtures {
    /// OCI image layout whose `latest` is an OCI image index over one manifest per arch.
    pub oci_layout: PathBuf,
    /// The same images with Docker schema 2 media types (manifest list, v2 manifests).
    pub docker_layout: PathBuf,
}

/// Bump when the fixture content changes, so stale caches are not reused.
const FIXTURE_FORMAT: &str = "busybox-v1";
/// Fixed timestamp for every tar entry and the config, so the fixtures are reproducible.
const FIXTURE_MTIME: u64 = 1_700_000_000;
const FIXTURE_CREATED: &str = "2023-11-14T22:13:20Z";
const FIXTURE_TAG: &str = "latest";
pub(crate) const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BUILDER_ID: u64 = 1000;
const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "cp",
    "echo",
    "env",
    "false",
    "grep",
    "head",
    "hostname",
    "id",
    "ln",
    "ls",
    "mkdir",
    "mv",
    "printf",
    "pwd",
    "readlink",
    "rm",
    "sed",
    "sh",
    "sleep",
    "stat",
    "tail",
    "tar",
    "test",
    "touch",
    "true",
    "uname",
    "wc",
    "whoami",
    "chmod",
    "chown",
    "find",
    "sha256sum",
];
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      builder:x:1000:1000::/home/builder:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nbuilder:x:1000:\nnogroup:x:65534:\n";

/// Builds (or finds in the per-machine cache) the busybox fixture layouts.
///
/// The first call on a machine downloads busybox-static for every arch in [`FIXTURE_ARCHES`]
/// from the Debian mirrors configured for apt, without changing dpkg's configuration.
pub fn busybox_fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let built = cached_fixture(FIXTURE_FORMAT, |debs, staging, result| {
            let images: Vec<ArchImage> = FIXTURE_ARCHES
                .iter()
                .map(|&(deb_arch, oci_arch, variant)| {
                    let layers = vec![busybox_layer(debs, staging, deb_arch)];
                    ArchImage::new(
                        oci_arch,
                        variant,
                        layers,
                        &[format!("PATH={IMAGE_PATH}")],
                        &["sh"],
                    )
                })
                .collect();
            for flavor in [&OCI_FLAVOR, &DOCKER_FLAVOR] {
                write_layout(&result.join(flavor.layout_dir), flavor, &images);
            }
        });
        Fixtures {
            oci_layout: built.join(OCI_FLAVOR.layout_dir),
            docker_layout: built.join(DOCKER_FLAVOR.layout_dir),
        }
    })
}

/// Path of the cached Go toolchain layout; it holds the tag `latest`.
pub struct GoFixtures {
    /// OCI image layout whose `latest` is an OCI image index over the arches in [`GO_ARCHES`].
    pub oci_layout: PathBuf,
}

/// Debian architectures of the Go toolchain images (a subset of [`FIXTURE_ARCHES`]).
pub const GO_ARCHES: &[&str] = &["amd64", "arm64"];
/// The Debian packages in the Go layer. The `go` command is dynamically linked against glibc;
/// the compiler, linker and assembler it runs are static.
const GO_PACKAGES: &[&str] = &["golang-1.19-go", "golang-1.19-src", "libc6"];
const GO_FORMAT: &str = "go-1.19-v2";
/// `GOROOT/bin`; Debian's `GOROOT/src` is a symlink into `/usr/share/go-1.19`.
const GO_BIN: &str = "/usr/lib/go-1.19/bin";
/// Where Debian's golang-1.19-go keeps the precompiled standard library (`linux_<arch>`).
const GO_PKG: &str = "usr/lib/go-1.19/pkg";

/// Builds (or finds in the per-machine cache) the Go toolchain layout: for each arch in
/// [`GO_ARCHES`], the busybox fixture's layer plus a layer with Debian bookworm's Go 1.19.
///
/// The precompiled standard library is left out, as Go 1.20 and later no longer ship one, so
/// `go build` compiles the standard packages it needs for any target: a native build and a
/// cross build do the same work, and the image is half the size.
///
/// `go` is on `PATH`; `GOCACHE` is under `/tmp`; `CGO_ENABLED=0`, since the image has no C
/// compiler; `GOPROXY=off`, since builds have no network to fetch modules from.
pub fn go_fixtures() -> &'static GoFixtures {
    static FIXTURES: OnceLock<GoFixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let built = cached_fixture(GO_FORMAT, |debs, staging, result| {
            let env = [
                format!("PATH={GO_BIN}:{IMAGE_PATH}"),
                "HOME=/root".to_string(),
                "GOCACHE=/tmp/gocache".to_string(),
                "CGO_ENABLED=0".to_string(),
                "GOPROXY=off".to_string(),
            ];
            let images: Vec<ArchImage> = FIXTURE_ARCHES
                .iter()
                .filter(|(deb_arch, _, _)| GO_ARCHES.contains(deb_arch))
                .map(|&(deb_arch, oci_arch, variant)| {
                    let packages = cached_debs(debs, deb_arch, GO_PACKAGES);
                    let rootfs = staging.join(format!("go-{deb_arch}"));
                    unpack_debs(&packages, &rootfs);
                    remove_precompiled_std(&rootfs.join(GO_PKG));
                    let go_layer =
                        gzip_layer(format!("kiln-testkit: {}", deb_names(&packages)), |tar| {
                            append_tree(tar, &rootfs, Path::new(""))
                        });
                    let layers = vec![busybox_layer(debs, staging, deb_arch), go_layer];
                    ArchImage::new(oci_arch, variant, layers, &env, &["sh"])
                })
                .collect();
            write_layout(&result.join(OCI_FLAVOR.layout_dir), &OCI_FLAVOR, &images);
        });
        GoFixtures {
            oci_layout: built.join(OCI_FLAVOR.layout_dir),
        }
    })
}

/// Removes the `linux_<arch>` package dirs from `GOROOT/pkg`, keeping `tool` and `include`.
fn remove_precompiled_std(go_pkg: &Path) {
    let entries =
        fs::read_dir(go_pkg).unwrap_or_else(|e| panic!("listing {}: {e}", go_pkg.display()));
    for entry in entries {
        let path = entry.expect("reading a dir entry").path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("linux_"))
        {
            fs::remove_dir_all(&path)
                .unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        }
    }
}

/// The fixture `name` in the per-machine cache, built first unless an earlier run left it.
///
/// `build` gets the .deb cache dir, a scratch dir and the dir to write the fixture into; it
/// runs under an exclusive lock, so concurrent test processes build once, and its result is
/// renamed into place only when complete, so a crash never leaves a half-built fixture behind.
pub(crate) fn cached_fixture(name: &str, build: impl FnOnce(&Path, &Path, &Path)) -> PathBuf {
    let cache = fixture_cache_dir();
    fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("creating fixture cache {}: {e}", cache.display()));
    let _lock = CacheLock::acquire(&cache.join(".lock"));
    let target = cache.join(name);
    if !target.exists() {
        let staging = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&cache)
            .unwrap_or_else(|e| panic!("creating a staging dir in {}: {e}", cache.display()));
        let result = staging.path().join("result");
        build(&cache.join("debs"), staging.path(), &result);
        fs::rename(&result, &target).unwrap_or_else(|e| {
            panic!("renaming {} to {}: {e}", result.display(), target.display())
        });
    }
    target
}

/// `<cargo target dir>/kiln-fixtures`, so `cargo clean` also drops the fixtures.
fn fixture_cache_dir() -> PathBuf {
    let configured = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    if let Some(dir) = configured.filter(|dir| dir.is_absolute()) {
        return dir.join("kiln-fixtures");
    }
    let exe = std::env::current_exe().expect("locating the test executable");
    // Cargo marks the root of every target dir with CACHEDIR.TAG, whatever it is named.
    exe.ancestors()
        .skip(1)
        .find(|dir| {
            dir.join("CACHEDIR.TAG").is_file() || dir.file_name() == Some("target".as_ref())
        })
        .map(|target| target.join("kiln-fixtures"))
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-fixtures"))
}

/// An exclusive `flock` on a file, held until drop, so concurrent test processes build once.
struct CacheLock(fs::File);

impl CacheLock {
    fn acquire(path: &Path) -> CacheLock {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("opening lock file {}: {e}", path.display()));
        loop {
            // SAFETY: the descriptor belongs to `file`, which stays open for the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return CacheLock(file);
            }
            let err = std::io::Error::last_os_error();
            assert!(
                err.kind() == std::io::ErrorKind::Interrupted,
                "flock {}: {err}",
                path.display()
            );
        }
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // SAFETY: the descriptor belongs to `self.0`, still open here.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Returns the cached .deb of each of `packages` for `deb_arch`, downloading the missing ones.
fn cached_debs(debs: &Path, deb_arch: &str, packages: &[&str]) -> Vec<PathBuf> {
    let arch_dir = debs.join(deb_arch);
    let cached: Option<Vec<PathBuf>> = packages.iter().map(|p| find_deb(&arch_dir, p)).collect();
    cached.unwrap_or_else(|| Apt::update(debs, deb_arch).download(packages))
}

/// apt for one Debian architecture, with the mirrors the host's apt is configured for but
/// private package lists and caches: dpkg's architectures and the system's apt state stay
/// untouched, and the host's own apt caches are not overwritten with foreign-arch indexes.
pub(crate) struct Apt {
    deb_arch: String,
    /// The per-machine cache of this arch's .debs.
    arch_dir: PathBuf,
    work: tempfile::TempDir,
    options: Vec<String>,
    update_stderr: String,
}

impl Apt {
    /// Fetches the package lists for `deb_arch`; downloads go to `debs/<deb_arch>`.
    pub(crate) fn update(debs: &Path, deb_arch: &str) -> Apt {
        let arch_dir = debs.join(deb_arch);
        let work = tempfile::Builder::new()
            .prefix(".apt-")
            .tempdir_in(debs.parent().expect("debs dir has a parent"))
            .expect("creating an apt work dir");
        let lists = work.path().join("lists");
        let apt_cache = work.path().join("cache");
        for dir in [
            lists.join("partial"),
            apt_cache.join("archives/partial"),
            arch_dir.clone(),
        ] {
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let options = vec![
            format!("-oAPT::Architecture={deb_arch}"),
            format!("-oAPT::Architectures={deb_arch}"),
            format!("-oDir::State::Lists={}", lists.display()),
            format!("-oDir::Cache={}", apt_cache.display()),
        ];
        // A failing extra source (an unreachable third-party repository) makes `update` exit
        // non-zero although the Debian indexes arrived, so only what comes next decides.
        let update = Command::new("apt-get")
            .args(&options)
            .args(["-q", "update"])
            .output()
            .unwrap_or_else(|e| {
                panic!("running apt-get update: {e} (run scripts/install-deps.sh)")
            });
        Apt {
            deb_arch: deb_arch.to_string(),
            arch_dir,
            work,
            options,
            update_stderr: String::from_utf8_lossy(&update.stderr).into_owned(),
        }
    }

    /// `packages` and everything they depend on (Depends and Pre-Depends, not Recommends), as
    /// `name=version` specs: what `apt-get install` would install on a system with nothing
    /// installed, so alternatives and virtual packages are chosen the way apt chooses them.
    pub(crate) fn resolve(&self, packages: &[&str]) -> Vec<String> {
        let empty_status = self.work.path().join("status");
        fs::write(&empty_status, "").expect("writing an empty dpkg status");
        let simulation = Command::new("apt-get")
            .args(&self.options)
            .arg(format!("-oDir::State::status={}", empty_status.display()))
            .args(["-q", "-s", "--no-install-recommends", "install"])
            .args(packages)
            .output()
            .unwrap_or_else(|e| panic!("running apt-get -s install: {e}"));
        let stdout = String::from_utf8_lossy(&simulation.stdout);
        // Lines like `Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []`.
        let specs: Vec<String> = stdout
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("Inst ")?.split_once(" (")?;
                let version = rest.split_whitespace().next()?;
                Some(format!("{name}={version}"))
            })
            .collect();
        assert!(
            simulation.status.success() && !specs.is_empty(),
            "apt-get -s install {packages:?} for {} failed ({})\nupdate stderr:\n{}\n\
             stdout:\n{stdout}\nstderr:\n{}",
            self.deb_arch,
            simulation.status,
            self.update_stderr,
            String::from_utf8_lossy(&simulation.stderr)
        );
        specs
    }

    /// The cached .deb of each of `packages` (names, or `name=version` specs), downloading
    /// the missing ones into the cache.
    pub(crate) fn download(&self, packages: &[impl AsRef<str>]) -> Vec<PathBuf> {
        let missing: Vec<&str> = packages
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| find_deb(&self.arch_dir, p).is_none())
            .collect();
        if !missing.is_empty() {
            let download = self.work.path().join("download");
            fs::create_dir_all(&download)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", download.display()));
            let fetch = Command::new("apt-get")
                .args(&self.options)
                .args(["-q", "download"])
                .args(&missing)
                .current_dir(&download)
                .output()
                .unwrap_or_else(|e| panic!("running apt-get download: {e}"));
            for package in missing {
                let deb = find_deb(&download, package).unwrap_or_else(|| {
                    panic!(
                        "apt-get download {package} for {} produced no .deb ({})\n\
                         update stderr:\n{}\ndownload stderr:\n{}",
                        self.deb_arch,
                        fetch.status,
                        self.update_stderr,
                        String::from_utf8_lossy(&fetch.stderr)
                    )
                });
                let cached = self
                    .arch_dir
                    .join(deb.file_name().expect(".deb has a file name"));
                fs::rename(&deb, &cached).unwrap_or_else(|e| {
                    panic!("moving {} to {}: {e}", deb.display(), cached.display())
                });
            }
        }
        packages
            .iter()
            .map(|p| find_deb(&self.arch_dir, p.as_ref()).expect("downloaded just now"))
            .collect()
    }
}

/// The .deb of `package` (a name or a `name=version` spec) in `dir`, named
/// `<package>_<version>_<arch>.deb` as apt saves it, with an epoch's `:` as `%3a`.
fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = match package.split_once('=') {
        Some((name, version)) => format!("{name}_{}_", version.replace(':', "%3a")),
        None => format!("{package}_"),
    };
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
}

/// The file names of `debs` with apt's `%3a` turned back into the epoch's `:`, for history.
pub(crate) fn deb_names(debs: &[PathBuf]) -> String {
    let names: Vec<String> = debs
        .iter()
        .map(|deb| {
            let name = deb.file_name().unwrap_or_default().to_string_lossy();
            name.replace("%3a", ":")
        })
        .collect();
    names.join(" ")
}

/// Unpacks every .deb into `rootfs` with `dpkg-deb -x`, which runs no maintainer scripts.
fn unpack_debs(debs: &[PathBuf], rootfs: &Path) {
    for deb in debs {
        let output = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(rootfs)
            .output()
            .unwrap_or_else(|e| panic!("running dpkg-deb: {e} (run scripts/install-deps.sh)"));
        assert!(
            output.status.success(),
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The busybox rootfs layer for `deb_arch`: `/bin/busybox` from Debian's busybox-static.
fn busybox_layer(debs: &Path, staging: &Path, deb_arch: &str) -> Layer {
    let deb = cached_debs(debs, deb_arch, &["busybox-static"]);
    let rootfs = staging.join(format!("busybox-{deb_arch}"));
    unpack_debs(&deb, &rootfs);
    let path = rootfs.join("bin/busybox");
    let busybox = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    gzip_layer(
        format!("kiln-testkit: /bin/busybox from {}", deb_names(&deb)),
        |tar| append_rootfs(tar, &busybox_rootfs(busybox)),
    )
}

/// Media types that distinguish the OCI flavour of the layout from the Docker one.
pub(crate) struct Flavor {
    pub(crate) layout_dir: &'static str,
    index: &'static str,
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

pub(crate) const OCI_FLAVOR: Flavor = Flavor {
    layout_dir: "oci",
    index: "application/vnd.oci.image.index.v1+json",
    manifest: "application/vnd.oci.image.manifest.v1+json",
    config: "application/vnd.oci.image.config.v1+json",
    layer: "application/vnd.oci.image.layer.v1.tar+gzip",
};

const DOCKER_FLAVOR: Flavor = Flavor {
    layout_dir: "docker",
    index: "application/vnd.docker.distribution.manifest.list.v2+json",
    manifest: "application/vnd.docker.distribution.manifest.v2+json",
    config: "application/vnd.docker.container.image.v1+json",
    layer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
};

/// One platform's image: its gzip layers and config, shared by both flavours.
pub(crate) struct ArchImage {
    platform: Value,
    layers: Vec<Layer>,
    config: Vec<u8>,
}

impl ArchImage {
    pub(crate) fn new(
        oci_arch: &str,
        variant: Option<&str>,
        layers: Vec<Layer>,
        env: &[String],
        cmd: &[&str],
    ) -> ArchImage {
        let mut platform = json!({ "architecture": oci_arch, "os": "linux" });
        let diff_ids: Vec<&str> = layers.iter().map(|layer| layer.diff_id.as_str()).collect();
        let history: Vec<Value> = layers
            .iter()
            .map(|layer| json!({ "created": FIXTURE_CREATED, "created_by": layer.created_by }))
            .collect();
        let mut config = json!({
            "created": FIXTURE_CREATED,
            "architecture": oci_arch,
            "os": "linux",
            "config": { "Env": env, "Cmd": cmd },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
            config["variant"] = json!(variant);
        }
        ArchImage {
            platform,
            layers,
            config: serde_json::to_vec(&config).expect("serialising a config"),
        }
    }
}

/// A gzip-compressed layer, its diff_id, and the history line that says where it came from.
pub(crate) struct Layer {
    gz: Vec<u8>,
    diff_id: String,
    created_by: String,
}

pub(crate) type LayerTar = tar::Builder<Vec<u8>>;

/// A layer of the tar entries `append` writes. Entries taken from disk get deterministic
/// metadata (root-owned, fixed mtime), and symlinks stay symlinks.
pub(crate) fn gzip_layer(created_by: String, append: impl FnOnce(&mut LayerTar)) -> Layer {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    append(&mut tar);
    let tar = tar.into_inner().expect("finishing a tar into memory");
    // One write of the whole tar: the gzip stream's bytes depend on how its input is chunked.
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar).expect("gzip into memory");
    Layer {
        gz: gz.finish().expect("gzip into memory"),
        diff_id: sha256_digest(&tar),
        created_by,
    }
}

/// Appends everything under `dir` (`rel` inside the layer), parents first, in name order.
fn append_tree(tar: &mut LayerTar, dir: &Path, rel: &Path) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("reading a dir entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let (path, rel) = (dir.join(&name), rel.join(&name));
        tar.append_path_with_name(&path, &rel)
            .unwrap_or_else(|e| panic!("adding {} to a layer: {e}", path.display()));
        if fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
            append_tree(tar, &path, &rel);
        }
    }
}

/// What a tar entry of a fixture rootfs is.
pub(crate) enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

pub(crate) struct RootfsEntry {
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
}

impl RootfsEntry {
    pub(crate) fn dir(mode: u32) -> RootfsEntry {
        RootfsEntry::root_owned(EntryKind::Dir, mode)
    }

    pub(crate) fn file(data: Vec<u8>, mode: u32) -> RootfsEntry {
        RootfsEntry::root_owned(EntryKind::File(data), mode)
    }

    pub(crate) fn symlink(target: &str) -> RootfsEntry {
        RootfsEntry::root_owned(EntryKind::Symlink(target.to_string()), 0o777)
    }

    fn root_owned(kind: EntryKind, mode: u32) -> RootfsEntry {
        RootfsEntry {
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// A rootfs by path (relative, no trailing `/`). A BTreeMap sorts by path, and "bin" sorts
/// before "bin/...", so parents come first in the layer.
pub(crate) type Rootfs = BTreeMap<String, RootfsEntry>;

/// The busybox rootfs: owned by root except `/home/builder`.
fn busybox_rootfs(busybox: Vec<u8>) -> Rootfs {
    let mut entries = Rootfs::new();
    for name in ["bin", "dev", "etc", "home", "proc"] {
        entries.insert(name.into(), RootfsEntry::dir(0o755));
    }
    entries.insert("tmp".into(), RootfsEntry::dir(0o1777));
    entries.insert("root".into(), RootfsEntry::dir(0o700));
    entries.insert(
        "home/builder".into(),
        RootfsEntry {
            uid: BUILDER_ID,
            gid: BUILDER_ID,
            ..RootfsEntry::dir(0o755)
        },
    );
    entries.insert("etc/passwd".into(), RootfsEntry::file(PASSWD.into(), 0o644));
    entries.insert("etc/group".into(), RootfsEntry::file(GROUP.into(), 0o644));
    entries.insert("bin/busybox".into(), RootfsEntry::file(busybox, 0o755));
    for applet in BUSYBOX_APPLETS {
        entries.insert(format!("bin/{applet}"), RootfsEntry::symlink("busybox"));
    }
    entries
}

/// Appends `entries` in path order, each with the fixed mtime.
pub(crate) fn append_rootfs(builder: &mut LayerTar, entries: &Rootfs) {
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(FIXTURE_MTIME);
        header.set_size(0);
        let written = match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, format!("{path}/"), &[][..])
            }
            EntryKind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, &data[..])
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, path, target)
            }
        };
        written.unwrap_or_else(|e| panic!("writing tar entry {path} into memory: {e}"));
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes `bytes` as a content-addressed blob and returns its descriptor.
pub(crate) fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    fs::write(layout.join("blobs/sha256").join(hex), bytes)
        .unwrap_or_else(|e| panic!("writing blob {digest} into {}: {e}", layout.display()));
    json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
}

pub(crate) fn write_layout(layout: &Path, flavor: &Flavor, images: &[ArchImage]) {
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("mkdir {}: {e}", blobs.display()));
    let manifests: Vec<Value> = images
        .iter()
        .map(|image| {
            let layers: Vec<Value> = image
                .layers
                .iter()
                .map(|layer| write_blob(layout, flavor.layer, &layer.gz))
                .collect();
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": flavor.manifest,
                "config": write_blob(layout, flavor.config, &image.config),
                "layers": layers,
            });
            let mut descriptor = write_blob(layout, flavor.manifest, &to_json_bytes(&manifest));
            descriptor["platform"] = image.platform.clone();
            descriptor
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": flavor.index,
        "manifests": manifests,
    });
    let mut index_descriptor = write_blob(layout, flavor.index, &to_json_bytes(&index));
    index_descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": FIXTURE_TAG });
    let layout_index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_FLAVOR.index,
        "manifests": [index_descriptor],
    });
    fs::write(layout.join("index.json"), to_json_bytes(&layout_index))
        .unwrap_or_else(|e| panic!("writing index.json in {}: {e}", layout.display()));
    fs::write(
        layout.join("oci-layout"),
        to_json_bytes(&json!({ "imageLayoutVersion": "1.0.0" })),
    )
    .unwrap_or_else(|e| panic!("writing oci-layout in {}: {e}", layout.display()));
}

pub(crate) fn to_json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialising JSON")
}
