//! Registry flags shared by every command that talks to registries: kaniko's names, on top of
//! a BuildKit `buildkitd.toml` registry config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use kiln_registry::{
    ClientOptions, CredentialStore, KeyPair, RegistryClient, RegistryConfig, registry_name,
};
use miette::{Report, miette};

/// How to reach registries: the flags buildx and kaniko users know.
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Registries to reach over plain HTTP (repeatable). Loopback registries that do not
    /// speak TLS always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Registry settings in BuildKit's buildkitd.toml format ([registry."host"] tables).
    /// Default: the first that exists of ~/.config/buildkit/buildkitd.toml (or under
    /// $XDG_CONFIG_HOME) and /etc/buildkit/buildkitd.toml.
    #[arg(long = "registry-config", value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// Do not verify any registry's TLS certificate; `kiln executor`: when pushing, as kaniko
    /// (`=true` and `=false` work too, as kaniko jobs write them).
    #[arg(long = "skip-tls-verify", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub skip_tls_verify: bool,
    /// Do not verify this registry's TLS certificate (repeatable).
    #[arg(long = "skip-tls-verify-registry", value_name = "HOST[:PORT]")]
    pub skip_tls_verify_registries: Vec<String>,
    /// Trust this CA (PEM) for this registry (repeatable)
    ///
    /// HOST is the registry as written in image names, with its port. The file may hold
    /// several certificates. A self-signed certificate made with `openssl req -x509` (as
    /// Docker's guide to running a registry does) is accepted when the registry presents
    /// exactly that certificate. For example:
    ///   --registry-certificate registry.internal:5000=ca.pem
    #[arg(
        verbatim_doc_comment,
        long = "registry-certificate",
        value_name = "HOST=PATH"
    )]
    pub registry_certificates: Vec<String>,
    /// Present this client certificate and key (PEM) to this registry (repeatable).
    #[arg(long = "registry-client-cert", value_name = "HOST=CERT,KEY")]
    pub registry_client_certs: Vec<String>,
    /// Pull Docker Hub images from this mirror first (repeatable, tried in order).
    #[arg(long = "registry-mirror", value_name = "HOST[:PORT]")]
    pub registry_mirrors: Vec<String>,
    /// Pull images of registry A from registry B first (repeatable; `A=B;C=D` also works)
    ///
    /// B is a pull-through mirror of A, with the same repository paths; when B fails, A is
    /// used unless --skip-default-registry-fallback is given. Pushes always go to the
    /// registry named in the tag. For example:
    ///   --registry-map docker.io=mirror.internal:5000
    ///   --registry-map 'ghcr.io=mirror.local;quay.io=mirror2.local'
    #[arg(verbatim_doc_comment, long = "registry-map", value_name = "A=B")]
    pub registry_maps: Vec<String>,
    /// When every mirror fails, fail instead of pulling from the registry itself.
    #[arg(long = "skip-default-registry-fallback", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub skip_default_registry_fallback: bool,
}

/// The buildkitd.toml BuildKit users have: their own (rootless BuildKit's), else the system's.
fn default_config_file() -> Option<PathBuf> {
    let user_config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")));
    user_config
        .map(|dir| dir.join("buildkit/buildkitd.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/buildkit/buildkitd.toml")])
        .find(|p| p.is_file())
}

/// Splits `HOST=VALUE`, naming the flag when the `=` is missing.
fn host_and_value<'a>(flag: &str, given: &'a str) -> Result<(String, &'a str), Report> {
    match given.split_once('=') {
        Some((host, value)) if !host.is_empty() && !value.is_empty() => {
            Ok((registry_name(host), value))
        }
        _ => Err(miette!(
            "--{flag} {given}: expected HOST=VALUE, e.g. --{flag} registry.example:5000=..."
        )),
    }
}

impl RegistryArgs {
    /// The registry config file plus these flags (flags add to the file's settings; their
    /// mirrors come first).
    pub fn registry_config(&self) -> Result<RegistryConfig, Report> {
        let file = self.registry_config.clone().or_else(default_config_file);
        let mut config = match &file {
            Some(path) => RegistryConfig::load(path).map_err(|e| miette!("{e}"))?,
            None => RegistryConfig::default(),
        };
        config.skip_tls_verify |= self.skip_tls_verify;
        config.no_origin_fallback |= self.skip_default_registry_fallback;
        for host in &self.skip_tls_verify_registries {
            config.host_mut(host).insecure = true;
        }
        for given in &self.registry_certificates {
            let (host, path) = host_and_value("registry-certificate", given)?;
            config.host_mut(&host).ca.push(PathBuf::from(path));
        }
        for given in &self.registry_client_certs {
            let (host, pair) = host_and_value("registry-client-cert", given)?;
            let (cert, key) = pair
                .split_once(',')
                .ok_or_else(|| miette!("--registry-client-cert {given}: expected HOST=CERT,KEY"))?;
            config.host_mut(&host).keypair.push(KeyPair {
                key: key.into(),
                cert: cert.into(),
            });
        }
        let mut flag_mirrors: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for mirror in &self.registry_mirrors {
            flag_mirrors
                .entry("docker.io".into())
                .or_default()
                .push(registry_name(mirror));
        }
        for given in self.registry_maps.iter().flat_map(|m| m.split(';')) {
            let (host, to) = host_and_value("registry-map", given)?;
            flag_mirrors
                .entry(host)
                .or_default()
                .push(registry_name(to));
        }
        for (host, mirrors) in flag_mirrors {
            config.host_mut(&host).mirrors.splice(0..0, mirrors);
        }
        Ok(config)
    }

    /// A client's options from these flags, the registry config and the user's credentials.
    pub fn client_options(&self) -> Result<ClientOptions, Report> {
        Ok(ClientOptions {
            insecure_registries: self.insecure_registries.clone(),
            config: self.registry_config()?,
            credentials: CredentialStore::from_env(),
            ..ClientOptions::default()
        })
    }

    /// A client configured from these flags, the registry config and the user's credentials.
    pub fn client(&self) -> Result<RegistryClient, Report> {
        RegistryClient::new(&self.client_options()?).map_err(|e| miette!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaniko_flags_map_onto_the_registry_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("buildkitd.toml");
        std::fs::write(
            &file,
            "[registry.\"docker.io\"]\nmirrors = [\"file-mirror.example\"]\n",
        )
        .unwrap();
        let args = RegistryArgs {
            registry_config: Some(file),
            skip_tls_verify_registries: vec!["self-signed.example".into()],
            registry_certificates: vec!["https://private.example:5000=/certs/ca.pem".into()],
            registry_mirrors: vec!["flag-mirror.example".into()],
            registry_maps: vec!["quay.io=quay-mirror.example;index.docker.io=hub2.example".into()],
            skip_default_registry_fallback: true,
            ..RegistryArgs::default()
        };
        let config = args.registry_config().unwrap();
        assert_eq!(
            config.host("docker.io").unwrap().mirrors,
            ["flag-mirror.example", "hub2.example", "file-mirror.example"]
        );
        assert_eq!(
            config.host("quay.io").unwrap().mirrors,
            ["quay-mirror.example"]
        );
        assert!(config.skips_tls_verify("self-signed.example"));
        assert!(!config.skips_tls_verify("private.example:5000"));
        assert_eq!(
            config.host("private.example:5000").unwrap().ca,
            [PathBuf::from("/certs/ca.pem")]
        );
        assert!(config.no_origin_fallback);
    }

    #[test]
    fn malformed_host_value_flags_are_explained() {
        let args = RegistryArgs {
            registry_certificates: vec!["/certs/ca.pem".into()],
            ..RegistryArgs::default()
        };
        let e = args.registry_config().unwrap_err().to_string();
        assert!(e.contains("--registry-certificate /certs/ca.pem"), "{e}");
        assert!(e.contains("HOST=VALUE"), "{e}");
    }
}
