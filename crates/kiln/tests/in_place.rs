//! In-place isolation (kaniko's way) in a real container that refuses namespaces (podman with
//! runc under Docker's default seccomp profile and capabilities, as root): `--isolation auto`
//! finds that out and runs RUN steps in the container's own /, and what it builds is what
//! kiln's namespaces build on the host from the same Dockerfile, file for file.
//!
//! In-place builds rewrite /, so they run only inside throwaway pods, never on this machine.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use kiln_testkit::{Pod, Profile, busybox_fixtures, debian_fixtures, umoci_unpack};
use sha2::{Digest, Sha256};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A temp dir bound into the pod at its own path: the context, kiln's root, the outputs.
struct Job {
    dir: tempfile::TempDir,
    /// The socket `RUN --mount=type=ssh` gets (`--ssh default=...`); nothing answers on it.
    _agent: std::os::unix::net::UnixListener,
}

impl Job {
    fn new(dockerfile: &str) -> Job {
        Job::from(dockerfile, &busybox_fixtures().oci_layout)
    }

    /// `BASE` in `dockerfile` is the image `latest` of the OCI layout `base`.
    fn from(dockerfile: &str, base: &Path) -> Job {
        let dir = tempfile::Builder::new()
            .prefix("kiln-in-place-")
            .tempdir()
            .unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        let base = format!("oci-layout://{}:latest", base.display());
        std::fs::write(ctx.join("Dockerfile"), dockerfile.replace("BASE", &base)).unwrap();
        std::fs::write(ctx.join("greeting"), "from the context\n").unwrap();
        std::fs::write(dir.path().join("token"), "s3cr3t-value-for-the-step").unwrap();
        let agent = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        Job { dir, _agent: agent }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `kiln build` arguments, writing an OCI layout to `out`.
    fn args(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "build",
            "--progress",
            "plain",
            "--root",
            self.path(&format!("root-{out}")).to_str().unwrap(),
            "--secret",
            &format!("id=token,src={}", self.path("token").display()),
            "--ssh",
            &format!("default={}", self.path("agent.sock").display()),
            "-t",
            "app:1",
            "-o",
            &format!("type=oci,dest={},tar=false", self.path(out).display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.path("ctx").to_str().unwrap().to_string());
        args
    }

    /// Builds in a pod under Docker's default profile, with kiln's default isolation.
    fn in_pod(&self, extra: &[&str]) -> Output {
        let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
            .bind(self.dir.path())
            .bind_ro(&busybox_fixtures().oci_layout)
            .bind_ro(&debian_fixtures().oci_layout)
            .env("NO_COLOR", "1");
        let args = self.args("in-pod", extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pod.command(&args).output().expect("running podman")
    }

    /// Builds on this machine with kiln's namespaces.
    fn on_host(&self) -> Output {
        let args = self.args("on-host", &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kiln_command(&self.path("root-on-host"), &args)
            .env("KILN_ISOLATION", "namespaces")
            .output()
            .unwrap()
    }

    fn rootfs(&self, out: &str) -> PathBuf {
        umoci_unpack(&self.path(out), "1", &self.path(&format!("bundle-{out}")))
    }
}

/// What a user can notice of a tree: each entry's type, mode, owner, contents or link
/// target, and which files are one inode. Not directory times.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                todo.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let md = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let what = if md.is_dir() {
            "dir".to_string()
        } else if md.is_symlink() {
            format!("-> {}", std::fs::read_link(&path).unwrap().display())
        } else {
            let sum = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
            let first = inodes.entry(md.ino()).or_insert_with(|| rel.clone());
            format!("file {sum} links-with {first}")
        };
        let mode = if md.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        out.insert(rel, format!("{what} {mode:o} {}:{}", md.uid(), md.gid()));
    }
    out
}

/// The image config without what differs from build to build (creation times).
fn config_of(layout: &Path) -> serde_json::Value {
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    if manifest.get("manifests").is_some() {
        manifest = read(manifest["manifests"][0]["digest"].as_str().unwrap());
    }
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config.as_object_mut().unwrap().remove("created");
    // Layer digests differ with directory times; which steps made a layer must not.
    config["rootfs"]["diff_ids"] =
        serde_json::json!(config["rootfs"]["diff_ids"].as_array().unwrap().len());
    for step in config["history"].as_array_mut().unwrap() {
        step.as_object_mut().unwrap().remove("created");
    }
    config
}

#[test]
fn in_place_builds_what_namespaces_build() {
    let job = Job::new(
        "FROM BASE AS other\n\
         RUN echo other > /other && mkdir -p /opt/o && echo o > /opt/o/file\n\
         FROM BASE\n\
         RUN echo hello > /hello && ln /hello /hello-link && ln -s /hello /hello-sym \
             && mkdir -p /opt/app && echo data > /opt/app/data\n\
         RUN rm /etc/group && echo s > /suid && chmod 4755 /suid && rm -r /opt/app && rm /bin/tail\n\
         RUN echo aaaa > /same && echo keep > /unchanged\n\
         RUN cp -p /same /same.ref && echo bbbb > /same && touch -r /same.ref /same \
             && rm /same.ref\n\
         USER builder\n\
         RUN echo mine > /tmp/mine && id > /tmp/id\n\
         USER root\n\
         COPY --from=other /other /copied/\n\
         RUN --mount=type=bind,from=other,source=/opt,target=/mnt/o ls -a /mnt/o > /listing\n\
         RUN --mount=type=cache,target=/var/cache/app echo cached > /var/cache/app/x \
             && cat /var/cache/app/x > /from-cache\n\
         RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/t && cat /scratch/t > /from-tmpfs\n\
         RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-size\n\
         RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo agent > /from-ssh\n\
         RUN --mount=type=bind,source=greeting,target=/etc/greeting cat /etc/greeting > /from-bind\n",
    );
    let in_pod = job.in_pod(&[]);
    assert_ok(&in_pod);
    let log = stderr(&in_pod);
    assert_eq!(
        log.matches("RUN steps run in place").count(),
        1,
        "auto says once that it builds in place:\n{log}"
    );
    assert_ok(&job.on_host());

    let rootfs = job.rootfs("in-pod");
    let host_tree = tree(&job.rootfs("on-host"));
    assert_eq!(
        tree(&rootfs),
        host_tree,
        "the same files, modes, owners and links"
    );
    assert_eq!(read(&rootfs.join("copied/other")), "other\n");
    assert_eq!(read(&rootfs.join("listing")), ".\n..\no\n");
    assert!(std::fs::symlink_metadata(rootfs.join("etc/group")).is_err());
    assert_eq!(mode(&rootfs.join("suid")), 0o4755);
    assert_eq!(
        std::fs::metadata(rootfs.join("hello")).unwrap().ino(),
        std::fs::metadata(rootfs.join("hello-link")).unwrap().ino()
    );
    assert_eq!(
        read(&rootfs.join("same")),
        "bbbb\n",
        "ctime catches a rewrite that keeps size and mtime"
    );
    assert!(read(&rootfs.join("tmp/id")).contains("uid=1000(builder)"));
    assert_eq!(read(&rootfs.join("from-cache")), "cached\n");
    assert_eq!(read(&rootfs.join("from-tmpfs")), "t\n");
    assert_eq!(read(&rootfs.join("from-bind")), "from the context\n");
    assert_eq!(read(&rootfs.join("secret-size")).trim(), "25");
    assert_eq!(read(&rootfs.join("from-ssh")), "agent\n");
    for gone in [
        "var/cache/app/x",
        "scratch",
        "run/secrets/token",
        "run/buildkit",
        "etc/greeting",
        "mnt/o",
    ] {
        assert!(
            std::fs::symlink_metadata(rootfs.join(gone)).is_err(),
            "the mount at /{gone} reached the image"
        );
    }
    assert_eq!(
        config_of(&job.path("in-pod")),
        config_of(&job.path("on-host"))
    );
}

#[test]
fn a_step_that_deletes_kilns_directory_fails_the_build_cleanly() {
    let job = Job::new("FROM BASE\nRUN rm -rf /kiln\nRUN echo never\n");
    let output = job.in_pod(&[]);
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &[
            "RUN rm -rf /kiln",
            "removed or replaced /kiln",
            "kiln keeps its own files",
        ],
    );
    assert!(!job.path("in-pod").exists(), "an image was written");
}

#[test]
fn network_none_is_a_clear_error_in_place() {
    let job = Job::new("FROM BASE\nRUN --network=none echo offline\n");
    let output = job.in_pod(&[]);
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &["--network=none", "network namespace", "in-place"],
    );
    assert!(!job.path("in-pod").exists(), "an image was written");
}

#[test]
fn cleanup_empties_the_containers_root_after_the_build() {
    // The pod's / is a directory on this machine, so what the build left there shows.
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let rootfs = pod.rootfs();
    let args = job.args("in-pod", &["--cleanup"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = pod.command(&args).output().unwrap();
    assert_ok(&output);
    assert!(rootfs.join("kiln/kiln").exists(), "kiln's directory stays");
    for left in ["built", "bin/busybox", "etc/passwd"] {
        assert!(
            std::fs::symlink_metadata(rootfs.join(left)).is_err(),
            "/{left} was left in the container"
        );
    }
    assert_eq!(read(&job.rootfs("in-pod").join("built")), "built\n");

    // Without it, the last step's files stay, as kaniko leaves them.
    let args = job.args("in-pod-2", &["--no-cache"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert_eq!(read(&rootfs.join("built")), "built\n");
}

#[test]
fn a_foreign_platform_this_node_cannot_run_stops_before_any_step() {
    // This machine registers no binfmt_misc handler, and in place kiln cannot register its
    // own: an arm64 RUN cannot run in the pod.
    if Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        eprintln!("skipped: this machine runs arm64 binaries through its own binfmt_misc");
        return;
    }
    let job = Job::new("FROM BASE\nCOPY greeting /greeting\nRUN echo arm64 > /arch\n");
    let output = job.in_pod(&["--platform", "linux/arm64"]);
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &[
            "cannot run RUN steps for linux/arm64",
            "runner of its own architecture",
            "--from-metadata",
            "cross-compile",
        ],
    );
    assert!(
        !stderr(&output).contains("COPY greeting"),
        "a step ran:\n{message}"
    );
}

#[test]
fn copy_only_builds_for_every_platform_in_place() {
    // No RUN step: nothing needs to run, so no platform needs to be runnable.
    let job = Job::new("FROM BASE\nCOPY greeting /greeting\n");
    let output = job.in_pod(&["--platform", "linux/amd64,linux/arm64"]);
    assert_ok(&output);
    let layout = job.path("in-pod");
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = top["manifests"][0]["digest"].as_str().unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
}

#[test]
fn a_step_cannot_remove_a_mount_point_and_fails_with_its_exit_code() {
    let job = Job::new("FROM BASE\nRUN rm /etc/hosts\n");
    let output = job.in_pod(&[]);
    let message = assert_failed(&output);
    assert_contains_all(&message, &["RUN rm /etc/hosts", "exit code"]);
    assert!(!job.path("in-pod").exists(), "an image was written");
}

#[test]
fn a_debian_base_builds_in_place_as_with_namespaces() {
    let job = Job::from(
        "FROM BASE\n\
         RUN dpkg-query -W -f='${Package}\\n' > /packages && getent passwd _apt > /apt-user\n\
         RUN rm -r /usr/share/doc/bash && echo changed > /etc/motd \
             && ln -s /usr/bin/bash /usr/local/bin/b && chmod u+s /usr/bin/dash\n\
         USER _apt\n\
         RUN id > /tmp/apt-id\n",
        &debian_fixtures().oci_layout,
    );
    assert_ok(&job.in_pod(&[]));
    assert_ok(&job.on_host());
    let rootfs = job.rootfs("in-pod");
    assert_eq!(tree(&rootfs), tree(&job.rootfs("on-host")));
    assert!(read(&rootfs.join("packages")).lines().any(|p| p == "dpkg"));
    assert!(read(&rootfs.join("tmp/apt-id")).starts_with("uid=42(_apt)"));
    assert!(!rootfs.join("usr/share/doc/bash").exists());
    assert_eq!(
        config_of(&job.path("in-pod")),
        config_of(&job.path("on-host"))
    );
}

#[test]
fn ignored_paths_survive_in_place_builds() {
    // As kiln's debug image keeps its /busybox (KILN_IGNORE_PATH), and --ignore-path more.
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout)
        .env("KILN_IGNORE_PATH", "/busybox:/opt/tools");
    let rootfs = pod.rootfs();
    for dir in ["busybox", "opt/tools", "opt/other", "elsewhere"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        std::fs::write(rootfs.join(dir).join("file"), dir).unwrap();
    }
    let args = job.args("in-pod", &["--ignore-path", "/elsewhere"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    for kept in ["busybox", "opt/tools", "elsewhere"] {
        assert_eq!(
            read(&rootfs.join(kept).join("file")),
            kept,
            "/{kept} was not kept"
        );
    }
    assert!(
        !rootfs.join("opt/other").exists(),
        "/opt/other was not cleared"
    );
    assert_eq!(read(&rootfs.join("built")), "built\n");
}
