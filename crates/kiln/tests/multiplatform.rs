//! Multi-platform builds: one index, RUN steps emulated with QEMU inside kiln's own user
//! namespace, shared build-platform stages, and the native-runner fan-out.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// (platform flag, `uname -m` inside, ELF e_machine, skopeo arch override)
const PLATFORMS: &[(&str, &str, u16, &str)] = &[
    ("linux/amd64", "x86_64", 0x3e, "amd64"),
    ("linux/arm64", "aarch64", 0xb7, "arm64"),
    ("linux/arm/v7", "armv7l", 0x28, "arm/v7"),
    ("linux/ppc64le", "ppc64le", 0x15, "ppc64le"),
    ("linux/s390x", "s390x", 0x16, "s390x"),
];

/// e_machine of an ELF file (big-endian for s390x, little-endian for the others).
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    if bytes[5] == 2 {
        u16::from_be_bytes([bytes[18], bytes[19]])
    } else {
        u16::from_le_bytes([bytes[18], bytes[19]])
    }
}

fn binfmt_entries() -> Vec<String> {
    std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn index_platforms(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect()
}

#[test]
fn five_platforms_run_their_own_architecture_into_one_index() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nARG TARGETPLATFORM\nRUN uname -m > /arch && cp /bin/busybox /made-by-run && echo $TARGETPLATFORM > /target\n",
        )],
    );
    let binfmt_before = binfmt_entries();
    let mountinfo_before = read(Path::new("/proc/self/mountinfo"));
    let all: Vec<&str> = PLATFORMS.iter().map(|p| p.0).collect();
    let platforms = all.join(",");
    let o = env.build_and_push(
        &ctx,
        "multi:1",
        &["--platform", &platforms, "--progress=plain"],
    );
    let log = stderr(&o);

    let index = manifest(&env.tag("multi:1"));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index_platforms(&index), all);
    for (platform, machine, e_machine, arch) in PLATFORMS {
        let root = unpack_platform(
            &env.tag("multi:1"),
            arch,
            &env.path(&format!("unpack-{}", arch.replace('/', "-"))),
        );
        assert_eq!(
            read(&root.join("arch")).trim(),
            *machine,
            "uname -m for {platform}"
        );
        assert_eq!(read(&root.join("target")).trim(), *platform);
        assert_eq!(
            elf_machine(&root.join("made-by-run")),
            *e_machine,
            "ELF made for {platform}"
        );
    }
    // The summary marks which steps ran under QEMU.
    assert!(
        log.contains("linux/arm64") && log.contains("emulated"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("linux/amd64") && l.contains("native")),
        "{log}"
    );
    // Nothing was registered or mounted on the host.
    assert_eq!(binfmt_entries(), binfmt_before);
    assert!(
        !read(Path::new("/proc/self/mountinfo")).contains("binfmt"),
        "binfmt_misc mounted on the host"
    );
    assert_eq!(
        read(Path::new("/proc/self/mountinfo")).lines().count(),
        mountinfo_before.lines().count()
    );
}

#[test]
fn build_platform_stage_runs_once_for_every_target() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM --platform=$BUILDPLATFORM $REG/busybox:latest AS build\n\
             RUN uname -m > /built-on\n\
             FROM $REG/busybox:latest\n\
             ARG TARGETARCH\n\
             COPY --from=build /built-on /built-on\n\
             RUN echo $TARGETARCH > /arch\n",
        )],
    );
    let o = env.build_and_push(
        &ctx,
        "shared:1",
        &[
            "--platform",
            "linux/amd64,linux/arm64,linux/s390x",
            "--progress=plain",
        ],
    );
    let log = stderr(&o);
    let step_starts = |needle: &str| {
        log.lines()
            .filter(|l| l.starts_with('[') && l.contains(needle))
            .count()
    };
    let build_runs = step_starts(" build 2/2] RUN uname -m");
    assert_eq!(
        build_runs, 1,
        "the build-platform stage should run once:\n{log}"
    );
    assert_eq!(
        step_starts("RUN echo $TARGETARCH"),
        3,
        "the target stage runs per platform:\n{log}"
    );
    for (arch, expect) in [("amd64", "amd64"), ("arm64", "arm64"), ("s390x", "s390x")] {
        let root = unpack_platform(&env.tag("shared:1"), arch, &env.path(&format!("u-{arch}")));
        assert_eq!(
            read(&root.join("built-on")).trim(),
            "x86_64",
            "shared stage ran on the build platform"
        );
        assert_eq!(read(&root.join("arch")).trim(), expect);
    }
}

#[test]
fn docker_media_types_on_request() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo hi > /hi\n",
        )],
    );
    let tag = env.tag("dockerlist:1");
    let o = env.kiln(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        "-o",
        "type=registry,oci-mediatypes=false",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let list = manifest(&tag);
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    for m in list["manifests"].as_array().unwrap() {
        assert_eq!(
            m["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
    }
    let arm = unpack_platform(&tag, "arm64", &env.path("u"));
    assert_eq!(read(&arm.join("hi")), "hi\n");
}

#[test]
fn oci_layout_output_holds_the_index() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN uname -m > /arch\n",
        )],
    );
    let out = env.path("out");
    let o = env.kiln(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm/v7",
        "-t",
        "demo:2",
        "-o",
        &format!("type=oci,dest={},tar=false", out.display()),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let index: Value = serde_json::from_str(&read(&out.join("index.json"))).unwrap();
    let top = &index["manifests"][0];
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(top["annotations"]["org.opencontainers.image.ref.name"], "2");
    let inner: Value = serde_json::from_str(&read(
        &out.join("blobs/sha256").join(
            top["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        ),
    ))
    .unwrap();
    assert_eq!(index_platforms(&inner), vec!["linux/amd64", "linux/arm/v7"]);
}

#[test]
fn bad_platforms_fail_before_any_step() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN echo hi > /hi\n",
        )],
    );
    let c = ctx.to_str().unwrap();

    let o = env.kiln(&["build", "--platform", "linux/amd64,linux/sparc", c]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["linux/sparc", "linux/arm/v7", "linux/arm64"]);

    // The base image has no riscv64 entry: the error names the base and what it has.
    let tag = env.tag("noriscv:1");
    let o = env.kiln(&[
        "build",
        "--push",
        "-t",
        &tag,
        "--platform",
        "linux/amd64,linux/riscv64",
        c,
    ]);
    let err = assert_failed(&o);
    assert_contains_all(
        &err,
        &["busybox", "linux/riscv64", "linux/arm64", "linux/s390x"],
    );
    assert!(!image_exists(&tag));

    // No QEMU for arm64 where we point: fail before any step, naming the arch and the ways out.
    let empty = env.path("no-qemu");
    std::fs::create_dir_all(&empty).unwrap();
    let o = env.kiln(&[
        "build",
        "--qemu-dir",
        empty.to_str().unwrap(),
        "--platform",
        "linux/amd64,linux/arm64",
        c,
    ]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["arm64", "qemu-user-static", "BUILDPLATFORM"]);
    assert!(
        !stderr(&o).contains("] RUN"),
        "a step ran before the check:\n{}",
        stderr(&o)
    );
}

#[test]
fn one_failing_platform_cancels_the_build_and_pushes_nothing() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM $REG/busybox:latest\nRUN if [ \"$(uname -m)\" = s390x ]; then echo no s390x here >&2; exit 3; fi\n")],
    );
    let tag = env.tag("partial:1");
    let o = env.kiln(&[
        "build",
        "--push",
        "-t",
        &tag,
        "--platform",
        "linux/amd64,linux/arm64,linux/s390x",
        ctx.to_str().unwrap(),
    ]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["linux/s390x", "exit code 3", "no s390x here"]);
    assert!(
        !image_exists(&tag),
        "a tag was pushed although a platform failed"
    );
}

#[test]
fn per_platform_pushes_by_digest_stitch_into_the_same_index_as_one_build() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN uname -m > /arch\n",
        )],
    );
    let c = ctx.to_str().unwrap();
    let repo = env.tag("fan");
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let mut metadata = Vec::new();
    for p in ["linux/amd64", "linux/arm64"] {
        let m = env.path(&format!("meta-{}.json", p.replace('/', "-")));
        let mut args = vec![
            "build",
            "--push",
            "--push-by-digest",
            "-t",
            &repo,
            "--platform",
            p,
            "--metadata-file",
            m.to_str().unwrap(),
        ];
        args.extend_from_slice(&epoch);
        args.push(c);
        assert_ok(&env.kiln(&args));
        let meta: Value = serde_json::from_str(&read(&m)).unwrap();
        assert_eq!(
            meta["containerimage.descriptor"]["platform"]["architecture"],
            p.rsplit('/').next().unwrap()
        );
        assert_eq!(
            meta["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert!(meta["containerimage.descriptor"]["size"].as_u64().unwrap() > 0);
        metadata.push(m);
    }
    // Pushed by digest: no tag exists yet.
    assert!(!image_exists(&format!("{repo}:latest")));
    let stitched = format!("{repo}:1");
    let mut args = vec![
        "manifest",
        "create",
        "-t",
        &stitched,
        "--push",
        "--from-metadata",
    ];
    let paths: Vec<String> = metadata.iter().map(|m| m.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    assert_ok(&env.kiln(&args));

    let together = env.tag("together:1");
    let mut args = vec![
        "build",
        "--push",
        "-t",
        &together,
        "--platform",
        "linux/amd64,linux/arm64",
    ];
    args.extend_from_slice(&epoch);
    args.push(c);
    assert_ok(&env.kiln(&args));

    let a = manifest(&stitched);
    let b = manifest(&together);
    assert_eq!(
        a["manifests"], b["manifests"],
        "stitched index differs from the one-command build"
    );
    assert_eq!(skopeo_raw(&stitched), skopeo_raw(&together));
}

#[test]
fn manifest_create_with_a_missing_source_names_it_and_pushes_nothing() {
    let env = Env::new();
    let missing = format!("{}@sha256:{}", env.tag("busybox"), "0".repeat(64));
    let tag = env.tag("stitched:1");
    let o = env.kiln(&["manifest", "create", "-t", &tag, "--push", &missing]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &[&missing[..20], "not found"]);
    assert!(!image_exists(&tag));
}

#[test]
fn emulated_compile_steps_get_a_cross_compile_hint() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nRUN command -v gcc || echo no compiler here\n",
        )],
    );
    let o = env.kiln(&[
        "build",
        "--platform",
        "linux/arm64",
        "--progress=plain",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let log = stderr(&o);
    assert_contains_all(
        &log,
        &[
            "hint:",
            "FROM --platform=$BUILDPLATFORM",
            "ARG TARGETOS TARGETARCH",
        ],
    );
    // Native steps get no hint.
    let o = env.kiln(&["build", "--platform", "linux/amd64", ctx.to_str().unwrap()]);
    assert_ok(&o);
    assert!(!stderr(&o).contains("hint:"), "{}", stderr(&o));
}

#[test]
fn docker_archive_output_refuses_several_platforms() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM $REG/busybox:latest\n")]);
    let out = env.path("x.tar");
    let o = env.kiln(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "-o",
        &format!("type=docker,dest={}", out.display()),
        ctx.to_str().unwrap(),
    ]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["type=docker", "single platform", "type=oci"]);
    assert!(!out.exists());
}
