//! A real container runtime for tests: Debian's podman with runc runs one program (kiln) as
//! root in a container, under the seccomp profile and capabilities of a chosen runtime, as a
//! Kubernetes pod or a GitLab runner's job would run it.
//!
//! No image is needed: the rootfs is a temp dir holding only the program, and the host's
//! library dirs are bound read-only, so a dynamically linked program finds its libraries
//! where `ldd` found them. Test dirs are bound at their own paths, so the same paths work
//! inside and outside.
//!
//! The podman flags are what this machine needs: `--runtime runc` (crun fails on its hybrid
//! cgroup layout), limits no higher than they are (there is no CAP_SYS_RESOURCE to raise
//! them) and the host's network, to reach a registry on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::tools::copy_executable;

/// podman's default seccomp profile, from Debian's golang-github-containers-common.
const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// What Docker's default profile allows only with CAP_SYS_ADMIN and podman's allows to all.
const SYS_ADMIN_ONLY: [&str; 14] = [
    "unshare",
    "mount",
    "umount",
    "umount2",
    "setns",
    "sethostname",
    "fsopen",
    "fsconfig",
    "fsmount",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "clone",
    "clone3",
];

/// The namespace flags of clone(2) (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET): Docker allows clone without CAP_SYS_ADMIN only when none is set.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

const EPERM: u64 = 1;
const ENOSYS: u64 = 38;

/// Docker's capabilities that podman does not grant by default.
const DOCKER_EXTRA_CAPS: &str = "CAP_MKNOD,CAP_NET_RAW,CAP_AUDIT_WRITE";

/// The seccomp profile and capabilities of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// podman's default: its own seccomp profile (which allows `unshare` and `mount` but
    /// refuses `sethostname` without CAP_SYS_ADMIN) and its default capabilities.
    Podman,
    /// Docker's default, which Kubernetes calls RuntimeDefault: the namespace and mount
    /// system calls only with CAP_SYS_ADMIN, no `pivot_root`, and Docker's default
    /// capabilities (without CAP_SYS_ADMIN).
    DockerDefault,
}

/// A container that runs one program, with dirs of the host bound in.
pub struct Pod {
    /// Holds `rootfs/` and the seccomp profile.
    dir: tempfile::TempDir,
    program: String,
    profile: Profile,
    /// (host dir, bound read-only), each at its own path.
    binds: Vec<(PathBuf, bool)>,
    env: Vec<String>,
    /// Capabilities added to the profile's.
    caps: Vec<String>,
    /// `--user UID:GID` (Kubernetes' runAsUser); root when `None`.
    user: Option<(u32, u32)>,
    /// Arguments before the caller's (the dynamic loader's, for [`Pod::kiln_dir`]).
    prefix: Vec<String>,
}

impl Pod {
    /// A container whose rootfs holds only a copy of `program`, at `/bin/<its name>`.
    pub fn new(program: &Path, profile: Profile) -> Pod {
        let dir = tempfile::Builder::new()
            .prefix("kiln-pod-")
            .tempdir()
            .expect("create a temp dir for the pod");
        let bin = dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("creating {}: {e}", bin.display()));
        let name = program
            .file_name()
            .expect("a program file name")
            .to_str()
            .expect("a UTF-8 program name");
        copy_executable(program, &bin.join(name));
        let mut binds = Vec::new();
        for libs in ["/lib", "/lib64", "/usr/lib"] {
            if Path::new(libs).exists() {
                binds.push((PathBuf::from(libs), true));
            }
        }
        Pod {
            dir,
            program: format!("/bin/{name}"),
            profile,
            binds,
            env: Vec::new(),
            caps: Vec::new(),
            user: None,
            prefix: Vec::new(),
        }
    }

    /// A container whose rootfs holds only `/kiln`: a copy of `program` and the shared
    /// libraries it needs (found by `ldd`), started through the dynamic loader there. Unlike
    /// [`Pod::new`], no host directory is mounted over the image's paths, so an in-place
    /// build can lay out an image's /lib and /usr/lib, as in kiln's own (static) image.
    pub fn kiln_dir(program: &Path, profile: Profile) -> Pod {
        let mut pod = Pod::new(program, profile);
        pod.binds.clear();
        let rootfs = pod.dir.path().join("rootfs");
        std::fs::remove_dir_all(rootfs.join("bin")).expect("emptying the pod's rootfs");
        let lib = rootfs.join("kiln/lib");
        std::fs::create_dir_all(&lib).expect("creating /kiln/lib in the pod");
        copy_executable(program, &rootfs.join("kiln/kiln"));
        let ldd = Command::new("ldd")
            .arg(program)
            .output()
            .expect("running ldd");
        let mut loader = None;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader alone.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let name = Path::new(path).file_name().expect("a library file name");
            std::fs::copy(path, lib.join(name))
                .unwrap_or_else(|e| panic!("copying {path} into the pod: {e}"));
            if name.to_string_lossy().starts_with("ld-linux") {
                loader = Some(format!("/kiln/lib/{}", name.to_string_lossy()));
            }
        }
        pod.program = loader.expect("ldd names the dynamic loader");
        pod.prefix = vec![
            "--library-path".to_string(),
            "/kiln/lib".to_string(),
            "/kiln/kiln".to_string(),
        ];
        pod
    }

    /// Runs the program as `uid:gid` instead of root.
    pub fn user(mut self, uid: u32, gid: u32) -> Pod {
        self.user = Some((uid, gid));
        self
    }

    /// Binds the host's `dir` at the same path, writable.
    pub fn bind(mut self, dir: &Path) -> Pod {
        self.binds.push((dir.to_path_buf(), false));
        self
    }

    /// Binds the host's `dir` at the same path, read-only.
    pub fn bind_ro(mut self, dir: &Path) -> Pod {
        self.binds.push((dir.to_path_buf(), true));
        self
    }

    /// The container's root directory on this machine.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Sets an environment variable of the program.
    pub fn env(mut self, key: &str, value: &str) -> Pod {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Adds a capability (`CAP_SYS_ADMIN`) to the profile's.
    pub fn cap_add(mut self, cap: &str) -> Pod {
        self.caps.push(cap.to_string());
        self
    }

    /// `podman run` of the program with `args`; run it with `.output()`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        command.args([
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1000:1000",
            "--network",
            "host",
        ]);
        let seccomp = match self.profile {
            Profile::Podman => PathBuf::from(PODMAN_SECCOMP),
            Profile::DockerDefault => {
                command.args(["--cap-add", DOCKER_EXTRA_CAPS]);
                write_docker_default_seccomp(self.dir.path())
            }
        };
        command
            .arg("--security-opt")
            .arg(format!("seccomp={}", seccomp.display()));
        for (dir, readonly) in &self.binds {
            let suffix = if *readonly { ":ro" } else { "" };
            command
                .arg("--volume")
                .arg(format!("{0}:{0}{suffix}", dir.display()));
        }
        for cap in &self.caps {
            command.arg("--cap-add").arg(cap);
        }
        if let Some((uid, gid)) = self.user {
            command.arg("--user").arg(format!("{uid}:{gid}"));
        }
        for var in &self.env {
            command.arg("--env").arg(var);
        }
        command
            .arg("--rootfs")
            .arg(self.dir.path().join("rootfs"))
            .arg(&self.program)
            .args(&self.prefix)
            .args(args);
        command
    }
}

/// Writes Docker's default profile, derived from podman's, into `dir`; returns its path.
fn write_docker_default_seccomp(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(PODMAN_SECCOMP).unwrap_or_else(|e| {
        panic!("reading {PODMAN_SECCOMP} (install golang-github-containers-common): {e}")
    });
    let podman: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {PODMAN_SECCOMP}: {e}"));
    let path = dir.join("docker-default-seccomp.json");
    std::fs::write(&path, docker_default(podman).to_string())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Docker's default capabilities.
const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// podman with a store of its own (images, pods, volumes and secrets in a temp dir, never
/// this machine's) and a containers.conf that makes a profile the default, so that images
/// run as a CI runner runs a job image, and `podman kube play` runs a Kubernetes manifest as
/// a cluster would (`RuntimeDefault` is the profile's seccomp).
pub struct Runtime {
    dir: tempfile::TempDir,
    /// Links made by [`Runtime::load`], counted for their names.
    links: std::sync::atomic::AtomicUsize,
}

impl Runtime {
    pub fn new(profile: Profile) -> Runtime {
        let dir = tempfile::Builder::new()
            .prefix("kiln-podman-")
            .tempdir()
            .expect("create a temp dir for podman");
        let mut containers =
            vec![r#"default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]"#.to_string()];
        if profile == Profile::DockerDefault {
            let seccomp = write_docker_default_seccomp(dir.path());
            containers.push(format!(
                "seccomp_profile = {:?}",
                seccomp.display().to_string()
            ));
            containers.push(format!("default_capabilities = {DOCKER_CAPS:?}"));
        }
        let conf = format!(
            "[containers]\n{}\n[engine]\nruntime = \"runc\"\n",
            containers.join("\n")
        );
        std::fs::write(dir.path().join("containers.conf"), conf).expect("writing containers.conf");
        Runtime {
            dir,
            links: Default::default(),
        }
    }

    /// A dir holding Docker's default profile as `docker-default.json`, for `podman kube
    /// play --seccomp-profile-root`: podman maps a manifest's `RuntimeDefault` to its own
    /// profile, where a cluster's containerd or CRI-O applies Docker's.
    pub fn seccomp_profile_root(&self) -> PathBuf {
        let dir = self.dir.path().join("seccomp");
        std::fs::create_dir_all(&dir).expect("creating the seccomp profile root");
        let written = write_docker_default_seccomp(&dir);
        std::fs::rename(&written, dir.join("docker-default.json")).expect("naming the profile");
        dir
    }

    /// `podman` on this store.
    pub fn podman(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        command
    }

    /// Pulls the image `tag` of the OCI layout `layout` into the store (the machine's
    /// platform); returns the name it has there.
    pub fn load(&self, layout: &Path, tag: &str) -> String {
        // podman names the image after the path, which must make a valid name: no `..`, no
        // upper case (a checkout under `mktemp -d` has some). So it is pulled through a link
        // of a lowercase name, in the temp dir, to the layout.
        let layout =
            std::fs::canonicalize(layout).unwrap_or_else(|e| panic!("{}: {e}", layout.display()));
        let link = std::env::temp_dir().join(format!(
            "kiln-layout-{}-{}",
            std::process::id(),
            self.links
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&layout, &link).expect("linking the layout");
        let source = format!("oci:{}:{tag}", link.display());
        let out = self
            .podman()
            .args(["pull", "-q", &source])
            .output()
            .expect("running podman pull");
        let _ = std::fs::remove_file(&link);
        assert!(
            out.status.success(),
            "podman pull {source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = format!("localhost/kiln-test-{}:{tag}", &id[..12]);
        let tagged = self
            .podman()
            .args(["tag", &id, &name])
            .status()
            .expect("running podman tag");
        assert!(tagged.success(), "podman tag {id} {name}");
        name
    }
}

impl Drop for Runtime {
    /// Pods and containers hold mounts under the store; they go first.
    fn drop(&mut self) {
        let _ = self.podman().args(["pod", "rm", "-fa"]).output();
        let _ = self.podman().args(["rm", "-fa"]).output();
    }
}

/// podman's profile with Docker's rules for the namespace and mount system calls, answered
/// as Docker answers them (EPERM; ENOSYS for clone3, so that libc falls back to clone).
fn docker_default(mut profile: Value) -> Value {
    let rules = profile["syscalls"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{PODMAN_SECCOMP} has no syscalls list"));
    for rule in rules.iter_mut() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|name| {
                let name = name.as_str().unwrap_or_default();
                !SYS_ADMIN_ONLY.contains(&name) && name != "pivot_root"
            });
        }
    }
    rules.retain(|rule| rule["names"].as_array().is_some_and(|n| !n.is_empty()));
    let sys_admin = json!({ "caps": ["CAP_SYS_ADMIN"] });
    let refused: Vec<&str> = SYS_ADMIN_ONLY
        .iter()
        .copied()
        .filter(|name| !name.starts_with("clone"))
        .collect();
    rules.extend([
        json!({ "names": SYS_ADMIN_ONLY, "action": "SCMP_ACT_ALLOW", "includes": sys_admin }),
        json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{
                "index": 0,
                "value": CLONE_NAMESPACE_FLAGS,
                "valueTwo": 0,
                "op": "SCMP_CMP_MASKED_EQ"
            }],
            "excludes": sys_admin,
        }),
        json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "excludes": sys_admin,
        }),
        json!({
            "names": refused,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "excludes": sys_admin,
        }),
        json!({ "names": ["pivot_root"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM }),
    ]);
    profile
}
