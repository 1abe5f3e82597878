//! Multi-arch base images built once per machine from Debian packages and written as OCI image
//! layouts: busybox (one layout with OCI media types, one with Docker schema 2 types), and a Go
//! toolchain image that adds Debian's Go packages on top of the busybox rootfs.

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
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
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
                    ArchImage::new(oci_arch, variant, layers, &[format!("PATH={IMAGE_PATH}")])
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
                    ArchImage::new(oci_arch, variant, layers, &env)
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
fn cached_fixture(name: &str, build: impl FnOnce(&Path, &Path, &Path)) -> PathBuf {
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
    if let Some(cached) = cached {
        return cached;
    }
    let work = tempfile::Builder::new()
        .prefix(".apt-")
        .tempdir_in(debs.parent().expect("debs dir has a parent"))
        .expect("creating an apt work dir");
    let lists = work.path().join(format!("lists-{deb_arch}"));
    let apt_cache = work.path().join(format!("cache-{deb_arch}"));
    let download = work.path().join("download");
    for dir in [
        lists.join("partial"),
        apt_cache.join("archives/partial"),
        download.clone(),
        arch_dir.clone(),
    ] {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    // Private lists and package caches: dpkg's architectures and the system's apt state stay
    // untouched, and the host's own apt caches are not overwritten with foreign-arch indexes.
    let apt_options = [
        format!("-oAPT::Architecture={deb_arch}"),
        format!("-oAPT::Architectures={deb_arch}"),
        format!("-oDir::State::Lists={}", lists.display()),
        format!("-oDir::Cache={}", apt_cache.display()),
    ];
    // A failing extra source (an unreachable third-party repository) makes `update` exit
    // non-zero although the Debian indexes arrived, so only the download decides.
    let update = Command::new("apt-get")
        .args(&apt_options)
        .args(["-q", "update"])
        .output()
        .unwrap_or_else(|e| panic!("running apt-get update: {e} (run scripts/install-deps.sh)"));
    let fetch = Command::new("apt-get")
        .args(&apt_options)
        .args(["-q", "download"])
        .args(packages)
        .current_dir(&download)
        .output()
        .unwrap_or_else(|e| panic!("running apt-get download: {e}"));
    packages
        .iter()
        .map(|package| {
            let deb = find_deb(&download, package).unwrap_or_else(|| {
                panic!(
                    "apt-get download {package} for {deb_arch} produced no .deb ({})\n\
                     update stderr:\n{}\ndownload stderr:\n{}",
                    fetch.status,
                    String::from_utf8_lossy(&update.stderr),
                    String::from_utf8_lossy(&fetch.stderr)
                )
            });
            let cached = arch_dir.join(deb.file_name().expect(".deb has a file name"));
            fs::rename(&deb, &cached).unwrap_or_else(|e| {
                panic!("moving {} to {}: {e}", deb.display(), cached.display())
            });
            cached
        })
        .collect()
}

/// The .deb of `package` in `dir` (named `<package>_<version>_<arch>.deb`, as apt saves it).
fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
}

/// The file names of `debs` with apt's `%3a` turned back into the epoch's `:`, for history.
fn deb_names(debs: &[PathBuf]) -> String {
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
        |tar| append_busybox_rootfs(tar, &busybox),
    )
}

/// Media types that distinguish the OCI flavour of the layout from the Docker one.
struct Flavor {
    layout_dir: &'static str,
    index: &'static str,
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const OCI_FLAVOR: Flavor = Flavor {
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
struct ArchImage {
    platform: Value,
    layers: Vec<Layer>,
    config: Vec<u8>,
}

impl ArchImage {
    fn new(oci_arch: &str, variant: Option<&str>, layers: Vec<Layer>, env: &[String]) -> ArchImage {
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
            "config": { "Env": env, "Cmd": ["sh"] },
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
struct Layer {
    gz: Vec<u8>,
    diff_id: String,
    created_by: String,
}

type LayerTar = tar::Builder<Vec<u8>>;

/// A layer of the tar entries `append` writes. Entries taken from disk get deterministic
/// metadata (root-owned, fixed mtime), and symlinks stay symlinks.
fn gzip_layer(created_by: String, append: impl FnOnce(&mut LayerTar)) -> Layer {
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

/// What a tar entry of the fixture rootfs is.
enum EntryKind<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
}

struct RootfsEntry<'a> {
    kind: EntryKind<'a>,
    mode: u32,
    owner: u64,
}

/// Appends the busybox rootfs: entries sorted by path, fixed mtime, owned by root except
/// `/home/builder`.
fn append_busybox_rootfs(builder: &mut LayerTar, busybox: &[u8]) {
    let dir = |mode| RootfsEntry {
        kind: EntryKind::Dir,
        mode,
        owner: 0,
    };
    let file = |data, mode| RootfsEntry {
        kind: EntryKind::File(data),
        mode,
        owner: 0,
    };
    // A BTreeMap sorts by path, and "bin" sorts before "bin/...", so parents come first.
    let mut entries: BTreeMap<String, RootfsEntry> = BTreeMap::new();
    for name in ["bin", "dev", "etc", "home", "proc"] {
        entries.insert(name.into(), dir(0o755));
    }
    entries.insert("tmp".into(), dir(0o1777));
    entries.insert("root".into(), dir(0o700));
    entries.insert(
        "home/builder".into(),
        RootfsEntry {
            kind: EntryKind::Dir,
            mode: 0o755,
            owner: BUILDER_ID,
        },
    );
    entries.insert("etc/passwd".into(), file(PASSWD.as_bytes(), 0o644));
    entries.insert("etc/group".into(), file(GROUP.as_bytes(), 0o644));
    entries.insert("bin/busybox".into(), file(busybox, 0o755));
    for applet in BUSYBOX_APPLETS {
        entries.insert(
            format!("bin/{applet}"),
            RootfsEntry {
                kind: EntryKind::Symlink("busybox"),
                mode: 0o777,
                owner: 0,
            },
        );
    }

    for (path, entry) in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        header.set_uid(entry.owner);
        header.set_gid(entry.owner);
        header.set_mtime(FIXTURE_MTIME);
        let data: &[u8] = match entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            EntryKind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                data
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header
                    .set_link_name(target)
                    .expect("short symlink target fits a ustar header");
                &[]
            }
        };
        header.set_size(data.len() as u64);
        let name = match entry.kind {
            EntryKind::Dir => format!("{path}/"),
            _ => path.clone(),
        };
        builder
            .append_data(&mut header, name, data)
            .expect("writing a tar entry into memory");
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

fn write_layout(layout: &Path, flavor: &Flavor, images: &[ArchImage]) {
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
