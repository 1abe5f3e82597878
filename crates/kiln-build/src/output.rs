use std::path::PathBuf;

use kiln_oci::layout::{self, LayoutBlob};
use kiln_oci::{Descriptor, ImageIndex, ImageManifest, media, to_json_bytes};
use kiln_registry::{BlobTransfer, Reference, RegistryClient, each_in_parallel};

use crate::progress::Progress;
use crate::{BuildError, BuiltImage, Store};

/// How many blobs are pushed at once.
const BLOBS_IN_FLIGHT: usize = 4;

/// Where built images go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Push to a registry.
    Registry {
        /// Each name's tag receives the image (or, with `push_by_digest`, only its repository).
        names: Vec<Reference>,
        /// OCI media types (default) or Docker v2 schema 2 ones.
        oci_mediatypes: bool,
        /// Push without a tag; the result is known by its digest only.
        push_by_digest: bool,
    },
    /// An OCI layout as a tar archive (`type=oci,dest=x.tar`).
    OciArchive(PathBuf),
    /// An OCI layout directory (`type=oci,dest=x,tar=false`).
    OciDir(PathBuf),
}

/// The images of a build as one artifact: a single manifest, or an index of one manifest per
/// platform, in OCI or Docker media types.
struct Rendered {
    top: Descriptor,
    /// Every JSON document below `top` (the manifests of an index), with its bytes.
    manifests: Vec<(Descriptor, Vec<u8>)>,
    /// Every blob the manifests point to: layers and configs.
    blobs: Vec<Descriptor>,
}

fn render(store: &Store, images: &[BuiltImage], oci: bool) -> Result<Rendered, BuildError> {
    let mut manifests = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    for image in images {
        let bytes = std::fs::read(store.blob_path(&image.manifest.digest))
            .map_err(BuildError::io("reading a built manifest"))?;
        let mut desc = image.manifest.clone();
        let bytes = if oci {
            bytes
        } else {
            let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
                BuildError::io("reading a built manifest")(std::io::Error::other(e))
            })?;
            let docker = manifest.to_docker().map_err(|mt| BuildError::Io {
                context: "converting to Docker media types".into(),
                source: std::io::Error::other(format!("{mt} has no Docker media type")),
            })?;
            let bytes = to_json_bytes(&docker);
            let stored = store.put_json(media::DOCKER_MANIFEST, &bytes)?;
            desc = Descriptor {
                platform: desc.platform,
                ..stored
            };
            bytes
        };
        for b in image.layers.iter().chain([&image.config]) {
            if !blobs.iter().any(|x| x.digest == b.digest) {
                blobs.push(b.clone());
            }
        }
        manifests.push((desc, bytes));
    }
    if manifests.len() == 1 {
        let (mut top, _) = manifests.remove(0);
        top.platform = None;
        return Ok(Rendered {
            top,
            manifests: Vec::new(),
            blobs,
        });
    }
    let index_type = if oci {
        media::OCI_INDEX
    } else {
        media::DOCKER_MANIFEST_LIST
    };
    let index = ImageIndex::new(
        index_type,
        manifests.iter().map(|(d, _)| d.clone()).collect(),
    );
    let top = store.put_json(index_type, &to_json_bytes(&index))?;
    Ok(Rendered {
        top,
        manifests,
        blobs,
    })
}

/// Delivers the images of a build to every output and returns what the first output knows
/// them by (the manifest, or the index of several platforms). A registry gets every blob,
/// then every platform's manifest, and the tag last, so a failure never leaves a tag
/// pointing at missing content.
pub fn deliver(
    store: &Store,
    client: &RegistryClient,
    images: &[BuiltImage],
    names: &[Reference],
    outputs: &[Output],
    progress: &Progress,
) -> Result<Option<Descriptor>, BuildError> {
    let mut first = None;
    for output in outputs {
        let oci = match output {
            Output::Registry { oci_mediatypes, .. } => *oci_mediatypes,
            _ => true,
        };
        let r = render(store, images, oci)?;
        match output {
            Output::Registry {
                names: targets,
                push_by_digest,
                ..
            } => {
                for (i, target) in targets.iter().enumerate() {
                    // Names after the first can mount what the first received.
                    let from = (i > 0).then(|| &targets[0]);
                    each_in_parallel(&r.blobs, BLOBS_IN_FLIGHT, |blob| {
                        let done = client.mount_or_push_blob(
                            target,
                            blob,
                            &store.blob_path(&blob.digest),
                            from,
                        )?;
                        let how = match done {
                            BlobTransfer::Uploaded => "pushed",
                            BlobTransfer::Mounted => "mounted",
                            BlobTransfer::AlreadyPresent => "already there",
                        };
                        progress.detail(&format!("{} {} ({how})", target.repository, blob.digest));
                        Ok::<(), BuildError>(())
                    })?;
                    for (desc, bytes) in &r.manifests {
                        client.push_manifest(
                            &target.with_digest(desc.digest.clone()),
                            &desc.media_type,
                            bytes,
                        )?;
                    }
                }
                let top_bytes = std::fs::read(store.blob_path(&r.top.digest))
                    .map_err(BuildError::io("reading the built manifest"))?;
                for target in targets {
                    let at = if *push_by_digest {
                        target.with_digest(r.top.digest.clone())
                    } else {
                        target.clone()
                    };
                    client.push_manifest(&at, &r.top.media_type, &top_bytes)?;
                    let shown = if *push_by_digest {
                        format!("{}/{}@{}", at.registry, at.repository, r.top.digest)
                    } else {
                        format!("{at}@{}", r.top.digest)
                    };
                    progress.info(&format!("pushed {shown}"));
                }
            }
            Output::OciArchive(path) | Output::OciDir(path) => {
                let index = layout_index(&r.top, names);
                let mut paths = Vec::new();
                let docs = r.manifests.iter().map(|(d, _)| d);
                for blob in r.blobs.iter().chain(docs).chain([&r.top]) {
                    paths.push((blob.digest.clone(), store.blob_path(&blob.digest)));
                }
                let layout_blobs: Vec<LayoutBlob<'_>> = paths
                    .iter()
                    .map(|(d, p)| LayoutBlob { digest: d, path: p })
                    .collect();
                let written = if matches!(output, Output::OciArchive(_)) {
                    layout::write_tar(path, &layout_blobs, &index)
                } else {
                    layout::write_dir(path, &layout_blobs, &index)
                };
                written.map_err(BuildError::io(format!(
                    "writing the OCI layout {}",
                    path.display()
                )))?;
                progress.info(&format!(
                    "wrote OCI layout {} ({})",
                    path.display(),
                    r.top.digest
                ));
            }
        }
        first.get_or_insert(r.top);
    }
    Ok(first)
}

/// index.json for an OCI layout: one entry per name, annotated the way containerd and umoci
/// look names up (`org.opencontainers.image.ref.name` holds the tag).
fn layout_index(top: &Descriptor, names: &[Reference]) -> ImageIndex {
    let entry = |name: Option<&Reference>| {
        let mut d = top.clone();
        if let Some(n) = name {
            d.annotations
                .insert("io.containerd.image.name".to_string(), n.to_string());
            d.annotations.insert(
                "org.opencontainers.image.ref.name".to_string(),
                n.tag.clone().unwrap_or_else(|| "latest".into()),
            );
        }
        d
    };
    let manifests = if names.is_empty() {
        vec![entry(None)]
    } else {
        names.iter().map(|n| entry(Some(n))).collect()
    };
    ImageIndex::new(media::OCI_INDEX, manifests)
}
