//! A client for the OCI distribution API v2: pulling and pushing manifests and blobs, streamed
//! from and to disk, with every pulled blob's digest verified before it is kept.

mod client;
mod error;
mod reference;
pub mod stitch;

pub use client::{ClientOptions, FetchedManifest, RegistryClient};
pub use error::RegistryError;
pub use reference::{DOCKER_HUB, Reference, ReferenceError};
