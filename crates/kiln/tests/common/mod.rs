//! Shared set-up for kiln's end-to-end tests: a real registry with the busybox fixtures, a
//! private kiln store per test, and the kiln binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use kiln_testkit::{
    Registry, push_busybox, skopeo_inspect, skopeo_raw, skopeo_to_oci, umoci_unpack,
};

pub struct Env {
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A registry holding `busybox:latest` (OCI index) and `busybox:docker` (Docker list).
    pub fn new() -> Env {
        let registry = Registry::start();
        push_busybox(&registry, "busybox");
        Env {
            registry,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn reg(&self) -> &str {
        self.registry.addr()
    }

    /// A build context with these files (path, content).
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.dir.path().join(name);
        for (path, content) in files {
            let p = ctx.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content.replace("$REG", self.reg())).unwrap();
        }
        ctx
    }

    /// Runs kiln with a store private to this test.
    pub fn kiln(&self, args: &[&str]) -> Output {
        kiln_with_root(&self.dir.path().join("store"), args)
    }
}

pub fn kiln_with_root(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_ROOT", root)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "kiln failed ({:?}):\n{}",
        o.status,
        stderr(o)
    );
}

/// Unpacks `reference` from the registry for amd64 and returns its rootfs.
pub fn unpack_pushed(reference: &str, work: &Path) -> PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let layout = work.join("layout");
    skopeo_to_oci(reference, &layout, "img", Some("amd64"));
    umoci_unpack(&layout, "img", &work.join("bundle"))
}
