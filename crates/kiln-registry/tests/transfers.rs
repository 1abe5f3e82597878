//! Transfers against a real distribution registry with a fault-injecting proxy in front of
//! it: dropped uploads resume, transient answers are retried (honouring `Retry-After`),
//! blobs are mounted across repositories, and corrupt downloads are refused. (Stitching an
//! index from images in a registry is tested in kiln-transport, which does it.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_oci::{Descriptor, Digest, media};
use kiln_registry::{
    BlobTransfer, ClientOptions, Reference, RegistryClient, RegistryError, RetryPolicy,
};
use kiln_testkit::{Fault, FaultProxy, FaultRule, Registry, SeenRequest, noise};

const MIB: usize = 1 << 20;

fn client_with(retry: RetryPolicy) -> RegistryClient {
    RegistryClient::new(&ClientOptions {
        retry,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// Quick retries, so the tests do not wait on backoff.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(5),
    }
}

fn at(host: &str, repo_tag: &str) -> Reference {
    format!("{host}/{repo_tag}").parse().unwrap()
}

/// Writes `bytes` to `dir/name` and describes them as a layer.
fn blob_file(dir: &Path, name: &str, bytes: &[u8]) -> (Descriptor, PathBuf) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let desc = Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(bytes), bytes.len() as u64);
    (desc, path)
}

/// Pulls a blob straight from the registry (no proxy) and returns its bytes.
fn pull_direct(registry: &Registry, repo: &str, blob: &Descriptor, dir: &Path) -> Vec<u8> {
    let dest = dir.join(format!("pulled-{}", blob.digest.hex()));
    client_with(RetryPolicy::default())
        .fetch_blob(&at(registry.addr(), repo), blob, &dest)
        .unwrap();
    std::fs::read(dest).unwrap()
}

/// A one-layer image manifest over `layer` with a tiny config pushed alongside.
fn push_image(client: &RegistryClient, r: &Reference, layer: (&Descriptor, &Path), dir: &Path) {
    let config_bytes =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (mut config, config_path) = blob_file(dir, "config", config_bytes);
    config.media_type = media::OCI_CONFIG.into();
    client.push_blob(r, layer.0, layer.1).unwrap();
    client.push_blob(r, &config, &config_path).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": [layer.0],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    client
        .push_manifest(r, media::OCI_MANIFEST, &bytes)
        .unwrap();
}

/// The offset a PATCH started at, from its `Content-Range`.
fn patch_start(request: &SeenRequest) -> u64 {
    request
        .content_range
        .as_deref()
        .and_then(|c| c.split('-').next())
        .and_then(|start| start.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Range on {request:?}"))
}

#[test]
fn a_chunked_upload_dropped_mid_blob_resumes_from_what_the_registry_received() {
    let registry = Registry::start();
    // The fourth PATCH (bytes 3-4 MiB) loses its connection before the registry gets any of
    // its body.
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![
            FaultRule::new(
                Some("PATCH"),
                "/blobs/uploads/",
                Fault::DropAfterBodyBytes(0),
                1,
            )
            .after(3),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(8 * MIB + 123, 1);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);
    let client = RegistryClient::new(&ClientOptions {
        retry: quick_retries(),
        upload_chunk_size: Some(MIB as u64),
        ..ClientOptions::default()
    })
    .unwrap();

    let sent = client
        .push_blob(&at(proxy.addr(), "resumed/app:1"), &blob, &path)
        .unwrap();

    assert!(sent);
    assert_eq!(
        pull_direct(&registry, "resumed/app", &blob, dir.path()),
        bytes
    );
    let injected = proxy.injected();
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert!(injected[0].contains("dropped"), "{injected:?}");
    // After the drop: a GET asking the registry how far it got, then the PATCH of the same
    // piece again, from 3 MiB, not from the start; one session throughout.
    let seen = proxy.seen();
    let dropped_at = seen
        .iter()
        .filter(|r| r.method == "PATCH")
        .nth(3)
        .unwrap()
        .at;
    let after: Vec<&SeenRequest> = seen.iter().filter(|r| r.at > dropped_at).collect();
    assert!(
        after[0].method == "GET" && after[0].target.contains("/blobs/uploads/"),
        "no upload status request after the drop: {:?}",
        proxy.requests()
    );
    assert_eq!(after[1].method, "PATCH");
    assert_eq!(patch_start(after[1]), 3 * MIB as u64);
    assert_eq!(seen.iter().filter(|r| r.method == "POST").count(), 1);
    // Nine pieces (the last one 123 bytes), one of them sent twice.
    assert_eq!(seen.iter().filter(|r| r.method == "PATCH").count(), 10);
}

#[test]
fn an_upload_dropped_part_way_through_a_patch_still_completes() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("PATCH"),
            "/blobs/uploads/",
            Fault::DropAfterBodyBytes(3 * MIB as u64),
            1,
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(8 * MIB + 123, 7);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);

    let sent = client_with(quick_retries())
        .push_blob(&at(proxy.addr(), "resumed/app:1"), &blob, &path)
        .unwrap();

    assert!(sent);
    assert_eq!(
        pull_direct(&registry, "resumed/app", &blob, dir.path()),
        bytes
    );
    assert_eq!(proxy.injected().len(), 1, "{:?}", proxy.injected());
    // distribution gives up a session whose PATCH broke off with 3 MiB received, so the
    // status request is refused and the upload starts again in a new session.
    let requests = proxy.requests();
    let after_drop: Vec<&str> = requests
        .iter()
        .skip_while(|r| !r.starts_with("PATCH"))
        .skip(1)
        .map(|r| r.split(' ').next().unwrap())
        .collect();
    assert_eq!(after_drop, ["GET", "POST", "PATCH", "PUT"], "{requests:?}");
}

#[test]
fn a_push_survives_two_500s_on_a_blob_upload_and_on_the_manifest_put() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![
            FaultRule::new(
                Some("PATCH"),
                "/blobs/uploads/",
                Fault::Status {
                    status: 500,
                    retry_after: None,
                },
                2,
            ),
            FaultRule::new(
                Some("PUT"),
                "/manifests/",
                Fault::Status {
                    status: 500,
                    retry_after: None,
                },
                2,
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(2 * MIB, 2);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);

    push_image(
        &client_with(quick_retries()),
        &at(proxy.addr(), "flaky/app:1"),
        (&blob, &path),
        dir.path(),
    );

    assert_eq!(proxy.injected().len(), 4, "{:?}", proxy.injected());
    let direct = client_with(RetryPolicy::default());
    let manifest = direct
        .fetch_manifest(&at(registry.addr(), "flaky/app:1"))
        .unwrap();
    assert!(String::from_utf8_lossy(&manifest.bytes).contains(&blob.digest.to_string()));
    assert_eq!(
        pull_direct(&registry, "flaky/app", &blob, dir.path()),
        bytes
    );
}

#[test]
fn a_429_is_retried_no_sooner_than_its_retry_after() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("PUT"),
            "/manifests/",
            Fault::Status {
                status: 429,
                retry_after: Some(1),
            },
            1,
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let (blob, path) = blob_file(dir.path(), "layer", &noise(4096, 3));

    push_image(
        &client_with(quick_retries()),
        &at(proxy.addr(), "limited/app:1"),
        (&blob, &path),
        dir.path(),
    );

    let puts: Vec<Instant> = proxy
        .seen()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("/manifests/"))
        .map(|r| r.at)
        .collect();
    assert_eq!(puts.len(), 2, "{:?}", proxy.requests());
    let waited = puts[1] - puts[0];
    // The policy's own backoff is 20 ms: only Retry-After explains a wait of a second.
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[test]
fn retries_give_up_after_the_policy_attempts_naming_the_last_failure() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("PUT"),
            "/manifests/",
            Fault::Status {
                status: 503,
                retry_after: None,
            },
            usize::MAX,
        )],
    );
    let client = client_with(RetryPolicy {
        attempts: 3,
        ..quick_retries()
    });

    let err = client
        .push_manifest(
            &at(proxy.addr(), "down/app:1"),
            media::OCI_MANIFEST,
            br#"{"schemaVersion":2}"#,
        )
        .unwrap_err();

    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("after 3 attempts"), "{message}");
    assert!(message.contains("HTTP 503"), "{message}");
    let puts = requests_starting_with(&proxy, "PUT ");
    assert_eq!(puts, 3);
}

#[test]
fn a_blob_another_repository_holds_is_mounted_not_uploaded() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(MIB, 4);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);
    client_with(RetryPolicy::default())
        .push_blob(&at(registry.addr(), "team/a:1"), &blob, &path)
        .unwrap();
    let proxy = FaultProxy::start(registry.addr(), vec![]);
    let scratch = dir.path().join("scratch");

    let done = client_with(quick_retries())
        .copy_blob(
            &at(proxy.addr(), "team/a:1"),
            &at(proxy.addr(), "team/b:1"),
            &blob,
            &scratch,
        )
        .unwrap();

    assert_eq!(done, BlobTransfer::Mounted);
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /v2/team/b/blobs/uploads/?mount=")
                && r.contains("from=team%2Fa") | r.contains("from=team/a")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.starts_with("PATCH")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.starts_with("GET ")),
        "the blob was downloaded: {requests:?}"
    );
    assert!(!scratch.exists());
    assert_eq!(pull_direct(&registry, "team/b", &blob, dir.path()), bytes);
}

#[test]
fn a_declined_mount_falls_back_to_an_upload() {
    let registry = Registry::start();
    let proxy = FaultProxy::start(registry.addr(), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(MIB, 5);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);

    // team/empty does not have the blob, so the registry answers the mount with 202 and an
    // upload session.
    let done = client_with(quick_retries())
        .mount_or_push_blob(
            &at(proxy.addr(), "team/b:1"),
            &blob,
            &path,
            Some(&at(proxy.addr(), "team/empty:1")),
        )
        .unwrap();

    assert_eq!(done, BlobTransfer::Uploaded);
    let requests = proxy.requests();
    let posts: Vec<_> = requests.iter().filter(|r| r.starts_with("POST")).collect();
    assert_eq!(
        posts.len(),
        1,
        "one POST, the mount, opened the session: {requests:?}"
    );
    assert!(posts[0].contains("mount="), "{requests:?}");
    assert!(
        requests.iter().any(|r| r.starts_with("PATCH")),
        "{requests:?}"
    );
    assert_eq!(pull_direct(&registry, "team/b", &blob, dir.path()), bytes);
}

#[test]
fn a_pulled_blob_that_does_not_match_its_digest_fails_and_writes_nothing() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(64 * 1024, 6);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);
    let client = client_with(quick_retries());
    let r = at(registry.addr(), "corrupt/app:1");
    client.push_blob(&r, &blob, &path).unwrap();
    let hex = blob.digest.hex();
    let stored = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut corrupted = std::fs::read(&stored).unwrap();
    corrupted[1000] ^= 0xff;
    std::fs::write(&stored, corrupted).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let err = client
        .fetch_blob(&r, &blob, &out.join("layer"))
        .unwrap_err();

    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&blob.digest.to_string()), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "something was written"
    );
}

#[test]
fn a_download_cut_off_mid_blob_is_fetched_again_and_verified() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let bytes = noise(3 * MIB, 8);
    let (blob, path) = blob_file(dir.path(), "layer", &bytes);
    client_with(quick_retries())
        .push_blob(&at(registry.addr(), "cut/app:1"), &blob, &path)
        .unwrap();
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("GET"),
            &format!("/blobs/{}", blob.digest),
            Fault::CutAnswerAfterBytes(MIB as u64),
            1,
        )],
    );
    let dest = dir.path().join("pulled");

    client_with(quick_retries())
        .fetch_blob(&at(proxy.addr(), "cut/app:1"), &blob, &dest)
        .unwrap();

    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(proxy.injected().len(), 1, "{:?}", proxy.injected());
    let gets = requests_starting_with(&proxy, "GET");
    assert_eq!(gets, 2);
}

/// How many requests the proxy saw whose line starts with `prefix` (a method, say).
fn requests_starting_with(proxy: &FaultProxy, prefix: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}
