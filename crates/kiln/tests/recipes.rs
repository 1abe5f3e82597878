//! The recipes users copy, run as written: examples/gitlab-ci's job script in kiln's `debug`
//! image as GitLab's docker executor runs a job, and examples/kubernetes' Pod under `podman
//! kube play`, both under Docker's default seccomp profile and capabilities (what a runner and
//! Kubernetes' `RuntimeDefault` apply), both pushing to a loopback registry. kiln's image comes
//! from scripts/build-image.sh (tests/own_image.rs checks the image itself).
//!
//! What the tests change in a recipe, and why: its image and registry names (placeholders in
//! the recipe), and, for Kubernetes, two things podman does differently from a cluster:
//! podman 4.3's `kube play` crashes on `secret` volumes, so the same `config.json` comes from
//! a `hostPath` volume at the same mount path; and podman 4.3 ignores `seccompProfile`
//! (it applies its own profile, which allows namespaces) where containerd and CRI-O apply
//! Docker's for `RuntimeDefault`, so the manifest gets Docker's profile through the older
//! annotation podman reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use kiln_testkit::{Profile, Registry, Runtime, push_busybox};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// kiln's image as an OCI layout (tags `latest` and `debug`), built once per checkout.
fn kiln_image_layout() -> PathBuf {
    let output = Command::new(repo_file("scripts/build-image.sh"))
        .output()
        .expect("running scripts/build-image.sh");
    assert!(
        output.status.success(),
        "build-image.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    repo_file("target/own-image/oci")
}

/// The lines of `job`'s `key` (`script`, `before_script`) list in a .gitlab-ci.yml, as GitLab
/// runs them; enough YAML for the recipe's plain block lists.
fn job_lines(yaml: &str, job: &str, key: &str) -> Vec<String> {
    let mut lines = yaml.lines().skip_while(|l| *l != format!("{job}:")).skip(1);
    let mut out = Vec::new();
    let mut in_key = false;
    for line in lines.by_ref() {
        if !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if line == format!("  {key}:") {
            in_key = true;
        } else if in_key {
            match line.strip_prefix("    - ") {
                Some(command) => out.push(command.to_string()),
                None => in_key = false,
            }
        }
    }
    out
}

/// A project with a Dockerfile FROM the busybox fixture in `registry`, with a RUN step.
fn project(dir: &Path, registry: &Registry) -> PathBuf {
    push_busybox(registry, "base");
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("Dockerfile"),
        format!(
            "FROM {}/base:latest\nCOPY hello /hello\nRUN cat /hello > /built && echo built >> /built\n",
            registry.addr()
        ),
    )
    .unwrap();
    std::fs::write(project.join("hello"), "from the project\n").unwrap();
    project
}

#[test]
fn the_gitlab_job_builds_and_pushes_in_kilns_debug_image() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let project = project(work.path(), &registry);
    let runtime = Runtime::new(Profile::DockerDefault);
    let image = runtime.load(&kiln_image_layout(), "debug");

    let yaml = std::fs::read_to_string(repo_file("examples/gitlab-ci/.gitlab-ci.yml")).unwrap();
    let script = job_lines(&yaml, "build", "script");
    assert_eq!(script.len(), 3, "{script:?}");
    // As GitLab's docker executor: the image with its entrypoint reset, the project at
    // /builds/..., the CI variables, and the script fed to the image's shell.
    let dir = "/builds/group/project";
    let mut command = runtime.podman();
    command
        .args(["run", "--rm", "-i", "--network", "host", "--entrypoint", ""])
        .arg("--volume")
        .arg(format!("{}:{dir}", project.display()))
        .args(["--workdir", dir]);
    for (key, value) in [
        ("CI_PROJECT_DIR", dir.to_string()),
        ("CI_REGISTRY", registry.addr().to_string()),
        ("CI_REGISTRY_USER", "gitlab-ci-token".to_string()),
        ("CI_REGISTRY_PASSWORD", "job-token".to_string()),
        (
            "CI_REGISTRY_IMAGE",
            format!("{}/group/project", registry.addr()),
        ),
        ("CI_COMMIT_SHORT_SHA", "abc1234".to_string()),
    ] {
        command.arg("--env").arg(format!("{key}={value}"));
    }
    let mut child = command
        .arg(&image)
        .args(["sh", "-e"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // The shell goes on after the build: an in-place build must leave it (/busybox).
        stdin
            .write_all(format!("{}\necho job done\n", script.join("\n")).as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert_ok(&output);
    assert!(stdout(&output).contains("job done"), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("RUN steps run in place"),
        "{}",
        stderr(&output)
    );

    let pushed = format!("{}/group/project:abc1234", registry.addr());
    let rootfs = unpack_pushed(&pushed, &work.path().join("unpacked"));
    assert_eq!(read(&rootfs.join("built")), "from the project\nbuilt\n");
}

#[test]
fn the_kubernetes_pod_builds_and_pushes_under_kube_play() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let project = project(work.path(), &registry);
    let runtime = Runtime::new(Profile::DockerDefault);
    let image = runtime.load(&kiln_image_layout(), "latest");

    // The build-context claim: a podman volume holding the project.
    let created = runtime
        .podman()
        .args(["volume", "create", "build-context"])
        .output()
        .unwrap();
    assert_ok(&created);
    let mountpoint = runtime
        .podman()
        .args([
            "volume",
            "inspect",
            "build-context",
            "--format",
            "{{.Mountpoint}}",
        ])
        .output()
        .unwrap();
    let mountpoint = PathBuf::from(stdout(&mountpoint).trim());
    for file in ["Dockerfile", "hello"] {
        std::fs::copy(project.join(file), mountpoint.join(file)).unwrap();
    }
    let credentials = work.path().join("docker");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("config.json"), r#"{"auths":{}}"#).unwrap();

    let recipe = std::fs::read_to_string(repo_file("examples/kubernetes/build-pod.yaml")).unwrap();
    let secret_volume = "      secret:\n        secretName: registry-credentials\n        items:\n          - key: .dockerconfigjson\n            path: config.json\n";
    assert!(
        recipe.contains(secret_volume),
        "the recipe's secret volume changed"
    );
    let manifest = recipe
        .replace("registry.example.com/tools/kiln:latest", &image)
        .replace("registry.example.com", registry.addr())
        .replace(
            secret_volume,
            &format!("      hostPath:\n        path: {}\n", credentials.display()),
        )
        // podman 4.3 reads the profile from the annotation that preceded `seccompProfile`.
        .replace(
            "metadata:\n  name: kiln-build\n",
            "metadata:\n  name: kiln-build\n  annotations:\n    seccomp.security.alpha.kubernetes.io/pod: localhost/docker-default.json\n",
        );
    assert!(
        recipe.contains("type: RuntimeDefault"),
        "the recipe's profile changed"
    );
    let file = work.path().join("build-pod.yaml");
    std::fs::write(&file, manifest).unwrap();

    let played = runtime
        .podman()
        .args([
            "kube",
            "play",
            "--network",
            "host",
            "--seccomp-profile-root",
        ])
        .arg(runtime.seccomp_profile_root())
        .arg(&file)
        .output()
        .unwrap();
    assert_ok(&played);
    let waited = runtime
        .podman()
        .args(["wait", "kiln-build-kiln"])
        .output()
        .unwrap();
    let logs = runtime
        .podman()
        .args(["logs", "kiln-build-kiln"])
        .output()
        .unwrap();
    let log = format!("{}{}", stdout(&logs), stderr(&logs));
    assert_eq!(stdout(&waited).trim(), "0", "the pod's kiln failed:\n{log}");
    assert!(log.contains("RUN steps run in place"), "{log}");

    let pushed = format!("{}/team/app:1.0", registry.addr());
    let rootfs = unpack_pushed(&pushed, &work.path().join("unpacked"));
    assert_eq!(read(&rootfs.join("built")), "from the project\nbuilt\n");
}
