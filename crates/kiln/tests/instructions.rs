//! The rest of the Dockerfile language, checked in the pushed image: heredocs, ADD of
//! archives and URLs, COPY/ADD flags, WORKDIR, HEALTHCHECK, ONBUILD and the other config
//! instructions, SOURCE_DATE_EPOCH and unused build args.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;
use sha2::{Digest as _, Sha256};

fn owner(path: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(path).unwrap();
    (md.uid(), md.gid())
}

fn sha256_of(path: &Path) -> String {
    format!(
        "sha256:{}",
        hex(&Sha256::digest(std::fs::read(path).unwrap()))
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const HEREDOCS: &str = "FROM $REG/busybox:latest
ARG NAME=world
ENV GREETING=hello
RUN <<EOF
echo \"script ran\" > /script.txt
mkdir -p /multi
EOF
RUN cat <<A > /multi/a && cat <<'B' > /multi/b
a says $GREETING
A
b keeps $GREETING
B
RUN <<-EOF
\techo tabbed > /tabbed.txt
\tEOF
RUN <<EOF
#!/bin/sh -e
echo \"shebang ran\" > /shebang.txt
EOF
COPY <<EOF /etc/greeting
$GREETING ${NAME} \"quoted\" \\$NAME
EOF
COPY <<'RAW' <<two /docs/
raw $GREETING
RAW
two $NAME
two
ADD <<-EOF /added.txt
\tadded $NAME
\tEOF
";

#[test]
fn heredocs_feed_run_scripts_and_become_copied_files() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", HEREDOCS)]);
    env.build_and_push(&ctx, "heredocs:1", &[]);
    let rootfs = unpack_pushed(&env.tag("heredocs:1"), &env.path("unpack"));
    assert_eq!(read(&rootfs.join("script.txt")), "script ran\n");
    assert_eq!(read(&rootfs.join("multi/a")), "a says hello\n");
    assert_eq!(
        read(&rootfs.join("multi/b")),
        "b keeps $GREETING\n",
        "a quoted delimiter must keep the body unexpanded"
    );
    assert_eq!(read(&rootfs.join("tabbed.txt")), "tabbed\n");
    assert_eq!(read(&rootfs.join("shebang.txt")), "shebang ran\n");
    assert_eq!(
        read(&rootfs.join("etc/greeting")),
        "hello world \"quoted\" \\$NAME\n"
    );
    assert_eq!(mode(&rootfs.join("etc/greeting")), 0o644);
    assert_eq!(owner(&rootfs.join("etc/greeting")), (0, 0));
    assert_eq!(list_dir(&rootfs.join("docs")), vec!["RAW", "two"]);
    assert_eq!(read(&rootfs.join("docs/RAW")), "raw $GREETING\n");
    assert_eq!(read(&rootfs.join("docs/two")), "two world\n");
    assert_eq!(read(&rootfs.join("added.txt")), "added world\n");
}

/// Packs `payload` (a dir in `ctx`) into `ctx/<name>` with the tar CLI, owned by 1234:5678.
fn tar_payload(ctx: &Path, name: &str) {
    run_tool(
        Command::new("tar")
            .arg("-C")
            .arg(ctx.join("payload"))
            .args(["--owner=1234", "--group=5678", "-cf"])
            .arg(ctx.join(name))
            .arg("."),
    );
}

/// Compresses `ctx/plain.tar` with `tool` into `ctx/<name>`.
fn compress(ctx: &Path, tool: &str, name: &str) {
    let o = run_tool(Command::new(tool).arg("-c").arg(ctx.join("plain.tar")));
    std::fs::write(ctx.join(name), o.stdout).unwrap();
}

#[test]
fn add_extracts_local_archives_detected_by_content() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\n\
                 ADD plain.tar /plain/\n\
                 ADD gzip-without-extension /gz\n\
                 ADD archive.tar.bz2 /bz2/\n\
                 ADD archive.tar.xz /xz/\n\
                 ADD archive.tar.zst /zst/\n\
                 ADD not-really.tar.gz /fake/\n\
                 ADD --unpack=false plain.tar /kept/\n\
                 COPY plain.tar /copied/\n",
            ),
            ("payload/dir/file.txt", "inside the archive\n"),
            ("not-really.tar.gz", "just text\n"),
        ],
    );
    std::fs::set_permissions(
        ctx.join("payload/dir/file.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    tar_payload(&ctx, "plain.tar");
    compress(&ctx, "gzip", "gzip-without-extension");
    compress(&ctx, "bzip2", "archive.tar.bz2");
    compress(&ctx, "xz", "archive.tar.xz");
    compress(&ctx, "zstd", "archive.tar.zst");
    std::fs::remove_dir_all(ctx.join("payload")).unwrap();

    env.build_and_push(&ctx, "archives:1", &[]);
    let rootfs = unpack_pushed(&env.tag("archives:1"), &env.path("unpack"));
    for dir in ["plain", "gz", "bz2", "xz", "zst"] {
        let file = rootfs.join(dir).join("dir/file.txt");
        assert_eq!(read(&file), "inside the archive\n", "{dir}");
        assert_eq!(mode(&file), 0o640, "{dir}: the archive's mode is kept");
        assert_eq!(
            owner(&file),
            (1234, 5678),
            "{dir}: the archive's owner is kept"
        );
    }
    assert_eq!(
        read(&rootfs.join("fake/not-really.tar.gz")),
        "just text\n",
        "a non-archive is copied as it is, whatever its name"
    );
    assert!(rootfs.join("kept/plain.tar").is_file(), "--unpack=false");
    assert!(
        rootfs.join("copied/plain.tar").is_file(),
        "COPY never unpacks"
    );
}

#[test]
fn add_refuses_an_archive_entry_that_escapes_the_destination() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nADD evil.tar /unpacked/\n")],
    );
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..11].copy_from_slice(b"../../owned");
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, &b"evil"[..]).unwrap();
    std::fs::write(ctx.join("evil.tar"), builder.into_inner().unwrap()).unwrap();
    let err = assert_failed(&env.kiln(&["build", ctx.to_str().unwrap()]));
    assert_contains_all(&err, &["../../owned", "outside", "Dockerfile:2"]);
}

/// The URL the test registry serves the host's busybox layer at, and its digest.
fn busybox_layer_url(env: &Env) -> (String, String) {
    let inspected = skopeo_inspect(&env.tag("busybox:latest"), Some(host_arch()));
    let digest = inspected["Layers"][0].as_str().unwrap().to_string();
    (
        format!("http://{}/v2/busybox/blobs/{digest}", env.reg()),
        digest,
    )
}

#[test]
fn add_downloads_urls_with_docker_naming_modes_and_checksums() {
    let env = Env::new();
    let (url, digest) = busybox_layer_url(&env);
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM scratch\n\
                 ADD {url} /downloads/\n\
                 ADD --checksum={digest} {url} /layer.tar.gz\n\
                 ADD --unpack=true {url} /unpacked/\n\
                 ADD --chmod=644 {url} /readable.tgz\n"
            ),
        )],
    );
    env.build_and_push(&ctx, "urls:1", &[]);
    let rootfs = unpack_pushed(&env.tag("urls:1"), &env.path("unpack"));
    let named = rootfs.join("downloads").join(digest.as_str());
    assert_eq!(
        sha256_of(&named),
        digest,
        "named after the URL's last component"
    );
    assert_eq!(mode(&named), 0o600, "Docker writes downloads 0600");
    assert_eq!(owner(&named), (0, 0));
    assert_eq!(sha256_of(&rootfs.join("layer.tar.gz")), digest);
    assert!(
        rootfs.join("unpacked/bin/busybox").is_file(),
        "--unpack=true extracts a downloaded archive"
    );
    assert_eq!(mode(&rootfs.join("readable.tgz")), 0o644);

    // A wrong checksum fails the build, naming the URL and both digests.
    let wrong = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD --checksum={wrong} {url} /x\n"),
    )
    .unwrap();
    let err = assert_failed(&env.kiln(&["build", ctx.to_str().unwrap()]));
    assert_contains_all(&err, &[&url, &wrong, &digest, "Dockerfile:2"]);
}

const COPY_FLAGS: &str = "FROM $REG/busybox:latest
RUN mkdir -m 0700 /private-copy /private-link
COPY --chmod=0750 app/run.sh /octal/run.sh
COPY --chmod=u=rwx,g=rx,o= app/data.txt /sym1/data.txt
COPY --chmod=a+x app/data.txt /sym2/data.txt
COPY --chmod=u+rwX,go= app /sym3/
COPY --chown=nobody:nogroup app/data.txt /owned/
COPY --chown=1234:5678 app/data.txt /owned-num/
COPY --parents app/sub/y.txt docs/readme.md /p/
COPY --parents ./app/./sub /pivot/
COPY --exclude=**/*.md --exclude=data.txt app /excl/
COPY --exclude=y.txt app/sub/*.txt /excl-glob/
COPY app/data.txt /private-copy/
COPY --link app/data.txt /private-link/
";

#[test]
fn copy_flags_chmod_chown_parents_exclude_and_link() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", COPY_FLAGS),
            ("app/run.sh", "#!/bin/sh\n"),
            ("app/data.txt", "data\n"),
            ("app/sub/x.md", "x\n"),
            ("app/sub/y.txt", "y\n"),
            ("app/sub/z.txt", "z\n"),
            ("docs/readme.md", "readme\n"),
        ],
    );
    for (file, bits) in [("app/run.sh", 0o755), ("app/data.txt", 0o644)] {
        std::fs::set_permissions(ctx.join(file), std::fs::Permissions::from_mode(bits)).unwrap();
    }
    env.build_and_push(&ctx, "flags:1", &[]);
    let rootfs = unpack_pushed(&env.tag("flags:1"), &env.path("unpack"));

    assert_eq!(mode(&rootfs.join("octal/run.sh")), 0o750);
    assert_eq!(mode(&rootfs.join("sym1/data.txt")), 0o750);
    assert_eq!(mode(&rootfs.join("sym2/data.txt")), 0o755);
    // X: directories and already executable files get x, others do not.
    assert_eq!(mode(&rootfs.join("sym3/sub")), 0o700);
    assert_eq!(mode(&rootfs.join("sym3/run.sh")), 0o700);
    assert_eq!(mode(&rootfs.join("sym3/data.txt")), 0o600);

    assert_eq!(owner(&rootfs.join("owned/data.txt")), (65534, 65534));
    assert_eq!(owner(&rootfs.join("owned-num/data.txt")), (1234, 5678));

    assert_eq!(read(&rootfs.join("p/app/sub/y.txt")), "y\n");
    assert_eq!(read(&rootfs.join("p/docs/readme.md")), "readme\n");
    assert_eq!(list_dir(&rootfs.join("pivot")), vec!["sub"]);
    assert_eq!(read(&rootfs.join("pivot/sub/x.md")), "x\n");

    assert_eq!(list_dir(&rootfs.join("excl")), vec!["run.sh", "sub"]);
    assert_eq!(list_dir(&rootfs.join("excl/sub")), vec!["y.txt", "z.txt"]);
    assert_eq!(list_dir(&rootfs.join("excl-glob")), vec!["z.txt"]);

    // A --link layer carries its parent dirs with fixed metadata, not the base's.
    assert_eq!(mode(&rootfs.join("private-copy")), 0o700);
    assert_eq!(mode(&rootfs.join("private-link")), 0o755);
    assert_eq!(read(&rootfs.join("private-link/data.txt")), "data\n");
}

#[test]
fn bad_chown_and_chmod_are_clear_errors() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("f", "f\n")]);
    for (line, needles) in [
        ("COPY --chown=ghost f /f", &["ghost", "/etc/passwd"][..]),
        (
            "COPY --chown=root:ghosts f /f",
            &["ghosts", "/etc/group"][..],
        ),
        ("COPY --chmod=u+z f /f", &["--chmod", "u+z"][..]),
        ("ADD --chmod=999 f /f", &["--chmod", "999"][..]),
    ] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {}/busybox:latest\n{line}\n", env.reg()),
        )
        .unwrap();
        let err = assert_failed(&env.kiln(&["build", ctx.to_str().unwrap()]));
        let mut expected = needles.to_vec();
        expected.push("Dockerfile:2");
        assert_contains_all(&err, &expected);
    }
}

#[test]
fn workdir_creates_its_directory_owned_by_the_user() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\n\
             WORKDIR /a/b\n\
             USER nobody\n\
             WORKDIR c\n\
             WORKDIR /tmp\n",
        )],
    );
    env.build_and_push(&ctx, "workdir:1", &[]);
    let tag = env.tag("workdir:1");
    assert_eq!(config(&tag)["config"]["WorkingDir"], "/tmp");
    assert_eq!(
        layer_digests(&manifest(&tag)).len(),
        3,
        "base + two WORKDIRs that made a dir; /tmp existed"
    );
    let rootfs = unpack_pushed(&tag, &env.path("unpack"));
    assert_eq!(mode(&rootfs.join("a/b")), 0o755);
    assert_eq!(owner(&rootfs.join("a/b")), (0, 0));
    assert!(rootfs.join("a/b/c").is_dir());
    assert_eq!(owner(&rootfs.join("a/b/c")), (65534, 65534));
}

const ONBUILD_BASE: &str = r#"FROM $REG/busybox:latest
HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --start-interval=2s --retries=3 CMD ["/bin/true", "x"]
STOPSIGNAL SIGQUIT
VOLUME ["/data", "/logs"]
VOLUME /cache /tmp/v
EXPOSE 80 443/TCP 53/udp
USER nobody:nogroup
MAINTAINER Jane Doe <jane@example.com>
SHELL ["/bin/sh", "-ec"]
RUN case $- in *e*) echo errexit > /tmp/shell.txt;; esac
CMD echo hi
ONBUILD RUN echo triggered > /tmp/onbuild
ONBUILD ENV FROM_TRIGGER=yes
"#;

#[test]
fn config_instructions_and_onbuild_triggers() {
    let env = Env::new();
    let base_ctx = env.context("base", &[("Dockerfile", ONBUILD_BASE)]);
    env.build_and_push(&base_ctx, "onbuild-base:1", &[]);
    let base_tag = env.tag("onbuild-base:1");
    let base = config(&base_tag);
    let c = &base["config"];
    assert_eq!(
        c["Healthcheck"],
        json!({
            "Test": ["CMD", "/bin/true", "x"],
            "Interval": 30_000_000_000u64,
            "Timeout": 90_000_000_000u64,
            "StartPeriod": 500_000_000u64,
            "StartInterval": 2_000_000_000u64,
            "Retries": 3,
        })
    );
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(
        c["Volumes"],
        json!({"/data": {}, "/logs": {}, "/cache": {}, "/tmp/v": {}})
    );
    assert_eq!(
        c["ExposedPorts"],
        json!({"80/tcp": {}, "443/tcp": {}, "53/udp": {}})
    );
    assert_eq!(c["User"], "nobody:nogroup");
    assert_eq!(base["author"], "Jane Doe <jane@example.com>");
    assert_eq!(c["Shell"], json!(["/bin/sh", "-ec"]));
    assert_eq!(c["Cmd"], json!(["/bin/sh", "-ec", "echo hi"]));
    assert_eq!(
        c["OnBuild"],
        json!(["RUN echo triggered > /tmp/onbuild", "ENV FROM_TRIGGER=yes"])
    );
    let base_rootfs = unpack_pushed(&base_tag, &env.path("unpack-base"));
    assert_eq!(read(&base_rootfs.join("tmp/shell.txt")), "errexit\n");
    assert!(
        !base_rootfs.join("tmp/onbuild").exists(),
        "triggers run only in children"
    );

    let child_ctx = env.context(
        "child",
        &[(
            "Dockerfile",
            "FROM $REG/onbuild-base:1\n\
             HEALTHCHECK NONE\n\
             RUN echo \"$FROM_TRIGGER\" > /tmp/env.txt\n",
        )],
    );
    env.build_and_push(&child_ctx, "onbuild-child:1", &[]);
    let child_tag = env.tag("onbuild-child:1");
    let child = config(&child_tag);
    assert_eq!(child["config"]["Healthcheck"], json!({"Test": ["NONE"]}));
    assert!(
        child["config"].get("OnBuild").is_none_or(|v| v.is_null()),
        "triggers are not inherited: {}",
        child["config"]
    );
    let rootfs = unpack_pushed(&child_tag, &env.path("unpack-child"));
    assert_eq!(read(&rootfs.join("tmp/onbuild")), "triggered\n");
    assert_eq!(read(&rootfs.join("tmp/env.txt")), "yes\n");
    assert_eq!(owner(&rootfs.join("tmp/onbuild")), (65534, 65534));

    // HEALTHCHECK's shell form, and a bad duration.
    std::fs::write(
        child_ctx.join("Dockerfile"),
        format!(
            "FROM {}/busybox:latest\nHEALTHCHECK --retries=2 CMD wget -q -O- http://localhost/ || exit 1\n",
            env.reg()
        ),
    )
    .unwrap();
    env.build_and_push(&child_ctx, "health:1", &[]);
    assert_eq!(
        config(&env.tag("health:1"))["config"]["Healthcheck"],
        json!({"Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"], "Retries": 2})
    );
    std::fs::write(
        child_ctx.join("Dockerfile"),
        format!(
            "FROM {}/busybox:latest\nHEALTHCHECK --interval=5 CMD true\n",
            env.reg()
        ),
    )
    .unwrap();
    let err = assert_failed(&env.kiln(&["build", child_ctx.to_str().unwrap()]));
    assert_contains_all(&err, &["--interval=5", "Dockerfile:2"]);
}

#[test]
fn source_date_epoch_makes_builds_reproducible_and_unused_args_warn() {
    let env = Env::new();
    let dockerfile = "FROM $REG/busybox:latest\n\
                      ARG DECLARED\n\
                      COPY f /f\n\
                      RUN echo \"$DECLARED\" > /x && mkdir /d\n";
    let epoch = "1700000000";
    let sde = format!("SOURCE_DATE_EPOCH={epoch}");
    let mut manifests = Vec::new();
    for n in 1..=2 {
        // Fresh context files each time: their mtimes differ between the two builds.
        let ctx = env.context(
            &format!("ctx{n}"),
            &[("Dockerfile", dockerfile), ("f", "f\n")],
        );
        let o = env.build_and_push(
            &ctx,
            &format!("sde:{n}"),
            &[
                "--build-arg",
                &sde,
                "--build-arg",
                "DECLARED=1",
                "--build-arg",
                "TYPO_ARG=2",
            ],
        );
        let err = stderr(&o);
        assert_contains_all(
            &err,
            &["[warning] build arg TYPO_ARG was not consumed by any ARG"],
        );
        assert!(!err.contains("build arg DECLARED"), "{err}");
        assert!(!err.contains("build arg SOURCE_DATE_EPOCH"), "{err}");
        manifests.push(skopeo_raw(&env.tag(&format!("sde:{n}"))));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(
        manifests[0], manifests[1],
        "two builds at different times differ"
    );

    let tag = env.tag("sde:1");
    let cfg = config(&tag);
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    let history = cfg["history"].as_array().unwrap();
    for entry in &history[history.len() - 3..] {
        assert_eq!(entry["created"], "2023-11-14T22:13:20Z", "{entry}");
    }
    let rootfs = unpack_pushed(&tag, &env.path("unpack"));
    for path in ["f", "x", "d"] {
        let mtime = std::fs::symlink_metadata(rootfs.join(path))
            .unwrap()
            .mtime();
        assert_eq!(mtime, 1_700_000_000, "{path} was not clamped");
    }
}
