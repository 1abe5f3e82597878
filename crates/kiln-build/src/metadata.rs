//! `--metadata-file`: what a build produced, in buildx's keys (`containerimage.digest`,
//! `containerimage.descriptor`, `image.name`), and reading it back for `kiln manifest create
//! --from-metadata`, which stitches per-platform builds pushed by digest into one index.

use std::path::{Path, PathBuf};

use kiln_oci::Descriptor;
use kiln_registry::{Reference, ReferenceError};

use crate::{BuildError, BuiltImage};

/// What a build's metadata file says.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildMetadata {
    /// The manifest (with its platform) or index the build produced.
    pub descriptor: Descriptor,
    /// The names the image was given: `registry/repository` when pushed by digest.
    pub image_names: Vec<String>,
}

/// A metadata file that cannot be read or names no image.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not JSON: {source}", path.display())]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: no {key}", path.display())]
    Missing { path: PathBuf, key: &'static str },
    #[error("{}: {source}", path.display())]
    BadName {
        path: PathBuf,
        #[source]
        source: ReferenceError,
    },
}

impl BuildMetadata {
    /// The metadata of a build that produced `top` from `images`, named `names`.
    pub fn new(
        top: &Descriptor,
        images: &[BuiltImage],
        names: &[Reference],
        push_by_digest: bool,
    ) -> BuildMetadata {
        let mut descriptor = top.clone();
        // One image's manifest has its platform; an index of one image and its attestation
        // manifest has none.
        if let [only] = images
            && !kiln_oci::media::is_index(&top.media_type)
        {
            descriptor.platform = Some(only.platform.clone());
        }
        let image_names = names
            .iter()
            .map(|n| {
                if push_by_digest {
                    format!("{}/{}", n.registry, n.repository)
                } else {
                    n.to_string()
                }
            })
            .collect();
        BuildMetadata {
            descriptor,
            image_names,
        }
    }

    /// The file's bytes: indented JSON whose keys (the descriptor's too) are sorted, as
    /// buildx writes them.
    pub fn to_json(&self) -> Vec<u8> {
        // A serde_json map keeps its keys sorted.
        let metadata = serde_json::json!({
            "containerimage.descriptor": self.descriptor,
            "containerimage.digest": self.descriptor.digest.to_string(),
            "image.name": self.image_names.join(","),
        });
        serde_json::to_vec_pretty(&metadata).expect("JSON values always serialise")
    }

    /// Writes the file. In place, not through a rename: the path may be `/dev/stdout`.
    pub fn write(&self, path: &Path) -> Result<(), BuildError> {
        std::fs::write(path, self.to_json())
            .map_err(BuildError::io(format!("writing {}", path.display())))
    }
}

/// The image a metadata file names, as `registry/repository@digest`: the repository of the
/// first of its `image.name`s, at its `containerimage.digest`.
pub fn pushed_image(path: &Path) -> Result<String, MetadataError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetadataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| MetadataError::NotJson {
            path: path.to_path_buf(),
            source,
        })?;
    let missing = |key| MetadataError::Missing {
        path: path.to_path_buf(),
        key,
    };
    let digest = v["containerimage.digest"]
        .as_str()
        .ok_or_else(|| missing("containerimage.digest"))?;
    let name = v["image.name"]
        .as_str()
        .and_then(|n| n.split(',').next())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("image.name"))?;
    let r: Reference = name.parse().map_err(|source| MetadataError::BadName {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!("{}/{}@{digest}", r.registry, r.repository))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_oci::{Digest, Platform, media};

    fn built(platform: &str) -> BuiltImage {
        let d = |s: &str| Descriptor::new(media::OCI_CONFIG, Digest::of(s.as_bytes()), 1);
        let platform: Platform = platform.parse().unwrap();
        let mut manifest = Descriptor::new(media::OCI_MANIFEST, Digest::of(b"m"), 7);
        manifest.platform = Some(platform.clone());
        BuiltImage {
            platform,
            manifest,
            config: d("c"),
            layers: vec![],
            origins: Default::default(),
            base_layers: 0,
            source_date_epoch: None,
            attestation: None,
        }
    }

    #[test]
    fn a_single_image_is_described_with_its_platform_in_buildx_keys() {
        let image = built("linux/arm64");
        let mut top = image.manifest.clone();
        top.platform = None;
        let names = ["localhost:5000/app:1".parse().unwrap()];
        let json = BuildMetadata::new(&top, &[image], &names, false).to_json();
        let expected = format!(
            "{{\n  \"containerimage.descriptor\": {{\n    \"digest\": \"{d}\",\n    \
             \"mediaType\": \"{mt}\",\n    \"platform\": {{\n      \"architecture\": \
             \"arm64\",\n      \"os\": \"linux\"\n    }},\n    \"size\": 7\n  }},\n  \
             \"containerimage.digest\": \"{d}\",\n  \"image.name\": \"localhost:5000/app:1\"\n}}",
            d = top.digest,
            mt = media::OCI_MANIFEST
        );
        assert_eq!(String::from_utf8(json).unwrap(), expected);
    }

    #[test]
    fn pushed_by_digest_names_the_repository_and_reads_back_pinned() {
        let images = [built("linux/amd64"), built("linux/arm64")];
        let top = Descriptor::new(media::OCI_INDEX, Digest::of(b"index"), 9);
        let names = [
            "localhost:5000/app:1".parse().unwrap(),
            "localhost:5000/other:2".parse().unwrap(),
        ];
        let meta = BuildMetadata::new(&top, &images, &names, true);
        assert_eq!(meta.descriptor, top, "an index has no platform");
        assert_eq!(
            meta.image_names,
            ["localhost:5000/app", "localhost:5000/other"]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        meta.write(&path).unwrap();
        assert_eq!(
            pushed_image(&path).unwrap(),
            format!("localhost:5000/app@{}", top.digest)
        );
    }

    #[test]
    fn unusable_metadata_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let shown = path.display().to_string();
        let err = |text: Option<&str>| {
            if let Some(text) = text {
                std::fs::write(&path, text).unwrap();
            }
            pushed_image(&path).unwrap_err().to_string()
        };
        assert!(err(None).starts_with(&format!("cannot read {shown}: ")));
        assert!(err(Some("{")).starts_with(&format!("{shown} is not JSON: ")));
        assert_eq!(
            err(Some("{}")),
            format!("{shown}: no containerimage.digest")
        );
        assert_eq!(
            err(Some(
                r#"{"containerimage.digest":"sha256:x","image.name":""}"#
            )),
            format!("{shown}: no image.name")
        );
        assert!(
            err(Some(r#"{"containerimage.digest":"d","image.name":"UP"}"#))
                .starts_with(&format!("{shown}: invalid image reference `UP`"))
        );
    }
}
