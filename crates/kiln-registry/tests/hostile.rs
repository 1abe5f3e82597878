//! A hostile registry, as far as the library goes: a real distribution registry behind
//! FaultProxy, stalling after its headers or sending a config longer than its descriptor.
//! (What a kiln process does with endless bodies, other hosts and killed downloads is in the
//! kiln crate's `hostile_registry.rs`.)

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_oci::{Descriptor, Digest, media};
use kiln_registry::{
    ClientOptions, Reference, RegistryClient, RegistryError, RetryPolicy, Timeouts,
};
use kiln_testkit::{Fault, FaultProxy, FaultRule, Registry, noise};

/// One second of silence is a stall; two tries in all.
fn impatient_client() -> RegistryClient {
    RegistryClient::new(&ClientOptions {
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
        },
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(1),
        },
        ..ClientOptions::default()
    })
    .unwrap()
}

fn at(host: &str, repo_tag: &str) -> Reference {
    format!("{host}/{repo_tag}").parse().unwrap()
}

/// Pushes `bytes` as a blob of `repo` straight to the registry.
fn push(registry: &Registry, repo: &str, bytes: &[u8], dir: &Path) -> Descriptor {
    let path = dir.join("upload");
    std::fs::write(&path, bytes).unwrap();
    let desc = Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(bytes), bytes.len() as u64);
    impatient_client()
        .push_blob(&at(registry.addr(), repo), &desc, &path)
        .unwrap();
    desc
}

/// Runs `work` in a thread and returns its result, or panics when it is still running after
/// `limit`: on a client without read timeouts the work never ends.
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting on the stalled registry after {limit:?}"))
}

#[test]
fn a_blob_download_that_stalls_ends_with_an_error_naming_the_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let blob = push(&registry, "stall/app", &noise(1 << 20, 21), dir.path());
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("GET"),
            "/blobs/",
            Fault::StallAfterHead(64 << 10),
            usize::MAX,
        )],
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (r, dest) = (at(proxy.addr(), "stall/app"), out.join("layer"));
    let started = Instant::now();

    let err = within(Duration::from_secs(30), move || {
        impatient_client().fetch_blob(&r, &blob, &dest).unwrap_err()
    });

    let took = started.elapsed();
    eprintln!("stalled blob download gave up after {took:?}: {err}");
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 2, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(proxy.addr()), "{message}");
    assert!(message.contains("sent nothing for 1 s"), "{message}");
    assert_eq!(proxy.injected().len(), 2, "{:?}", proxy.injected());
    // Two tries of about a second each: a read timeout, not a total one.
    assert!(took < Duration::from_secs(10), "{took:?}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_manifest_that_stalls_after_its_headers_ends_with_an_error_naming_the_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let config = push(&registry, "stall/app", b"{}", dir.path());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": [],
    });
    impatient_client()
        .push_manifest(
            &at(registry.addr(), "stall/app:1"),
            media::OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("GET"),
            "/manifests/",
            Fault::StallAfterHead(0),
            usize::MAX,
        )],
    );
    let r = at(proxy.addr(), "stall/app:1");

    let err = within(Duration::from_secs(30), move || {
        impatient_client().fetch_manifest(&r).unwrap_err()
    });

    let message = err.to_string();
    assert!(message.contains(proxy.addr()), "{message}");
    assert!(
        message.contains("sent nothing for 1 s") && message.contains("manifest `1`"),
        "{message}"
    );
}

#[test]
fn a_config_longer_than_its_descriptor_is_refused() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let config = push(&registry, "long/app", br#"{"os":"linux"}"#, dir.path());
    let proxy = FaultProxy::start(
        registry.addr(),
        vec![FaultRule::new(
            Some("GET"),
            "/blobs/",
            Fault::AppendToAnswer(16 << 20),
            usize::MAX,
        )],
    );

    let err = impatient_client()
        .fetch_small_blob(&at(proxy.addr(), "long/app"), &config)
        .unwrap_err();

    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(proxy.addr())
            && message.contains("sent more than 14 bytes")
            && message.contains("long/app")
            && message.contains(&config.digest.to_string()),
        "{message}"
    );
}
