//! `docker save` archives (`docker-archive:`): a manifest.json listing, per image, its config
//! file, its RepoTags and its layers as tar files.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kiln_oci::{
    Descriptor, Digest, DigestReader, DigestWriter, ImageConfig, ImageManifest, media,
    to_json_bytes,
};
use kiln_registry::{DOCKER_HUB, MAX_CONFIG_BYTES, Reference};
use serde::{Deserialize, Serialize};

use crate::files::{Files, TarIndex, place_blob, temp_beside, write_verified};
use crate::{ImageDestination, ImageSource, RawManifest, TransportError};

/// The media type of an uncompressed Docker layer.
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

#[derive(Serialize, Deserialize)]
struct ArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_as_empty")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// How `docker images` shows a name: Docker Hub names without `docker.io/library/`.
fn familiar(r: &Reference) -> Option<String> {
    let tag = r.tag.as_ref()?;
    let name = if r.registry == DOCKER_HUB {
        r.repository
            .strip_prefix("library/")
            .unwrap_or(&r.repository)
            .to_string()
    } else {
        format!("{}/{}", r.registry, r.repository)
    };
    Some(format!("{name}:{tag}"))
}

/// One image of a `docker save` archive. It has no manifest of its own: kiln describes it
/// with a Docker v2 schema 2 manifest over the archive's files as they are (uncompressed
/// layers keep the uncompressed layer media type), so its digest is kiln's, not a registry's.
pub struct DockerArchiveSource {
    files: Files,
    location: String,
    manifest: RawManifest,
    members: HashMap<Digest, String>,
}

impl DockerArchiveSource {
    pub fn open(
        file: &Path,
        reference: Option<&Reference>,
    ) -> Result<DockerArchiveSource, TransportError> {
        let files = Files::Tar(TarIndex::scan(file)?);
        let mut location = format!("docker-archive:{}", file.display());
        let entries = archive_entries(&files, &location)?;
        let entry = match reference {
            Some(wanted) => {
                location = format!("{location}:{wanted}");
                entries
                    .iter()
                    .find(|e| {
                        e.repo_tags
                            .iter()
                            .any(|t| t.parse::<Reference>().is_ok_and(|r| &r == wanted))
                    })
                    .ok_or_else(|| {
                        let tags: Vec<&str> = entries
                            .iter()
                            .flat_map(|e| e.repo_tags.iter().map(String::as_str))
                            .collect();
                        TransportError::invalid(
                            &location,
                            format!("no image tagged {wanted} (its tags: {})", tags.join(", ")),
                        )
                    })?
            }
            None => match entries.as_slice() {
                [only] => only,
                _ => {
                    return Err(TransportError::invalid(
                        &location,
                        format!(
                            "the archive holds {} images; name one by its tag",
                            entries.len()
                        ),
                    ));
                }
            },
        };
        let mut members = HashMap::new();
        let mut describe =
            |name: &str, media_type: Option<&str>| -> Result<Descriptor, TransportError> {
                let (reader, _) = files.open_required(name)?;
                let mut hashed = DigestReader::new(reader);
                let mut head = [0u8; 2];
                let got = read_up_to(&mut hashed, &mut head)
                    .map_err(TransportError::io(format!("reading {name} in {location}")))?;
                io::copy(&mut hashed, &mut io::sink())
                    .map_err(TransportError::io(format!("reading {name} in {location}")))?;
                let (digest, size) = hashed.finish();
                let media_type = media_type.unwrap_or(if head[..got] == [0x1f, 0x8b] {
                    media::DOCKER_LAYER_GZIP
                } else {
                    DOCKER_LAYER_TAR
                });
                members.insert(digest.clone(), name.to_string());
                Ok(Descriptor::new(media_type, digest, size))
            };
        let config = describe(&entry.config, Some(media::DOCKER_CONFIG))?;
        let layers = entry
            .layers
            .iter()
            .map(|l| describe(l, None))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = to_json_bytes(&ImageManifest {
            schema_version: 2,
            media_type: Some(media::DOCKER_MANIFEST.into()),
            config,
            layers,
            annotations: Default::default(),
        });
        Ok(DockerArchiveSource {
            files,
            location,
            manifest: RawManifest {
                media_type: media::DOCKER_MANIFEST.into(),
                digest: Digest::of(&bytes),
                bytes,
            },
            members,
        })
    }

    /// The image `manifest` describes, its config and layers being the archive's single
    /// image's, in order, stored as the registry serves them (kaniko's base-image cache).
    /// Nothing is hashed here: each blob is checked against `manifest` as it is read.
    pub fn of_manifest(file: &Path, manifest: RawManifest) -> Result<Self, TransportError> {
        let files = Files::Tar(TarIndex::scan(file)?);
        let location = format!("docker-archive:{}", file.display());
        let entries = archive_entries(&files, &location)?;
        let [entry] = entries.as_slice() else {
            return Err(TransportError::invalid(
                &location,
                format!("holds {} images, not one", entries.len()),
            ));
        };
        let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| TransportError::invalid(&location, format!("unreadable manifest: {e}")))?;
        if parsed.layers.len() != entry.layers.len() {
            return Err(TransportError::invalid(
                &location,
                format!(
                    "holds {} layers where manifest {} lists {}",
                    entry.layers.len(),
                    manifest.digest,
                    parsed.layers.len()
                ),
            ));
        }
        let members = std::iter::once((parsed.config.digest, entry.config.clone()))
            .chain(
                parsed
                    .layers
                    .into_iter()
                    .map(|l| l.digest)
                    .zip(entry.layers.iter().cloned()),
            )
            .collect();
        Ok(DockerArchiveSource {
            files,
            location,
            manifest,
            members,
        })
    }
}

/// The images a `docker save` archive lists in its manifest.json.
fn archive_entries(files: &Files, location: &str) -> Result<Vec<ArchiveEntry>, TransportError> {
    serde_json::from_slice(&files.read_small("manifest.json")?)
        .map_err(|e| TransportError::invalid(location, format!("unreadable manifest.json: {e}")))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

impl ImageSource for DockerArchiveSource {
    fn describe(&self) -> String {
        self.location.clone()
    }

    fn top(&self) -> Result<RawManifest, TransportError> {
        Ok(self.manifest.clone())
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, TransportError> {
        Err(TransportError::invalid(
            &self.location,
            format!("a docker archive holds no manifest {}", desc.digest),
        ))
    }

    fn blob_to_file(&self, desc: &Descriptor, dest: &Path) -> Result<(), TransportError> {
        let name = self.members.get(&desc.digest).ok_or_else(|| {
            TransportError::invalid(&self.location, format!("has no blob {}", desc.digest))
        })?;
        let (reader, _) = self.files.open_required(name)?;
        write_verified(reader, desc, dest, &self.location, "blob")
    }
}

/// Writes a `docker save` archive holding one image. As `docker save` writes it, for `docker
/// load` and skopeo: its config as `<digest>.json`, its layers uncompressed as
/// `<diff_id>.tar`. As kaniko's warmer writes it ([`DockerArchiveDestination::as_stored`]):
/// the config and layers as the registry serves them, so the image keeps its manifest.
pub struct DockerArchiveDestination {
    file: PathBuf,
    /// The image's RepoTags: one per name, as kaniko's `--tar-path` lists every destination.
    references: Vec<Reference>,
    staging: tempfile::TempDir,
    blobs_as_stored: bool,
}

impl DockerArchiveDestination {
    /// A `docker save` archive at `file`, its image tagged with each of `references`.
    pub fn create(
        file: &Path,
        references: Vec<Reference>,
    ) -> Result<DockerArchiveDestination, TransportError> {
        let staging = tempfile::Builder::new()
            .prefix("kiln-docker-archive-")
            .tempdir()
            .map_err(TransportError::io("creating a temp directory"))?;
        Ok(DockerArchiveDestination {
            file: file.to_path_buf(),
            references,
            staging,
            blobs_as_stored: false,
        })
    }

    /// The same archive with the image's blobs as they are (the config as `<digest>`, each
    /// layer as `<digest hex>.tar.gz` or its compression's suffix), as kaniko's warmer
    /// writes base images.
    pub fn as_stored(
        file: &Path,
        references: Vec<Reference>,
    ) -> Result<DockerArchiveDestination, TransportError> {
        Ok(DockerArchiveDestination {
            blobs_as_stored: true,
            ..Self::create(file, references)?
        })
    }

    fn single_image_only(&self) -> TransportError {
        TransportError::invalid(
            self.describe(),
            "a docker archive holds one image, not an index: choose one with --platform",
        )
    }

    /// The uncompressed layer for `blob`, checked against the config's diff_id.
    fn uncompressed_layer(
        &self,
        blob: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, TransportError> {
        let stored = self.staging.path().join(blob.digest.hex());
        let context = || format!("uncompressing layer {}", blob.digest);
        let file = File::open(&stored).map_err(TransportError::io(context()))?;
        let reader: Box<dyn Read> = match media::layer_compression(&blob.media_type) {
            Some(media::LayerCompression::None) => Box::new(file),
            // The format comes from the bytes, as for every layer kiln reads.
            Some(_) => kiln_snapshot::decompress(BufReader::new(file))
                .map_err(TransportError::io(context()))?,
            None => {
                return Err(TransportError::invalid(
                    self.describe(),
                    format!(
                        "layer {} has media type {}, which a docker archive cannot hold",
                        blob.digest, blob.media_type
                    ),
                ));
            }
        };
        let out_path = self.staging.path().join(format!("{}.tar", diff_id.hex()));
        let mut out = DigestWriter::new(BufWriter::new(
            File::create(&out_path).map_err(TransportError::io(context()))?,
        ));
        io::copy(&mut BufReader::new(reader), &mut out).map_err(TransportError::io(context()))?;
        let (actual, size, inner) = out.finish();
        inner
            .into_inner()
            .map_err(|e| TransportError::io(context())(e.into_error()))?;
        if &actual != diff_id {
            return Err(TransportError::DigestMismatch {
                location: self.describe(),
                what: "uncompressed layer",
                expected: diff_id.clone(),
                actual,
                size,
            });
        }
        Ok(out_path)
    }
}

impl ImageDestination for DockerArchiveDestination {
    fn describe(&self) -> String {
        match self.references.first() {
            Some(r) => format!("docker-archive:{}:{r}", self.file.display()),
            None => format!("docker-archive:{}", self.file.display()),
        }
    }

    fn put_blob(
        &mut self,
        source: &dyn ImageSource,
        desc: &Descriptor,
    ) -> Result<(), TransportError> {
        let path = self.staging.path().join(desc.digest.hex());
        if path.is_file() {
            return Ok(());
        }
        place_blob(source, desc, &path)
    }

    fn put_manifest(&mut self, _manifest: &RawManifest) -> Result<(), TransportError> {
        Err(self.single_image_only())
    }

    fn commit(&mut self, top: &RawManifest) -> Result<(), TransportError> {
        if media::is_index(&top.media_type) {
            return Err(self.single_image_only());
        }
        let location = self.describe();
        let manifest: ImageManifest = serde_json::from_slice(&top.bytes)
            .map_err(|e| TransportError::invalid(&location, format!("unreadable manifest: {e}")))?;
        // The config was stored verified against its descriptor: its size is the descriptor's.
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(TransportError::invalid(
                &location,
                format!(
                    "the image config is larger than {} MiB ({} bytes)",
                    MAX_CONFIG_BYTES >> 20,
                    manifest.config.size
                ),
            ));
        }
        let config_path = self.staging.path().join(manifest.config.digest.hex());
        let config: ImageConfig = serde_json::from_slice(
            &fs::read(&config_path).map_err(TransportError::io("reading the image config"))?,
        )
        .map_err(|e| TransportError::invalid(&location, format!("unreadable image config: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(TransportError::invalid(
                &location,
                "the config lists a different number of layers than the manifest",
            ));
        }
        let config_name = match self.blobs_as_stored {
            true => manifest.config.digest.to_string(),
            false => format!("{}.json", manifest.config.digest.hex()),
        };
        let mut members: Vec<(String, PathBuf)> = vec![(config_name.clone(), config_path)];
        let mut layer_names = Vec::new();
        for (blob, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let name = match self.blobs_as_stored {
                true => format!("{}{}", blob.digest.hex(), layer_suffix(&blob.media_type)),
                false => format!("{}.tar", diff_id.hex()),
            };
            if !members.iter().any(|(n, _)| n == &name) {
                let path = match self.blobs_as_stored {
                    true => self.staging.path().join(blob.digest.hex()),
                    false => self.uncompressed_layer(blob, diff_id)?,
                };
                members.push((name.clone(), path));
            }
            layer_names.push(name);
        }
        let listing = to_json_bytes(&[ArchiveEntry {
            config: config_name,
            repo_tags: self.references.iter().filter_map(familiar).collect(),
            layers: layer_names,
        }]);

        let tmp = temp_beside(&self.file)?;
        let context = || format!("writing {}", self.file.display());
        let mut ar = tar::Builder::new(BufWriter::new(tmp.as_file()));
        let header = |size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(size);
            h
        };
        for (name, path) in &members {
            let f = File::open(path).map_err(TransportError::io(context()))?;
            let size = f.metadata().map_err(TransportError::io(context()))?.len();
            ar.append_data(&mut header(size), name, f)
                .map_err(TransportError::io(context()))?;
        }
        ar.append_data(
            &mut header(listing.len() as u64),
            "manifest.json",
            &listing[..],
        )
        .map_err(TransportError::io(context()))?;
        ar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(TransportError::io(context()))?;
        tmp.persist(&self.file)
            .map_err(|e| TransportError::io(context())(e.error))?;
        Ok(())
    }
}

/// The file suffix of a layer blob of `media_type`, as go-containerregistry names them.
fn layer_suffix(media_type: &str) -> &'static str {
    match media::layer_compression(media_type) {
        Some(media::LayerCompression::Gzip) => ".tar.gz",
        Some(media::LayerCompression::Zstd) => ".tar.zst",
        _ => ".tar",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names_drop_docker_hub_prefixes() {
        let f = |s: &str| familiar(&s.parse().unwrap());
        assert_eq!(f("busybox").as_deref(), Some("busybox:latest"));
        assert_eq!(f("user/app:1").as_deref(), Some("user/app:1"));
        assert_eq!(
            f("localhost:5000/app:2").as_deref(),
            Some("localhost:5000/app:2")
        );
        let pinned = format!("localhost:5000/app@{}", Digest::of(b"x"));
        assert_eq!(f(&pinned), None);
    }
}
