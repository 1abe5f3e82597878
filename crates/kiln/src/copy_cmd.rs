//! `kiln copy`: moving images between registries, OCI layouts and archives (skopeo copy).

use clap::Args;
use kiln_oci::Platform;
use kiln_transport::{ImageLocation, Selection, copy, open_destination, open_source};
use miette::{Report, miette};

use crate::registry_args::RegistryArgs;

#[derive(Args)]
pub struct CopyArgs {
    /// Copy an index and every image in it, byte for byte (the index keeps its digest).
    #[arg(long, conflicts_with = "platform")]
    all: bool,
    /// Copy only the image for this platform (os/arch[/variant]) out of an index.
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<Platform>,
    /// Where the image is: docker://REF, oci:DIR[:NAME], oci-archive:FILE[:NAME] or
    /// docker-archive:FILE[:REF].
    #[arg(value_name = "SRC")]
    source: String,
    /// Where to put it, in the same syntax.
    #[arg(value_name = "DST")]
    destination: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: CopyArgs) -> Result<(), Report> {
    let source: ImageLocation = args.source.parse().map_err(|e| miette!("{e}"))?;
    let destination: ImageLocation = args.destination.parse().map_err(|e| miette!("{e}"))?;
    let selection = match (args.all, args.platform) {
        (true, _) => Selection::All,
        (false, Some(p)) => Selection::Platform(p),
        (false, None) => Selection::Default,
    };
    let client = args.registry.client()?;
    let from = open_source(&source, &client).map_err(|e| miette!("{e}"))?;
    let mut to = open_destination(&destination, &client).map_err(|e| miette!("{e}"))?;
    let report = copy(from.as_ref(), to.as_mut(), &selection)
        .map_err(|e| miette!("copying {source} to {destination}: {e}"))?;
    eprintln!(
        "copied {} ({} image{}) to {destination}",
        report.digest,
        report.images,
        if report.images == 1 { "" } else { "s" }
    );
    println!("{}", report.digest);
    Ok(())
}
