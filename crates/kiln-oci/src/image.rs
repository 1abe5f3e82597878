use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Digest, Platform};

/// A content descriptor: what a manifest or index says about a blob it points to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI or Docker v2 schema 2; the JSON shapes are the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// An index (`media_type` OCI index or Docker manifest list) over `manifests`.
    pub fn new(media_type: &str, manifests: Vec<Descriptor>) -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media_type.to_string()),
            manifests,
            annotations: BTreeMap::new(),
        }
    }
}

/// The runtime part of an image config. Fields kiln does not model (Healthcheck, OnBuild,
/// Shell, ...) are kept in `extra` so a base image's config survives a round trip.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub exposed_ports: BTreeMap<String, Value>,
    #[serde(
        rename = "Env",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "Volumes",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub volumes: BTreeMap<String, Value>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        rename = "Labels",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ContainerConfig {
    /// The value of an environment variable in `Env`.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k == name).then_some(v)
        })
    }

    /// Sets an environment variable, replacing an earlier value in place.
    pub fn set_env_var(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == name)
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub history: Vec<HistoryEntry>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// An empty config for `platform`, as `FROM scratch` starts with.
    pub fn for_platform(platform: &Platform) -> ImageConfig {
        ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            ..Default::default()
        }
    }

    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// Serialises a value to the compact JSON kiln pushes and hashes.
pub fn to_json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("image types always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_keeps_unknown_fields_and_is_stable() {
        let src = r#"{"architecture":"arm64","os":"linux","variant":"v8","config":{"Env":["PATH=/bin"],"Healthcheck":{"Test":["NONE"]},"Labels":{"b":"2","a":"1"}},"rootfs":{"type":"layers","diff_ids":[]},"moby.buildkit.buildinfo.v1":"x"}"#;
        let c: ImageConfig = serde_json::from_str(src).unwrap();
        assert_eq!(c.config.env_var("PATH"), Some("/bin"));
        let out = String::from_utf8(to_json_bytes(&c)).unwrap();
        assert!(out.contains(r#""Healthcheck":{"Test":["NONE"]}"#), "{out}");
        assert!(out.contains(r#""Labels":{"a":"1","b":"2"}"#), "{out}");
        assert!(out.contains("moby.buildkit.buildinfo.v1"));
        let again: ImageConfig = serde_json::from_str(&out).unwrap();
        assert_eq!(to_json_bytes(&again), to_json_bytes(&c));
    }

    #[test]
    fn null_maps_in_docker_configs_are_accepted() {
        let src = r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Labels":null,"ExposedPorts":null,"Entrypoint":null},"rootfs":{"type":"layers","diff_ids":[]},"history":null}"#;
        let c: ImageConfig = serde_json::from_str(src).unwrap();
        assert!(c.config.env.is_empty() && c.config.entrypoint.is_none());
    }

    #[test]
    fn set_env_var_replaces_in_place() {
        let mut c = ContainerConfig::default();
        c.set_env_var("A", "1");
        c.set_env_var("B", "2");
        c.set_env_var("A", "3");
        assert_eq!(c.env, vec!["A=3", "B=2"]);
    }
}

/// The Docker v2 schema 2 media type for an OCI one, where Docker has an equivalent.
pub fn docker_media_type(oci: &str) -> Option<&'static str> {
    use crate::media::*;
    match oci {
        OCI_INDEX => Some(DOCKER_MANIFEST_LIST),
        OCI_MANIFEST => Some(DOCKER_MANIFEST),
        OCI_CONFIG => Some(DOCKER_CONFIG),
        OCI_LAYER_GZIP => Some(DOCKER_LAYER_GZIP),
        OCI_LAYER_TAR => Some("application/vnd.docker.image.rootfs.diff.tar"),
        _ => None,
    }
}

impl ImageManifest {
    /// The same manifest in Docker v2 schema 2 media types (the blobs are unchanged), or the
    /// media type that has no Docker equivalent.
    pub fn to_docker(&self) -> Result<ImageManifest, String> {
        let convert = |d: &Descriptor| -> Result<Descriptor, String> {
            let media_type =
                docker_media_type(&d.media_type).ok_or_else(|| d.media_type.clone())?;
            Ok(Descriptor {
                media_type: media_type.to_string(),
                ..d.clone()
            })
        };
        Ok(ImageManifest {
            schema_version: 2,
            media_type: Some(crate::media::DOCKER_MANIFEST.into()),
            config: convert(&self.config)?,
            layers: self.layers.iter().map(convert).collect::<Result<_, _>>()?,
            annotations: self.annotations.clone(),
        })
    }
}

#[cfg(test)]
mod docker_tests {
    use super::*;
    use crate::media;

    #[test]
    fn manifest_converts_to_docker_media_types() {
        let d = |mt: &str| Descriptor::new(mt, crate::Digest::of(mt.as_bytes()), 1);
        let m = ImageManifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: d(media::OCI_CONFIG),
            layers: vec![d(media::OCI_LAYER_GZIP)],
            annotations: BTreeMap::new(),
        };
        let docker = m.to_docker().unwrap();
        assert_eq!(docker.media_type.as_deref(), Some(media::DOCKER_MANIFEST));
        assert_eq!(docker.config.media_type, media::DOCKER_CONFIG);
        assert_eq!(docker.layers[0].media_type, media::DOCKER_LAYER_GZIP);
        assert_eq!(docker.layers[0].digest, m.layers[0].digest);
        let zstd = ImageManifest {
            layers: vec![d(media::OCI_LAYER_ZSTD)],
            ..m
        };
        assert_eq!(zstd.to_docker().unwrap_err(), media::OCI_LAYER_ZSTD);
    }
}
