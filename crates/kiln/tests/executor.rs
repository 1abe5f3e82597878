//! `kiln executor`: kaniko's command line, as GitLab jobs and Kubernetes pods pass it, against
//! a real registry; results read back with skopeo, umoci and tar, never through kiln.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use kiln_testkit::{Fault, FaultProxy, FaultRule, RegistryOptions, hostile_file};

/// `kiln executor ARGS` with a store private to this test and no docker config of the host's.
fn executor(env: &Env, args: &[&str]) -> Output {
    let mut command = kiln_command(&env.store(), &[&["executor"], args].concat());
    command
        .env_remove("DOCKER_CONFIG")
        .env_remove("KILN_DIR")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", env.path("home"));
    command.output().unwrap()
}

/// A multi-stage context: `final` takes a build arg and a file from `build`; `unused` would
/// fail if it ran (kaniko without --skip-unused-stages would run it).
fn multi_stage_context(env: &Env, name: &str) -> PathBuf {
    env.context(
        name,
        &[
            (
                "docker/Dockerfile",
                "FROM $REG/busybox AS build\nCOPY app.txt /out/app.txt\n\
                 FROM $REG/busybox AS unused\nRUN false\n\
                 FROM $REG/busybox AS final\nARG GREETING=none\nENV GREETING=$GREETING\n\
                 COPY --from=build /out/app.txt /app.txt\n\
                 RUN echo \"$GREETING from RUN\" > /greeting.txt\n\
                 FROM final AS extra\nCOPY extra.txt /extra.txt\n",
            ),
            ("app.txt", "built by kiln executor\n"),
            ("extra.txt", "only in the last stage\n"),
        ],
    )
}

/// The names (`RepoTags`) and the member names of a `docker save` archive.
fn docker_archive(path: &Path) -> (Value, Vec<String>) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let (mut manifest, mut members) = (None, Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "manifest.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            manifest = Some(serde_json::from_str::<Value>(&text).unwrap());
        }
        members.push(name);
    }
    (manifest.expect("manifest.json in the archive"), members)
}

fn config_env(config: &Value) -> Vec<String> {
    config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_kaniko_job_builds_pushes_and_writes_its_files() {
    let env = Env::new();
    let ctx = multi_stage_context(&env, "project");
    let (first, second) = (env.tag("team/app:1.0"), env.tag("team/app-mirror:latest"));
    let digest_file = env.path("out/digest");
    let name_file = env.path("out/name-digest");
    let name_tag_file = env.path("out/name-tag-digest");
    let tarball = env.path("out/image.tar");
    std::fs::create_dir_all(env.path("out")).unwrap();
    let context_flag = format!("dir://{}", ctx.display());
    let o = executor(
        &env,
        &[
            "--context",
            &context_flag,
            // Relative to the context, as GitLab jobs write it.
            "--dockerfile",
            "docker/Dockerfile",
            "--destination",
            &first,
            "-d",
            &second,
            "--build-arg",
            "GREETING=hello",
            "--target",
            "final",
            "--skip-unused-stages",
            "--label",
            "org.example.team=ci",
            "--label=version=1.0",
            "--digest-file",
            digest_file.to_str().unwrap(),
            "--image-name-with-digest-file",
            name_file.to_str().unwrap(),
            "--image-name-tag-with-digest-file",
            name_tag_file.to_str().unwrap(),
            "--tar-path",
            tarball.to_str().unwrap(),
            // Flags a kaniko job passes that kiln has no use for, and cache flags.
            "--snapshot-mode=redo",
            "--use-new-run",
            "--single-snapshot",
            "--compressed-caching=false",
            "--cache-run-layers=false",
            "--cache-copy-layers",
            "--ignore-var-run=false",
            "--cache=true",
            "--cache-repo",
            &env.tag("cache"),
            "--cache-dir=/cache",
            "--cache-ttl=24h",
            "--force",
            "--cleanup",
        ],
    );
    assert_ok(&o);
    let err = stderr(&o);
    let notices: Vec<&str> = err.lines().filter(|l| l.starts_with("notice:")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert_contains_all(
        notices[0],
        &[
            "--snapshot-mode",
            "--use-new-run",
            "--single-snapshot",
            "--compressed-caching",
            "--ignore-var-run",
        ],
    );
    // --cache=true with --cache-repo exported a registry cache (tests/registry_cache.rs).
    assert!(
        err.contains(&format!("exported cache to {}", env.tag("cache"))),
        "{err}"
    );

    // Both destinations hold the image the digest file names.
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    assert!(
        digest.starts_with("sha256:") && !digest.ends_with('\n'),
        "{digest}"
    );
    for name in [&first, &second] {
        let raw = skopeo_raw(name);
        assert_eq!(
            format!("sha256:{}", sha256_hex(&raw)),
            digest,
            "{name} holds another image"
        );
    }
    let reg = env.reg();
    assert_eq!(
        std::fs::read_to_string(&name_file).unwrap(),
        format!("{reg}/team/app@{digest}\n{reg}/team/app-mirror@{digest}\n")
    );
    assert_eq!(
        std::fs::read_to_string(&name_tag_file).unwrap(),
        format!("{reg}/team/app:1.0@{digest}\n{reg}/team/app-mirror:latest@{digest}\n")
    );

    // The target stage, with the build arg and the file of the other stage; not the last.
    let inspected = skopeo_inspect(&first, None);
    assert!(
        inspected["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("GREETING=hello")),
        "{inspected}"
    );
    assert_eq!(
        inspected["Labels"],
        json!({"org.example.team": "ci", "version": "1.0"}),
        "{inspected}"
    );
    let rootfs = unpack_pushed(&first, &env.path("unpacked"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app.txt")).unwrap(),
        "built by kiln executor\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("greeting.txt")).unwrap(),
        "hello from RUN\n"
    );
    assert!(!rootfs.join("extra.txt").exists());

    // The tarball is a docker archive of the same image, tagged with both destinations,
    // which skopeo reads.
    let (manifest, members) = docker_archive(&tarball);
    assert_eq!(
        manifest[0]["RepoTags"],
        json!([
            format!("{reg}/team/app:1.0"),
            format!("{reg}/team/app-mirror:latest")
        ]),
        "{manifest}"
    );
    assert!(members.iter().any(|m| m.ends_with(".tar")), "{members:?}");
    let from_tar = env.path("from-tar");
    docker_archive_to_oci(&tarball, &from_tar);
    let tar_rootfs = umoci_unpack(&from_tar, "t", &env.path("tar-bundle"));
    assert_eq!(
        std::fs::read_to_string(tar_rootfs.join("app.txt")).unwrap(),
        "built by kiln executor\n"
    );
    let config: Value = serde_json::from_slice(
        &std::fs::read(env.path("from-tar").join(format!(
            "blobs/sha256/{}",
            manifest_config_digest(&from_tar)
        )))
        .unwrap(),
    )
    .unwrap();
    assert!(config_env(&config).contains(&"GREETING=hello".to_string()));
}

/// skopeo's copy of the docker archive `tarball` into the OCI layout `layout` as `t`.
fn docker_archive_to_oci(tarball: &Path, layout: &Path) {
    let o = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .arg(format!("docker-archive:{}", tarball.display()))
        .arg(format!("oci:{}:t", layout.display()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo cannot read {}: {}",
        tarball.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex_string(&sha2::Sha256::digest(bytes))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config digest (hex) of the single image in the OCI layout `dir`.
fn manifest_config_digest(dir: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    manifest["config"]["digest"].as_str().unwrap()[7..].to_string()
}

/// Writes `ctx` as a gzip tar whose entries sit under `prefix/`.
fn tar_gz_of(ctx: &Path, prefix: &str, dest: &Path) {
    let file = std::fs::File::create(dest).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.append_dir_all(prefix, ctx).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn tar_contexts_no_push_and_reproducible_images() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox\nCOPY hello.txt /hello.txt\n",
            ),
            ("hello.txt", "from a tarball\n"),
        ],
    );
    let archive = env.path("context.tar.gz");
    tar_gz_of(&ctx, "app", &archive);
    let context_flag = format!("tar://{}", archive.display());
    let name = env.tag("tarred:1");
    let build = |store: &str, digest: &Path| {
        let mut command = kiln_command(
            &env.path(store),
            &[
                "executor",
                "--context",
                &context_flag,
                "--context-sub-path",
                "app",
                "--destination",
                &name,
                "--no-push",
                "--reproducible",
                "--digest-file",
                digest.to_str().unwrap(),
                "--tar-path",
                env.path(&format!("{store}.tar")).to_str().unwrap(),
            ],
        );
        command.env_remove("DOCKER_CONFIG");
        command.output().unwrap()
    };
    let (first, second) = (env.path("digest-1"), env.path("digest-2"));
    assert_ok(&build("store-1", &first));
    // Another store: nothing cached, a later time; the same image.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_ok(&build("store-2", &second));
    let digest = std::fs::read_to_string(&first).unwrap();
    assert_eq!(std::fs::read_to_string(&second).unwrap(), digest);
    // The same archive on standard input (tar://stdin), as `kubectl exec -i` feeds it.
    let from_stdin = env.path("digest-3");
    let o = kiln_command(
        &env.path("store-3"),
        &[
            "executor",
            "--context=tar://stdin",
            "--context-sub-path=app",
            "--no-push",
            "--reproducible",
            "--digest-file",
            from_stdin.to_str().unwrap(),
        ],
    )
    .stdin(std::fs::File::open(&archive).unwrap())
    .output()
    .unwrap();
    assert_ok(&o);
    assert_eq!(std::fs::read_to_string(&from_stdin).unwrap(), digest);
    // Nothing was pushed.
    let o = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "--no-push pushed {name}");
    // The image and its files carry 1970 as their time.
    let layout = env.path("layout");
    docker_archive_to_oci(&env.path("store-1.tar"), &layout);
    let config: Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(manifest_config_digest(&layout)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["created"], json!("1970-01-01T00:00:00Z"), "{config}");
    let rootfs = umoci_unpack(&layout, "t", &env.path("bundle"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "from a tarball\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::symlink_metadata(rootfs.join("hello.txt"))
            .unwrap()
            .mtime(),
        0
    );
}

#[test]
fn kaniko_defaults_and_bad_contexts_are_explained() {
    let env = Env::new();
    // No destination and no --no-push: kaniko's own error.
    let err = assert_failed(&executor(&env, &[]));
    assert_contains_all(&err, &["you must provide --destination, or use --no-push"]);
    // The default context is /workspace, as in kaniko's image.
    let err = assert_failed(&executor(&env, &["--no-push"]));
    assert_contains_all(&err, &["/workspace/"]);
    // Remote contexts are named, with the way out.
    let err = assert_failed(&executor(
        &env,
        &["--no-push", "--context", "git://github.com/x/y"],
    ));
    assert_contains_all(&err, &["git://", "dir://", "tar://"]);
    // A password in the URL is not repeated.
    let err = assert_failed(&executor(
        &env,
        &[
            "--no-push",
            "--context",
            "s3://user:hunter2-secret@bucket/ctx.tar.gz",
        ],
    ));
    assert_contains_all(&err, &["s3://user:xxxxx@bucket/ctx.tar.gz", "dir://"]);
    assert!(!err.contains("hunter2-secret"), "{err}");

    // A hostile tar context: a symlink out of the context, then a file through it. The
    // build fails and nothing lands outside kiln's scratch dir.
    let canary = env.path("canary");
    std::fs::create_dir_all(&canary).unwrap();
    let hostile = env.path("hostile.tar");
    std::fs::write(
        &hostile,
        hostile_file("file-through-parent-symlink.tar", &canary),
    )
    .unwrap();
    let context_flag = format!("tar://{}", hostile.display());
    let err = assert_failed(&executor(&env, &["--no-push", "--context", &context_flag]));
    eprintln!("{err}");
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 0);
    // kiln's scratch space is gone with the build.
    let scratch: Vec<_> = std::fs::read_dir(env.store().join("tmp"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}

/// A tar holding the symlink `name -> target`, and `files`.
fn tar_of_symlink(name: &str, target: &Path, files: &[(&str, &str)], dest: &Path) {
    let mut builder = tar::Builder::new(std::fs::File::create(dest).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder.append_link(&mut header, name, target).unwrap();
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, text.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap();
}

#[test]
fn an_absolute_dockerfile_in_a_dir_context_must_not_lead_out_of_it() {
    let env = Env::new();
    let outside = env.context("outside", &[("secret", "SECRET-TOKEN-1234\n")]);
    let ctx = env.context("ctx", &[]);
    std::os::unix::fs::symlink(outside.join("secret"), ctx.join("Dockerfile")).unwrap();
    // kaniko's usual `--dockerfile /workspace/Dockerfile --context dir:///workspace`.
    let dockerfile = ctx.join("Dockerfile");
    let context_flag = format!("dir://{}", ctx.display());
    let args = [
        "--no-push",
        "--context",
        &context_flag,
        "--dockerfile",
        dockerfile.to_str().unwrap(),
    ];
    let err = assert_failed(&executor(&env, &args));
    assert!(!err.contains("SECRET-TOKEN-1234"), "{err}");
    assert_contains_all(&err, &["Dockerfile", "out of the build context"]);
}

#[test]
fn tar_contexts_do_not_lead_out_through_symlinks() {
    let env = Env::new();
    // A file of the host a hostile context must not make kiln read: as the Dockerfile, its
    // first lines would be in the parse error, in the job's log.
    let outside = env.context(
        "outside",
        &[
            ("secret", "SECRET-TOKEN-1234\n"),
            ("bad-pattern", "[SECRET-TOKEN-5678\n"),
            ("Dockerfile", "FROM scratch\nCOPY secret /secret\n"),
        ],
    );
    let dockerfile_link = env.path("dockerfile-link.tar");
    tar_of_symlink("Dockerfile", &outside.join("secret"), &[], &dockerfile_link);
    let context_flag = format!("tar://{}", dockerfile_link.display());
    let err = assert_failed(&executor(&env, &["--no-push", "--context", &context_flag]));
    assert!(!err.contains("SECRET-TOKEN-1234"), "{err}");
    assert_contains_all(&err, &["Dockerfile", "out of the build context"]);
    // The same for the .dockerignore, whose bad line its error would show.
    let ignore_link = env.path("ignore-link.tar");
    let files = [("Dockerfile", "FROM scratch\n")];
    tar_of_symlink(
        ".dockerignore",
        &outside.join("bad-pattern"),
        &files,
        &ignore_link,
    );
    let context_flag = format!("tar://{}", ignore_link.display());
    let err = assert_failed(&executor(&env, &["--no-push", "--context", &context_flag]));
    assert!(!err.contains("SECRET-TOKEN-5678"), "{err}");
    assert_contains_all(&err, &[".dockerignore", "out of the build context"]);

    // A sub path that is a symlink to a directory of the host: that directory is no context.
    let sub_link = env.path("sub-link.tar");
    tar_of_symlink("app", &outside, &[], &sub_link);
    let context_flag = format!("tar://{}", sub_link.display());
    let digest = env.path("digest");
    let err = assert_failed(&executor(
        &env,
        &[
            "--no-push",
            "--context",
            &context_flag,
            "--context-sub-path",
            "app",
            "--digest-file",
            digest.to_str().unwrap(),
        ],
    ));
    assert_contains_all(&err, &["--context-sub-path", "out of the build context"]);
    assert!(
        !digest.exists(),
        "an image was built from {}",
        outside.display()
    );
}

#[test]
fn skip_tls_verify_keeps_plain_http_registries_on_http() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM $REG/busybox\nCOPY f /f\n"),
            ("f", "x\n"),
        ],
    );
    let ctx_flag = ctx.to_str().unwrap();
    let name = env.tag("plain:1");
    // The plain-HTTP loopback registry stays reachable, for kiln executor and kiln build.
    assert_ok(&executor(
        &env,
        &[
            "-c",
            ctx_flag,
            "-d",
            &name,
            "--skip-tls-verify",
            "--skip-tls-verify-pull",
        ],
    ));
    assert_ok(&env.kiln(&[
        "build",
        "--skip-tls-verify",
        "-t",
        &name,
        "--push",
        ctx_flag,
    ]));
    skopeo_raw(&name);

    // A TLS registry with a certificate kiln does not trust: refused unless told.
    let secure = Registry::start_with(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    });
    let secure_name = format!("{}/app:1", secure.addr());
    let err = assert_failed(&executor(&env, &["-c", ctx_flag, "-d", &secure_name]));
    assert_contains_all(&err, &[secure.addr(), "certificate"]);
    assert_ok(&executor(
        &env,
        &["-c", ctx_flag, "-d", &secure_name, "--skip-tls-verify"],
    ));
    let registry_flag = format!("--skip-tls-verify-registry={}", secure.addr());
    assert_ok(&executor(
        &env,
        &["-c", ctx_flag, "-d", &secure_name, &registry_flag],
    ));
    let ca_flag = format!(
        "--registry-certificate={}={}",
        secure.addr(),
        secure.ca_path().unwrap().display()
    );
    assert_ok(&executor(
        &env,
        &["-c", ctx_flag, "-d", &secure_name, &ca_flag],
    ));

    // kaniko's --skip-tls-verify is for pushes; pulls from such a registry need
    // --skip-tls-verify-pull (or the per-registry flag, or its CA).
    push_busybox(&secure, "busybox");
    let from_secure = one_file_context(&env, "from-secure", &format!("{}/busybox", secure.addr()));
    let from_flag = from_secure.to_str().unwrap();
    let err = assert_failed(&executor(
        &env,
        &["-c", from_flag, "--no-push", "--skip-tls-verify=true"],
    ));
    assert_contains_all(&err, &[secure.addr(), "certificate"]);
    assert_ok(&executor(
        &env,
        &["-c", from_flag, "--no-push", "--skip-tls-verify-pull"],
    ));
}

/// A context whose image is `from` plus one file.
fn one_file_context(env: &Env, name: &str, from: &str) -> PathBuf {
    env.context(
        name,
        &[
            ("Dockerfile", &format!("FROM {from}\nCOPY f /f\n")),
            ("f", "one file\n"),
        ],
    )
}

#[test]
fn mirrors_maps_platforms_and_verbosity() {
    let env = Env::new();
    // Docker Hub through --registry-mirror, quay.io through --registry-map: there is no
    // internet here, so the build can only succeed through them.
    let mirror = Registry::start();
    push_busybox(&mirror, "library/busybox");
    push_busybox(&env.registry, "team/busybox");
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM busybox AS hub\nCOPY f /from-hub\n\
                 FROM quay.io/team/busybox\nCOPY --from=hub /from-hub /f\n",
            ),
            ("f", "mirrored\n"),
        ],
    );
    let name = env.tag("mirrored:arm64");
    let mirror_flag = format!("--registry-mirror={}", mirror.addr());
    let map_flag = format!("--registry-map=quay.io={}", env.reg());
    let args = [
        "-c",
        ctx.to_str().unwrap(),
        "-d",
        &name,
        &mirror_flag,
        &map_flag,
        "--custom-platform",
        "linux/arm64",
    ];
    let o = executor(&env, &args);
    assert_ok(&o);
    // --verbosity=info (the default) shows each step.
    assert!(stderr(&o).contains("DONE"), "{}", stderr(&o));
    let inspected = skopeo_inspect(&name, Some("arm64"));
    assert_eq!(inspected["Architecture"], json!("arm64"), "{inspected}");
    let rootfs = unpack_platform(&name, "arm64", &env.path("unpacked"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("f")).unwrap(),
        "mirrored\n"
    );

    // --verbosity=warn: a successful build prints nothing.
    let o = executor(&env, &[&args[..], &["--verbosity=warn"]].concat());
    assert_ok(&o);
    assert_eq!(stderr(&o), "");

    // --log-format=json: one object per line, for log collectors.
    let o = executor(&env, &[&args[..], &["--log-format=json"]].concat());
    assert_ok(&o);
    let lines: Vec<Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["msg"].as_str().unwrap().contains("DONE"))
    );
    for line in &lines {
        assert_eq!(line["level"], json!("info"), "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    // --log-timestamp: the time in front of every line.
    let o = executor(
        &env,
        &[&args[..], &["--log-timestamp", "--log-format", "text"]].concat(),
    );
    assert_ok(&o);
    let year = |l: &str| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T';
    assert!(stderr(&o).lines().all(year), "{}", stderr(&o));
}

/// A registry in front of `upstream` that answers 503 (retry at once) to the first six
/// `method` requests for manifests.
fn flaky(upstream: &str, method: &str) -> FaultProxy {
    let fault = Fault::Status {
        status: 503,
        retry_after: Some(0),
    };
    FaultProxy::start(
        upstream,
        vec![FaultRule::new(Some(method), "/manifests/", fault, 6)],
    )
}

#[test]
fn push_and_download_retries_outlast_a_flaky_registry() {
    let env = Env::new();
    let ctx = one_file_context(&env, "ctx", &format!("{}/busybox", env.reg()));
    let ctx_flag = ctx.to_str().unwrap();
    // Six failed manifest uploads in a row are more than kiln's own five tries...
    let proxy = flaky(env.reg(), "PUT");
    let name = format!("{}/retried:1", proxy.addr());
    let err = assert_failed(&executor(&env, &["-c", ctx_flag, "-d", &name]));
    assert_contains_all(&err, &["503"]);
    // ...and fewer than --push-retry=6 allows.
    let proxy = flaky(env.reg(), "PUT");
    let name = format!("{}/retried:1", proxy.addr());
    assert_ok(&executor(
        &env,
        &["-c", ctx_flag, "-d", &name, "--push-retry=6"],
    ));
    assert_eq!(proxy.injected().len(), 6);
    skopeo_raw(&name);

    // The same for the base image's manifest and --image-download-retry.
    let proxy = flaky(env.reg(), "GET");
    let from = format!("{}/busybox", proxy.addr());
    let ctx = one_file_context(&env, "ctx-flaky-base", &from);
    let ctx_flag = ctx.to_str().unwrap();
    let err = assert_failed(&executor(&env, &["-c", ctx_flag, "--no-push"]));
    assert_contains_all(&err, &["503"]);
    let proxy = flaky(env.reg(), "GET");
    let from = format!("{}/busybox", proxy.addr());
    let ctx = one_file_context(&env, "ctx-flaky-base-2", &from);
    assert_ok(&executor(
        &env,
        &[
            "-c",
            ctx.to_str().unwrap(),
            "--no-push",
            "--image-download-retry",
            "6",
        ],
    ));
}

#[test]
fn credentials_come_from_the_kiln_dir_as_from_kanikos() {
    let env = Env::new();
    let secure = Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some(("ci".into(), "ci-pw-7".into())),
        ..RegistryOptions::default()
    });
    let kiln_dir = env.path("kiln");
    std::fs::create_dir_all(kiln_dir.join(".docker")).unwrap();
    std::fs::write(
        kiln_dir.join(".docker/config.json"),
        json!({"auths": {secure.addr(): {"username": "ci", "password": "ci-pw-7"}}}).to_string(),
    )
    .unwrap();
    let ctx = one_file_context(&env, "ctx", &format!("{}/busybox", env.reg()));
    let name = format!("{}/app:1", secure.addr());
    let ca_flag = format!(
        "--registry-certificate={}={}",
        secure.addr(),
        secure.ca_path().unwrap().display()
    );
    let args = ["-c", ctx.to_str().unwrap(), "-d", &name, &ca_flag];
    // Without kiln's directory (and no /kiln/.docker on this host): no credentials.
    let err = assert_failed(&executor(&env, &args));
    assert_contains_all(&err, &[secure.addr()]);
    for dir_flag in ["--kiln-dir", "--kaniko-dir"] {
        assert_ok(&executor(
            &env,
            &[&args[..], &[dir_flag, kiln_dir.to_str().unwrap()]].concat(),
        ));
    }
    // DOCKER_CONFIG, as kaniko's and kiln's images set it, works as well.
    let mut command = kiln_command(&env.store(), &[&["executor"], &args[..]].concat());
    command.env("DOCKER_CONFIG", kiln_dir.join(".docker"));
    assert_ok(&command.output().unwrap());
}

/// An address of this machine that is not loopback (the source address of the default
/// route): kiln speaks plain HTTP to loopback registries without being told.
fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // No packet is sent: connecting a UDP socket only picks the route.
    socket
        .connect("203.0.113.1:9")
        .expect("this test needs a default route");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no address besides loopback: {ip}");
    ip
}

#[test]
fn insecure_pushes_to_a_plain_http_registry_elsewhere() {
    let env = Env::new();
    let remote = FaultProxy::start_on(&format!("{}:0", non_loopback_ip()), env.reg(), vec![]);
    let ctx = one_file_context(&env, "ctx", &format!("{}/busybox", env.reg()));
    let name = format!("{}/app:1", remote.addr());
    let args = ["-c", ctx.to_str().unwrap(), "-d", &name];
    // kiln asks a registry that is not on this machine over TLS, unless told otherwise.
    let err = assert_failed(&executor(&env, &args));
    assert_contains_all(&err, &[remote.addr()]);
    assert_ok(&executor(&env, &[&args[..], &["--insecure"]].concat()));
    let registry_flag = format!("--insecure-registry={}", remote.addr());
    assert_ok(&executor(&env, &[&args[..], &[&registry_flag]].concat()));
    skopeo_raw(&name);

    // Pulling a base image from there: --insecure-pull (--insecure is for pushes).
    let from_remote = one_file_context(&env, "from-remote", &format!("{}/busybox", remote.addr()));
    let args = ["-c", from_remote.to_str().unwrap(), "--no-push"];
    let err = assert_failed(&executor(&env, &[&args[..], &["--insecure"]].concat()));
    assert_contains_all(&err, &[remote.addr()]);
    assert_ok(&executor(&env, &[&args[..], &["--insecure-pull"]].concat()));
}

#[test]
fn the_binary_called_executor_is_kiln_executor() {
    let env = Env::new();
    // The image's /kiln/executor, as kaniko's /kaniko/executor.
    let dir = env.path("kiln");
    std::fs::create_dir_all(&dir).unwrap();
    let executor_path = dir.join("executor");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln"), &executor_path).unwrap();
    let ctx = one_file_context(&env, "ctx", &format!("{}/busybox", env.reg()));
    let name = env.tag("called-executor:1");
    let o = kiln_command_at(
        &executor_path,
        &env.store(),
        &["--context", ctx.to_str().unwrap(), "--destination", &name],
    )
    .output()
    .unwrap();
    assert_ok(&o);
    skopeo_raw(&name);
}

#[test]
fn registry_client_certificates_reach_a_mutual_tls_registry() {
    let env = Env::new();
    let mtls = Registry::start_with(RegistryOptions {
        tls: true,
        client_certs: true,
        ..RegistryOptions::default()
    });
    let (cert, key) = mtls.client_cert().unwrap();
    let ctx = one_file_context(&env, "ctx", &format!("{}/busybox", env.reg()));
    let name = format!("{}/app:1", mtls.addr());
    let ca_flag = format!(
        "--registry-certificate={}={}",
        mtls.addr(),
        mtls.ca_path().unwrap().display()
    );
    let args = ["-c", ctx.to_str().unwrap(), "-d", &name, &ca_flag];
    // The registry wants a client certificate.
    let err = assert_failed(&executor(&env, &args));
    assert_contains_all(&err, &[mtls.addr()]);
    let cert_flag = format!(
        "--registry-client-cert={}={},{}",
        mtls.addr(),
        cert.display(),
        key.display()
    );
    assert_ok(&executor(&env, &[&args[..], &[&cert_flag]].concat()));
}
