//! OCI and Docker v2 image-format types.
//!
//! Everything here is plain data plus hashing: no network, no Dockerfiles. JSON produced from
//! these types is deterministic (struct field order and `BTreeMap` keys), so a digest computed
//! over it is reproducible.

mod digest;
mod image;
pub mod media;
mod platform;
pub mod timefmt;

pub use digest::{Digest, DigestError, DigestReader, DigestWriter};
pub use image::{
    ContainerConfig, Descriptor, HistoryEntry, ImageConfig, ImageIndex, ImageManifest, RootFs,
    to_json_bytes,
};
pub use platform::{Platform, PlatformError};
