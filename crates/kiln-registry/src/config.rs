//! Per-registry settings in BuildKit's `buildkitd.toml` format: plain HTTP, TLS verification,
//! CAs, client certificates and pull mirrors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How to reach one registry (`[registry."host:port"]` in `buildkitd.toml`).
/// Keys kiln does not know (e.g. `tlsconfigdir`) are ignored, so one file serves buildkitd too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HostConfig {
    /// `Some(true)`: plain HTTP. `Some(false)`: HTTPS even on loopback. `None`: HTTPS, except
    /// loopback registries that do not speak TLS.
    pub http: Option<bool>,
    /// Skip TLS certificate verification.
    #[serde(default)]
    pub insecure: bool,
    /// Hosts (`host[:port]`) tried before this registry for pulls, same repository paths.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// PEM files of CAs to trust for this registry, in addition to the system's.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// Client certificates for mutual TLS.
    #[serde(default)]
    pub keypair: Vec<KeyPair>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// Registry settings for a whole client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Settings per registry, keyed by `host[:port]` (`docker.io` for Docker Hub).
    pub hosts: BTreeMap<String, HostConfig>,
    /// Skip TLS certificate verification for every registry.
    pub skip_tls_verify: bool,
    /// When every mirror fails, fail instead of pulling from the registry itself.
    pub no_origin_fallback: bool,
    /// Any registry may speak plain HTTP: each is asked over TLS first and spoken to over
    /// HTTP when it does not speak TLS, as loopback registries always are (kaniko's
    /// `--insecure` and `--insecure-pull`).
    pub http_fallback: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read registry config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry config {} is not valid: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
}

#[derive(Deserialize)]
struct BuildkitdFile {
    #[serde(default)]
    registry: BTreeMap<String, HostConfig>,
}

impl RegistryConfig {
    /// Parses `buildkitd.toml` text; tables other than `[registry]` are ignored. Relative
    /// `ca`, `key` and `cert` paths are taken relative to `base_dir`.
    pub fn from_buildkitd_toml(text: &str, base_dir: &Path) -> Result<RegistryConfig, String> {
        let file: BuildkitdFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut hosts = BTreeMap::new();
        for (host, mut config) in file.registry {
            let absolute = |p: &mut PathBuf| *p = base_dir.join(&*p);
            config.ca.iter_mut().for_each(absolute);
            for pair in &mut config.keypair {
                absolute(&mut pair.key);
                absolute(&mut pair.cert);
            }
            config.mirrors = config
                .mirrors
                .iter()
                .map(|m| {
                    crate::credentials::strip_scheme(m)
                        .trim_end_matches('/')
                        .to_string()
                })
                .collect();
            // `index.docker.io`, `registry-1.docker.io` and `docker.io` are one registry.
            hosts.insert(crate::registry_name(&host), config);
        }
        Ok(RegistryConfig {
            hosts,
            ..RegistryConfig::default()
        })
    }

    /// Reads and parses a `buildkitd.toml` file.
    pub fn load(path: &Path) -> Result<RegistryConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_buildkitd_toml(&text, base).map_err(|detail| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        })
    }

    /// The settings for `host`, created empty if absent.
    pub fn host_mut(&mut self, host: &str) -> &mut HostConfig {
        self.hosts.entry(crate::registry_name(host)).or_default()
    }

    /// The settings for `host`, if any.
    pub fn host(&self, host: &str) -> Option<&HostConfig> {
        self.hosts.get(host)
    }

    /// Whether TLS verification is off for `host`.
    pub fn skips_tls_verify(&self, host: &str) -> bool {
        self.skip_tls_verify || self.host(host).is_some_and(|h| h.insecure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkitd_registry_tables_are_read_and_others_ignored() {
        let text = r#"
debug = true
[worker.oci]
  enabled = true
[registry."docker.io"]
  mirrors = ["mirror.example:5000", "https://other.example/"]
[registry."10.0.0.5:5000"]
  http = true
[registry."secure.example"]
  insecure = true
  ca = ["/etc/certs/ca.pem", "rel/ca.pem"]
  [[registry."secure.example".keypair]]
    key = "client.key"
    cert = "/abs/client.pem"
"#;
        let c = RegistryConfig::from_buildkitd_toml(text, Path::new("/conf")).unwrap();
        assert_eq!(
            c.host("docker.io").unwrap().mirrors,
            ["mirror.example:5000", "other.example"]
        );
        assert_eq!(c.host("10.0.0.5:5000").unwrap().http, Some(true));
        let secure = c.host("secure.example").unwrap();
        assert!(secure.insecure && c.skips_tls_verify("secure.example"));
        assert!(!c.skips_tls_verify("docker.io"));
        assert_eq!(
            secure.ca,
            [
                PathBuf::from("/etc/certs/ca.pem"),
                "/conf/rel/ca.pem".into()
            ]
        );
        assert_eq!(
            secure.keypair,
            [KeyPair {
                key: "/conf/client.key".into(),
                cert: "/abs/client.pem".into()
            }]
        );
        assert_eq!(secure.http, None);
    }

    #[test]
    fn docker_hub_tables_apply_whatever_alias_names_them() {
        for alias in [
            "index.docker.io",
            "registry-1.docker.io",
            "https://docker.io",
        ] {
            let text = format!("[registry.\"{alias}\"]\n  mirrors = [\"mirror.example\"]\n");
            let c = RegistryConfig::from_buildkitd_toml(&text, Path::new("/")).unwrap();
            assert_eq!(
                c.host("docker.io").map(|h| h.mirrors.clone()),
                Some(vec!["mirror.example".to_string()]),
                "{alias}"
            );
        }
    }

    #[test]
    fn mistakes_in_registry_tables_are_reported() {
        let e = RegistryConfig::from_buildkitd_toml(
            "[registry.\"r.example\"]\nhttp = \"yes\"\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("http"), "{e}");
    }

    #[test]
    fn missing_file_names_its_path() {
        let e = RegistryConfig::load(Path::new("/nonexistent/buildkitd.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/buildkitd.toml"));
    }
}
