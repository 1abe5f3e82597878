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
/// The JSON blob `digest` of the OCI layout `layout`, or its index.json for `None`.
fn layout_json(layout: &Path, digest: Option<&str>) -> serde_json::Value {
    let path = match digest {
        Some(digest) => layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        None => layout.join("index.json"),
    };
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// What the top of the layout's index.json points at: the image index of a multi-platform
/// build, the manifest of a single one.
fn layout_top(layout: &Path) -> serde_json::Value {
    let index = layout_json(layout, None);
    layout_json(layout, index["manifests"][0]["digest"].as_str())
}

fn config_of(layout: &Path) -> serde_json::Value {
    let read = |digest: &str| layout_json(layout, Some(digest));
    let mut manifest = layout_top(layout);
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
fn run_step_settings_are_a_clear_error_in_place() {
    let job = Job::new("FROM BASE\nRUN echo limited\n");
    for flags in [
        &["--add-host", "db.internal:10.1.2.3"][..],
        &["--ulimit", "nofile=64"],
        &["--shm-size", "128m"],
    ] {
        let message = assert_failed(&job.in_pod(flags));
        assert_contains_all(
            &message,
            &["--add-host, --ulimit and --shm-size", "in-place"],
        );
    }
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
    let index = layout_top(&job.path("in-pod"));
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

#[test]
fn a_layer_the_store_already_holds_does_not_stand_for_the_next_one() {
    // Stage a2's step makes the layer a's made (times clamped): the store keeps the one it
    // has and removes the step's. The COPY's layer that follows must be laid out, whatever
    // inode number it gets.
    let job = Job::new(
        "FROM BASE AS a\nRUN echo same > /same\n\
         FROM a AS a2\nRUN echo same  > /same\n\
         FROM a\nCOPY --from=a2 /same /copied\nRUN cat /copied > /seen\n",
    );
    let output = job.in_pod(&["--build-arg", "SOURCE_DATE_EPOCH=0"]);
    assert_ok(&output);
    assert_eq!(read(&job.rootfs("in-pod").join("seen")), "same\n");
}

#[test]
fn a_secret_with_a_uid_is_the_users_in_place() {
    let job = Job::new(
        "FROM BASE\nUSER builder\n\
         RUN --mount=type=secret,id=token,uid=1000 wc -c < /run/secrets/token > /tmp/size\n",
    );
    assert_ok(&job.in_pod(&[]));
    assert_eq!(read(&job.rootfs("in-pod").join("tmp/size")).trim(), "25");
}

#[test]
fn a_mount_over_a_directory_that_holds_kilns_store_is_refused() {
    // The job's dir (kiln's store, the context) is under /tmp: mounting over /tmp in place
    // would move them away for the step.
    let job = Job::new("FROM BASE\nRUN --mount=type=tmpfs,target=/tmp ls /tmp > /listing\n");
    let output = job.in_pod(&[]);
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &[
            "--mount target /tmp",
            "would move or change",
            &job.dir.path().display().to_string(),
        ],
    );
    assert!(!job.path("in-pod").exists(), "an image was written");
}

#[test]
fn a_mount_target_that_a_symlink_leads_into_kilns_directory_is_refused() {
    // An earlier step (or a base layer) plants a symlink on the way to the target: the
    // secret would land in kiln's own directory.
    let job = Job::new(
        "FROM BASE\nRUN ln -s /kiln /data\n\
         RUN --mount=type=secret,id=token,target=/data/token ls /kiln > /listing\n",
    );
    let output = job.in_pod(&[]);
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &["--mount target /data/token", "would move or change /kiln,"],
    );
    assert!(!job.path("in-pod").exists(), "an image was written");
}

#[test]
fn registry_credentials_outside_kilns_directory_survive_an_in_place_build() {
    // `docker login` (or a CI script) left them in ~/.docker; kiln reads them when it pushes,
    // after the RUN steps have laid out /.
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout)
        .env("HOME", "/root");
    let rootfs = pod.rootfs();
    let config = r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#;
    std::fs::create_dir_all(rootfs.join("root/.docker")).unwrap();
    std::fs::write(rootfs.join("root/.docker/config.json"), config).unwrap();
    let args = job.args("in-pod", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert_eq!(read(&rootfs.join("root/.docker/config.json")), config);
    assert_eq!(read(&job.rootfs("in-pod").join("built")), "built\n");
}

#[test]
fn the_digest_and_metadata_files_of_kiln_build_are_written_where_asked() {
    // The CI job made /results before the build; laying out / must leave the way there.
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let rootfs = pod.rootfs();
    std::fs::create_dir(rootfs.join("results")).unwrap();
    let extra = [
        "--digest-file",
        "/results/digest",
        "--metadata-file",
        "/results/metadata.json",
    ];
    let args = job.args("in-pod", &extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert!(read(&rootfs.join("results/digest")).starts_with("sha256:"));
    assert!(read(&rootfs.join("results/metadata.json")).contains("containerimage.digest"));
}

#[test]
fn a_registry_ca_outside_kilns_directory_survives_until_the_push() {
    // The CA of the registry pushed to is read when kiln first talks to it: after the steps.
    let registry = kiln_testkit::Registry::start_with(kiln_testkit::RegistryOptions {
        tls: true,
        ..Default::default()
    });
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let rootfs = pod.rootfs();
    std::fs::create_dir(rootfs.join("certs")).unwrap();
    std::fs::copy(
        registry.ca_path().unwrap(),
        rootfs.join("certs/registry-ca.pem"),
    )
    .unwrap();
    let image = format!("{}/app:1", registry.addr());
    let root = job.path("root-in-pod");
    let certificate = format!("{}=/certs/registry-ca.pem", registry.addr());
    let ctx = job.path("ctx");
    let args = [
        "build",
        "--progress",
        "plain",
        "--root",
        root.to_str().unwrap(),
        "-t",
        &image,
        "--push",
        "--registry-certificate",
        &certificate,
        ctx.to_str().unwrap(),
    ];
    assert_ok(&pod.command(&args).output().unwrap());
    assert!(image_exists(&image), "{image} was not pushed");
}

#[test]
fn the_default_store_in_kilns_image_survives_a_dockerfiles_cache_cleanup() {
    // `rm -rf /root/.cache` (pip's, go's) is a common last word of a RUN; kiln's store must
    // not be there when kiln runs from its own directory, as in its image.
    let job = Job::new(
        "FROM BASE\n\
         RUN mkdir -p /root/.cache/pip && echo w > /root/.cache/pip/wheel && rm -rf /root/.cache\n\
         RUN echo built > /built\n",
    );
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout)
        .env("HOME", "/root");
    let rootfs = pod.rootfs();
    let ctx = job.path("ctx");
    let out = format!("type=oci,dest={},tar=false", job.path("in-pod").display());
    let args = ["build", "--progress", "plain", "-t", "app:1", "-o", &out];
    let args: Vec<&str> = args.into_iter().chain([ctx.to_str().unwrap()]).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert_eq!(read(&job.rootfs("in-pod").join("built")), "built\n");
    assert!(
        rootfs.join("kiln/store").is_dir(),
        "the store is kiln's directory's"
    );
}

#[test]
fn a_symlink_in_the_image_where_a_kept_path_lies_leaves_the_containers_directory() {
    // Debian's and Alpine's /var/run is a symlink to /run; in a Kubernetes pod the service
    // account token is mounted at /var/run/secrets/kubernetes.io/serviceaccount (here kept
    // with --ignore-path, as a mount point is).
    let base = Job::new("FROM BASE\nRUN mkdir -p /run /var && ln -s /run /var/run\n");
    assert_ok(&base.on_host());
    let job = Job::new(&format!(
        "FROM oci-layout://{}:1\nRUN echo built > /built && echo 1 > /run/app.pid\n",
        base.path("on-host").display()
    ));
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(base.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let rootfs = pod.rootfs();
    let account = rootfs.join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&account).unwrap();
    std::fs::write(account.join("token"), "the pod's token").unwrap();
    let ignore = [
        "--ignore-path",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ];
    let args = job.args("in-pod", &ignore);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert_eq!(read(&account.join("token")), "the pod's token");
    let image = job.rootfs("in-pod");
    assert_eq!(read(&image.join("built")), "built\n");
    assert_eq!(read(&image.join("run/app.pid")), "1\n");
    assert_eq!(
        std::fs::read_link(image.join("var/run")).unwrap(),
        PathBuf::from("/run"),
        "the image keeps its symlink"
    );
}

#[test]
fn the_files_that_say_this_is_a_container_survive_an_in_place_build() {
    // Without /.dockerenv, the next kiln in the same container (a CI job's second build)
    // would find no sign of a container and refuse to build in place.
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let rootfs = pod.rootfs();
    std::fs::write(rootfs.join(".dockerenv"), "").unwrap();
    let args = job.args("in-pod", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert!(
        rootfs.join(".dockerenv").exists(),
        "/.dockerenv was deleted"
    );
    let containerenv = rootfs.join("run/.containerenv");
    assert!(
        std::fs::symlink_metadata(&containerenv).is_ok(),
        "podman's /run/.containerenv was deleted"
    );
}

#[test]
fn auto_does_not_build_in_place_in_a_container_kiln_was_merely_installed_in() {
    // A dev container (Docker's default profile) with kiln installed in /bin: `kiln build`
    // must not wipe the developer's files; in-place is for kiln's own image, or asked for.
    let job = Job::new("FROM BASE\nRUN echo built > /built\n");
    let pod = Pod::new(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let rootfs = pod.rootfs();
    std::fs::write(rootfs.join(".dockerenv"), "").unwrap();
    std::fs::create_dir_all(rootfs.join("home/dev")).unwrap();
    std::fs::write(rootfs.join("home/dev/notes.txt"), "my work").unwrap();
    let args = job.args("in-pod", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let message = assert_failed(&pod.command(&args).output().unwrap());
    assert_contains_all(
        &message,
        &["RUN steps cannot run here", "--isolation in-place"],
    );
    assert_eq!(read(&rootfs.join("home/dev/notes.txt")), "my work");
    assert!(!job.path("in-pod").exists(), "an image was written");
}

#[test]
fn a_mount_over_what_the_image_has_there_adds_nothing_to_the_layer() {
    // What is at a mount's target is moved aside for the step and back: that moves its
    // ctime, but it is not a change of the step's (with namespaces the mount only hides it).
    let job = Job::new(
        "FROM BASE\nRUN mkdir -p /srv/data && echo x > /srv/data/f && echo orig > /srv/conf\n\
         RUN --mount=type=tmpfs,target=/srv/data --mount=type=secret,id=token,target=/srv/conf \
             cat /srv/conf > /dev/null\n",
    );
    let in_pod = job.in_pod(&[]);
    assert_ok(&in_pod);
    assert_ok(&job.on_host());
    let log = stderr(&in_pod);
    assert!(
        log.lines()
            .any(|line| line.starts_with("[stage-0 3/3] DONE") && line.contains("no changes")),
        "the mount step made a layer:\n{log}"
    );
    assert_eq!(
        config_of(&job.path("in-pod")),
        config_of(&job.path("on-host"))
    );
    assert_eq!(read(&job.rootfs("in-pod").join("srv/conf")), "orig\n");
}

#[test]
fn a_symlink_a_step_left_on_the_way_to_a_kept_path_does_not_stop_the_next_layout() {
    // /results/digest is kept (it is written after the build); a step of another stage made
    // /results a symlink, which the next stage's layout of / must clear like anything else.
    let job = Job::new(
        "FROM BASE AS a\nRUN mkdir /elsewhere && ln -s /elsewhere /results\n\
         FROM BASE\nCOPY --from=a /elsewhere /copied\nRUN echo built > /built\n",
    );
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout);
    let args = job.args("in-pod", &["--ignore-path", "/results/kept"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok(&pod.command(&args).output().unwrap());
    assert_eq!(read(&job.rootfs("in-pod").join("built")), "built\n");
}

#[test]
fn what_a_step_leaves_running_is_stopped_before_its_changes_are_read() {
    // A background process holding the output open and writing on: the build must neither
    // wait for it nor take its late writes into a layer.
    let job = Job::new(
        "FROM BASE\n\
         RUN (sh -c 'sleep 2; echo late > /late' &) ; (sleep 600 &) ; echo started > /started\n\
         RUN sleep 3; test ! -e /late && echo none > /checked\n",
    );
    let output = job.in_pod(&[]);
    assert_ok(&output);
    let rootfs = job.rootfs("in-pod");
    assert_eq!(read(&rootfs.join("started")), "started\n");
    assert_eq!(read(&rootfs.join("checked")), "none\n");
    assert!(!rootfs.join("late").exists());
}

#[test]
fn a_credential_helper_the_dockerfile_planted_is_not_run_by_the_push() {
    // The job names a helper (`credsStore`) and ships it in kiln's directory; PATH puts
    // /usr/local/bin first, as kiln's image does. When kiln pushes, / is the built image, so
    // a helper of that name the Dockerfile put on the PATH must not run in kiln's place: it
    // would get the registry's credentials and run in kiln's own session, where nothing the
    // steps leave is killed.
    let registry = kiln_testkit::Registry::start_with(kiln_testkit::RegistryOptions {
        token_auth: Some(("u".to_string(), "p".to_string())),
        ..Default::default()
    });
    let job = Job::new("FROM BASE\nCOPY helper /usr/local/bin/docker-credential-ci\nRUN true\n");
    let marker = job.path("planted-helper-ran");
    let helper = job.path("ctx/helper");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho ran > {}\necho '{{\"Username\":\"u\",\"Secret\":\"p\"}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout)
        .env("HOME", "/root")
        .env("PATH", "/usr/local/bin:/kiln");
    let rootfs = pod.rootfs();
    // The job's own helper, in kiln's directory (it runs after the build, when / is the
    // built image and its /bin/sh).
    let legit_marker = job.path("job-helper-ran");
    let legit = rootfs.join("kiln/docker-credential-ci");
    std::fs::write(
        &legit,
        format!(
            "#!/bin/sh\nread server\necho ran > {}\necho '{{\"Username\":\"u\",\"Secret\":\"p\"}}'\n",
            legit_marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&legit, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(rootfs.join("root/.docker")).unwrap();
    std::fs::write(
        rootfs.join("root/.docker/config.json"),
        r#"{"credsStore":"ci"}"#,
    )
    .unwrap();
    let image = format!("{}/app:1", registry.addr());
    let root = job.path("root-in-pod");
    let ctx = job.path("ctx");
    // The job's helper is a shell script, and kiln's image has no shell before the build:
    // the check before the first step would fail to run it.
    let args = [
        "build",
        "--progress",
        "plain",
        "--skip-push-permission-check",
        "--root",
        root.to_str().unwrap(),
        "-t",
        &image,
        "--push",
        ctx.to_str().unwrap(),
    ];
    let output = pod.command(&args).output().unwrap();
    assert!(
        !marker.exists(),
        "{}\nkiln ran the docker-credential-ci the Dockerfile put in /usr/local/bin",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ok(&output);
    assert!(legit_marker.exists(), "the job's own helper did not run");
}

#[test]
fn a_step_cannot_read_kilns_environment_or_memory() {
    // In place, a step runs as root beside kiln. Without CAP_SYS_PTRACE (not a container
    // default), a non-dumpable kiln keeps /proc/<kiln>/environ and mem from it.
    let job = Job::new(
        "FROM BASE\n\
         RUN for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done \
             | grep -c 'kiln build' > /seen; \
             for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; \
             head -c 1 $p/mem 2>/dev/null; done | grep -c KILN_TEST_MARKER > /found || true\n",
    );
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout)
        .env("NO_COLOR", "1")
        .env("KILN_TEST_MARKER", "kilns-own-environment");
    let args = job.args("in-pod", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = pod.command(&args).output().unwrap();
    assert_ok(&output);
    let rootfs = job.rootfs("in-pod");
    let seen: u32 = read(&rootfs.join("seen")).trim().parse().unwrap();
    assert!(seen >= 1, "the step did not see kiln's process");
    assert_eq!(read(&rootfs.join("found")), "0\n");
}

#[test]
fn a_local_cache_directory_outside_the_mounts_survives_an_in_place_build() {
    // GitLab keeps `cache: paths` in the job's container; in place, RUN steps lay out / anew,
    // and the cache kiln reads and writes there must be left alone.
    let job = Job::new("FROM BASE\nRUN echo ran > /ran\n");
    let pod = Pod::kiln_dir(Path::new(KILN), Profile::DockerDefault)
        .bind(job.dir.path())
        .bind_ro(&busybox_fixtures().oci_layout)
        .env("NO_COLOR", "1");
    let rootfs = pod.rootfs();
    // What an earlier job left there: a layout (no cache in it yet) and another file.
    let cache = rootfs.join("ci-cache");
    std::fs::create_dir_all(cache.join("blobs/sha256")).unwrap();
    std::fs::write(
        cache.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        cache.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    std::fs::write(cache.join("left-by-an-earlier-job"), "keep me\n").unwrap();
    let mut args = job.args("in-pod", &[]);
    let ctx = args.pop().unwrap();
    args.extend(
        [
            "--cache-from",
            "type=local,src=/ci-cache",
            "--cache-to",
            "type=local,dest=/ci-cache,mode=max",
            &ctx,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = pod.command(&args).output().unwrap();
    assert_ok(&output);
    assert!(
        stderr(&output).contains("exported cache to /ci-cache:latest"),
        "{}",
        stderr(&output)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rootfs.join("ci-cache/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(read(&cache.join("left-by-an-earlier-job")), "keep me\n");
}
