use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_oci::layout::{self, LayoutBlob};
use kiln_oci::{Descriptor, ImageIndex, media};
use kiln_registry::{Reference, RegistryClient};

use crate::progress::Progress;
use crate::{BuildError, BuiltImage, Store};

/// Where a built image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Push to a registry under each of these tags.
    Registry(Vec<Reference>),
    /// An OCI layout as a tar archive (`type=oci,dest=x.tar`).
    OciArchive(PathBuf),
    /// An OCI layout directory (`type=oci,dest=x,tar=false`).
    OciDir(PathBuf),
}

/// Delivers a built image to every output. A registry gets every blob before any manifest,
/// so a failed upload never leaves a tag pointing at missing content.
pub fn deliver(
    store: &Store,
    client: &RegistryClient,
    image: &BuiltImage,
    names: &[Reference],
    outputs: &[Output],
    progress: &Progress,
) -> Result<(), BuildError> {
    let blobs: Vec<&Descriptor> = image.layers.iter().chain([&image.config]).collect();
    for output in outputs {
        match output {
            Output::Registry(tags) => {
                for tag in tags {
                    for blob in &blobs {
                        let sent = client.push_blob(tag, blob, &store.blob_path(&blob.digest))?;
                        let how = if sent { "pushed" } else { "already there" };
                        progress.detail(&format!("{} {} ({how})", tag.repository, blob.digest));
                    }
                }
                let manifest = std::fs::read(store.blob_path(&image.manifest.digest))
                    .map_err(BuildError::io("reading the built manifest"))?;
                for tag in tags {
                    client.push_manifest(tag, &image.manifest.media_type, &manifest)?;
                    progress.info(&format!("pushed {tag}@{}", image.manifest.digest));
                }
            }
            Output::OciArchive(path) | Output::OciDir(path) => {
                let index = layout_index(image, names);
                let mut paths = Vec::new();
                for blob in blobs.iter().copied().chain([&image.manifest]) {
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
                    image.manifest.digest
                ));
            }
        }
    }
    Ok(())
}

/// index.json for an OCI layout: one entry per name, annotated the way containerd and umoci
/// look names up (`org.opencontainers.image.ref.name` holds the tag).
fn layout_index(image: &BuiltImage, names: &[Reference]) -> ImageIndex {
    let entry = |name: Option<&Reference>| {
        let mut d = image.manifest.clone();
        if let Some(n) = name {
            let mut a = BTreeMap::new();
            a.insert("io.containerd.image.name".to_string(), n.to_string());
            a.insert(
                "org.opencontainers.image.ref.name".to_string(),
                n.tag.clone().unwrap_or_else(|| "latest".into()),
            );
            d.annotations = a;
        }
        d
    };
    let manifests = if names.is_empty() {
        vec![entry(None)]
    } else {
        names.iter().map(|n| entry(Some(n))).collect()
    };
    ImageIndex {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests,
        annotations: BTreeMap::new(),
    }
}
