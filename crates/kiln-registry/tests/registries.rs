//! The client against real distribution registries: TLS with a test CA, htpasswd basic auth,
//! token auth through a token server, and mirrors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_oci::{Descriptor, Digest, media};
use kiln_registry::{
    ClientOptions, CredentialStore, Reference, RegistryClient, RegistryConfig, RegistryError,
};
use kiln_testkit::{Registry, RegistryOptions, SelfSigned};

const USER: &str = "kiln";
const PASSWORD: &str = "s3cret-pw";

fn creds() -> Option<(String, String)> {
    Some((USER.to_string(), PASSWORD.to_string()))
}

/// A docker `config.json` in `dir` holding `entry` for `registry`.
fn docker_config(dir: &Path, registry: &str, entry: serde_json::Value) -> CredentialStore {
    let path = dir.join("config.json");
    let config = serde_json::json!({ "auths": { registry: entry } });
    std::fs::write(&path, config.to_string()).unwrap();
    CredentialStore {
        auth_file: None,
        docker_config: path,
        podman_auth_files: Vec::new(),
        helpers: Default::default(),
    }
}

fn basic_entry(user: &str, password: &str) -> serde_json::Value {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({ "auth": auth })
}

fn trusting_ca(registry: &Registry) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config
        .host_mut(registry.addr())
        .ca
        .push(registry.ca_path().unwrap());
    config
}

fn trusting(registry: &Registry, cert: &Path) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config.host_mut(registry.addr()).ca.push(cert.to_path_buf());
    config
}

/// A registry serving `cert`, a self-signed certificate made with openssl.
fn self_signed_registry(cert: &SelfSigned) -> Registry {
    Registry::start_with(RegistryOptions {
        server_cert: Some((cert.cert_path.clone(), cert.key_path.clone())),
        ..RegistryOptions::default()
    })
}

fn client(config: RegistryConfig, credentials: CredentialStore) -> RegistryClient {
    RegistryClient::new(&ClientOptions {
        config,
        credentials,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// What a tiny pushed image is made of.
struct Pushed {
    manifest: Digest,
    layer: Descriptor,
    layer_bytes: Vec<u8>,
}

/// Pushes a one-layer image to `r` through `client`.
fn push_image(client: &RegistryClient, r: &Reference, work: &Path) -> Pushed {
    let blob = |name: &str, media_type: &str, bytes: &[u8]| -> (Descriptor, PathBuf) {
        let path = work.join(name);
        std::fs::write(&path, bytes).unwrap();
        let d = Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64);
        (d, path)
    };
    let layer_bytes = format!("layer of {r}").into_bytes();
    let (layer, layer_path) = blob("layer", media::OCI_LAYER_GZIP, &layer_bytes);
    let config_bytes =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (config, config_path) = blob("config", media::OCI_CONFIG, config_bytes);
    assert!(client.push_blob(r, &layer, &layer_path).unwrap());
    assert!(client.push_blob(r, &config, &config_path).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": [layer],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = client
        .push_manifest(r, media::OCI_MANIFEST, &bytes)
        .unwrap();
    Pushed {
        manifest: digest,
        layer,
        layer_bytes,
    }
}

/// Pulls `r`'s manifest and its layer back: the manifest digest and the layer bytes.
fn pull_image(
    client: &RegistryClient,
    r: &Reference,
    layer: &Descriptor,
    work: &Path,
) -> Result<(Digest, Vec<u8>), RegistryError> {
    let fetched = client.fetch_manifest(r)?;
    let dest = work.join("pulled-layer");
    client.fetch_blob(r, layer, &dest)?;
    Ok((fetched.digest, std::fs::read(dest).unwrap()))
}

fn reference(registry: &Registry, repo_tag: &str) -> Reference {
    format!("{}/{repo_tag}", registry.addr()).parse().unwrap()
}

fn tls_basic_registry() -> Registry {
    Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: creds(),
        ..RegistryOptions::default()
    })
}

#[test]
fn basic_auth_over_tls_pushes_and_pulls_with_the_registry_ca() {
    let registry = tls_basic_registry();
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, PASSWORD));
    let kiln = client(trusting_ca(&registry), store.clone());
    let r = reference(&registry, "team/app:1");
    let pushed = push_image(&kiln, &r, work.path());

    // A second client (nothing cached) reads back exactly what was pushed.
    let fresh = client(trusting_ca(&registry), store);
    let (digest, layer) = pull_image(&fresh, &r, &pushed.layer, work.path()).unwrap();
    assert_eq!(digest, pushed.manifest);
    assert_eq!(layer, pushed.layer_bytes);
}

#[test]
fn untrusted_certificate_error_says_how_to_pass_the_ca() {
    let registry = tls_basic_registry();
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, PASSWORD));
    let kiln = client(RegistryConfig::default(), store);
    let e = kiln
        .fetch_manifest(&reference(&registry, "team/app:1"))
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::UntrustedCertificate { .. }),
        "{e:?}"
    );
    let message = e.to_string();
    let hint = format!("--registry-certificate {}=ca.pem", registry.addr());
    assert!(message.contains("not trusted"), "{message}");
    assert!(message.contains(&hint), "{message}");
}

#[test]
fn skipping_verification_for_the_registry_reaches_it() {
    let registry = tls_basic_registry();
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, PASSWORD));
    let mut config = RegistryConfig::default();
    config.host_mut(registry.addr()).insecure = true;
    let kiln = client(config, store);
    let r = reference(&registry, "team/app:1");
    let pushed = push_image(&kiln, &r, work.path());
    assert_eq!(kiln.fetch_manifest(&r).unwrap().digest, pushed.manifest);
}

#[test]
fn wrong_password_names_registry_repository_and_config_file() {
    let registry = tls_basic_registry();
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, "wrong"));
    let kiln = client(trusting_ca(&registry), store.clone());
    let e = kiln
        .fetch_manifest(&reference(&registry, "team/app:1"))
        .unwrap_err()
        .to_string();
    for needle in [
        registry.addr().to_string(),
        "team/app".to_string(),
        format!("file {}", store.docker_config.display()),
    ] {
        assert!(e.contains(&needle), "{needle:?} not in: {e}");
    }
}

#[test]
fn missing_credentials_say_where_kiln_looked_and_to_log_in() {
    let registry = tls_basic_registry();
    let work = tempfile::tempdir().unwrap();
    let store = CredentialStore {
        auth_file: None,
        docker_config: work.path().join("absent.json"),
        podman_auth_files: Vec::new(),
        helpers: Default::default(),
    };
    let kiln = client(trusting_ca(&registry), store);
    let e = kiln
        .fetch_manifest(&reference(&registry, "team/app:1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.json"), "{e}");
    assert!(
        e.contains(&format!("kiln login {}", registry.addr())),
        "{e}"
    );
}

fn token_registry(expires_in: u64) -> Registry {
    Registry::start_with(RegistryOptions {
        token_auth: creds(),
        token_expires_in: Some(expires_in),
        ..RegistryOptions::default()
    })
}

#[test]
fn token_auth_asks_for_push_and_pull_scopes_as_the_user() {
    let registry = token_registry(300);
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, PASSWORD));
    let r = reference(&registry, "team/app:1");
    let pushed = push_image(
        &client(RegistryConfig::default(), store.clone()),
        &r,
        work.path(),
    );
    let pushes: Vec<_> = registry.token_requests();
    assert!(!pushes.is_empty());
    for request in &pushes {
        assert_eq!(request.user.as_deref(), Some(USER));
        assert_eq!(request.scopes, ["repository:team/app:pull,push"]);
    }

    let puller = client(RegistryConfig::default(), store);
    let (digest, _) = pull_image(&puller, &r, &pushed.layer, work.path()).unwrap();
    assert_eq!(digest, pushed.manifest);
    let pulls = &registry.token_requests()[pushes.len()..];
    assert_eq!(pulls.len(), 1, "one token serves every pull: {pulls:?}");
    assert_eq!(pulls[0].scopes, ["repository:team/app:pull"]);
}

#[test]
fn expired_tokens_are_renewed_and_valid_ones_reused() {
    let registry = token_registry(1);
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, PASSWORD));
    let r = reference(&registry, "team/app:1");
    push_image(
        &client(RegistryConfig::default(), store.clone()),
        &r,
        work.path(),
    );
    let kiln = client(RegistryConfig::default(), store);
    let before = registry.token_requests().len();
    kiln.fetch_manifest(&r).unwrap();
    kiln.fetch_manifest(&r).unwrap();
    assert_eq!(registry.token_requests().len(), before + 1);
    std::thread::sleep(Duration::from_millis(1500));
    kiln.fetch_manifest(&r).unwrap();
    assert_eq!(registry.token_requests().len(), before + 2);
}

#[test]
fn identity_tokens_are_exchanged_with_an_oauth2_post() {
    let registry = token_registry(300);
    let work = tempfile::tempdir().unwrap();
    // The test token server accepts the user's password as their refresh token.
    let store = docker_config(
        work.path(),
        registry.addr(),
        serde_json::json!({ "identitytoken": PASSWORD }),
    );
    let r = reference(&registry, "team/app:1");
    push_image(&client(RegistryConfig::default(), store), &r, work.path());
    let requests = registry.token_requests();
    assert!(
        requests.iter().all(|t| t.method == "POST" && t.granted),
        "{requests:?}"
    );
}

#[test]
fn token_server_refusing_credentials_names_their_source() {
    let registry = token_registry(300);
    let work = tempfile::tempdir().unwrap();
    let store = docker_config(work.path(), registry.addr(), basic_entry(USER, "nope"));
    let e = client(RegistryConfig::default(), store.clone())
        .fetch_manifest(&reference(&registry, "team/app:1"))
        .unwrap_err();
    assert!(matches!(e, RegistryError::BadCredentials { .. }), "{e:?}");
    let message = e.to_string();
    assert!(message.contains("team/app"), "{message}");
    assert!(
        message.contains(&store.docker_config.display().to_string()),
        "{message}"
    );
}

fn no_credentials() -> CredentialStore {
    CredentialStore {
        auth_file: None,
        docker_config: PathBuf::from("/nonexistent/config.json"),
        podman_auth_files: Vec::new(),
        helpers: Default::default(),
    }
}

#[test]
fn pulls_come_from_the_mirror_first() {
    let origin = Registry::start();
    let mirror = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let plain = client(RegistryConfig::default(), no_credentials());
    // Only the mirror holds the image, under the same repository path.
    let pushed = push_image(&plain, &reference(&mirror, "library/app:1"), work.path());
    let mut config = RegistryConfig::default();
    config
        .host_mut(origin.addr())
        .mirrors
        .push(mirror.addr().to_string());
    let kiln = client(config.clone(), no_credentials());
    let r = reference(&origin, "library/app:1");
    let (digest, layer) = pull_image(&kiln, &r, &pushed.layer, work.path()).unwrap();
    assert_eq!((digest, layer), (pushed.manifest, pushed.layer_bytes));

    // What the mirror lacks comes from the origin, unless fallback is off.
    let only_origin = push_image(&plain, &reference(&origin, "library/other:1"), work.path());
    let other = reference(&origin, "library/other:1");
    assert_eq!(
        kiln.fetch_manifest(&other).unwrap().digest,
        only_origin.manifest
    );
    config.no_origin_fallback = true;
    let strict = client(config, no_credentials());
    let e = strict.fetch_manifest(&other).unwrap_err();
    assert!(matches!(e, RegistryError::MirrorsFailed { .. }), "{e:?}");
    assert!(e.to_string().contains(mirror.addr()), "{e}");
}

#[test]
fn dead_mirror_falls_back_to_the_origin() {
    let origin = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let plain = client(RegistryConfig::default(), no_credentials());
    let r = reference(&origin, "library/app:1");
    let pushed = push_image(&plain, &r, work.path());
    let mut config = RegistryConfig::default();
    config.host_mut(origin.addr()).mirrors.push(dead.clone());
    let kiln = client(config.clone(), no_credentials());
    let (digest, _) = pull_image(&kiln, &r, &pushed.layer, work.path()).unwrap();
    assert_eq!(digest, pushed.manifest);

    config.no_origin_fallback = true;
    let e = client(config, no_credentials())
        .fetch_manifest(&r)
        .unwrap_err();
    assert!(e.to_string().contains(&dead), "{e}");
}

#[test]
fn client_certificates_are_presented_to_registries_that_require_them() {
    let registry = Registry::start_with(RegistryOptions {
        tls: true,
        client_certs: true,
        ..RegistryOptions::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = registry.client_cert().unwrap();
    let mut config = trusting_ca(&registry);
    config
        .host_mut(registry.addr())
        .keypair
        .push(kiln_registry::KeyPair { key, cert });
    let r = reference(&registry, "team/app:1");
    let pushed = push_image(&client(config.clone(), no_credentials()), &r, work.path());

    let fresh = client(config, no_credentials());
    assert_eq!(fresh.fetch_manifest(&r).unwrap().digest, pushed.manifest);

    let without = client(trusting_ca(&registry), no_credentials());
    let e = without.fetch_manifest(&r).unwrap_err();
    assert!(
        matches!(e, RegistryError::ClientCertificateRejected { .. }),
        "{e:?}"
    );
    let hint = format!("--registry-client-cert {}=", registry.addr());
    assert!(e.to_string().contains(&hint), "{e}");
}

#[test]
fn self_signed_ca_certificate_is_accepted_when_it_is_the_one_trusted() {
    // Made as Docker's "deploy a registry" guide makes it: CA:TRUE, used as the server's own.
    let cert = SelfSigned::new("IP:127.0.0.1");
    let registry = self_signed_registry(&cert);
    let work = tempfile::tempdir().unwrap();
    let r = reference(&registry, "team/app:1");
    let pushed = push_image(
        &client(trusting(&registry, &cert.cert_path), no_credentials()),
        &r,
        work.path(),
    );
    let fresh = client(trusting(&registry, &cert.cert_path), no_credentials());
    let (digest, layer) = pull_image(&fresh, &r, &pushed.layer, work.path()).unwrap();
    assert_eq!(digest, pushed.manifest);
    assert_eq!(layer, pushed.layer_bytes);

    let untrusted = |config: RegistryConfig| {
        let e = client(config, no_credentials())
            .fetch_manifest(&r)
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::UntrustedCertificate { .. }),
            "{e:?}"
        );
        e.to_string()
    };
    let e = untrusted(RegistryConfig::default());
    assert!(e.contains("--registry-certificate"), "{e}");
    // Another self-signed certificate for the same address is not this server's.
    let other = SelfSigned::new("IP:127.0.0.1");
    let e = untrusted(trusting(&registry, &other.cert_path));
    assert!(e.contains("CaUsedAsEndEntity"), "{e}");
}

#[test]
fn a_trusted_self_signed_certificate_vouches_only_for_its_own_registry_and_holder() {
    let untrusted = |registry: &Registry, config: RegistryConfig| {
        let e = client(config, no_credentials())
            .fetch_manifest(&reference(registry, "team/app:1"))
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::UntrustedCertificate { .. }),
            "{e:?}"
        );
    };
    // Trusted for one registry, the same certificate served by another (same name, another
    // port) is not trusted there.
    let cert = SelfSigned::new("IP:127.0.0.1");
    let trusted_for = self_signed_registry(&cert);
    let other = self_signed_registry(&cert);
    untrusted(&other, trusting(&trusted_for, &cert.cert_path));

    // A server whose own self-signed certificate comes first, with the trusted one after it
    // as if it were an intermediate, has not shown the trusted certificate's key.
    let impostor = SelfSigned::new("IP:127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("chain.pem");
    let mut pem = std::fs::read(&impostor.cert_path).unwrap();
    pem.extend(std::fs::read(&cert.cert_path).unwrap());
    std::fs::write(&chain, pem).unwrap();
    let registry = Registry::start_with(RegistryOptions {
        server_cert: Some((chain, impostor.key_path.clone())),
        ..RegistryOptions::default()
    });
    untrusted(&registry, trusting(&registry, &cert.cert_path));
}

#[test]
fn trusted_self_signed_certificate_must_still_name_the_server_and_be_valid() {
    let refused = |cert: &SelfSigned, expect: &str| {
        let registry = self_signed_registry(cert);
        let e = client(trusting(&registry, &cert.cert_path), no_credentials())
            .fetch_manifest(&reference(&registry, "team/app:1"))
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::UntrustedCertificate { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains(expect), "{e}");
    };
    refused(
        &SelfSigned::new("DNS:registry.example,IP:127.0.0.2"),
        "not valid for name",
    );
    refused(
        &SelfSigned::valid_between("IP:127.0.0.1", "20200101000000Z", "20200201000000Z"),
        "expired",
    );
}
