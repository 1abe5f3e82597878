//! manifest-tool's `from-spec` YAML: the index to push (`image`, `tags`) and the images it
//! lists (`manifests[].image`, with an optional `platform` that overrides the image's own).

use std::path::{Path, PathBuf};

use kiln_oci::Platform;
use kiln_registry::{Reference, ReferenceError, RegistryClient};
use serde::Deserialize;

use crate::manifest_list::{
    ListEntry, ListError, UnknownPlatform, resolve_sources, validate_platform,
};

/// A spec file that cannot be read or used, or an image of it that cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a manifest-tool spec: {source}", path.display())]
    NotASpec {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{}: `manifests` is empty", path.display())]
    NoManifests { path: PathBuf },
    /// `field` is `image`, `tags` or `manifests`.
    #[error("the spec's `{field}`: {source}")]
    Name {
        field: &'static str,
        #[source]
        source: ReferenceError,
    },
    #[error(
        "{image} is an index of {count} images: a `platform` can only be given for a single image"
    )]
    PlatformOfIndex { image: String, count: usize },
    #[error("{image}: {error}")]
    Platform {
        image: String,
        error: UnknownPlatform,
    },
    #[error(transparent)]
    List(#[from] ListError),
}

/// The file as manifest-tool reads it.
#[derive(Deserialize)]
struct SpecFile {
    image: String,
    #[serde(default)]
    tags: Vec<String>,
    manifests: Vec<SpecFileManifest>,
}

#[derive(Deserialize)]
struct SpecFileManifest {
    image: String,
    platform: Option<SpecFilePlatform>,
}

#[derive(Deserialize)]
struct SpecFilePlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
    /// manifest-tool has both `features` and `osfeatures`; both are OS features in OCI.
    #[serde(default, alias = "osfeatures")]
    features: Vec<String>,
    #[serde(default)]
    osversion: Option<String>,
}

impl SpecFilePlatform {
    fn to_platform(&self) -> Platform {
        let mut p = Platform::new(&self.os, &self.architecture, self.variant.as_deref());
        p.variant = p.variant.filter(|v| !v.is_empty());
        p.os_version = self.osversion.clone().filter(|v| !v.is_empty());
        p.os_features = self.features.clone();
        p
    }
}

/// One image a spec lists.
#[derive(Clone, Debug)]
pub struct SpecImage {
    /// As the spec names it.
    pub image: String,
    pub reference: Reference,
    /// The platform the index gives it instead of its own (checked when it is resolved).
    pub platform: Option<Platform>,
}

/// A manifest-tool spec, its names parsed.
#[derive(Clone, Debug)]
pub struct PushSpec {
    /// Where the index goes: `image`, then the same repository with each of `tags`.
    pub targets: Vec<Reference>,
    pub images: Vec<SpecImage>,
}

impl PushSpec {
    pub fn read(path: &Path) -> Result<PushSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let spec: SpecFile =
            serde_norway::from_str(&text).map_err(|source| SpecError::NotASpec {
                path: path.to_path_buf(),
                source,
            })?;
        if spec.manifests.is_empty() {
            return Err(SpecError::NoManifests {
                path: path.to_path_buf(),
            });
        }
        let name = |field| move |source| SpecError::Name { field, source };
        let image: Reference = spec.image.parse().map_err(name("image"))?;
        let mut targets = vec![image.clone()];
        for tag in &spec.tags {
            let tagged = format!("{}/{}:{tag}", image.registry, image.repository);
            targets.push(tagged.parse().map_err(name("tags"))?);
        }
        let images = spec
            .manifests
            .iter()
            .map(|m| {
                Ok(SpecImage {
                    image: m.image.clone(),
                    reference: m.image.parse().map_err(name("manifests"))?,
                    platform: m.platform.as_ref().map(SpecFilePlatform::to_platform),
                })
            })
            .collect::<Result<_, SpecError>>()?;
        Ok(PushSpec { targets, images })
    }

    /// The entries of the index: each image's (an index's images, attestation manifests
    /// dropped unless `keep_attestations`), with the spec's platform where it gives one.
    pub fn entries(
        &self,
        client: &RegistryClient,
        keep_attestations: bool,
    ) -> Result<Vec<ListEntry>, SpecError> {
        let mut entries = Vec::new();
        for m in &self.images {
            let mut found =
                resolve_sources(client, std::slice::from_ref(&m.image), keep_attestations)?;
            if let Some(platform) = &m.platform {
                let [only] = found.as_mut_slice() else {
                    return Err(SpecError::PlatformOfIndex {
                        image: m.image.clone(),
                        count: found.len(),
                    });
                };
                validate_platform(platform).map_err(|error| SpecError::Platform {
                    image: m.image.clone(),
                    error,
                })?;
                only.descriptor.platform = Some(platform.clone());
            }
            entries.extend(found);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<PushSpec, SpecError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, yaml).unwrap();
        PushSpec::read(&path)
    }

    #[test]
    fn a_spec_names_its_targets_and_images_with_their_platforms() {
        let spec = read(
            "image: localhost:5000/app:1\ntags: [latest, stable]\nmanifests:\n  \
             - image: localhost:5000/app:amd64\n  \
             - image: localhost:5000/app:arm64\n    platform:\n      architecture: arm64\n      \
             os: linux\n      variant: v8\n      osversion: \"1.2\"\n      osfeatures: [sse4]\n",
        )
        .unwrap();
        let targets: Vec<String> = spec.targets.iter().map(Reference::to_string).collect();
        assert_eq!(
            targets,
            [
                "localhost:5000/app:1",
                "localhost:5000/app:latest",
                "localhost:5000/app:stable"
            ]
        );
        assert_eq!(spec.images[0].platform, None);
        let arm64 = spec.images[1].platform.clone().unwrap();
        assert_eq!(arm64.to_string(), "linux/arm64/v8");
        assert_eq!(arm64.os_version.as_deref(), Some("1.2"));
        assert_eq!(arm64.os_features, ["sse4"]);
    }

    #[test]
    fn unusable_specs_say_what_is_wrong() {
        let err = |yaml: &str| read(yaml).unwrap_err().to_string();
        assert!(err("image: [").contains("is not a manifest-tool spec"));
        assert!(err("image: a:1\nmanifests: []\n").ends_with(": `manifests` is empty"));
        assert!(
            err("image: UP:1\nmanifests:\n  - image: a:1\n")
                .starts_with("the spec's `image`: invalid image reference `UP:1`"),
        );
        assert!(
            err("image: a:1\ntags: ['bad tag']\nmanifests:\n  - image: a:1\n")
                .starts_with("the spec's `tags`: "),
        );
    }
}
