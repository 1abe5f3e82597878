//! kiln's own image, built by kiln with `scripts/build-image.sh` into a loopback registry, as
//! a user builds it: one index per tag holding linux/amd64 and linux/arm64, each with a static
//! kiln at /kiln/kiln that runs as `kiln executor` when called /kiln/executor, kaniko's
//! environment, CA certificates; the `debug` tag adds busybox with a shell. The binaries are
//! read out of the pushed images with skopeo and umoci and run: amd64 natively, arm64 under
//! `qemu-aarch64-static`. Running the script again changes nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// ELF `e_machine` values.
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

fn run_script(repository: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-image.sh");
    let output = Command::new(script)
        .arg(repository)
        .output()
        .expect("running scripts/build-image.sh");
    assert!(
        output.status.success(),
        "build-image.sh failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The pushed index of `reference`, checked to hold exactly linux/amd64 and linux/arm64.
fn index_platforms(reference: &str) -> Vec<String> {
    let index: Value = serde_json::from_slice(&skopeo_raw(reference)).unwrap();
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{reference} is not an index: {index}"))
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    platforms
}

/// The rootfs and config of `reference`'s image for `arch`, unpacked with skopeo and umoci.
fn unpack(dir: &Path, reference: &str, arch: &str) -> (PathBuf, Value) {
    std::fs::create_dir_all(dir).unwrap();
    let layout = dir.join(format!("layout-{arch}"));
    skopeo_to_oci(reference, &layout, "image", Some(arch));
    let rootfs = umoci_unpack(&layout, "image", &dir.join(format!("bundle-{arch}")));
    (rootfs, skopeo_inspect_config(reference, arch))
}

fn skopeo_inspect_config(reference: &str, arch: &str) -> Value {
    let output = Command::new("skopeo")
        .args(["--override-os=linux", &format!("--override-arch={arch}")])
        .args(["inspect", "--config", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("running skopeo");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `e_machine` of an ELF file, and whether it names a dynamic loader (PT_INTERP): a static
/// binary has none and runs in a `FROM scratch` image.
fn elf_machine_and_interp(path: &Path) -> (u16, bool) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(bytes[4], 2, "{} is not a 64-bit ELF", path.display());
    assert_eq!(bytes[5], 1, "{} is not little-endian", path.display());
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let machine = u16_at(0x12);
    let program_headers = u64_at(0x20) as usize;
    let entry_size = usize::from(u16_at(0x36));
    let entries = usize::from(u16_at(0x38));
    let interp = (0..entries).any(|i| u32_at(program_headers + i * entry_size) == PT_INTERP);
    (machine, interp)
}

fn stdout_of(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(output.status.success(), "{command:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `program` of an unpacked `arch` image: natively, or under QEMU for arm64.
fn run_in(arch: &str, program: &Path) -> Command {
    match arch {
        "amd64" => Command::new(program),
        _ => {
            let mut command = Command::new("qemu-aarch64-static");
            command.arg(program);
            command
        }
    }
}

/// `podman run` of an unpacked image as a runtime runs the image: its config's environment,
/// working dir and entrypoint (or `entrypoint`, as a GitLab job sets it), with the build
/// context `ctx` at kaniko's `/workspace`. The podman flags are this machine's (see
/// kiln_testkit::Pod).
fn podman_run(
    rootfs: &Path,
    config: &Value,
    entrypoint: Option<&str>,
    ctx: &Path,
    args: &[&str],
) -> Output {
    let config = &config["config"];
    let mut command = Command::new("podman");
    command.args(["run", "--rm", "--runtime", "runc", "--network", "host"]);
    command.args([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
    ]);
    for variable in config["Env"].as_array().unwrap() {
        command.arg("--env").arg(variable.as_str().unwrap());
    }
    let image_entrypoint = config["Entrypoint"].to_string();
    command
        .arg("--entrypoint")
        .arg(entrypoint.unwrap_or(&image_entrypoint))
        .arg("--workdir")
        .arg(config["WorkingDir"].as_str().unwrap())
        .arg("--volume")
        .arg(format!("{}:/workspace:ro", ctx.display()))
        .arg("--rootfs")
        .arg(rootfs)
        .args(args);
    let output = command.output().expect("running podman");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_script_builds_and_pushes_kilns_own_image_for_amd64_and_arm64() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let repository = format!("{}/tools/kiln", registry.addr());
    let version = env!("CARGO_PKG_VERSION");
    run_script(&repository);

    let tags = ["latest", version, "debug", &format!("{version}-debug")];
    for tag in tags {
        assert_eq!(
            index_platforms(&format!("{repository}:{tag}")),
            ["linux/amd64", "linux/arm64"],
            "{tag}"
        );
    }

    for (arch, machine) in [("amd64", EM_X86_64), ("arm64", EM_AARCH64)] {
        let (rootfs, config) = unpack(dir.path(), &format!("{repository}:latest"), arch);
        let kiln = rootfs.join("kiln/kiln");
        assert_eq!(
            elf_machine_and_interp(&kiln),
            (machine, false),
            "{arch}: (e_machine, has a dynamic loader)"
        );
        // The version, and the commit the image was built from.
        let shown = stdout_of(run_in(arch, &kiln).arg("--version"));
        assert!(
            shown.starts_with(&format!("kiln {version} (commit ")),
            "{arch}: {shown}"
        );
        // /kiln/executor is kiln in executor mode, with kaniko's flags.
        assert_eq!(
            std::fs::read_link(rootfs.join("kiln/executor")).unwrap(),
            Path::new("kiln")
        );
        let help = stdout_of(run_in(arch, &rootfs.join("kiln/executor")).arg("--help"));
        assert!(
            help.contains("--destination") && help.contains("--no-push"),
            "{arch}: {help}"
        );
        assert!(rootfs.join("kiln/.docker").is_dir(), "{arch}");
        // kiln's temporary files (a docker archive on its way out) go to /tmp.
        let tmp_mode =
            std::fs::metadata(rootfs.join("tmp")).map(|m| m.permissions().mode() & 0o7777);
        assert_eq!(tmp_mode.ok(), Some(0o1777), "{arch}: /tmp");
        let certs = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .expect("the image has CA certificates");
        assert!(
            certs.matches("-----BEGIN CERTIFICATE-----").count() > 100,
            "{arch}: too few certificates"
        );
        assert!(
            !rootfs.join("busybox").exists(),
            "{arch}: only debug has a shell"
        );
        let image_config = &config["config"];
        assert_eq!(
            image_config["Entrypoint"],
            json!(["/kiln/executor"]),
            "{arch}"
        );
        let env = image_config["Env"].as_array().unwrap();
        assert!(
            env.contains(&json!("DOCKER_CONFIG=/kiln/.docker")),
            "{env:?}"
        );
        assert!(env.contains(&json!("PATH=/usr/local/bin:/kiln")), "{env:?}");
        assert_eq!(config["architecture"], arch);
        assert_eq!(
            image_config["Labels"]["org.opencontainers.image.version"],
            version
        );

        let (debug_rootfs, debug_config) = unpack(
            &dir.path().join("debug"),
            &format!("{repository}:debug"),
            arch,
        );
        assert!(debug_rootfs.join("kiln/kiln").is_file(), "{arch}");
        assert_eq!(
            std::fs::read_link(debug_rootfs.join("busybox/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            std::fs::read_link(debug_rootfs.join("bin/sh")).unwrap(),
            Path::new("/busybox/busybox")
        );
        let busybox = debug_rootfs.join("busybox/busybox");
        assert_eq!(elf_machine_and_interp(&busybox), (machine, false), "{arch}");
        // A job script's shell: busybox picks the applet from its first argument.
        assert_eq!(
            stdout_of(run_in(arch, &busybox).args(["sh", "-c", "echo $((6 * 7))"])),
            "42\n",
            "{arch}"
        );
        let debug_env = debug_config["config"]["Env"].as_array().unwrap();
        assert!(
            debug_env.contains(&json!("PATH=/usr/local/bin:/kiln:/busybox")),
            "{debug_env:?}"
        );
        assert_eq!(
            debug_config["config"]["Entrypoint"],
            json!(["/kiln/executor"])
        );
    }

    // In a container, as a Kubernetes pod runs the image, kiln builds a COPY-only Dockerfile
    // from /workspace and pushes it: no libraries, a /tmp, the registry over the network.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY greeting /\n").unwrap();
    std::fs::write(ctx.join("greeting"), "built in kiln's image\n").unwrap();
    let pod_image = format!("{}/tools/greeting:pod", registry.addr());
    let (rootfs, config) = unpack(
        &dir.path().join("pod"),
        &format!("{repository}:latest"),
        "amd64",
    );
    podman_run(&rootfs, &config, None, &ctx, &["--destination", &pod_image]);
    let manifest: Value = serde_json::from_slice(&skopeo_raw(&pod_image)).unwrap();
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(1),
        "{manifest}"
    );

    // As GitLab runs a job in the debug image (entrypoint reset, the script given to `sh`),
    // with a RUN step built in place, in the container's own /: the job's shell is still
    // there for the script's next command.
    let (rootfs, config) = unpack(
        &dir.path().join("job"),
        &format!("{repository}:debug"),
        "amd64",
    );
    let job_ctx = dir.path().join("job-ctx");
    std::fs::create_dir(&job_ctx).unwrap();
    std::fs::copy(rootfs.join("busybox/busybox"), job_ctx.join("busybox")).unwrap();
    std::fs::write(
        job_ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"touch\", \"/made\"]\n",
    )
    .unwrap();
    let job_image = format!("{}/tools/greeting:job", registry.addr());
    let script = format!(
        "/kiln/executor --isolation in-place --context /workspace --dockerfile Dockerfile \
         --destination {job_image} && ls /busybox/sh"
    );
    let job = podman_run(&rootfs, &config, Some(""), &job_ctx, &["sh", "-c", &script]);
    assert_eq!(String::from_utf8_lossy(&job.stdout), "/busybox/sh\n");
    let manifest: Value = serde_json::from_slice(&skopeo_raw(&job_image)).unwrap();
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(2),
        "{manifest}"
    );

    // Running it again rebuilds nothing and pushes the same images.
    let before: Vec<Vec<u8>> = tags
        .iter()
        .map(|tag| skopeo_raw(&format!("{repository}:{tag}")))
        .collect();
    run_script(&repository);
    let after: Vec<Vec<u8>> = tags
        .iter()
        .map(|tag| skopeo_raw(&format!("{repository}:{tag}")))
        .collect();
    assert!(before == after, "a second run changed the pushed indexes");
}
