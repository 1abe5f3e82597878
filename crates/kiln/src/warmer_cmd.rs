//! `kiln warmer`: kaniko's warmer, which fills a `--cache-dir` with base images for later
//! builds (`kiln build --cache-dir`, `kiln executor --cache-dir`, or kaniko's executor).

use std::path::PathBuf;

use clap::Args;
use kiln_oci::Platform;
use kiln_registry::Reference;
use kiln_transport::{BaseImageCache, Warmed};
use miette::{Report, miette};

use crate::registry_args::RegistryArgs;

#[derive(Args)]
pub struct WarmerArgs {
    /// The directory to fill (kaniko's default).
    #[arg(long, alias = "cacheDir", default_value = "/cache", value_name = "DIR")]
    cache_dir: PathBuf,
    /// An image to store (repeatable).
    #[arg(short = 'i', long = "image", value_name = "REF", required = true)]
    images: Vec<String>,
    /// Store an image again even when a fresh copy is there.
    #[arg(long)]
    force: bool,
    /// A copy older than this is stored again (kaniko's default: two weeks).
    #[arg(
        long,
        alias = "cacheTTL",
        default_value = "336h",
        value_name = "DURATION"
    )]
    cache_ttl: String,
    /// The platform whose image to store out of an index (default: the host's).
    #[arg(long, alias = "customPlatform", value_name = "OS/ARCH[/VARIANT]")]
    custom_platform: Option<Platform>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Stores every image; as kaniko's warmer, one that fails is a warning, and the command fails
/// only when none could be stored.
pub fn run(args: WarmerArgs) -> Result<(), Report> {
    let ttl =
        kiln_build::parse_duration(&args.cache_ttl).map_err(|e| miette!("--cache-ttl: {e}"))?;
    let cache = BaseImageCache::new(args.cache_dir.clone(), ttl);
    let platform = args.custom_platform.clone().unwrap_or_else(Platform::host);
    let references = args
        .images
        .iter()
        .map(|i| {
            i.parse::<Reference>()
                .map_err(|e| miette!("--image {i}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = args.registry.client()?;
    let mut failed = 0;
    for reference in &references {
        match cache.warm(&client, reference, &platform, args.force) {
            Ok(Warmed::Written(digest)) => {
                eprintln!(
                    "stored {reference} ({platform}) as {}",
                    args.cache_dir.join(digest.to_string()).display()
                );
            }
            Ok(Warmed::AlreadyCached(digest)) => {
                eprintln!("{reference} ({platform}) is already stored as {digest}");
            }
            Err(e) => {
                eprintln!("warning: {reference}: {e}");
                failed += 1;
            }
        }
    }
    match failed == references.len() {
        true => Err(miette!(
            "none of the images could be stored in {}",
            args.cache_dir.display()
        )),
        false => Ok(()),
    }
}
