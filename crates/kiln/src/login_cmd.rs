//! `kiln login` and `kiln logout`: the credentials docker and podman users keep, checked
//! against the registry before they are saved.

use std::io::Read;

use clap::Args;
use kiln_registry::{CredentialStore, registry_name};
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::registry_args::RegistryArgs;

#[derive(Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(short = 'u', long = "username", value_name = "USER")]
    username: Option<String>,
    /// Password or access token (visible to other users in the process list: prefer
    /// --password-stdin).
    #[arg(short = 'p', long = "password", value_name = "PASS")]
    password: Option<String>,
    /// Read the password or access token from standard input.
    #[arg(long = "password-stdin", conflicts_with = "password")]
    password_stdin: bool,
    /// The registry (`host[:port]`); Docker Hub when omitted.
    #[arg(value_name = "SERVER", default_value = "docker.io")]
    server: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct LogoutArgs {
    /// The registry (`host[:port]`); Docker Hub when omitted.
    #[arg(value_name = "SERVER", default_value = "docker.io")]
    server: String,
}

pub fn login(args: LoginArgs) -> Result<(), Report> {
    let registry = registry_name(&args.server);
    let username = args
        .username
        .ok_or_else(|| miette!("kiln login needs a user name: pass -u USER"))?;
    let password = match (args.password, args.password_stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .into_diagnostic()
                .wrap_err("cannot read the password from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => {
            return Err(miette!(
                "kiln login needs a password: pass --password-stdin (or -p PASS)"
            ));
        }
    };
    if password.is_empty() {
        return Err(miette!("kiln login: the password is empty"));
    }
    args.registry
        .client()?
        .verify_login(&registry, &username, &password)
        .map_err(|e| miette!("{e}"))?;
    let source = CredentialStore::from_env()
        .login(&registry, &username, &password)
        .map_err(|e| miette!("{e}"))?;
    eprintln!("Credentials for {registry} saved in {source}");
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(args: LogoutArgs) -> Result<(), Report> {
    let registry = registry_name(&args.server);
    let removed = CredentialStore::from_env()
        .logout(&registry)
        .map_err(|e| miette!("{e}"))?;
    if removed {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}
