//! Registries, through kiln-registry's client.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest};
use kiln_registry::{BlobTransfer, Reference, RegistryClient, each_in_parallel};

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

    fn registry_reference(&self, _desc: &Descriptor) -> Option<&Reference> {
        Some(&self.reference)
    }
}

/// How many blobs are uploaded at once.
const BLOBS_IN_FLIGHT: usize = 4;

/// Called for each blob that reached a repository, with how it got there.
type OnBlob<'c> = Box<dyn Fn(&Reference, &Descriptor, BlobTransfer) + Sync + 'c>;

/// Where a blob waiting for upload is.
enum BlobAt {
    /// A verified file of the source's own (kiln's store), read where it is.
    Local(PathBuf),
    /// Taken from the source into the scratch directory; removed once uploaded.
    Scratch(PathBuf),
    /// In this repository, on the same registry as the first target (or the first target
    /// itself): mounted from it, or downloaded from it when the registry declines the mount.
    Registry(Reference),
}

struct PendingBlob {
    desc: Descriptor,
    at: BlobAt,
}

/// One or more repositories (and tags) in registries to push one image to. Blobs are taken
/// from the source as they come and uploaded several at once before the next manifest: to
/// the first target, and mounted from it into the others. Manifests go to every target by
/// digest, and the tags last, once every target holds everything, so a failure leaves no
/// tag pointing at missing content.
pub struct RegistryDestination<'c> {
    client: &'c RegistryClient,
    /// Never empty.
    targets: Vec<Reference>,
    /// Commit pushes the top manifest by its digest and tags nothing.
    by_digest: bool,
    /// Blobs pass through here on their way from a source to the registry.
    scratch: Option<tempfile::TempDir>,
    /// Blobs waiting to be uploaded.
    pending: Vec<PendingBlob>,
    /// Blobs every target has received: an index's images often share layers.
    sent: HashSet<Digest>,
    on_blob: Option<OnBlob<'c>>,
}

impl<'c> RegistryDestination<'c> {
    pub fn new(client: &'c RegistryClient, reference: Reference) -> RegistryDestination<'c> {
        RegistryDestination {
            client,
            targets: vec![reference],
            by_digest: false,
            scratch: None,
            pending: Vec::new(),
            sent: HashSet::new(),
            on_blob: None,
        }
    }

    /// The same image to every target; `None` when there is none.
    pub fn to_all(
        client: &'c RegistryClient,
        targets: Vec<Reference>,
    ) -> Option<RegistryDestination<'c>> {
        let (first, others) = targets.split_first()?;
        let mut dest = RegistryDestination::new(client, first.clone());
        dest.targets.extend_from_slice(others);
        Some(dest)
    }

    /// Push the top manifest by digest only (buildx's `push-by-digest`): no tag changes.
    pub fn by_digest(mut self) -> RegistryDestination<'c> {
        self.by_digest = true;
        self
    }

    /// Calls `report` for every blob each target received, with how it got there.
    pub fn on_blob(
        mut self,
        report: impl Fn(&Reference, &Descriptor, BlobTransfer) + Sync + 'c,
    ) -> RegistryDestination<'c> {
        self.on_blob = Some(Box::new(report));
        self
    }

    /// Where the top manifest of each target goes on commit: its tag, or with `by_digest`
    /// its digest.
    pub fn committed_at(&self, top: &Digest) -> Vec<Reference> {
        self.targets
            .iter()
            .map(|t| {
                if self.by_digest {
                    t.with_digest(top.clone())
                } else {
                    t.clone()
                }
            })
            .collect()
    }

    fn scratch_dir(&mut self) -> Result<&Path, TransportError> {
        if self.scratch.is_none() {
            self.scratch = Some(
                tempfile::Builder::new()
                    .prefix("kiln-copy-")
                    .tempdir()
                    .map_err(TransportError::io("creating a temp directory"))?,
            );
        }
        Ok(self.scratch.as_ref().expect("created above").path())
    }

    /// Uploads every pending blob to every target, several blobs at once.
    fn upload_pending(&mut self) -> Result<(), TransportError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let fetched_here = |p: &PendingBlob| matches!(p.at, BlobAt::Registry(_));
        let scratch = if self.pending.iter().any(fetched_here) {
            self.scratch_dir()?.to_path_buf()
        } else {
            PathBuf::new()
        };
        let (client, targets, on_blob) = (self.client, &self.targets, &self.on_blob);
        let first = &targets[0];
        let uploaded = each_in_parallel(&self.pending, BLOBS_IN_FLIGHT, |blob| {
            let desc = &blob.desc;
            // Where a download lands when a mount is declined; copy_blob removes it.
            let fallback = scratch.join(format!("{}.copy", desc.digest.hex()));
            let mut done = Ok(());
            for (i, target) in targets.iter().enumerate() {
                let sent = match (&blob.at, i) {
                    (BlobAt::Local(path) | BlobAt::Scratch(path), 0) => {
                        client.mount_or_push_blob(target, desc, path, None)
                    }
                    (BlobAt::Local(path) | BlobAt::Scratch(path), _) => {
                        client.mount_or_push_blob(target, desc, path, Some(first))
                    }
                    (BlobAt::Registry(from), 0) => client.copy_blob(from, target, desc, &fallback),
                    (BlobAt::Registry(_), _) => client.copy_blob(first, target, desc, &fallback),
                };
                match sent {
                    Ok(how) => {
                        if let Some(report) = on_blob {
                            report(target, desc, how);
                        }
                    }
                    Err(e) => {
                        done = Err(e);
                        break;
                    }
                }
            }
            if let BlobAt::Scratch(path) = &blob.at {
                let _ = std::fs::remove_file(path);
            }
            done
        });
        if uploaded.is_ok() {
            self.sent
                .extend(self.pending.iter().map(|p| p.desc.digest.clone()));
        }
        self.pending.clear();
        Ok(uploaded?)
    }
}

impl ImageDestination for RegistryDestination<'_> {
    fn describe(&self) -> String {
        let all: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("docker://{t}"))
            .collect();
        all.join(", ")
    }

    fn put_blob(
        &mut self,
        source: &dyn ImageSource,
        desc: &Descriptor,
    ) -> Result<(), TransportError> {
        if self.sent.contains(&desc.digest)
            || self.pending.iter().any(|p| p.desc.digest == desc.digest)
        {
            return Ok(());
        }
        let first = &self.targets[0];
        let at = if let Some(path) = source.local_blob(desc) {
            BlobAt::Local(path)
        } else if let Some(from) = source
            .registry_reference(desc)
            .filter(|from| from.registry == first.registry)
        {
            // Within one registry the blob is mounted, not downloaded and uploaded again.
            BlobAt::Registry(from.clone())
        } else if self.client.blob_exists(first, &desc.digest)? {
            // Nothing to download: the others can take it from the first target.
            if self.targets.len() == 1 {
                return Ok(());
            }
            BlobAt::Registry(first.clone())
        } else {
            let path = self.scratch_dir()?.join(desc.digest.hex());
            source.blob_to_file(desc, &path)?;
            BlobAt::Scratch(path)
        };
        self.pending.push(PendingBlob {
            desc: desc.clone(),
            at,
        });
        Ok(())
    }

    fn put_manifest(&mut self, manifest: &RawManifest) -> Result<(), TransportError> {
        self.upload_pending()?;
        for target in &self.targets {
            self.client.push_manifest(
                &target.with_digest(manifest.digest.clone()),
                &manifest.media_type,
                &manifest.bytes,
            )?;
        }
        Ok(())
    }

    fn commit(&mut self, top: &RawManifest) -> Result<(), TransportError> {
        self.upload_pending()?;
        for at in self.committed_at(&top.digest) {
            self.client
                .push_manifest(&at, &top.media_type, &top.bytes)?;
        }
        Ok(())
    }
}
