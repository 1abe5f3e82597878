//! The loopback registry is a real, working distribution registry with its own storage.

use std::io::{Read, Write};
use std::net::TcpStream;

use kiln_testkit::{Registry, push_busybox};

fn get_v2(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting to the registry");
    write!(
        stream,
        "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn registry_answers_v2_with_200() {
    let registry = Registry::start();
    assert!(
        registry.addr().starts_with("127.0.0.1:"),
        "{}",
        registry.addr()
    );
    let response = get_v2(registry.addr());
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "GET /v2/ answered:\n{response}"
    );
    assert!(
        response.contains("Docker-Distribution-Api-Version: registry/2.0"),
        "not a distribution registry:\n{response}"
    );
}

#[test]
fn two_registries_listen_on_different_ports() {
    let first = Registry::start();
    let second = Registry::start();
    assert_ne!(first.addr(), second.addr());
    assert!(get_v2(first.addr()).starts_with("HTTP/1.1 200"));
    assert!(get_v2(second.addr()).starts_with("HTTP/1.1 200"));
}

#[test]
fn drop_stops_the_registry_and_removes_its_storage() {
    let registry = Registry::start();
    push_busybox(&registry, "dropped/busybox");
    let storage = registry.storage_dir();
    let repositories = storage.join("docker/registry/v2/repositories/dropped/busybox");
    assert!(
        repositories.is_dir(),
        "push left nothing in {}",
        storage.display()
    );
    let addr = registry.addr().to_string();

    drop(registry);

    assert!(!storage.exists(), "{} survived the drop", storage.display());
    assert!(
        TcpStream::connect(&addr).is_err(),
        "something still listens on {addr} after the drop"
    );
}
