//! `kiln build --push` through a fault-injecting proxy in front of a real registry: a dropped
//! upload and 500 answers do not stop the push, and what lands is the image that was built.

mod common;

use common::*;
use kiln_testkit::{Fault, FaultProxy, FaultRule, noise};

#[test]
fn build_push_survives_a_dropped_upload_and_500s() {
    let env = Env::new();
    let status = |status| Fault::Status {
        status,
        retry_after: None,
    };
    let proxy = FaultProxy::start(
        env.reg(),
        vec![
            FaultRule::new(
                Some("PATCH"),
                "/blobs/uploads/",
                Fault::DropAfterBodyBytes(1 << 20),
                1,
            ),
            FaultRule::new(Some("POST"), "/blobs/uploads/", status(500), 2),
            FaultRule::new(Some("PUT"), "/manifests/", status(500), 2),
        ],
    );
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nCOPY big.bin /data/\n",
        )],
    );
    let big = noise(4 << 20, 0x2545_F491_4F6C_DD1D);
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    let through_proxy = format!("{}/faulty:1", proxy.addr());

    let o = env.kiln(&[
        "build",
        "--push",
        "-t",
        &through_proxy,
        ctx.to_str().unwrap(),
    ]);

    assert_ok(&o);
    let injected = proxy.injected();
    assert_eq!(injected.len(), 5, "{injected:?}");
    assert!(
        injected.iter().any(|i| i.contains("dropped")),
        "{injected:?}"
    );
    // Read back from the registry itself, not through the proxy.
    let rootfs = unpack_pushed(&env.tag("faulty:1"), &env.path("unpacked"));
    assert_eq!(std::fs::read(rootfs.join("data/big.bin")).unwrap(), big);
    assert!(rootfs.join("bin/busybox").exists());
}
