//! Delivering built images: the images of a build are rendered into one artifact in the
//! store (a manifest, or an index of one manifest per platform, in OCI or Docker media
//! types), and the store, as a `kiln_transport` image source, is copied to each output. So a
//! build pushes and writes layouts through the same code as `kiln copy`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, ImageIndex, ImageManifest, media, to_json_bytes};
use kiln_registry::{BlobTransfer, Reference, RegistryClient};
use kiln_transport::{
    DockerArchiveDestination, ImageDestination, ImageSource, LayoutName, OciArchiveDestination,
    OciDirDestination, RawManifest, RegistryDestination, Selection, TransportError, copy,
    read_verified, write_verified,
};

use crate::attest;
use crate::encode::{self, Fetch};
use crate::output::{ImageFormat, STDOUT};
use crate::progress::Progress;
use crate::{AnnotationTarget, Annotations, BuildError, BuiltImage, Output, Store};

/// An image or index in kiln's store, as a source to copy from. The store's blobs were
/// verified when they were stored, so destinations may use its files as they are. Layer
/// blobs a build never needed (a base image's, a registry cache's) may be only in the
/// registry repository they came from: a push to that registry mounts them, any other
/// output fetches them from there, verified as they stream.
pub struct StoreSource<'s> {
    store: &'s Store,
    top: Descriptor,
    remote: Option<(OriginClients<'s>, &'s BTreeMap<Digest, Reference>)>,
}

/// The clients that read the blobs a build left in registries: a registry cache's with the
/// cache client (kaniko reaches its cache repo with its push flags), any other (a base
/// image's) with the pull client.
#[derive(Clone, Copy)]
pub struct OriginClients<'c> {
    pub pull: &'c RegistryClient,
    pub cache: &'c RegistryClient,
    /// The registry caches the build read (`--cache-from`).
    pub caches: &'c [Reference],
}

impl<'c> OriginClients<'c> {
    /// One client for every origin.
    pub fn single(client: &'c RegistryClient) -> OriginClients<'c> {
        OriginClients {
            pull: client,
            cache: client,
            caches: &[],
        }
    }

    pub(crate) fn client_for(&self, origin: &Reference) -> &'c RegistryClient {
        match self.caches.contains(origin) {
            true => self.cache,
            false => self.pull,
        }
    }
}

impl<'s> StoreSource<'s> {
    /// The image or index `top`, which the store holds with everything under it.
    pub fn new(store: &'s Store, top: Descriptor) -> StoreSource<'s> {
        StoreSource {
            store,
            top,
            remote: None,
        }
    }

    /// The same, with blobs the store lacks fetched from `origins` through `clients`.
    pub fn with_origins(
        store: &'s Store,
        top: Descriptor,
        clients: OriginClients<'s>,
        origins: &'s BTreeMap<Digest, Reference>,
    ) -> StoreSource<'s> {
        StoreSource {
            store,
            top,
            remote: Some((clients, origins)),
        }
    }

    /// Where `desc` can be fetched from, if the store lacks it.
    fn origin(&self, desc: &Descriptor) -> Option<(&'s RegistryClient, &'s Reference)> {
        let (clients, origins) = self.remote?;
        if self.store.has_blob(&desc.digest) {
            return None;
        }
        origins
            .get(&desc.digest)
            .map(|origin| (clients.client_for(origin), origin))
    }

    fn open(&self, desc: &Descriptor) -> Result<std::fs::File, TransportError> {
        let path = self.store.blob_path(&desc.digest);
        std::fs::File::open(&path).map_err(|source| TransportError::Io {
            context: format!("reading {} from {}", desc.digest, self.describe()),
            source,
        })
    }
}

impl ImageSource for StoreSource<'_> {
    fn describe(&self) -> String {
        format!("the kiln store {}", self.store.root().display())
    }

    fn top(&self) -> Result<RawManifest, TransportError> {
        self.manifest(&self.top)
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, TransportError> {
        let bytes = read_verified(self.open(desc)?, desc, &self.describe(), "manifest")?;
        Ok(RawManifest {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            bytes,
        })
    }

    fn blob_to_file(&self, desc: &Descriptor, dest: &Path) -> Result<(), TransportError> {
        if let Some((client, origin)) = self.origin(desc) {
            return Ok(client.fetch_blob(origin, desc, dest)?);
        }
        write_verified(self.open(desc)?, desc, dest, &self.describe(), "blob")
    }

    fn registry_reference(&self, desc: &Descriptor) -> Option<&Reference> {
        self.origin(desc).map(|(_, origin)| origin)
    }

    fn local_blob(&self, desc: &Descriptor) -> Option<PathBuf> {
        match self.origin(desc) {
            Some(_) => None,
            None => Some(self.store.blob_path(&desc.digest)),
        }
    }
}

/// Stores the images of a build as one artifact and returns its descriptor: the manifest of
/// a single image (without a platform), or an index of one manifest per platform, with the
/// layers compressed as `format` says ([`encode::manifest_in`]). With OCI media types off,
/// Docker v2 schema 2 manifests and a manifest list. An index carries the `index`
/// annotations, and its entries the `manifest-descriptor` ones. With `attested`, the
/// images' attestation manifests follow theirs, in an index even for one image (as buildx
/// does); they are about the OCI manifests, so the index is OCI whatever `format` says.
fn render(
    store: &Store,
    images: &[BuiltImage],
    format: &ImageFormat,
    attested: bool,
    annotations: &Annotations,
    encode: (&Fetch<'_>, &Progress),
) -> Result<Descriptor, BuildError> {
    let (fetch, progress) = encode;
    let attested = attested && images.iter().any(|i| i.attestation.is_some());
    let oci = format.oci_mediatypes || attested;
    let mut manifests = Vec::new();
    let mut attestations = Vec::new();
    for image in images {
        let mut desc = encode::manifest_in(store, image, format, fetch, progress)?;
        // An image whose layers this output re-encodes has another manifest: its
        // attestation must name that one.
        if let Some(entry) = image.attestation.as_ref().filter(|_| attested) {
            attestations.push(attest::about(store, entry, &desc)?);
        }
        desc.annotations =
            annotations.get(AnnotationTarget::ManifestDescriptor, Some(&image.platform));
        if !oci {
            let bytes = std::fs::read(store.blob_path(&desc.digest))
                .map_err(BuildError::io("reading a built manifest"))?;
            let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
                BuildError::io("reading a built manifest")(std::io::Error::other(e))
            })?;
            let docker = manifest.to_docker().map_err(|mt| BuildError::Io {
                context: "converting to Docker media types".into(),
                source: std::io::Error::other(format!("{mt} has no Docker media type")),
            })?;
            let stored = store.put_json(media::DOCKER_MANIFEST, &to_json_bytes(&docker))?;
            desc = Descriptor {
                platform: desc.platform,
                ..stored
            };
        }
        manifests.push(desc);
    }
    if let [only] = manifests.as_mut_slice()
        && attestations.is_empty()
    {
        only.platform = None;
        return Ok(only.clone());
    }
    manifests.extend(attestations);
    let index_type = if oci {
        media::OCI_INDEX
    } else {
        media::DOCKER_MANIFEST_LIST
    };
    let mut index = ImageIndex::new(index_type, manifests);
    index.annotations = annotations.get(AnnotationTarget::Index, None);
    store.put_json(index_type, &to_json_bytes(&index))
}

/// Delivers the images of a build to every output and returns what the first output knows
/// them by (the manifest, or the index of several platforms). Each output is one copy out of
/// the store: a registry gets every blob, then every platform's manifest, and the tags last
/// (in every repository named), so a failure never leaves a tag pointing at missing content;
/// a layout or archive appears only when it is complete. `names` name the image in layouts.
/// `clients` are for reading the layer blobs the store never fetched, and for pushes.
pub fn deliver(
    store: &Store,
    clients: (OriginClients<'_>, &RegistryClient),
    images: &[BuiltImage],
    names: &[Reference],
    outputs: &[Output],
    annotations: &Annotations,
    progress: &Progress,
) -> Result<Option<Descriptor>, BuildError> {
    let (pull, client) = clients;
    let origins: BTreeMap<Digest, Reference> = images
        .iter()
        .flat_map(|image| image.origins.clone())
        .collect();
    // A layer to re-encode that the build left in its registry is fetched into the store.
    let fetch = |desc: &Descriptor| -> Result<(), BuildError> {
        if store.has_blob(&desc.digest) {
            return Ok(());
        }
        let Some(origin) = origins.get(&desc.digest) else {
            return Err(BuildError::Io {
                context: format!("re-encoding layer {}", desc.digest),
                source: std::io::Error::other("the kiln store does not hold it"),
            });
        };
        let tmp = store.temp_path("fetch-")?;
        pull.client_for(origin).fetch_blob(origin, desc, &tmp)?;
        store.commit_blob(tmp, &desc.digest)
    };
    let mut first = None;
    let attested = images.iter().any(|i| i.attestation.is_some());
    for output in outputs {
        // A docker archive and the files of the image have no place for attestations
        // (buildx leaves them out there too).
        let carries =
            attested && !matches!(output, Output::DockerArchive { .. } | Output::Rootfs { .. });
        let format = output.format();
        if carries && !format.oci_mediatypes {
            progress.warning(
                "oci-mediatypes=false: attestations need an OCI index, so this output uses \
                 OCI media types (as BuildKit does)",
            );
        }
        let top = render(
            store,
            images,
            &format,
            carries,
            annotations,
            (&fetch, progress),
        )?;
        let source = StoreSource::with_origins(store, top.clone(), pull, &origins);
        match output {
            Output::Registry {
                names: targets,
                push_by_digest,
                ..
            } => {
                // No name, nowhere to push (the CLI refuses that before building).
                if let Some(dest) = RegistryDestination::to_all(client, targets.clone()) {
                    push(&source, dest, *push_by_digest, progress)?;
                }
            }
            Output::OciArchive { dest: path, .. } | Output::OciDir { dest: path, .. } => {
                // The layout's entry: the index-descriptor annotations, and for a single
                // image (whose descriptor it is) the manifest-descriptor ones.
                let mut entry = annotations.get(AnnotationTarget::IndexDescriptor, None);
                if let [image] = images {
                    entry.extend(
                        annotations
                            .get(AnnotationTarget::ManifestDescriptor, Some(&image.platform)),
                    );
                }
                let layout_names = names
                    .iter()
                    .map(|n| LayoutName::of_reference(n).with_annotations(entry.clone()))
                    .collect();
                let target = ArchiveTarget::new(store, path)?;
                let opened = if matches!(output, Output::OciArchive { .. }) {
                    OciArchiveDestination::create(target.path(), layout_names)
                        .map(|d| Box::new(d) as Box<dyn ImageDestination>)
                } else {
                    OciDirDestination::create(path, layout_names)
                        .map(|d| Box::new(d) as Box<dyn ImageDestination>)
                };
                let action = format!("writing the OCI layout {}", target.shown());
                let mut dest = opened.map_err(|e| export_error(&action, e))?;
                copy_to(&source, dest.as_mut(), &action)?;
                target.finish()?;
                progress.info(&format!(
                    "wrote OCI layout {} ({})",
                    target.shown(),
                    top.digest
                ));
            }
            Output::DockerArchive {
                dest: path,
                names: tags,
            } => {
                let target = ArchiveTarget::new(store, path)?;
                let action = format!("writing the docker archive {}", target.shown());
                let mut dest = DockerArchiveDestination::create(target.path(), tags.clone())
                    .map_err(|e| export_error(&action, e))?;
                copy_to(&source, &mut dest, &action)?;
                target.finish()?;
                progress.info(&format!(
                    "wrote docker archive {} ({})",
                    target.shown(),
                    top.digest
                ));
            }
            Output::Rootfs { dest: path, tar } => {
                crate::rootfs::write(store, images, &source, path, *tar)?;
                let what = if *tar { "tar of the files" } else { "files" };
                let shown = match path == Path::new(STDOUT) {
                    true => "standard output".to_string(),
                    false => path.display().to_string(),
                };
                progress.info(&format!("wrote the {what} to {shown} ({})", top.digest));
            }
        }
        first.get_or_insert(top);
    }
    Ok(first)
}

/// Where an archive output is written: its file, or for `dest=-` a file in the store whose
/// bytes go to standard output once it is complete (an archive is written under a temporary
/// name and renamed, which standard output cannot be).
struct ArchiveTarget {
    path: PathBuf,
    stdout: Option<tempfile::TempDir>,
}

impl ArchiveTarget {
    fn new(store: &Store, dest: &Path) -> Result<ArchiveTarget, BuildError> {
        if dest != Path::new(STDOUT) {
            return Ok(ArchiveTarget {
                path: dest.to_path_buf(),
                stdout: None,
            });
        }
        let dir = store.temp_dir("stdout-")?;
        Ok(ArchiveTarget {
            path: dir.path().join("archive.tar"),
            stdout: Some(dir),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        match self.stdout {
            Some(_) => "to standard output".into(),
            None => self.path.display().to_string(),
        }
    }

    /// Sends a `dest=-` archive to standard output.
    fn finish(&self) -> Result<(), BuildError> {
        if self.stdout.is_none() {
            return Ok(());
        }
        let mut file =
            File::open(&self.path).map_err(BuildError::io("reading the archive for stdout"))?;
        let mut out = io::stdout().lock();
        io::copy(&mut file, &mut out)
            .and_then(|_| out.flush())
            .map_err(BuildError::io("writing the archive to standard output"))?;
        Ok(())
    }
}

/// Pushes everything `source` holds to `dest`, saying how each blob got there and where
/// the image is now.
fn push(
    source: &StoreSource<'_>,
    dest: RegistryDestination<'_>,
    by_digest: bool,
    progress: &Progress,
) -> Result<(), BuildError> {
    let dest = if by_digest { dest.by_digest() } else { dest };
    let mut dest = dest.on_blob(|target, blob, done| {
        let how = match done {
            BlobTransfer::Uploaded => "pushed",
            BlobTransfer::Mounted => "mounted",
            BlobTransfer::AlreadyPresent => "already there",
        };
        progress.detail(&format!("{} {} ({how})", target.repository, blob.digest));
    });
    let action = format!("pushing to {}", dest.describe());
    copy_to(source, &mut dest, &action)?;
    for at in dest.committed_at(&source.top.digest) {
        let shown = if by_digest {
            format!("{}/{}@{}", at.registry, at.repository, source.top.digest)
        } else {
            format!("{at}@{}", source.top.digest)
        };
        progress.info(&format!("pushed {shown}"));
    }
    Ok(())
}

/// Copies everything `source` holds to `dest`; `action` names the output in errors.
fn copy_to(
    source: &StoreSource<'_>,
    dest: &mut dyn ImageDestination,
    action: &str,
) -> Result<(), BuildError> {
    copy(source, dest, &Selection::All)
        .map(drop)
        .map_err(|e| export_error(action, e))
}

/// A registry's own error as it is (it names the registry and repository), anything else
/// with what was being done.
fn export_error(action: &str, e: TransportError) -> BuildError {
    match e {
        TransportError::Registry(e) => BuildError::from(e),
        other => BuildError::Export {
            action: action.to_string(),
            source: Box::new(other),
        },
    }
}
