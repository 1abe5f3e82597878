//! kiln against a hostile registry: a real distribution registry behind FaultProxy, which
//! sends what a registry should not. Checked from outside the kiln process: the headers
//! another host received, kiln's peak RSS (wait4), the bytes on disk, the files left in the
//! store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kiln_testkit::{
    Fault, FaultProxy, FaultRule, Measured, RegistryOptions, SeenRequest, push_busybox_as,
    run_measured,
};

const USER: &str = "kiln";
const PASSWORD: &str = "hostile-pw-7";
const MIB: u64 = 1 << 20;
/// Issue 9: peak memory under 100 MiB for every hostile registry response.
const RSS_LIMIT_KIB: u64 = 100 << 10;
/// "Endless": far more than kiln should ever read, and more than the RSS limit, so a kiln
/// that reads it all fails the test instead of the machine.
const FLOOD: u64 = 256 * MIB;

fn with_password() -> Registry {
    Registry::start_with(RegistryOptions {
        htpasswd: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    })
}

/// A docker config dir giving the test user's credentials for each of `hosts`.
fn credentials_for(env: &Env, hosts: &[&str]) -> PathBuf {
    let dir = env.path("docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    let auths: serde_json::Map<String, Value> = hosts
        .iter()
        .map(|h| {
            (
                h.to_string(),
                json!({"username": USER, "password": PASSWORD}),
            )
        })
        .collect();
    std::fs::write(
        dir.join("config.json"),
        json!({ "auths": auths }).to_string(),
    )
    .unwrap();
    dir
}

/// kiln with `args`, credentials from `docker_config`, and `envs` (proxy variables of the
/// test's choosing; the caller's own are removed), measured.
fn kiln_measured(
    env: &Env,
    docker_config: &Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> Measured {
    let mut command = kiln_command(&env.store(), args);
    command
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("REGISTRY_AUTH_FILE");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        command.env_remove(var).env_remove(var.to_ascii_lowercase());
    }
    command.envs(envs.iter().copied());
    let measured = run_measured(&mut command);
    eprintln!(
        "kiln {args:?}: exit {:?}, peak RSS {} KiB\n{}",
        measured.output.status,
        measured.peak_rss_kib,
        stderr(&measured.output)
    );
    measured
}

/// A context whose Dockerfile is `FROM <base>` and a COPY.
fn context_from(env: &Env, name: &str, base: &str) -> PathBuf {
    env.context(
        name,
        &[
            ("Dockerfile", &format!("FROM {base}\nCOPY hello.txt /\n")),
            ("hello.txt", "hello\n"),
        ],
    )
}

fn build(ctx: &Path) -> Vec<&str> {
    vec!["build", ctx.to_str().unwrap()]
}

/// The descriptors (config, then layers) of the fixture's image for this machine.
fn host_image_blobs(env: &Env) -> Vec<Value> {
    let (_, image) = host_image(&env.tag("busybox"), "latest");
    let mut blobs = vec![image["config"].clone()];
    blobs.extend(image["layers"].as_array().unwrap().iter().cloned());
    blobs
}

fn with_authorization(requests: &[SeenRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.header("Authorization").is_some())
        .map(|r| format!("{} {}", r.method, r.target))
        .collect()
}

/// Every file under `dir` whose name marks a partial download.
fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().contains(".part") {
                found.push(path);
            }
        }
    }
    found
}

/// Watches the largest file under `dir` until dropped.
struct LargestFile {
    stop: Arc<AtomicBool>,
    largest: Arc<AtomicU64>,
}

impl LargestFile {
    fn watch(dir: &Path) -> LargestFile {
        let (stop, largest) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, l, dir) = (Arc::clone(&stop), Arc::clone(&largest), dir.to_path_buf());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut pending = vec![dir.clone()];
                while let Some(d) = pending.pop() {
                    for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                        match entry.metadata() {
                            Ok(m) if m.is_dir() => pending.push(entry.path()),
                            Ok(m) => {
                                l.fetch_max(m.len(), Ordering::SeqCst);
                            }
                            Err(_) => {}
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        LargestFile { stop, largest }
    }

    fn largest(&self) -> u64 {
        self.largest.load(Ordering::SeqCst)
    }
}

impl Drop for LargestFile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn an_endless_manifest_is_cut_off_at_4_mib_in_bounded_memory() {
    let env = Env::new();
    let proxy = FaultProxy::start(
        env.reg(),
        vec![FaultRule::new(
            Some("GET"),
            "/manifests/",
            Fault::Flood {
                status: 200,
                content_type: "application/vnd.oci.image.manifest.v1+json".into(),
                bytes: FLOOD,
            },
            usize::MAX,
        )],
    );
    let ctx = context_from(&env, "ctx", &format!("{}/busybox:latest", proxy.addr()));

    let run = kiln_measured(&env, &env.path("none"), &[], &build(&ctx));

    let err = assert_failed(&run.output);
    assert_contains_all(
        &err,
        &[
            proxy.addr(),
            "busybox",
            "manifest `latest`",
            "more than 4 MiB",
        ],
    );
    assert!(
        run.peak_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        run.peak_rss_kib
    );
}

#[test]
fn an_endless_error_body_is_read_in_part_and_shown_shortened() {
    let env = Env::new();
    let proxy = FaultProxy::start(
        env.reg(),
        vec![FaultRule::new(
            Some("GET"),
            "/manifests/",
            Fault::Flood {
                status: 400,
                content_type: "application/json".into(),
                bytes: FLOOD,
            },
            usize::MAX,
        )],
    );
    let ctx = context_from(&env, "ctx", &format!("{}/busybox:latest", proxy.addr()));

    let run = kiln_measured(&env, &env.path("none"), &[], &build(&ctx));

    let err = assert_failed(&run.output);
    assert_contains_all(&err, &[proxy.addr(), "HTTP 400"]);
    assert!(
        run.output.stderr.len() < 4096,
        "{} bytes of stderr",
        run.output.stderr.len()
    );
    assert!(
        run.peak_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        run.peak_rss_kib
    );
}

#[test]
fn a_blob_longer_than_its_descriptor_stops_at_its_size_on_disk() {
    let env = Env::new();
    let config = host_image_blobs(&env).remove(0);
    let (digest, size) = (
        config["digest"].as_str().unwrap().to_string(),
        config["size"].as_u64().unwrap(),
    );
    let proxy = FaultProxy::start(
        env.reg(),
        vec![FaultRule::new(
            Some("GET"),
            &format!("/blobs/{digest}"),
            Fault::AppendToAnswer(FLOOD),
            usize::MAX,
        )],
    );
    let ctx = context_from(&env, "ctx", &format!("{}/busybox:latest", proxy.addr()));
    std::fs::create_dir_all(env.store()).unwrap();
    let disk = LargestFile::watch(&env.store());

    let run = kiln_measured(&env, &env.path("none"), &[], &build(&ctx));

    let largest = disk.largest();
    drop(disk);
    eprintln!("largest file in the store: {largest} bytes; the blob's descriptor: {size}");
    let err = assert_failed(&run.output);
    assert_contains_all(&err, &[proxy.addr(), &digest, "descriptor"]);
    assert!(
        largest <= size,
        "{largest} bytes on disk for a {size}-byte blob"
    );
    assert_eq!(partial_files(&env.store()), Vec::<PathBuf>::new());
    assert!(
        run.peak_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        run.peak_rss_kib
    );
}

#[test]
fn an_upload_location_on_another_host_gets_no_credentials() {
    let env = Env::new();
    let registry = with_password();
    // The same registry seen from another address: a host of its own as far as kiln can tell.
    let elsewhere = FaultProxy::start_on("127.0.0.2:0", registry.addr(), vec![]);
    let front = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("POST"),
            "/blobs/uploads/",
            Fault::RewriteLocation {
                to: elsewhere.addr().to_string(),
            },
            usize::MAX,
        )],
    );
    let docker_config = credentials_for(&env, &[front.addr()]);
    let ctx = context_from(&env, "ctx", &env.tag("busybox:latest"));
    let tag = format!("{}/pushed:1", front.addr());
    let mut args = vec!["build", "--push", "-t", &tag];
    args.push(ctx.to_str().unwrap());

    let run = kiln_measured(&env, &docker_config, &[], &args);

    let there = elsewhere.seen();
    assert!(!there.is_empty(), "kiln never went to the other host");
    assert_eq!(with_authorization(&there), Vec::<String>::new());
    assert!(
        !with_authorization(&front.seen()).is_empty(),
        "the registry itself never got credentials: the test proves nothing"
    );
    let err = assert_failed(&run.output);
    assert_contains_all(
        &err,
        &[elsewhere.addr(), "asked for credentials", front.addr()],
    );
}

#[test]
fn a_blob_redirected_to_another_host_is_fetched_without_credentials() {
    let env = Env::new();
    let registry = with_password();
    push_busybox_as(registry.addr(), "busybox", Some((USER, PASSWORD)));
    // Blob storage elsewhere (S3, say) that serves the same blobs without credentials.
    let storage = FaultProxy::start_on("127.0.0.2:0", env.reg(), vec![]);
    let front = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("GET"),
            "/blobs/",
            Fault::Redirect {
                to: storage.addr().to_string(),
            },
            usize::MAX,
        )],
    );
    let docker_config = credentials_for(&env, &[front.addr()]);
    let ctx = context_from(&env, "ctx", &format!("{}/busybox:latest", front.addr()));

    let run = kiln_measured(&env, &docker_config, &[], &build(&ctx));

    assert_ok(&run.output);
    let fetched: Vec<_> = storage
        .seen()
        .into_iter()
        .filter(|r| r.target.contains("/blobs/"))
        .collect();
    assert!(!fetched.is_empty(), "no blob came from the storage host");
    assert_eq!(with_authorization(&fetched), Vec::<String>::new());
    assert!(!with_authorization(&front.seen()).is_empty());
}

/// A forward proxy that logs what it is asked and refuses it: CONNECT (a TLS tunnel) gets a
/// 502, plain HTTP requests a 401 challenge, which a client leaking credentials answers.
fn logging_forward_proxy() -> FaultProxy {
    FaultProxy::start(
        "127.0.0.1:9",
        vec![
            FaultRule::new(
                Some("CONNECT"),
                "",
                Fault::Status {
                    status: 502,
                    retry_after: None,
                },
                usize::MAX,
            ),
            FaultRule::new(
                None,
                "",
                Fault::Respond {
                    status: 401,
                    headers: vec![("WWW-Authenticate".into(), "Basic realm=\"hostile\"".into())],
                },
                usize::MAX,
            ),
        ],
    )
}

#[test]
fn a_name_that_starts_with_127_is_not_spoken_to_over_plain_http() {
    let env = Env::new();
    let proxy = logging_forward_proxy();
    let registry = "127.evil.example:5000";
    let docker_config = credentials_for(&env, &[registry]);
    let ctx = context_from(&env, "ctx", &format!("{registry}/busybox:latest"));
    let via = format!("http://{}", proxy.addr());

    let run = kiln_measured(
        &env,
        &docker_config,
        &[("HTTPS_PROXY", &via), ("HTTP_PROXY", &via)],
        &build(&ctx),
    );

    let seen = proxy.seen();
    let plain: Vec<_> = seen
        .iter()
        .filter(|r| r.method != "CONNECT")
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(!seen.is_empty(), "kiln did not use the proxy");
    assert_eq!(plain, Vec::<String>::new(), "plain HTTP to {registry}");
    assert_eq!(with_authorization(&seen), Vec::<String>::new());
    assert_failed(&run.output);
}

#[test]
fn credentials_never_go_to_a_token_realm_over_plain_http() {
    let env = Env::new();
    let realm = "http://auth.kiln.invalid/token";
    let registry = FaultProxy::start(
        "127.0.0.1:9",
        vec![FaultRule::new(
            None,
            "",
            Fault::Respond {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    format!("Bearer realm=\"{realm}\",service=\"hostile\""),
                )],
            },
            usize::MAX,
        )],
    );
    let proxy = logging_forward_proxy();
    let docker_config = credentials_for(&env, &[registry.addr()]);
    let ctx = context_from(&env, "ctx", &format!("{}/busybox:latest", registry.addr()));
    let via = format!("http://{}", proxy.addr());

    // The registry on loopback is reached directly; anything else goes through the proxy.
    let run = kiln_measured(
        &env,
        &docker_config,
        &[
            ("HTTP_PROXY", &via),
            ("HTTPS_PROXY", &via),
            ("NO_PROXY", "127.0.0.1"),
        ],
        &build(&ctx),
    );

    assert!(
        registry
            .seen()
            .iter()
            .any(|r| r.target.contains("/manifests/")),
        "kiln never asked the registry"
    );
    assert_eq!(with_authorization(&proxy.seen()), Vec::<String>::new());
    let err = assert_failed(&run.output);
    assert_contains_all(&err, &[realm, "plain HTTP"]);
}

/// Writes `bytes` into the layout's blobs and returns their descriptor.
fn layout_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    use sha2::{Digest as _, Sha256};
    let hex = hex_of(&Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_huge_image_config_is_refused_before_it_is_read() {
    let env = Env::new();
    let layout = env.path("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    // A valid config, made huge by one label.
    let label = "a".repeat(FLOOD as usize);
    let config = json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Labels": {"huge": label}},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let config = layout_blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [],
    });
    let mut top = layout_blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "huge"});
    std::fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )
    .unwrap();
    let base = format!("oci-layout://{}:huge", layout.display());
    let ctx = context_from(&env, "ctx", &base);

    let run = kiln_measured(&env, &env.path("none"), &[], &build(&ctx));

    let err = assert_failed(&run.output);
    assert_contains_all(&err, &["image config is larger than 8 MiB"]);
    assert!(
        run.peak_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        run.peak_rss_kib
    );
}

#[test]
fn a_killed_download_leaves_a_partial_file_that_the_next_build_removes() {
    let env = Env::new();
    let layer = host_image_blobs(&env).remove(1);
    let proxy = FaultProxy::start(
        env.reg(),
        vec![FaultRule::new(
            Some("GET"),
            &format!("/blobs/{}", layer["digest"].as_str().unwrap()),
            Fault::StallAfterHead(64 << 10),
            1,
        )],
    );
    let ctx = context_from(&env, "ctx", &format!("{}/busybox:latest", proxy.addr()));
    let mut stalled = kiln_command(&env.store(), &build(&ctx))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_files(&env.store()).is_empty() {
        assert!(Instant::now() < deadline, "no partial download appeared");
        assert!(stalled.try_wait().unwrap().is_none(), "kiln ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    let left = partial_files(&env.store());
    assert!(!left.is_empty());
    // Partial files younger than two seconds may belong to a download that is just starting.
    std::thread::sleep(Duration::from_millis(2500));

    let run = kiln_measured(&env, &env.path("none"), &[], &build(&ctx));

    assert_ok(&run.output);
    assert_eq!(
        partial_files(&env.store()),
        Vec::<PathBuf>::new(),
        "{left:?}"
    );
}
