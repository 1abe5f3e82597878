//! Test support for kiln: a real CNCF distribution registry on loopback, multi-arch busybox
//! base images built from Debian packages, and wrappers around the independent tools
//! (skopeo, umoci) that tests use to check kiln's output.
//!
//! This crate deliberately depends on none of kiln's own crates, so a bug in kiln cannot hide
//! in the fixtures it is tested against. Everything here panics with a readable message on
//! failure: it only ever runs inside tests.

mod fixtures;
mod registry;
mod tools;

pub use fixtures::{FIXTURE_ARCHES, Fixtures, busybox_fixtures};
pub use registry::Registry;
pub use tools::{
    push_busybox, push_busybox_to, skopeo_inspect, skopeo_raw, skopeo_to_oci, umoci_unpack,
};
