//! Where images live and how they move between those places: registries (`docker://`), OCI
//! layout directories (`oci:`), OCI layout archives (`oci-archive:`) and `docker save`
//! archives (`docker-archive:`), named with skopeo's transport syntax; and kaniko's base-image
//! cache directory ([`BaseImageCache`]).
//!
//! A [`ImageSource`] hands out a top-level manifest or index and, by digest, the manifests and
//! blobs under it, always verified against their digests. An [`ImageDestination`] receives
//! them and makes the image visible only when [`ImageDestination::commit`] succeeds, so a
//! failed copy never leaves a half-written layout or archive. [`copy`] is the one path images
//! take out of kiln: `kiln copy`, and every output of `kiln build` (whose store is a source).
//!
//! [`manifest_list`] and [`manifest_spec`] assemble indexes over images already in
//! registries: `kiln manifest`'s local lists, `kiln imagetools create` and manifest-tool specs.

mod base_cache;
mod copy;
mod docker_archive;
mod error;
mod files;
mod layout;
mod location;
pub mod manifest_list;
pub mod manifest_spec;
mod platform;
mod registry;

pub use base_cache::{BaseImageCache, CachedImage, Warmed};
pub use copy::{CopyReport, Selection, copy, platform_manifest, put_manifest_tree};
pub use docker_archive::{DockerArchiveDestination, DockerArchiveSource};
pub use error::TransportError;
pub use files::{read_verified, write_verified};
pub use layout::{
    IMAGE_NAME, LayoutName, LayoutRef, OciArchiveDestination, OciDirDestination, OciLayoutSource,
    REF_NAME,
};
pub use location::ImageLocation;
pub use platform::{PlatformMissing, select_platform};
pub use registry::{RegistryDestination, RegistrySource};

use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest};
use kiln_registry::RegistryClient;

/// A manifest or index: its media type, digest and exact bytes.
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

impl RawManifest {
    /// A descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            &self.media_type,
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// Where an image is read from.
pub trait ImageSource {
    /// The location, as the user would write it (for messages).
    fn describe(&self) -> String;
    /// The manifest or index the location names.
    fn top(&self) -> Result<RawManifest, TransportError>;
    /// A manifest an index points to, checked against the descriptor's digest.
    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, TransportError>;
    /// Streams a blob into `dest`, checking size and digest on the way. The file appears at
    /// `dest` only when it matched.
    fn blob_to_file(&self, desc: &Descriptor, dest: &Path) -> Result<(), TransportError>;
    /// The registry repository the blob `desc` comes from, when it comes from one: a
    /// destination in the same registry can then mount it instead of copying its bytes.
    fn registry_reference(&self, _desc: &Descriptor) -> Option<&kiln_registry::Reference> {
        None
    }
    /// A local file that holds exactly this blob, already verified (kiln's own store): a
    /// destination may upload it or hard-link it as it is, instead of having it copied.
    fn local_blob(&self, _desc: &Descriptor) -> Option<PathBuf> {
        None
    }
}

/// Where an image is written to. Nothing is visible at the destination before `commit`.
pub trait ImageDestination {
    /// The location, as the user would write it (for messages).
    fn describe(&self) -> String;
    /// Stores a blob taken from `source`, unless the destination has it already.
    fn put_blob(
        &mut self,
        source: &dyn ImageSource,
        desc: &Descriptor,
    ) -> Result<(), TransportError>;
    /// Stores a manifest an index points to.
    fn put_manifest(&mut self, manifest: &RawManifest) -> Result<(), TransportError>;
    /// Stores the top-level manifest or index and makes the image visible.
    fn commit(&mut self, top: &RawManifest) -> Result<(), TransportError>;
}

/// Opens `location` for reading.
pub fn open_source<'c>(
    location: &ImageLocation,
    client: &'c RegistryClient,
) -> Result<Box<dyn ImageSource + 'c>, TransportError> {
    Ok(match location {
        ImageLocation::Registry(r) => Box::new(RegistrySource::new(client, r.clone())),
        ImageLocation::OciDir { dir, name } => Box::new(OciLayoutSource::open_dir(
            dir,
            LayoutRef::from_name(name.clone()),
        )?),
        ImageLocation::OciArchive { file, name } => Box::new(OciLayoutSource::open_archive(
            file,
            LayoutRef::from_name(name.clone()),
        )?),
        ImageLocation::DockerArchive { file, reference } => {
            Box::new(DockerArchiveSource::open(file, reference.as_ref())?)
        }
    })
}

/// Opens `location` for writing.
pub fn open_destination<'c>(
    location: &ImageLocation,
    client: &'c RegistryClient,
) -> Result<Box<dyn ImageDestination + 'c>, TransportError> {
    Ok(match location {
        ImageLocation::Registry(r) => Box::new(RegistryDestination::new(client, r.clone())),
        ImageLocation::OciDir { dir, name } => Box::new(OciDirDestination::create(
            dir,
            name.iter().cloned().map(LayoutName::new).collect(),
        )?),
        ImageLocation::OciArchive { file, name } => Box::new(OciArchiveDestination::create(
            file,
            name.iter().cloned().map(LayoutName::new).collect(),
        )?),
        ImageLocation::DockerArchive { file, reference } => Box::new(
            DockerArchiveDestination::create(file, reference.iter().cloned().collect())?,
        ),
    })
}
