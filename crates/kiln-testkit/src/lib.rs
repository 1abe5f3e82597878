//! Test support for kiln: a real CNCF distribution registry on loopback (plain, TLS, htpasswd
//! or token auth, with a test CA and token server), multi-arch busybox, Go toolchain and
//! minimal Debian base images built from Debian packages, and wrappers around the independent
//! tools (skopeo, umoci) that tests use to check kiln's output; the hostile-input corpus of
//! `testdata/hostile/`; `run_measured`, which runs a command and reports its peak RSS; and
//! `Pod`, a real container runtime (podman with runc) under podman's or Docker's default
//! seccomp profile; and servers of remote build contexts on loopback (`git daemon`, a file
//! server over HTTP).
//!
//! This crate deliberately depends on none of kiln's own crates, so a bug in kiln cannot hide
//! in the fixtures it is tested against. Everything here panics with a readable message on
//! failure: it only ever runs inside tests.

mod debian;
mod fault_proxy;
mod fixtures;
mod hostile;
mod hostile_archives;
mod http;
mod image_layout;
mod measure;
mod noise;
mod pod;
mod registry;
mod remote_sources;
mod tls;
mod token_server;
mod tools;

pub use debian::{DEBIAN_ARCHES, DEBIAN_PACKAGES, DebianFixtures, debian_fixtures};
pub use fault_proxy::{Fault, FaultProxy, FaultRule, SeenRequest};
pub use fixtures::{
    FIXTURE_ARCHES, Fixtures, GO_ARCHES, GoFixtures, busybox_fixtures, go_fixtures,
};
pub use hostile::{COMMITTED_CANARY, HOSTILE_FILES, HostileFile, hostile_dir, hostile_file};
pub use hostile_archives::{DECOMPRESSION_BOMBS, DecompressionBomb, write_decompression_bombs};
pub use image_layout::{OCI_LAYER_ZSTD, busybox_zstd_layout, write_image_layout};
pub use measure::{Measured, run_measured, wrapped};
pub use noise::{Noise, noise};
pub use pod::{Pod, Profile, Runtime};
pub use registry::{Registry, RegistryOptions};
pub use remote_sources::{FileServer, GitDaemon, GitHttpServer, free_port, git_in, write_files};
pub use tls::{IssuedCert, SelfSigned, TestCa};
pub use token_server::{TokenRequest, TokenServer};
pub use tools::{
    copy_executable, executable_by_anyone, push_busybox, push_busybox_as, push_busybox_to, push_go,
    skopeo_inspect, skopeo_raw, skopeo_to_oci, umoci_unpack,
};
