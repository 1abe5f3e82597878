//! Registries, through kiln-registry's client.

use std::path::Path;

use kiln_oci::Descriptor;
use kiln_registry::{Reference, RegistryClient, each_in_parallel};

use crate::{ImageDestination, ImageSource, RawManifest, TransportError};

/// An image in a registry.
pub struct RegistrySource<'c> {
    client: &'c RegistryClient,
    reference: Reference,
}

impl<'c> RegistrySource<'c> {
    pub fn new(client: &'c RegistryClient, reference: Reference) -> RegistrySource<'c> {
        RegistrySource { client, reference }
    }
}

impl ImageSource for RegistrySource<'_> {
    fn describe(&self) -> String {
        format!("docker://{}", self.reference)
    }

    fn top(&self) -> Result<RawManifest, TransportError> {
        let m = self.client.fetch_manifest(&self.reference)?;
        Ok(RawManifest {
            media_type: m.media_type,
            digest: m.digest,
            bytes: m.bytes,
        })
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, TransportError> {
        // Fetching by digest checks the bytes against it.
        let m = self
            .client
            .fetch_manifest(&self.reference.with_digest(desc.digest.clone()))?;
        Ok(RawManifest {
            media_type: m.media_type,
            digest: m.digest,
            bytes: m.bytes,
        })
    }

    fn blob_to_file(&self, desc: &Descriptor, dest: &Path) -> Result<(), TransportError> {
        Ok(self.client.fetch_blob(&self.reference, desc, dest)?)
    }

    fn registry_reference(&self) -> Option<&Reference> {
        Some(&self.reference)
    }
}

/// How many blobs are uploaded at once.
const BLOBS_IN_FLIGHT: usize = 4;

/// A repository (and tag) in a registry to push to. Blobs are taken from the source into a
/// scratch directory as they come, and uploaded several at once before the next manifest.
pub struct RegistryDestination<'c> {
    client: &'c RegistryClient,
    reference: Reference,
    /// Blobs pass through here on their way from a source to the registry.
    scratch: Option<tempfile::TempDir>,
    /// Blobs in the scratch directory waiting to be uploaded.
    pending: Vec<Descriptor>,
}

impl<'c> RegistryDestination<'c> {
    pub fn new(client: &'c RegistryClient, reference: Reference) -> RegistryDestination<'c> {
        RegistryDestination {
            client,
            reference,
            scratch: None,
            pending: Vec::new(),
        }
    }

    /// Uploads every pending blob, several at once, and empties the scratch directory.
    fn upload_pending(&mut self) -> Result<(), TransportError> {
        let Some(scratch) = &self.scratch else {
            return Ok(());
        };
        let (client, reference) = (self.client, &self.reference);
        let uploaded = each_in_parallel(&self.pending, BLOBS_IN_FLIGHT, |desc| {
            let path = scratch.path().join(desc.digest.hex());
            let pushed = client.push_blob(reference, desc, &path);
            let _ = std::fs::remove_file(&path);
            pushed.map(|_| ())
        });
        self.pending.clear();
        Ok(uploaded?)
    }
}

impl ImageDestination for RegistryDestination<'_> {
    fn describe(&self) -> String {
        format!("docker://{}", self.reference)
    }

    fn put_blob(
        &mut self,
        source: &dyn ImageSource,
        desc: &Descriptor,
    ) -> Result<(), TransportError> {
        let queued = self.pending.iter().any(|p| p.digest == desc.digest);
        if queued || self.client.blob_exists(&self.reference, &desc.digest)? {
            return Ok(());
        }
        if self.scratch.is_none() {
            self.scratch = Some(
                tempfile::Builder::new()
                    .prefix("kiln-copy-")
                    .tempdir()
                    .map_err(TransportError::io("creating a temp directory"))?,
            );
        }
        let path = self
            .scratch
            .as_ref()
            .expect("created above")
            .path()
            .join(desc.digest.hex());
        // Within one registry the blob is mounted, not downloaded and uploaded again.
        if let Some(from) = source
            .registry_reference()
            .filter(|from| from.registry == self.reference.registry)
        {
            self.client.copy_blob(from, &self.reference, desc, &path)?;
            return Ok(());
        }
        source.blob_to_file(desc, &path)?;
        self.pending.push(desc.clone());
        Ok(())
    }

    fn put_manifest(&mut self, manifest: &RawManifest) -> Result<(), TransportError> {
        self.upload_pending()?;
        self.client.push_manifest(
            &self.reference.with_digest(manifest.digest.clone()),
            &manifest.media_type,
            &manifest.bytes,
        )?;
        Ok(())
    }

    fn commit(&mut self, top: &RawManifest) -> Result<(), TransportError> {
        self.upload_pending()?;
        self.client
            .push_manifest(&self.reference, &top.media_type, &top.bytes)?;
        Ok(())
    }
}
