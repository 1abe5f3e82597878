//! Registry flags shared by every command that talks to registries.

use clap::Args;
use kiln_registry::{ClientOptions, RegistryClient};
use miette::{Report, miette};

/// How to reach registries: the flags buildx and kaniko users know.
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Registries to reach over plain HTTP (repeatable). Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
}

impl RegistryArgs {
    /// A client configured from these flags.
    pub fn client(&self) -> Result<RegistryClient, Report> {
        RegistryClient::new(&ClientOptions {
            insecure_registries: self.insecure_registries.clone(),
        })
        .map_err(|e| miette!("{e}"))
    }
}
