//! Dockerfile features, checked in the pushed image: base image forms, stages, the config
//! instructions, line continuations, comments and `.dockerignore`.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use kiln_testkit::{DEBIAN_PACKAGES, debian_fixtures};

/// The amd64 (host) layer digest of the busybox fixture, as skopeo sees it.
fn busybox_layer(env: &Env) -> String {
    let inspected = skopeo_inspect(&env.tag("busybox:latest"), Some(host_arch()));
    inspected["Layers"][0].as_str().unwrap().to_string()
}

#[test]
fn base_images_resolve_by_oci_index_docker_list_and_digest() {
    let env = Env::new();
    let base_layer = busybox_layer(&env);
    let forms = [
        ("latest", "busybox:latest".to_string()),
        ("docker", "busybox:docker".to_string()),
        ("digest", format!("busybox@{}", env.busybox_index_digest)),
    ];
    for (name, base) in &forms {
        let ctx = env.context(
            name,
            &[(
                "Dockerfile",
                &format!("FROM $REG/{base}\nRUN echo {name} > /form.txt\n"),
            )],
        );
        let tag = env.tag(&format!("forms:{name}"));
        env.build_and_push(&ctx, &format!("forms:{name}"), &[]);
        let m = manifest(&tag);
        let layers = layer_digests(&m);
        assert_eq!(layers.len(), 2, "{base}: base + RUN: {m}");
        assert_eq!(
            layers[0], base_layer,
            "{base}: not built on the host's busybox"
        );
        for layer in m["layers"].as_array().unwrap() {
            assert_eq!(
                layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
                "{base}: layers keep a Docker media type"
            );
        }
        let rootfs = unpack_pushed(&tag, &env.path(&format!("unpack-{name}")));
        assert_eq!(read(&rootfs.join("form.txt")), format!("{name}\n"));
        assert_eq!(config(&tag)["architecture"], host_arch());
    }
}

/// A real Debian base image (kiln-testkit's slim bookworm, from an OCI layout): RUN's
/// `/bin/sh` is its dash, and bash, Debian's users, the `awk` alternative and the dpkg
/// database work in the step as in Debian's own images.
#[test]
fn debian_base_runs_its_shells_tools_users_and_dpkg() {
    let env = Env::new();
    let dockerfile = format!(
        "FROM oci-layout://{}:latest\n\
         RUN dpkg-query -W -f='${{Package}}\\n' | wc -l > /packages \\\n\
         \x20&& bash -c 'echo \"$BASH_VERSION\"' > /bash-version \\\n\
         \x20&& readlink -f /bin/sh > /sh && id -u _apt > /apt-uid \\\n\
         \x20&& getent passwd www-data > /www-data && echo 'a b' | awk '{{print $2}}' > /awk\n",
        debian_fixtures().oci_layout.display()
    );
    let ctx = env.context("ctx", &[("Dockerfile", &dockerfile)]);
    env.build_and_push(&ctx, "debian:1", &[]);
    let rootfs = unpack_pushed(&env.tag("debian:1"), &env.path("unpack"));
    let packages: usize = read(&rootfs.join("packages")).trim().parse().unwrap();
    assert!(packages > DEBIAN_PACKAGES.len(), "{packages} packages");
    assert!(
        read(&rootfs.join("bash-version")).starts_with("5."),
        "{}",
        read(&rootfs.join("bash-version"))
    );
    assert_eq!(read(&rootfs.join("sh")), "/usr/bin/dash\n");
    assert_eq!(read(&rootfs.join("apt-uid")), "42\n");
    assert_eq!(
        read(&rootfs.join("www-data")),
        "www-data:*:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    );
    assert_eq!(read(&rootfs.join("awk")), "b\n");
    assert_eq!(
        config(&env.tag("debian:1"))["config"]["Cmd"],
        json!(["bash"])
    );
}

#[test]
fn from_scratch_holds_only_what_was_copied() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
            ("hello.txt", "hello from scratch\n"),
        ],
    );
    env.build_and_push(&ctx, "scratch:1", &[]);
    let tag = env.tag("scratch:1");
    assert_eq!(layer_digests(&manifest(&tag)).len(), 1);
    let rootfs = unpack_pushed(&tag, &env.path("unpack"));
    assert_eq!(list_dir(&rootfs), vec!["hello.txt"]);
    assert_eq!(read(&rootfs.join("hello.txt")), "hello from scratch\n");
}

const MULTI_STAGE: &str = "FROM $REG/busybox:latest\n\
                           RUN echo from-stage-zero > /zero.txt\n\
                           \n\
                           FROM $REG/busybox:latest AS builder\n\
                           RUN echo built-artifact > /artifact\n\
                           \n\
                           FROM scratch\n\
                           COPY --from=builder /artifact /from-builder\n\
                           COPY --from=0 /zero.txt /from-zero\n";

#[test]
fn multi_stage_copies_from_named_and_numbered_stages() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", MULTI_STAGE)]);
    env.build_and_push(&ctx, "multi:final", &[]);
    let rootfs = unpack_pushed(&env.tag("multi:final"), &env.path("unpack"));
    assert_eq!(list_dir(&rootfs), vec!["from-builder", "from-zero"]);
    assert_eq!(read(&rootfs.join("from-builder")), "built-artifact\n");
    assert_eq!(read(&rootfs.join("from-zero")), "from-stage-zero\n");
}

#[test]
fn target_builds_an_earlier_stage() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", MULTI_STAGE)]);
    let o = env.build_and_push(&ctx, "multi:builder", &["--target", "builder"]);
    assert!(
        !stderr(&o).contains("from-stage-zero") && !stderr(&o).contains("COPY --from"),
        "--target builder ran steps of other stages:\n{}",
        stderr(&o)
    );
    let rootfs = unpack_pushed(&env.tag("multi:builder"), &env.path("unpack"));
    assert_eq!(read(&rootfs.join("artifact")), "built-artifact\n");
    assert!(rootfs.join("bin/busybox").exists());
    assert!(!rootfs.join("from-builder").exists());
    assert!(!rootfs.join("zero.txt").exists());
}

const CONFIG_DOCKERFILE: &str = r#"FROM $REG/busybox:latest
ARG GREETING=default-greeting
ENV A=1 B="two words"
ENV C=$A-expanded
LABEL org.example.team="kiln team" version=1
EXPOSE 8080 53/udp
WORKDIR /srv
WORKDIR app
COPY file.txt rel/
RUN pwd > /pwd.txt && echo "$GREETING" > /greeting.txt && echo "$B|$C" > /env.txt
USER builder
RUN id -u > /tmp/uid
ENTRYPOINT ["/bin/echo", "hi"]
CMD echo shell form
"#;

#[test]
fn config_instructions_land_in_the_image_config_and_affect_runs() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", CONFIG_DOCKERFILE), ("file.txt", "file\n")],
    );
    env.build_and_push(
        &ctx,
        "config:1",
        &["--build-arg", "GREETING=hello-from-cli"],
    );
    let tag = env.tag("config:1");
    let cfg = config(&tag);
    let c = &cfg["config"];

    let env_list: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for expected in ["A=1", "B=two words", "C=1-expanded"] {
        assert!(
            env_list.contains(&expected),
            "{expected} missing from {env_list:?}"
        );
    }
    assert!(
        env_list.iter().any(|e| e.starts_with("PATH=")),
        "the base image's PATH was lost: {env_list:?}"
    );
    assert!(
        !env_list
            .iter()
            .any(|e| e.contains("GREETING") || e.contains("hello-from-cli")),
        "a build arg leaked into the config: {env_list:?}"
    );
    assert_eq!(
        c["Labels"],
        json!({"org.example.team": "kiln team", "version": "1"})
    );
    assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}, "53/udp": {}}));
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["User"], "builder");
    assert_eq!(c["Entrypoint"], json!(["/bin/echo", "hi"]));
    assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "echo shell form"]));

    // One history entry per instruction after FROM, on top of the base image's.
    let base_history = config(&env.tag("busybox:latest"))
        .get("history")
        .and_then(|h| h.as_array().map(Vec::len))
        .unwrap_or(0);
    let history = cfg["history"].as_array().unwrap();
    assert_eq!(history.len(), base_history + 13, "{history:#?}");
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = layer_digests(&manifest(&tag));
    assert_eq!(diff_ids.len(), layers.len());
    assert_eq!(layers.len(), 6, "base + 2 WORKDIR + COPY + 2 RUN");
    let non_empty = history
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .count();
    assert_eq!(
        non_empty,
        layers.len(),
        "history marks layers wrongly: {history:#?}"
    );

    let rootfs = unpack_pushed(&tag, &env.path("unpack"));
    assert_eq!(read(&rootfs.join("srv/app/rel/file.txt")), "file\n");
    assert_eq!(read(&rootfs.join("pwd.txt")), "/srv/app\n");
    assert_eq!(read(&rootfs.join("greeting.txt")), "hello-from-cli\n");
    assert_eq!(read(&rootfs.join("env.txt")), "two words|1-expanded\n");
    assert_eq!(read(&rootfs.join("tmp/uid")), "1000\n");
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp/uid")).unwrap().uid(),
        1000
    );
}

#[test]
fn arg_default_applies_without_build_arg_and_shell_entrypoint_keeps_exec_cmd() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\n\
             ARG GREETING=default-greeting\n\
             RUN echo \"$GREETING\" > /greeting.txt\n\
             ENTRYPOINT echo ep\n\
             CMD [\"arg1\"]\n",
        )],
    );
    env.build_and_push(&ctx, "config:2", &[]);
    let tag = env.tag("config:2");
    let c = &config(&tag)["config"];
    assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "echo ep"]));
    assert_eq!(c["Cmd"], json!(["arg1"]));
    let rootfs = unpack_pushed(&tag, &env.path("unpack"));
    assert_eq!(read(&rootfs.join("greeting.txt")), "default-greeting\n");
}

#[test]
fn continuations_comments_and_dockerignore() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "# syntax comment at the top\n\
                 FROM $REG/busybox:latest\n\
                 # a comment between instructions\n\
                 RUN echo one \\\n\
                 \x20   two \\\n\
                 # a comment inside a continuation is dropped\n\
                 \x20   three > /joined.txt\n\
                 COPY . /app\n",
            ),
            (
                ".dockerignore",
                "# ignore logs and secrets\n*.log\nsecret\n!keep.log\n",
            ),
            ("a.txt", "a\n"),
            ("debug.log", "debug\n"),
            ("keep.log", "keep\n"),
            ("secret/key", "s3cret\n"),
            ("sub/b.txt", "b\n"),
        ],
    );
    env.build_and_push(&ctx, "ignore:1", &[]);
    let rootfs = unpack_pushed(&env.tag("ignore:1"), &env.path("unpack"));
    assert_eq!(read(&rootfs.join("joined.txt")), "one two three\n");
    let app = rootfs.join("app");
    assert_eq!(read(&app.join("a.txt")), "a\n");
    assert_eq!(read(&app.join("sub/b.txt")), "b\n");
    assert_eq!(
        read(&app.join("keep.log")),
        "keep\n",
        "`!keep.log` did not re-include it"
    );
    assert!(!app.join("debug.log").exists(), "ignored *.log was copied");
    assert!(!app.join("secret").exists(), "ignored dir was copied");

    // Naming an ignored file is an error that names it.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}/busybox:latest\nCOPY debug.log /\n", env.reg()),
    )
    .unwrap();
    let o = env.kiln(&["build", ctx.to_str().unwrap()]);
    let err = assert_failed(&o);
    assert_contains_all(&err, &["debug.log", "Dockerfile:2"]);
}
