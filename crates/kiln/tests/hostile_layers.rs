//! Hostile input against a real `kiln build`: every layer and archive of
//! `testdata/hostile/` as a base image layer (`FROM oci-layout://`) and in `ADD`, and a RUN
//! step that turns a mount point's directory into a symlink to the host. Each build fails
//! cleanly or succeeds safely, a canary directory on the host (which the hostile symlinks
//! point at) keeps its files, modes and times, and kiln's peak RSS stays under 100 MiB.
//!
//! Run with `--nocapture` to see the peak RSS of every build.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_testkit::{HOSTILE_FILES, Measured, busybox_fixtures, hostile_file, run_measured};
use sha2::{Digest, Sha256};

const MAX_RSS_MIB: f64 = 100.0;

/// No file kiln writes may grow past this (a reader that ignored sparse sizes would try to
/// write 1 TiB; this kills it with SIGXFSZ at 2 GiB instead).
const FILE_SIZE_LIMIT: &str = "--fsize=2147483648";

/// A test's temp dir; no registry: every image comes from an OCI layout.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// A build context with these files (path, content).
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path(name);
        std::fs::create_dir_all(&ctx).unwrap();
        for (path, content) in files {
            std::fs::write(ctx.join(path), content).unwrap();
        }
        ctx
    }
}

/// A host directory the hostile symlinks point at: a file `canary`, a file `f` and the empty
/// directories `b` and `d`, all with old times.
struct Canary {
    dir: PathBuf,
    before: Vec<String>,
}

impl Canary {
    fn new(parent: &Path) -> Canary {
        let dir = parent.join("canary");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("canary"), "canary\n").unwrap();
        std::fs::write(dir.join("f"), "f\n").unwrap();
        std::fs::create_dir(dir.join("b")).unwrap();
        std::fs::create_dir(dir.join("d")).unwrap();
        for name in ["canary", "f", "b", "d", "."] {
            let status = Command::new("touch")
                .args(["-h", "-d", "2001-02-03 04:05:06"])
                .arg(dir.join(name))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let before = Canary::describe(&dir);
        Canary { dir, before }
    }

    /// Every entry's name, type, mode, owner, mtime, ctime and contents.
    fn describe(dir: &Path) -> Vec<String> {
        let mut names = vec![PathBuf::from(".")];
        names.extend(
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| PathBuf::from(e.unwrap().file_name())),
        );
        names.sort();
        names
            .iter()
            .map(|name| {
                let path = dir.join(name);
                let md = std::fs::symlink_metadata(&path).unwrap();
                let contents = match md.is_file() {
                    true => std::fs::read_to_string(&path).unwrap(),
                    false => String::new(),
                };
                // ctime moves with any change of the inode's metadata, even to equal values.
                format!(
                    "{} mode={:o} owner={}:{} mtime={}.{} ctime={}.{} {contents:?}",
                    name.display(),
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.ctime(),
                    md.ctime_nsec()
                )
            })
            .collect()
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            Canary::describe(&self.dir),
            self.before,
            "{what} changed the host's canary dir"
        );
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

fn sha256_hex(reader: &mut impl Read) -> String {
    let mut hasher = Sha256::new();
    std::io::copy(reader, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

/// Writes a one-layer OCI image layout tagged `hostile` whose layer is `name`'s bytes as
/// they are (gzip for `.tar.gz`, an uncompressed tar otherwise).
fn layout_with_layer(dir: &Path, name: &str, layer: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |media_type: &str, bytes: &[u8]| {
        let hex = sha256_hex(&mut &bytes[..]);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    };
    let (media_type, diff_id) = match name.ends_with(".gz") {
        true => (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            sha256_hex(&mut flate2::read::GzDecoder::new(layer)),
        ),
        false => (
            "application/vnd.oci.image.layer.v1.tar",
            sha256_hex(&mut &layer[..]),
        ),
    };
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": put("application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap()),
        "layers": [put(media_type, layer)],
    });
    let mut descriptor = put(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": "hostile"});
    let index = json!({"schemaVersion": 2, "manifests": [descriptor]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Bytes of disk the files under `dir` take.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let md = std::fs::symlink_metadata(&path).unwrap();
        total += md.blocks() * 512;
        if md.is_dir() {
            total += disk_usage(&path);
        }
    }
    total
}

/// `kiln build` of `ctx` into an OCI layout, under [`FILE_SIZE_LIMIT`], measured.
fn build_measured(env: &Work, ctx: &Path) -> Measured {
    let out = env.path("out");
    let _ = std::fs::remove_dir_all(&out);
    let spec = format!("type=oci,dest={},tar=false", out.display());
    let kiln = kiln_command(
        &env.store(),
        &[
            "build",
            "-t",
            "hostile:1",
            "-o",
            &spec,
            ctx.to_str().unwrap(),
        ],
    );
    let mut limited = Command::new("prlimit");
    limited
        .arg(FILE_SIZE_LIMIT)
        .arg(kiln.get_program())
        .args(kiln.get_args());
    for (key, value) in kiln.get_envs() {
        limited.env(key, value.unwrap());
    }
    run_measured(&mut limited)
}

/// What building with `name` must end in: `None` for success, else a part of the error.
fn expected_error(name: &str) -> Option<&'static str> {
    match name {
        "long-name-bomb.tar.gz" => {
            Some("its GNU long name is 134217729 bytes, over kiln's limit of 4097")
        }
        "long-link-bomb.tar.gz" => {
            Some("its GNU long link target is 134217729 bytes, over kiln's limit of 4097")
        }
        "pax-bomb.tar.gz" => Some("`PaxHeaders/file` (at byte 0 of the tar): its PAX header is"),
        "sparse-1tib.tar.gz" => Some(
            "its size with the sparse files before it is 1099511627776 bytes, over kiln's limit of 8589934592",
        ),
        "sparse-1gib.tar.gz" | "dir-times-through-symlink.tar" => None,
        "file-through-parent-symlink.tar"
        | "whiteout-through-parent-symlink.tar"
        | "opaque-through-parent-symlink.tar" => Some("goes through the symlink `a`"),
        "hardlink-through-symlink.tar" => Some("goes through the symlink `l`"),
        "hardlink-dotdot.tar" => Some("which is outside the rootfs"),
        other => panic!("no expected outcome for {other}"),
    }
}

/// Checks a hostile build's outcome, memory and the canary; prints the figures.
fn check(how: &str, name: &str, measured: &Measured, canary: &Canary) {
    let output = &measured.output;
    let err = stderr(output);
    let outcome = match expected_error(name) {
        None => {
            assert_ok(output);
            "built".to_string()
        }
        Some(part) => {
            assert_eq!(output.status.code(), Some(1), "{how} {name}:\n{err}");
            assert!(flat_stderr(output).contains(part), "{how} {name}:\n{err}");
            assert!(
                err.len() < 4096,
                "{how} {name}: {} bytes of errors",
                err.len()
            );
            format!("refused: {part}")
        }
    };
    eprintln!(
        "{how} {name}: peak RSS {:.1} MiB, {outcome}",
        measured.peak_rss_mib()
    );
    assert!(
        measured.peak_rss_mib() < MAX_RSS_MIB,
        "{how} {name}: kiln peaked at {:.1} MiB",
        measured.peak_rss_mib()
    );
    canary.assert_untouched(&format!("{how} {name}"));
}

#[test]
fn hostile_base_layers_are_refused_or_extracted_safely_in_bounded_memory() {
    for file in HOSTILE_FILES {
        let env = Work::new();
        let canary = Canary::new(env.dir.path());
        let layout = env.path("layout");
        layout_with_layer(&layout, file.name, &hostile_file(file.name, &canary.dir));
        // WORKDIR looks the directory up in the base, so the base must be unpacked (a FROM
        // followed by config-only steps never unpacks it, as in BuildKit).
        let ctx = env.context(
            "ctx",
            &[(
                "Dockerfile",
                &format!(
                    "FROM oci-layout://{}:hostile\nWORKDIR /kiln-probe\n",
                    layout.display()
                ),
            )],
        );
        let measured = build_measured(&env, &ctx);
        check("FROM", file.name, &measured, &canary);
        if file.name == "sparse-1gib.tar.gz" {
            // The extracted layer in kiln's store: 1 GiB long, with next to nothing on disk.
            let layers = std::fs::read_dir(env.store().join("layers")).unwrap();
            let sparse = layers
                .map(|l| l.unwrap().path().join("sparse"))
                .find(|p| p.exists())
                .expect("a layer dir holds the sparse file");
            let md = std::fs::metadata(sparse).unwrap();
            assert_eq!(md.len(), 1 << 30);
            assert!(
                md.blocks() * 512 < 1 << 20,
                "{} blocks on disk",
                md.blocks()
            );
        }
    }
}

#[test]
fn hostile_add_archives_are_refused_or_extracted_safely_in_bounded_memory() {
    for file in HOSTILE_FILES {
        let env = Work::new();
        let canary = Canary::new(env.dir.path());
        let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\nADD archive /\n")]);
        std::fs::write(ctx.join("archive"), hostile_file(file.name, &canary.dir)).unwrap();
        let measured = build_measured(&env, &ctx);
        check("ADD", file.name, &measured, &canary);
        if file.name == "sparse-1gib.tar.gz" {
            // Extracted, copied into the layer and stored without writing the gigabyte.
            let used = disk_usage(&env.store());
            assert!(used < 64 << 20, "the store takes {used} bytes of disk");
        }
    }
}

#[test]
fn a_run_step_cannot_make_stub_cleanup_delete_host_files() {
    let env = Work::new();
    let canary = Canary::new(env.dir.path());
    // The sandbox creates /stubdir, /stubdir/d and /stubdir/f as mount points; the step
    // moves them away and leaves a symlink to the host's canary dir in their place.
    let dockerfile = format!(
        "FROM oci-layout://{}:latest\n\
         RUN --mount=type=tmpfs,target=/stubdir/d --mount=type=bind,source=f,target=/stubdir/f \
         mv /stubdir /moved && ln -s {} /stubdir\n",
        busybox_fixtures().oci_layout.display(),
        canary.path()
    );
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", &dockerfile), ("f", "bind source\n")],
    );
    let measured = build_measured(&env, &ctx);
    assert_ok(&measured.output);
    canary.assert_untouched("a RUN step's symlink over its mount points");
    let rootfs = umoci_unpack(&env.path("out"), "1", &env.path("bundle"));
    assert_eq!(
        std::fs::read_link(rootfs.join("stubdir")).unwrap(),
        canary.dir,
        "the step's own change is kept"
    );
}

#[test]
fn a_device_node_of_a_base_image_opens_no_host_device_in_a_run_mount() {
    let env = Work::new();
    // A hostile base layer's block device, open to all: 7:0 is the host's first loop device
    // (8:0 would be its disk). kiln, as root, makes it in its store as it is.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Block);
    header.set_device_major(7).unwrap();
    header.set_device_minor(0).unwrap();
    header.set_mode(0o666);
    header.set_size(0);
    builder.append_data(&mut header, "disk", &b""[..]).unwrap();
    let layout = env.path("layout");
    layout_with_layer(&layout, "device.tar", &builder.into_inner().unwrap());
    // Opened for reading only, and loop0 holds nothing: the step reads no host data.
    let dockerfile = format!(
        "FROM oci-layout://{}:hostile AS hostile\n\
         FROM oci-layout://{}:latest\n\
         RUN --mount=type=bind,from=hostile,target=/m test -b /m/disk && \
         if (exec 3</m/disk); then echo opened-host-device-$((6*7)); fi\n",
        layout.display(),
        busybox_fixtures().oci_layout.display(),
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    let measured = build_measured(&env, &ctx);
    let err = stderr(&measured.output);
    assert_ok(&measured.output);
    assert!(!err.contains("opened-host-device-42"), "{err}");
}
