//! A client for the OCI distribution API v2: pulling and pushing manifests and blobs, streamed
//! from and to disk, with every pulled blob's digest verified before it is kept; credentials
//! from docker's and podman's files and helpers; per-registry TLS, HTTP and mirror settings.

#![forbid(unsafe_code)]

mod challenge;
mod client;
mod config;
mod credentials;
mod error;
mod limits;
mod partial;
mod reference;
mod retry;
pub mod stitch;
mod tls;

#[doc(hidden)]
pub use challenge::{Challenge, parse_challenge};
#[doc(hidden)]
pub use client::manifest_media_type;
pub use client::{
    BlobTransfer, ClientOptions, DEFAULT_UPLOAD_CHUNK, FetchedManifest, RegistryClient, Timeouts,
    TransferObserver, TransferProgress, each_in_parallel,
};
pub use config::{ConfigError, HostConfig, KeyPair, RegistryConfig};
pub use credentials::{
    Credential, CredentialError, CredentialSource, CredentialStore, DOCKER_HUB_KEY, Secret,
    registry_name, server_key,
};
pub use error::RegistryError;
pub use limits::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
pub use reference::{DOCKER_HUB, Reference, ReferenceError};
pub use retry::RetryPolicy;
