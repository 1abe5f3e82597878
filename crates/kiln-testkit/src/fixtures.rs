//! Multi-arch busybox base images, built once per machine from Debian's busybox-static packages
//! and written as OCI image layouts (one with OCI media types, one with Docker schema 2 types).

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
        let cache = fixture_cache_dir();
        fs::create_dir_all(&cache)
            .unwrap_or_else(|e| panic!("creating fixture cache {}: {e}", cache.display()));
        let _lock = CacheLock::acquire(&cache.join(".lock"));
        let built = cache.join(FIXTURE_FORMAT);
        if !built.exists() {
            build_fixtures_into(&cache, &built);
        }
        Fixtures {
            oci_layout: built.join("oci"),
            docker_layout: built.join("docker"),
        }
    })
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

/// Builds both layouts in a temp dir inside `cache` and renames the result to `target`, so a
/// crash never leaves a half-built fixture behind.
fn build_fixtures_into(cache: &Path, target: &Path) {
    let staging = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache)
        .unwrap_or_else(|e| panic!("creating a staging dir in {}: {e}", cache.display()));
    let images: Vec<ArchImage> = FIXTURE_ARCHES
        .iter()
        .map(|&(deb_arch, oci_arch, variant)| {
            let deb = cached_busybox_deb(&cache.join("debs"), deb_arch);
            let busybox = extract_busybox(&deb, staging.path(), deb_arch);
            ArchImage::new(oci_arch, variant, &busybox, &deb)
        })
        .collect();
    let result = staging.path().join("result");
    for flavor in [&OCI_FLAVOR, &DOCKER_FLAVOR] {
        write_layout(&result.join(flavor.layout_dir), flavor, &images);
    }
    fs::rename(&result, target)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", result.display(), target.display()));
}

/// Returns the cached busybox-static .deb for `deb_arch`, downloading it first if needed.
fn cached_busybox_deb(debs: &Path, deb_arch: &str) -> PathBuf {
    let arch_dir = debs.join(deb_arch);
    if let Some(deb) = find_deb(&arch_dir) {
        return deb;
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
        .args(["-q", "download", "busybox-static"])
        .current_dir(&download)
        .output()
        .unwrap_or_else(|e| panic!("running apt-get download: {e}"));
    let deb = find_deb(&download).unwrap_or_else(|| {
        panic!(
            "apt-get download busybox-static for {deb_arch} produced no .deb ({})\n\
             update stderr:\n{}\ndownload stderr:\n{}",
            fetch.status,
            String::from_utf8_lossy(&update.stderr),
            String::from_utf8_lossy(&fetch.stderr)
        )
    });
    fs::create_dir_all(&arch_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", arch_dir.display()));
    let cached = arch_dir.join(deb.file_name().expect(".deb has a file name"));
    fs::rename(&deb, &cached)
        .unwrap_or_else(|e| panic!("moving {} to {}: {e}", deb.display(), cached.display()));
    cached
}

fn find_deb(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension() == Some("deb".as_ref()))
}

/// Unpacks the .deb with `dpkg-deb -x` and returns the bytes of its `/bin/busybox`.
fn extract_busybox(deb: &Path, staging: &Path, deb_arch: &str) -> Vec<u8> {
    let rootfs = staging.join(format!("rootfs-{deb_arch}"));
    let output = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&rootfs)
        .output()
        .unwrap_or_else(|e| panic!("running dpkg-deb: {e} (run scripts/install-deps.sh)"));
    assert!(
        output.status.success(),
        "dpkg-deb -x {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let busybox = rootfs.join("bin/busybox");
    fs::read(&busybox).unwrap_or_else(|e| panic!("reading {}: {e}", busybox.display()))
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

/// One platform's image: its gzip layer and config, shared by both flavours.
struct ArchImage {
    platform: Value,
    layer_gz: Vec<u8>,
    config: Vec<u8>,
}

impl ArchImage {
    fn new(oci_arch: &str, variant: Option<&str>, busybox: &[u8], deb: &Path) -> ArchImage {
        let layer_tar = rootfs_tar(busybox);
        let diff_id = sha256_digest(&layer_tar);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&layer_tar).expect("gzip into memory");
        let layer_gz = gz.finish().expect("gzip into memory");

        let mut platform = json!({ "architecture": oci_arch, "os": "linux" });
        let mut config = json!({
            "created": FIXTURE_CREATED,
            "architecture": oci_arch,
            "os": "linux",
            "config": { "Env": [format!("PATH={IMAGE_PATH}")], "Cmd": ["sh"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{
                "created": FIXTURE_CREATED,
                "created_by": format!(
                    "kiln-testkit: /bin/busybox from {}",
                    deb.file_name().unwrap_or_default().to_string_lossy().replace("%3a", ":")
                ),
            }],
        });
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
            config["variant"] = json!(variant);
        }
        ArchImage {
            platform,
            layer_gz,
            config: serde_json::to_vec(&config).expect("serialising a config"),
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

/// The fixture rootfs as an uncompressed tar: entries sorted by path, fixed mtime, owned by
/// root except `/home/builder`.
fn rootfs_tar(busybox: &[u8]) -> Vec<u8> {
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

    let mut builder = tar::Builder::new(Vec::new());
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
    builder.into_inner().expect("finishing the tar into memory")
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes `bytes` as a content-addressed blob and returns its descriptor.
fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
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
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": flavor.manifest,
                "config": write_blob(layout, flavor.config, &image.config),
                "layers": [write_blob(layout, flavor.layer, &image.layer_gz)],
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

fn to_json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialising JSON")
}
