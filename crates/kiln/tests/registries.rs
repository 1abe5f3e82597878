//! Registries as users have them: TLS with their own CA, htpasswd and token auth, credentials
//! from docker's config.json and credential helpers, `kiln login`/`logout`, and mirrors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use kiln_testkit::{RegistryOptions, SelfSigned};

const USER: &str = "kiln";
const PASSWORD: &str = "tls-pw-42";

fn secure_registry() -> Registry {
    Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    })
}

/// A docker config directory in the test's temp dir holding `config` (if given).
fn docker_config_dir(env: &Env, config: Option<Value>) -> PathBuf {
    let dir = env.path("docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(config) = config {
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    }
    dir
}

/// Runs kiln with `DOCKER_CONFIG=docker_config` and `extra_path` first on PATH.
fn kiln_as_user(
    env: &Env,
    docker_config: &Path,
    extra_path: Option<&Path>,
    args: &[&str],
) -> Output {
    let mut command = kiln_command(&env.store(), args);
    command
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("REGISTRY_AUTH_FILE");
    if let Some(dir) = extra_path {
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", dir.display()));
    }
    command.output().unwrap()
}

fn login(
    env: &Env,
    docker_config: &Path,
    registry: &Registry,
    password: &str,
    extra: &[&str],
) -> Output {
    let mut command = kiln_command(&env.store(), &["login", "-u", USER, "--password-stdin"]);
    command
        .args(extra)
        .arg(registry.addr())
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

/// Builds [`app_context`] and pushes it as `tag` to `secure`, trusting the test CA.
fn push_app(
    env: &Env,
    docker_config: &Path,
    extra_path: Option<&Path>,
    secure: &Registry,
    tag: &str,
) -> Output {
    let ctx = app_context(env);
    kiln_as_user(
        env,
        docker_config,
        extra_path,
        &[
            "build",
            "--push",
            "-t",
            tag,
            &certificate_flag(secure),
            ctx.to_str().unwrap(),
        ],
    )
}

/// A context whose image is the fixture busybox plus one file.
fn app_context(env: &Env) -> PathBuf {
    env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/busybox\nCOPY hello.txt /hello.txt\n",
            ),
            ("hello.txt", "hello from kiln\n"),
        ],
    )
}

fn certificate_flag(registry: &Registry) -> String {
    format!(
        "--registry-certificate={}={}",
        registry.addr(),
        registry.ca_path().unwrap().display()
    )
}

/// The manifest `reference` has in a registry that needs the test user's credentials,
/// read with skopeo.
fn manifest_with_credentials(reference: &str) -> Value {
    let o = run_tool(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("--creds={USER}:{PASSWORD}"))
            .arg(format!("docker://{reference}")),
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The host platform's manifest: `m` itself, or the entry of the index `m` fetched by `get`.
fn host_manifest(m: &Value, get: impl Fn(&str) -> Value) -> Value {
    match m["manifests"].as_array() {
        None => m.clone(),
        Some(entries) => {
            let entry = entries
                .iter()
                .find(|e| e["platform"]["architecture"] == host_arch())
                .expect("an entry for this machine's architecture");
            get(entry["digest"].as_str().unwrap())
        }
    }
}

#[test]
fn login_then_build_push_over_tls_with_basic_auth_then_logout() {
    let env = Env::new();
    let secure = secure_registry();
    let docker_config = docker_config_dir(&env, Some(json!({"psFormat": "table"})));
    let config_file = docker_config.join("config.json");

    let o = login(
        &env,
        &docker_config,
        &secure,
        PASSWORD,
        &[&certificate_flag(&secure)],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("Login Succeeded"), "{}", stdout(&o));
    let config: Value = serde_json::from_str(&read(&config_file)).unwrap();
    assert_eq!(config["psFormat"], "table", "other settings are kept");
    let auth = config["auths"][secure.addr()]["auth"].as_str().unwrap();
    let decoded = run_tool(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {auth} | base64 -d")),
    );
    assert_eq!(
        String::from_utf8_lossy(&decoded.stdout),
        format!("{USER}:{PASSWORD}")
    );
    assert_eq!(mode(&config_file), 0o600);

    let tag = format!("{}/team/app:1", secure.addr());
    let o = push_app(&env, &docker_config, None, &secure, &tag);
    assert_ok(&o);
    let pushed = host_manifest(&manifest_with_credentials(&tag), |digest| {
        manifest_with_credentials(&format!("{}/team/app@{digest}", secure.addr()))
    });
    let base = host_manifest(&manifest(&env.tag("busybox:latest")), |digest| {
        manifest(&format!("{}/busybox@{digest}", env.reg()))
    });
    assert_eq!(
        layer_digests(&pushed).len(),
        layer_digests(&base).len() + 1,
        "the busybox layers plus the COPY layer"
    );

    let o = kiln_as_user(&env, &docker_config, None, &["logout", secure.addr()]);
    assert_ok(&o);
    let config: Value = serde_json::from_str(&read(&config_file)).unwrap();
    assert_eq!(config["auths"], json!({}), "{config}");
    assert_eq!(config["psFormat"], "table");
}

/// Docker's "deploy a registry" guide makes the registry's certificate with `openssl req
/// -x509`, which marks it CA:TRUE; users then pass that very certificate.
#[test]
fn build_and_copy_reach_a_registry_with_an_openssl_self_signed_certificate() {
    let env = Env::new();
    let cert = SelfSigned::new("IP:127.0.0.1");
    let registry = Registry::start_with(RegistryOptions {
        server_cert: Some((cert.cert_path.clone(), cert.key_path.clone())),
        ..RegistryOptions::default()
    });
    let trust = |path: &Path| {
        format!(
            "--registry-certificate={}={}",
            registry.addr(),
            path.display()
        )
    };
    let ctx = app_context(&env);
    let tag = format!("{}/team/app:1", registry.addr());
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--push", "-t", &tag];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        env.kiln(&args)
    };

    let err = assert_failed(&build(&[]));
    assert_contains_all(&err, &["not trusted", "--registry-certificate"]);
    let other = SelfSigned::new("IP:127.0.0.1");
    let err = assert_failed(&build(&[&trust(&other.cert_path)]));
    assert_contains_all(&err, &["not trusted", "CaUsedAsEndEntity"]);

    assert_ok(&build(&[&trust(&cert.cert_path)]));
    let copy = format!("{}/team/copy:1", registry.addr());
    assert_ok(&env.kiln(&[
        "copy",
        &trust(&cert.cert_path),
        &format!("docker://{tag}"),
        &format!("docker://{copy}"),
    ]));

    // skopeo, an independent client, trusts the same file and finds what kiln pushed.
    let cert_dir = env.path("certs.d");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&cert.cert_path, cert_dir.join("ca.crt")).unwrap();
    let inspect = |reference: &str| -> Value {
        let o = run_tool(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--cert-dir"])
                .arg(&cert_dir)
                .arg(format!("docker://{reference}")),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let pushed = inspect(&tag);
    assert_eq!(inspect(&copy), pushed);
    let pushed = host_manifest(&pushed, |digest| {
        inspect(&format!("{}/team/app@{digest}", registry.addr()))
    });
    let base = host_manifest(&manifest(&env.tag("busybox:latest")), |digest| {
        manifest(&format!("{}/busybox@{digest}", env.reg()))
    });
    assert_eq!(
        layer_digests(&pushed).len(),
        layer_digests(&base).len() + 1,
        "the busybox layers plus the COPY layer"
    );
}

#[test]
fn login_refuses_a_wrong_password_and_an_untrusted_certificate() {
    let env = Env::new();
    let secure = secure_registry();
    let docker_config = docker_config_dir(&env, None);

    let err = assert_failed(&login(&env, &docker_config, &secure, PASSWORD, &[]));
    assert_contains_all(
        &err,
        &[
            "not trusted",
            &format!("--registry-certificate {}=ca.pem", secure.addr()),
        ],
    );
    let err = assert_failed(&login(
        &env,
        &docker_config,
        &secure,
        "wrong",
        &[&certificate_flag(&secure)],
    ));
    assert_contains_all(
        &err,
        &[
            &format!("login to {} failed", secure.addr()),
            "refused user kiln",
        ],
    );
    assert!(
        !docker_config.join("config.json").exists(),
        "nothing is saved when the registry refuses the credentials"
    );
}

#[test]
fn wrong_password_in_config_json_names_registry_repository_and_file() {
    let env = Env::new();
    let secure = secure_registry();
    let docker_config = docker_config_dir(
        &env,
        Some(json!({"auths": {secure.addr(): {"username": USER, "password": "stale"}}})),
    );
    let tag = format!("{}/team/app:1", secure.addr());
    let o = push_app(&env, &docker_config, None, &secure, &tag);
    let err = assert_failed(&o);
    assert_contains_all(
        &err,
        &[
            secure.addr(),
            "team/app",
            &format!("file {}", docker_config.join("config.json").display()),
            &format!("kiln login {}", secure.addr()),
        ],
    );
}

/// A `docker-credential-kilntest` helper in `dir` that logs each call (`ACTION INPUT`) to
/// `dir/calls`, answers `get` with the password in `dir/secret`, and keeps what `store` is
/// given in `dir/stored` until `erase`.
fn credential_helper(dir: &Path) {
    let script = format!(
        r#"#!/bin/sh
input=$(cat)
echo "$1 $input" >> {dir}/calls
case "$1" in
get)
    [ -f {dir}/secret ] || {{ echo "credentials not found in native keychain"; exit 1; }}
    printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"%s"}}' "$input" "$(cat {dir}/secret)" ;;
store) printf '%s' "$input" > {dir}/stored ;;
erase) rm -f {dir}/stored ;;
esac
"#,
        dir = dir.display()
    );
    let path = dir.join("docker-credential-kilntest");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn creds_store_helper_keeps_what_login_saves_and_logout_erases() {
    let env = Env::new();
    let secure = secure_registry();
    let helper_dir = env.path("helpers");
    std::fs::create_dir_all(&helper_dir).unwrap();
    credential_helper(&helper_dir);
    let docker_config = docker_config_dir(&env, Some(json!({"credsStore": "kilntest"})));
    let config_file = docker_config.join("config.json");
    let path = format!(
        "{}:{}",
        helper_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = kiln_command(&env.store(), &["login", "-u", USER, "-p", PASSWORD]);
    let o = command
        .arg(certificate_flag(&secure))
        .arg(secure.addr())
        .env("DOCKER_CONFIG", &docker_config)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_ok(&o);
    let stored: Value = serde_json::from_str(&read(&helper_dir.join("stored"))).unwrap();
    assert_eq!(
        stored,
        json!({"ServerURL": secure.addr(), "Username": USER, "Secret": PASSWORD})
    );
    let config: Value = serde_json::from_str(&read(&config_file)).unwrap();
    assert_eq!(
        config["auths"],
        json!({ secure.addr(): {} }),
        "no secret in the file"
    );
    assert_eq!(config["credsStore"], "kilntest");

    let o = kiln_as_user(
        &env,
        &docker_config,
        Some(&helper_dir),
        &["logout", secure.addr()],
    );
    assert_ok(&o);
    assert!(!helper_dir.join("stored").exists(), "the helper erased it");
    assert!(read(&helper_dir.join("calls")).contains(&format!("erase {}", secure.addr())));
    let config: Value = serde_json::from_str(&read(&config_file)).unwrap();
    assert_eq!(config["auths"], json!({}));
}

#[test]
fn credential_helper_is_asked_and_named_when_its_password_is_wrong() {
    let env = Env::new();
    let secure = secure_registry();
    let helper_dir = env.path("helpers");
    std::fs::create_dir_all(&helper_dir).unwrap();
    credential_helper(&helper_dir);
    let docker_config = docker_config_dir(
        &env,
        Some(json!({"credHelpers": {secure.addr(): "kilntest"}})),
    );
    let tag = format!("{}/team/app:1", secure.addr());
    let push = |secret: &str| {
        std::fs::write(helper_dir.join("secret"), secret).unwrap();
        push_app(&env, &docker_config, Some(&helper_dir), &secure, &tag)
    };
    assert_ok(&push(PASSWORD));
    assert!(
        read(&helper_dir.join("calls")).contains(&format!("get {}", secure.addr())),
        "the helper was asked for the registry's credentials"
    );
    manifest_with_credentials(&tag);

    let err = assert_failed(&push("not-it"));
    assert_contains_all(
        &err,
        &[
            secure.addr(),
            "team/app",
            "helper docker-credential-kilntest",
        ],
    );
}

#[test]
fn token_auth_push_asks_for_push_scope_as_the_logged_in_user() {
    let env = Env::new();
    let tokens = Registry::start_with(RegistryOptions {
        token_auth: Some((USER.into(), PASSWORD.into())),
        ..RegistryOptions::default()
    });
    let docker_config = docker_config_dir(&env, None);
    assert_ok(&login(&env, &docker_config, &tokens, PASSWORD, &[]));
    let tag = format!("{}/team/app:1", tokens.addr());
    let ctx = app_context(&env);
    assert_ok(&kiln_as_user(
        &env,
        &docker_config,
        None,
        &["build", "--push", "-t", &tag, ctx.to_str().unwrap()],
    ));
    let requests = tokens.token_requests();
    assert!(
        requests.iter().any(|t| t.user.as_deref() == Some(USER)
            && t.granted
            && t.scopes == ["repository:team/app:pull,push"]),
        "{requests:?}"
    );
    assert!(
        requests.iter().all(|t| t.user.as_deref() == Some(USER)),
        "{requests:?}"
    );
}

#[test]
fn docker_hub_images_come_from_the_registry_mirror() {
    let env = Env::new();
    // The mirror holds Docker Hub's path for busybox; there is no internet here, so the
    // build can only succeed through it.
    let mirror = Registry::start();
    push_busybox(&mirror, "library/busybox");
    let ctx = env.context(
        "hub",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", "hi\n"),
        ],
    );
    let docker_config = docker_config_dir(&env, None);
    let mirror_flag = format!("--registry-mirror={}", mirror.addr());
    let o = kiln_as_user(
        &env,
        &docker_config,
        None,
        &["build", &mirror_flag, ctx.to_str().unwrap()],
    );
    assert_ok(&o);

    // With fallback off, a dead mirror is an error that names it, not a trip to Docker Hub.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let o = kiln_as_user(
        &env,
        &docker_config,
        None,
        &[
            "build",
            &format!("--registry-mirror={dead}"),
            "--skip-default-registry-fallback",
            ctx.to_str().unwrap(),
        ],
    );
    let err = assert_failed(&o);
    assert_contains_all(&err, &[&dead, "docker.io"]);
}

#[test]
fn registry_config_file_sets_mirrors_and_cas() {
    let env = Env::new();
    let secure = secure_registry();
    // The TLS registry mirrors Docker Hub; the config file says how to trust it and the
    // credentials come from config.json.
    let docker_config = docker_config_dir(
        &env,
        Some(json!({"auths": {secure.addr(): {"username": USER, "password": PASSWORD}}})),
    );
    let reg_config = env.path("buildkitd.toml");
    std::fs::write(
        &reg_config,
        format!(
            "[worker.oci]\nenabled = false\n\n[registry.\"docker.io\"]\nmirrors = [\"{addr}\"]\n\n[registry.\"{addr}\"]\nca = [\"{ca}\"]\n",
            addr = secure.addr(),
            ca = secure.ca_path().unwrap().display()
        ),
    )
    .unwrap();
    // Seed the mirror through kiln itself: copy the fixture busybox in with a build push.
    let ctx = env.context("seed", &[("Dockerfile", "FROM $REG/busybox\n")]);
    let seeded = format!("{}/library/busybox:latest", secure.addr());
    assert_ok(&kiln_as_user(
        &env,
        &docker_config,
        None,
        &[
            "build",
            "--push",
            "-t",
            &seeded,
            "--registry-config",
            reg_config.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    ));
    let hub = env.context("hub", &[("Dockerfile", "FROM busybox\n")]);
    let o = kiln_as_user(
        &env,
        &docker_config,
        None,
        &[
            "build",
            "--registry-config",
            reg_config.to_str().unwrap(),
            "--skip-default-registry-fallback",
            hub.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
}
