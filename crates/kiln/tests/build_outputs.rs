//! Where built images go: a registry push, OCI archives and OCI layout dirs, each read back
//! with skopeo and umoci; plus reproducible layers and the progress output.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[test]
fn push_writes_an_oci_image_with_gzip_layers_that_unpacks_to_the_built_files() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox:latest\n\
                 RUN echo made-by-run > /run.txt && rm /etc/group\n\
                 COPY tool.sh /app/\n",
            ),
            ("tool.sh", "#!/bin/sh\necho tool\n"),
        ],
    );
    std::fs::set_permissions(ctx.join("tool.sh"), std::fs::Permissions::from_mode(0o754)).unwrap();
    let tag = env.tag("demo:1");
    let o = env.kiln(&[
        "build",
        "-f",
        ctx.join("Dockerfile").to_str().unwrap(),
        "-t",
        &tag,
        "--push",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);

    let m = manifest(&tag);
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "base + RUN + COPY: {m}");
    for layer in layers {
        assert_eq!(layer["mediaType"], OCI_LAYER_GZIP);
    }

    let work = env.path("unpack");
    let rootfs = unpack_pushed(&tag, &work);
    // The blobs skopeo copied are the registry's, byte for byte: they must really be gzip.
    for digest in layer_digests(&m) {
        let blob = work
            .join("layout/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&blob).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "layer {digest} is not gzip");
    }
    assert_eq!(read(&rootfs.join("run.txt")), "made-by-run\n");
    assert_eq!(read(&rootfs.join("app/tool.sh")), "#!/bin/sh\necho tool\n");
    assert_eq!(mode(&rootfs.join("app/tool.sh")), 0o754);
    assert!(
        !rootfs.join("etc/group").exists(),
        "the file the RUN deleted is still in the image"
    );
    assert!(
        rootfs.join("etc/passwd").exists(),
        "the base image's files are missing"
    );
}

const OUTPUT_DOCKERFILE: &str = "FROM $REG/busybox:latest\n\
                                 RUN echo from-run > /run.txt\n\
                                 COPY data.txt /data/\n";

fn output_context(env: &Env) -> std::path::PathBuf {
    env.context(
        "ctx",
        &[("Dockerfile", OUTPUT_DOCKERFILE), ("data.txt", "data\n")],
    )
}

fn skopeo_inspect_local(image: &str) -> Value {
    let o = run_tool(Command::new("skopeo").args(["inspect", image]));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn assert_built_rootfs(rootfs: &std::path::Path) {
    assert_eq!(read(&rootfs.join("run.txt")), "from-run\n");
    assert_eq!(read(&rootfs.join("data/data.txt")), "data\n");
    assert!(rootfs.join("bin/busybox").exists());
}

#[test]
fn oci_archive_output_is_read_by_skopeo_and_unpacked_by_umoci() {
    let env = Env::new();
    let ctx = output_context(&env);
    let archive = env.path("out.tar");
    let spec = format!("type=oci,dest={}", archive.display());
    assert_ok(&env.kiln(&["build", "-t", "demo:1", "-o", &spec, ctx.to_str().unwrap()]));

    let inspected = skopeo_inspect_local(&format!("oci-archive:{}:1", archive.display()));
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(inspected["Architecture"], host_arch());

    let layout = env.path("extracted");
    std::fs::create_dir(&layout).unwrap();
    run_tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    );
    let rootfs = umoci_unpack(&layout, "1", &env.path("bundle"));
    assert_built_rootfs(&rootfs);
}

#[test]
fn oci_directory_output_is_read_by_skopeo_and_unpacked_by_umoci() {
    let env = Env::new();
    let ctx = output_context(&env);
    let layout = env.path("outdir");
    let spec = format!("type=oci,dest={},tar=false", layout.display());
    assert_ok(&env.kiln(&["build", "-t", "demo:1", "-o", &spec, ctx.to_str().unwrap()]));

    let inspected = skopeo_inspect_local(&format!("oci:{}:1", layout.display()));
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    let rootfs = umoci_unpack(&layout, "1", &env.path("bundle"));
    assert_built_rootfs(&rootfs);
}

#[test]
fn copy_layers_are_identical_across_stores_and_times() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox:latest\nCOPY a.txt /a.txt\nCOPY tree /opt/tree/\n",
            ),
            ("a.txt", "alpha\n"),
            ("tree/one", "1\n"),
            ("tree/sub/two", "2\n"),
        ],
    );
    let build = |store: &str, name: &str| {
        let tag = env.tag(name);
        let o = kiln_with_root(
            &env.path(store),
            &["build", "--push", "-t", &tag, ctx.to_str().unwrap()],
        );
        assert_ok(&o);
        layer_digests(&manifest(&tag))
    };
    let first = build("store-a", "det:a");
    // Let the wall clock move on, so a layer that records build time would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build("store-b", "det:b");
    assert_eq!(first.len(), 3);
    assert_eq!(first[1..], second[1..], "COPY layers differ between builds");
}

#[test]
fn plain_progress_shows_numbered_steps_with_times() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo printed-by-run\nENV X=1\n",
        )],
    );
    let o = env.kiln(&["build", "--progress=plain", ctx.to_str().unwrap()]);
    assert_ok(&o);
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.contains(&format!("[stage-0 1/3] FROM {}/busybox:latest", env.reg()).as_str()),
        "{err}"
    );
    assert!(
        lines.contains(&"[stage-0 2/3] RUN echo printed-by-run"),
        "{err}"
    );
    assert!(lines.contains(&"[stage-0 3/3] ENV X=1"), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("printed-by-run") && !l.contains("RUN")),
        "the RUN's output is not shown:\n{err}"
    );
    for step in 1..=3 {
        let prefix = format!("[stage-0 {step}/3] DONE ");
        let done = lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{err}"));
        let seconds = done.split_whitespace().next().unwrap();
        assert!(
            seconds
                .strip_suffix('s')
                .is_some_and(|n| n.parse::<f64>().is_ok()),
            "DONE without a time: {done:?}"
        );
    }
}

#[test]
fn quiet_progress_prints_only_the_digest() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo hidden-output\n",
        )],
    );
    // buildx's -q is the same as --progress=quiet.
    for (n, flag) in ["--progress=quiet", "-q"].into_iter().enumerate() {
        let tag = env.tag(&format!("quiet:{n}"));
        let o = env.kiln(&["build", flag, "--push", "-t", &tag, ctx.to_str().unwrap()]);
        assert_ok(&o);
        let out = stdout(&o);
        let pushed = skopeo_inspect(&tag, None);
        assert_eq!(out, format!("{}\n", pushed["Digest"].as_str().unwrap()));
        let err = stderr(&o);
        assert!(
            !err.contains("hidden-output") && !err.contains("DONE"),
            "{flag} printed progress:\n{err}"
        );
    }
}

/// A build with no output says where the image went and how to get it out; one with an
/// output does not.
#[test]
fn a_build_without_an_output_says_so() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM $REG/busybox:latest\n")]);
    let o = env.kiln(&["build", "-t", "app:1", ctx.to_str().unwrap()]);
    assert_ok(&o);
    assert_contains_all(
        &stderr(&o),
        &[
            "no output asked for",
            "kiln's store only",
            "--push",
            "podman load",
        ],
    );
    let dest = format!("type=oci,dest={}", env.path("out.tar").display());
    let o = env.kiln(&["build", "-o", &dest, ctx.to_str().unwrap()]);
    assert_ok(&o);
    assert!(
        !stderr(&o).contains("no output asked for"),
        "{}",
        stderr(&o)
    );
}

/// buildx's stdin forms: context `-` as a tar (here gzipped) or a lone Dockerfile, and
/// `-f -`; both at once is refused.
#[test]
fn the_context_or_the_dockerfile_can_come_on_stdin() {
    use std::io::Write as _;
    use std::process::Stdio;
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM $REG/busybox\nCOPY a.txt /a.txt\n"),
            (
                "ci/Dockerfile.prod",
                "FROM $REG/busybox\nCOPY a.txt /prod.txt\n",
            ),
            ("a.txt", "from the tar\n"),
        ],
    );
    let run = |args: &[&str], input: &[u8]| {
        let mut child = kiln_command(&env.store(), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let tar = std::process::Command::new("tar")
        .arg("-cz")
        .arg("-C")
        .arg(&ctx)
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success());
    let out = env.path("from-tar");
    assert_ok(&run(
        &["build", "-o", out.to_str().unwrap(), "-"],
        &tar.stdout,
    ));
    assert_eq!(read(&out.join("a.txt")), "from the tar\n");

    // -f with a tar context names a file of the tar, as for docker build, not one of the
    // current directory.
    let out = env.path("from-tar-f");
    assert_ok(&run(
        &[
            "build",
            "-f",
            "ci/Dockerfile.prod",
            "-o",
            out.to_str().unwrap(),
            "-",
        ],
        &tar.stdout,
    ));
    assert_eq!(read(&out.join("prod.txt")), "from the tar\n");

    // -f -: the Dockerfile on stdin, the context a directory.
    let dockerfile = format!("FROM {}/busybox\nCOPY a.txt /b.txt\n", env.reg());
    let out = env.path("from-f");
    let o = run(
        &[
            "build",
            "-f",
            "-",
            "-o",
            out.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        dockerfile.as_bytes(),
    );
    assert_ok(&o);
    assert_eq!(read(&out.join("b.txt")), "from the tar\n");

    // A lone Dockerfile as the context: nothing to copy from.
    let lone = format!("FROM {}/busybox\nRUN echo lone > /lone\n", env.reg());
    let out = env.path("lone");
    assert_ok(&run(
        &["build", "-o", out.to_str().unwrap(), "-"],
        lone.as_bytes(),
    ));
    assert_eq!(read(&out.join("lone")), "lone\n");

    let both = run(&["build", "-f", "-", "-"], lone.as_bytes());
    assert_contains_all(&assert_failed(&both), &["both read standard input"]);
}
