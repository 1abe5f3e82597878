//! `kiln manifest`: stitching images already in registries into one index.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_registry::{Reference, stitch};
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::registry_args::RegistryArgs;

#[derive(Subcommand)]
pub enum ManifestCommand {
    /// Create an index from per-platform images (buildx `imagetools create` style).
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The tag the index is pushed to.
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    tag: String,
    /// Images to include: `repo@sha256:...` or `repo:tag`; an index contributes its entries.
    #[arg(value_name = "SOURCE")]
    sources: Vec<String>,
    /// `kiln build --metadata-file` outputs to include.
    #[arg(long = "from-metadata", value_name = "FILE", num_args = 1..)]
    from_metadata: Vec<PathBuf>,
    /// Push the index (and any missing blobs). Without it, the index is printed only.
    #[arg(long)]
    push: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The `repo@digest` a `kiln build --metadata-file` output names.
fn source_from_metadata(path: &PathBuf) -> Result<String, Report> {
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .into_diagnostic()
        .wrap_err_with(|| format!("{} is not JSON", path.display()))?;
    let digest = v["containerimage.digest"]
        .as_str()
        .ok_or_else(|| miette!("{}: no containerimage.digest", path.display()))?;
    let name = v["image.name"]
        .as_str()
        .and_then(|n| n.split(',').next())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| miette!("{}: no image.name", path.display()))?;
    let r: Reference = name
        .parse()
        .map_err(|e| miette!("{}: {e}", path.display()))?;
    Ok(format!("{}/{}@{digest}", r.registry, r.repository))
}

pub fn run(command: ManifestCommand) -> Result<(), Report> {
    let ManifestCommand::Create(args) = command;
    let target: Reference = args.tag.parse().map_err(|e| miette!("{e}"))?;
    let mut sources = args.sources.clone();
    for m in &args.from_metadata {
        sources.push(source_from_metadata(m)?);
    }
    if sources.is_empty() {
        return Err(miette!(
            "name at least one SOURCE image or --from-metadata file"
        ));
    }
    let client = args.registry.client()?;

    let mut entries: Vec<(Reference, kiln_oci::Descriptor)> = Vec::new();
    for s in &sources {
        let r: Reference = s.parse().map_err(|e| miette!("{e}"))?;
        let found = stitch::platform_manifests(&client, &r, false)
            .map_err(|e| miette!("source {s}: {e}"))?;
        for (at, desc) in found {
            if let Some(dup) = entries
                .iter()
                .find(|(_, d)| d.platform.is_some() && d.platform == desc.platform)
            {
                return Err(miette!(
                    "two sources provide {}: {} and {s}",
                    desc.platform
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    dup.0
                ));
            }
            entries.push((at, desc));
        }
    }
    let descriptors: Vec<_> = entries.iter().map(|(_, d)| d.clone()).collect();
    let (media_type, bytes) = stitch::index_of(&descriptors);
    if !args.push {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let scratch = tempfile::tempdir().into_diagnostic()?;
    for (at, _) in &entries {
        stitch::copy_image(&client, at, &target, scratch.path())
            .map_err(|e| miette!("copying {at}: {e}"))?;
    }
    let digest = client
        .push_manifest(&target, &media_type, &bytes)
        .map_err(|e| miette!("{e}"))?;
    eprintln!("pushed {target}@{digest} ({} platforms)", entries.len());
    println!("{digest}");
    Ok(())
}
