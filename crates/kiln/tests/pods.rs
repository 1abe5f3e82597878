//! kiln inside a real container (podman with runc, as root), as a Kubernetes pod or a GitLab
//! runner's job runs it: under podman's default seccomp profile RUN steps run in kiln's
//! namespaces; under Docker's default (Kubernetes' RuntimeDefault) they cannot, and with
//! `--isolation namespaces` kiln says so once, before the first RUN that would run (`auto`
//! builds in place there instead: tests/in_place.rs), while COPY-only Dockerfiles and cached RUN
//! steps still build; a non-root pod user there gets one error that says why. The results are
//! read from outside the container with umoci.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use kiln_testkit::{Pod, Profile, busybox_fixtures};

/// A temp dir bound into the pod, holding the build context, kiln's root and the output.
struct PodBuild {
    dir: tempfile::TempDir,
}

impl PodBuild {
    fn new(dockerfile_after_from: &str) -> PodBuild {
        let dir = tempfile::Builder::new()
            .prefix("kiln-pods-")
            .tempdir()
            .unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        let dockerfile = format!(
            "FROM oci-layout://{}:latest\n{dockerfile_after_from}",
            busybox_fixtures().oci_layout.display()
        );
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(ctx.join("greeting"), "copied into the image\n").unwrap();
        PodBuild { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kiln build -o type=oci,dest=DIR/out,tar=false DIR/ctx` in a pod with `profile`.
    fn run(&self, profile: Profile) -> Output {
        self.run_in(Pod::new(Path::new(env!("CARGO_BIN_EXE_kiln")), profile))
    }

    fn run_in(&self, pod: Pod) -> Output {
        let pod = pod
            .bind(self.dir.path())
            .bind_ro(&busybox_fixtures().oci_layout)
            .env("NO_COLOR", "1");
        let output = format!("type=oci,dest={},tar=false", self.path("out").display());
        let root = self.path("root");
        let ctx = self.path("ctx");
        let args = [
            "build",
            "--progress",
            "plain",
            "--root",
            root.to_str().unwrap(),
            "-t",
            "app:1",
            "-o",
            &output,
            ctx.to_str().unwrap(),
        ];
        pod.command(&args).output().expect("running podman")
    }

    /// The built image's rootfs, unpacked by umoci.
    fn unpacked(&self) -> PathBuf {
        umoci_unpack(&self.path("out"), "1", &self.path("bundle"))
    }
}

#[test]
fn run_steps_build_under_podmans_default_profile() {
    // podman's profile refuses sethostname without CAP_SYS_ADMIN: a step must not fail on it.
    let build = PodBuild::new(
        "RUN echo ran in a pod > /ran && cat /ran\n\
         COPY greeting /greeting\n\
         RUN cat /greeting >> /ran\n",
    );
    let output = build.run(Profile::Podman);
    assert_ok(&output);
    let rootfs = build.unpacked();
    assert_eq!(
        read(&rootfs.join("ran")),
        "ran in a pod\ncopied into the image\n"
    );
}

#[test]
fn docker_default_profile_stops_at_the_first_run_with_one_error() {
    // With namespaces asked for; `auto` builds in place there (tests/in_place.rs).
    let build = PodBuild::new("COPY greeting /greeting\nRUN echo $((6 * 7))\n");
    let output = build.run_in(
        Pod::new(
            Path::new(env!("CARGO_BIN_EXE_kiln")),
            Profile::DockerDefault,
        )
        .env("KILN_ISOLATION", "namespaces"),
    );
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &[
            "RUN steps cannot run here",
            "user and mount namespaces",
            "Operation not permitted",
            "seccomp profile",
            "CAP_SYS_ADMIN",
            "--security-opt seccomp=unconfined",
            "seccompProfile.type: Unconfined",
            "No image was written or pushed",
        ],
    );
    // One error about the runtime, not a failed step; the command never ran.
    assert_eq!(message.matches("RUN steps cannot run here").count(), 1);
    assert!(!message.contains("step [stage-0"), "{message}");
    assert!(!stderr(&output).contains("| 42"), "the RUN ran:\n{message}");
    assert!(!build.path("out").exists(), "the output was written");
}

#[test]
fn cached_run_steps_need_no_namespaces_under_docker_default_profile() {
    // Built once where steps can run; the same store then serves every step from the cache
    // in a pod that refuses namespaces, and the trial (which only a step that runs needs)
    // does not stop it.
    let build = PodBuild::new("RUN echo ran in a pod > /ran\n");
    assert_ok(&build.run(Profile::Podman));
    std::fs::remove_dir_all(build.path("out")).unwrap();
    let output = build.run(Profile::DockerDefault);
    assert_ok(&output);
    assert_eq!(ran_and_cached(&stderr(&output)), (0, 1));
    assert_eq!(read(&build.unpacked().join("ran")), "ran in a pod\n");
}

#[test]
fn cap_sys_admin_is_not_enough_under_docker_default_profile() {
    // Docker's profile refuses pivot_root to every container: the trial finds that too, and
    // the error does not offer CAP_SYS_ADMIN as a way out.
    let build = PodBuild::new("RUN echo never > /ran\n");
    let pod = Pod::new(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        Profile::DockerDefault,
    )
    .cap_add("CAP_SYS_ADMIN")
    .env("KILN_ISOLATION", "namespaces");
    let output = build.run_in(pod);
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &[
            "RUN steps cannot run here",
            "pivot_root: EPERM",
            "pivot_root even with it",
            "--security-opt seccomp=unconfined",
        ],
    );
    assert!(!message.contains("or with CAP_SYS_ADMIN"), "{message}");
    assert!(!build.path("out").exists(), "the output was written");
}

#[test]
fn copy_only_dockerfile_builds_under_docker_default_profile() {
    let build = PodBuild::new("COPY greeting /greeting\n");
    let output = build.run(Profile::DockerDefault);
    assert_ok(&output);
    let rootfs = build.unpacked();
    assert_eq!(read(&rootfs.join("greeting")), "copied into the image\n");
}

/// runAsUser: 1000 under RuntimeDefault: no user namespace, no root.
fn non_root_pod() -> Pod {
    Pod::new(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        Profile::DockerDefault,
    )
    .user(1000, 1000)
}

impl PodBuild {
    /// Lets the pod's user write the context's dir, kiln's root and the output.
    fn open_to_all(&self) {
        let opened = std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(opened.success());
    }
}

#[test]
fn a_non_root_pod_user_gets_one_error_that_says_why_at_the_first_run_step() {
    let build = PodBuild::new("COPY greeting /greeting\nRUN echo never > /ran\n");
    build.open_to_all();
    let output = build.run_in(non_root_pod());
    let message = assert_failed(&output);
    assert_contains_all(
        &message,
        &[
            "RUN steps cannot run here: kiln runs as uid 1000, not as root",
            "refuses to make one (",
            "Operation not permitted",
            "seccomp profile",
            "runAsUser: 0",
            "seccompProfile.type: Unconfined",
            "Dockerfiles without RUN steps build as any user",
            "No image was written or pushed",
        ],
    );
    assert_eq!(message.matches("not as root").count(), 1, "{message}");
    assert!(!build.path("out").exists(), "the output was written");
}

#[test]
fn a_non_root_pod_user_builds_copy_only_dockerfiles_with_the_owners_asked_for() {
    // No user namespace, so kiln cannot chown: it records the owners it gives and writes them
    // into the layer. Owners kiln cannot give are what a user would check first.
    let build = PodBuild::new("");
    let base = format!(
        "oci-layout://{}:latest",
        busybox_fixtures().oci_layout.display()
    );
    std::fs::write(
        build.path("ctx/Dockerfile"),
        format!(
            "FROM scratch AS other\n\
             COPY --chown=1000:1000 greeting /home/user/greeting\n\
             COPY --chmod=555 tree /ro\n\
             COPY greeting /ro/inner/greeting\n\
             COPY --chmod=000 greeting /locked\n\
             FROM {base}\n\
             COPY greeting /greeting\n\
             COPY --chown=7:8 --chmod=4750 greeting /opt/app/tool\n\
             COPY --from=other /home /home\n\
             COPY --from=other /ro /ro\n\
             COPY --from=other /locked /locked\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(build.path("ctx/tree")).unwrap();
    std::fs::write(build.path("ctx/tree/file"), "in a read-only dir\n").unwrap();
    build.open_to_all();
    std::fs::set_permissions(
        build.path("ctx/greeting"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let output = build.run_in(non_root_pod());
    assert_ok(&output);
    // umoci, as root here, lays the layers out with the owners they carry.
    let rootfs = build.unpacked();
    let owner = |path: &str| {
        let md = std::fs::symlink_metadata(rootfs.join(path)).unwrap();
        (md.uid(), md.gid(), md.mode() & 0o7777)
    };
    assert_eq!(owner("greeting"), (0, 0, 0o644));
    assert_eq!(owner("opt/app/tool"), (7, 8, 0o4750));
    assert_eq!(owner("opt/app"), (0, 0, 0o755));
    assert_eq!(owner("home/user/greeting"), (1000, 1000, 0o644));
    // Modes that deny kiln's own user access (kiln works in them all the same).
    assert_eq!(owner("ro"), (0, 0, 0o555));
    assert_eq!(owner("ro/file"), (0, 0, 0o555));
    assert_eq!(owner("ro/inner/greeting"), (0, 0, 0o644));
    assert_eq!(owner("locked"), (0, 0, 0));
    assert_eq!(read(&rootfs.join("locked")), "copied into the image\n");
    // The base's own files keep theirs, and kiln's records stay out of the image.
    assert_eq!(owner("bin/busybox").0, 0);
    for blob in std::fs::read_dir(build.path("out/blobs/sha256")).unwrap() {
        let bytes = std::fs::read(blob.unwrap().path()).unwrap();
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
            .is_err()
        {
            plain = bytes;
        }
        let text = String::from_utf8_lossy(&plain);
        assert!(
            !text.contains("kiln.owner"),
            "kiln's owner record in a blob"
        );
    }
}

#[test]
fn a_non_root_pod_user_builds_on_a_base_that_deletes_files() {
    // A base whose upper layer deletes a file (a whiteout), made on this machine as root.
    // Linux (5.8 on) lets any user make the 0/0 device that marks a deletion in the store.
    let build = PodBuild::new("");
    let base_ctx = build.path("base-ctx");
    std::fs::create_dir(&base_ctx).unwrap();
    std::fs::write(
        base_ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:latest\n\
             RUN mkdir /data && echo kept > /data/kept && echo gone > /data/gone\n\
             RUN rm /data/gone\n",
            busybox_fixtures().oci_layout.display()
        ),
    )
    .unwrap();
    let made = oci_build_command(
        &build.path("host-root"),
        &base_ctx,
        &build.path("base"),
        &[],
    )
    .output()
    .unwrap();
    assert_ok(&made);
    std::fs::write(
        build.path("ctx/Dockerfile"),
        format!(
            "FROM oci-layout://{}:1 AS base\n\
             FROM scratch\n\
             COPY --from=base /data /data\n\
             COPY greeting /greeting\n",
            build.path("base").display()
        ),
    )
    .unwrap();
    build.open_to_all();
    let output = build.run_in(non_root_pod());
    assert_ok(&output);
    let rootfs = build.unpacked();
    assert_eq!(list_dir(&rootfs.join("data")), ["kept"]);
    assert_eq!(read(&rootfs.join("greeting")), "copied into the image\n");
}
