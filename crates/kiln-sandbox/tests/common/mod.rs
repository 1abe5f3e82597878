//! What the sandbox tests share: rootfs fixtures (the host's busybox, or kiln-testkit's busybox
//! images of foreign architectures), running a spec in the test process or through the
//! helper binary as another user, the way kiln runs it.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_sandbox::{ExitStatus, RunOutput, RunSpec, Sandbox, SandboxError, find_emulator};
use tempfile::TempDir;

pub const NOBODY: u32 = 65534;

pub const HELPER: &str = env!("CARGO_BIN_EXE_kiln-sandbox-helper");

pub const APPLETS: [&str; 20] = [
    "sh", "echo", "cat", "ls", "id", "rm", "touch", "mkdir", "hostname", "uname", "pwd", "sleep",
    "env", "test", "seq", "head", "grep", "ip", "nc", "wget",
];

pub struct Dirs {
    pub root: TempDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Dirs {
    /// Empty lower, upper and work dirs.
    pub fn empty() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let lower = root.path().join("lower");
        let upper = root.path().join("upper");
        let work = root.path().join("work");
        for dir in [&lower, &upper, &work] {
            std::fs::create_dir_all(dir).unwrap();
        }
        Dirs {
            root,
            lower,
            upper,
            work,
        }
    }

    /// A busybox layer as the only lower, with root, nobody and builder (1000:1000) users.
    pub fn new() -> Dirs {
        let dirs = Dirs::empty();
        let lower = &dirs.lower;
        for dir in [lower.join("bin"), lower.join("etc")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        kiln_testkit::copy_executable(Path::new("/bin/busybox"), &lower.join("bin/busybox"));
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
             builder:x:1000:1000::/home/builder:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            lower.join("etc/group"),
            "root:x:0:\nnogroup:x:65534:\nbuilder:x:1000:\n",
        )
        .unwrap();
        dirs
    }

    pub fn spec(&self, argv: &[&str]) -> RunSpec {
        RunSpec {
            lowers: vec![self.lower.clone()],
            upper: self.upper.clone(),
            work: self.work.clone(),
            argv: argv.iter().map(|arg| arg.to_string()).collect(),
            env: vec!["PATH=/bin".to_string()],
            cwd: "/".to_string(),
            user: String::new(),
            hostname: "sandbox-test".to_string(),
            ..RunSpec::default()
        }
    }
}

/// Runs `spec`, returning the result and every line the callback saw.
pub fn run(spec: &RunSpec) -> (Result<RunOutput, SandboxError>, Vec<String>) {
    let mut lines = Vec::new();
    let result = Sandbox::new(PathBuf::from(HELPER)).run(spec, &mut |line| {
        lines.push(line.to_string());
    });
    (result, lines)
}

pub fn run_ok(spec: &RunSpec) -> Vec<String> {
    let (result, lines) = run(spec);
    let output = result.unwrap();
    assert_eq!(output.status, ExitStatus::Code(0), "output: {lines:?}");
    lines
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.symlink_metadata().unwrap().is_dir() {
            all.extend(walk_all(&path));
        } else {
            all.push(path);
        }
    }
    all
}

impl Dirs {
    /// The kiln-testkit busybox image of `arch` (and `variant`) as the only lower.
    pub fn foreign(arch: &str, variant: Option<&str>) -> Dirs {
        let dirs = Dirs::empty();
        unpack_fixture(arch, variant, &dirs.lower);
        dirs
    }

    /// A spec that runs `argv` through the QEMU emulator of `arch` found on this host.
    pub fn emulated_spec(&self, arch: &str, argv: &[&str]) -> RunSpec {
        RunSpec {
            emulator: Some(find_emulator(arch, None).unwrap()),
            ..self.spec(argv)
        }
    }
}

/// Unpacks the layer of the busybox fixture image for `arch` from its OCI layout into `dir`.
pub fn unpack_fixture(arch: &str, variant: Option<&str>, dir: &Path) {
    let layout = &kiln_testkit::busybox_fixtures().oci_layout;
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let read_json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let top = read_json(layout.join("index.json"));
    let index = read_json(blob(top["manifests"][0]["digest"].as_str().unwrap()));
    let descriptor = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|descriptor| {
            let platform = &descriptor["platform"];
            platform["architecture"] == arch
                && variant.is_none_or(|variant| platform["variant"] == variant)
        })
        .unwrap_or_else(|| panic!("no fixture for {arch} {variant:?}"));
    let manifest = read_json(blob(descriptor["digest"].as_str().unwrap()));
    for layer in manifest["layers"].as_array().unwrap() {
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(blob(layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "unpacking the {arch} fixture: {status}");
    }
}

impl Dirs {
    /// Hands the dirs to nobody, for a rootless run.
    pub fn give_to_nobody(&self) {
        for entry in walk_all(self.root.path()) {
            std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::fs::set_permissions(self.root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
}

/// Who runs the helper binary, which stands in for kiln (it sets up rootless mode first, as
/// kiln does).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Caller {
    Root,
    /// uid and gid 65534, through a copy of the binary that anyone may run; the spec's dirs
    /// must be nobody's (see [`Dirs::give_to_nobody`]).
    Nobody,
}

/// Runs `spec` through the helper binary as `caller`. `before_exec` runs in the child first, as
/// root: it may change what the helper inherits (descriptors, terminal, mounts).
pub fn run_helper_binary(
    spec: &RunSpec,
    caller: Caller,
    mut before_exec: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Output {
    let (exe_dir, helper) = match caller {
        Caller::Root => (None, PathBuf::from(HELPER)),
        Caller::Nobody => {
            let (dir, copy) = kiln_testkit::executable_by_anyone(Path::new(HELPER));
            (Some(dir), copy)
        }
    };
    let mut command = Command::new(&helper);
    command.arg(serde_json::to_string(spec).unwrap());
    // SAFETY: runs between fork and exec of a multi-threaded test process; the callers' closures
    // and the id changes below make raw syscalls only.
    unsafe {
        command.pre_exec(move || {
            before_exec()?;
            if caller == Caller::Nobody
                && (libc::setgroups(0, std::ptr::null()) == -1
                    || libc::setgid(NOBODY) == -1
                    || libc::setuid(NOBODY) == -1)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    drop(exe_dir);
    output
}
