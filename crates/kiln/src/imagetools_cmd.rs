//! `kiln imagetools`: buildx's `imagetools inspect` and `imagetools create`, working directly
//! against registries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use clap::{Args, Subcommand};
use kiln_build::{
    PREDICATE_TYPE_ANNOTATION, REFERENCE_DIGEST_ANNOTATION, SLSA_PROVENANCE, SPDX_DOCUMENT,
};
use kiln_oci::{Descriptor, Digest, ImageIndex, ImageManifest, media};
use kiln_registry::{FetchedManifest, Reference, RegistryClient, stitch};
use miette::{IntoDiagnostic, Report, WrapErr, miette};
use serde::Serialize;

use kiln_transport::manifest_list::{index_bytes, push_entries};

use crate::manifest_cmd::{distinct_entries, parse_ref, reindent};
use crate::registry_args::RegistryArgs;

#[derive(Subcommand)]
pub enum ImagetoolsCommand {
    /// Show an image or index in a registry (buildx `imagetools inspect`).
    Inspect(InspectArgs),
    /// Push an index over images already in registries (buildx `imagetools create`).
    Create(CreateArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// The image or index to show, as a registry reference.
    #[arg(value_name = "REF")]
    reference: String,
    /// The exact manifest or index bytes the registry serves.
    #[arg(long, conflicts_with = "format")]
    raw: bool,
    /// `json` (or `{{json .}}`): name, manifest (with digest and size) and image configs;
    /// `{{json .Provenance}}` or `{{json .SBOM}}`: the attestations' predicates, as buildx
    /// prints them.
    #[arg(long, value_name = "FORMAT", value_parser = ["json", "{{json .}}", PROVENANCE_FORMAT, SBOM_FORMAT])]
    format: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Where to push the index (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG", required = true)]
    tags: Vec<String>,
    /// Print the index instead of pushing it.
    #[arg(long)]
    dry_run: bool,
    /// Keep the attestation manifests of index sources (platform unknown/unknown).
    #[arg(long)]
    keep_attestations: bool,
    /// `repo@sha256:...` or `repo:tag`; an index contributes its platform images.
    #[arg(value_name = "SOURCE", required = true)]
    sources: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(command: ImagetoolsCommand) -> Result<(), Report> {
    match command {
        ImagetoolsCommand::Inspect(args) => inspect(args),
        ImagetoolsCommand::Create(args) => create(args),
    }
}

fn create(args: CreateArgs) -> Result<(), Report> {
    let targets = args
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<Vec<_>, _>>()?;
    let client = args.registry.client()?;
    let entries = distinct_entries(&client, &args.sources, args.keep_attestations)?;
    if args.dry_run {
        let (_, bytes) = index_bytes(&entries);
        println!("{}", reindent(&bytes, "  "));
        return Ok(());
    }
    let digest = push_entries(&client, &entries, &targets).map_err(|e| miette!("{e}"))?;
    for t in &targets {
        eprintln!("pushed {t}@{digest} ({} manifests)", entries.len());
    }
    println!("{digest}");
    Ok(())
}

/// The manifest part of `--format json`: the document with its digest and size, in the
/// field order of the OCI spec.
#[derive(Serialize)]
struct ManifestJson {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifests: Option<Vec<Descriptor>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<Descriptor>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl ManifestJson {
    /// `fetched` with its digest and size, and no body fields beyond these.
    fn of(
        fetched: &FetchedManifest,
        schema_version: u32,
        annotations: BTreeMap<String, String>,
    ) -> ManifestJson {
        ManifestJson {
            schema_version,
            media_type: fetched.media_type.clone(),
            digest: fetched.digest.clone(),
            size: fetched.bytes.len() as u64,
            manifests: None,
            config: None,
            layers: None,
            annotations,
        }
    }
}

/// `--format json`, shaped like buildx's `{{json .}}`: `image` is the config of a single
/// image, or a map from platform to config for an index.
#[derive(Serialize)]
struct InspectJson {
    name: String,
    manifest: ManifestJson,
    image: serde_json::Value,
}

/// The config of the image manifest `image` (pinned by digest).
fn image_config(client: &RegistryClient, image: &Reference) -> Result<serde_json::Value, Report> {
    let fetched = client.fetch_manifest(image).map_err(|e| miette!("{e}"))?;
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("{image} is not an image manifest"))?;
    config_json(client, image, &manifest.config)
}

/// The config blob `config` of `image`, as JSON.
fn config_json(
    client: &RegistryClient,
    image: &Reference,
    config: &Descriptor,
) -> Result<serde_json::Value, Report> {
    let bytes = client
        .fetch_small_blob(image, config)
        .map_err(|e| miette!("{e}"))?;
    serde_json::from_slice(&bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("the config of {image} is not JSON"))
}

fn inspect(args: InspectArgs) -> Result<(), Report> {
    let target = parse_ref(&args.reference)?;
    let client = args.registry.client()?;
    let fetched = client.fetch_manifest(&target).map_err(|e| miette!("{e}"))?;
    if args.raw {
        return std::io::stdout()
            .write_all(&fetched.bytes)
            .into_diagnostic();
    }
    let index: Option<ImageIndex> = if media::is_index(&fetched.media_type) {
        Some(
            serde_json::from_slice(&fetched.bytes)
                .into_diagnostic()
                .wrap_err_with(|| format!("{target} is not a readable index"))?,
        )
    } else {
        None
    };
    let format = match args.format.as_deref() {
        None => {
            print!("{}", human(&target, &fetched, index.as_ref()));
            return Ok(());
        }
        Some(PROVENANCE_FORMAT) => Some((SLSA_PROVENANCE, "SLSA")),
        Some(SBOM_FORMAT) => Some((SPDX_DOCUMENT, "SPDX")),
        Some(_) => None,
    };
    if let Some((predicate_type, key)) = format {
        let out = predicates(&client, &target, index.as_ref(), predicate_type, key)?;
        println!("{}", serde_json::to_string_pretty(&out).into_diagnostic()?);
        return Ok(());
    }
    let (manifest, image) = match index {
        Some(index) => {
            let mut configs = serde_json::Map::new();
            for d in &index.manifests {
                let Some(platform) = &d.platform else {
                    continue;
                };
                if stitch::is_attestation(d) || !media::is_manifest(&d.media_type) {
                    continue;
                }
                let config = image_config(&client, &target.with_digest(d.digest.clone()))?;
                configs.insert(platform.to_string(), config);
            }
            let manifest = ManifestJson {
                manifests: Some(index.manifests),
                ..ManifestJson::of(&fetched, index.schema_version, index.annotations)
            };
            (manifest, serde_json::Value::Object(configs))
        }
        None => {
            let m: ImageManifest = serde_json::from_slice(&fetched.bytes)
                .into_diagnostic()
                .wrap_err_with(|| format!("{target} is not a readable manifest"))?;
            // The manifest is in hand already: only its config needs fetching.
            let pinned = target.with_digest(fetched.digest.clone());
            let config = config_json(&client, &pinned, &m.config)?;
            let manifest = ManifestJson {
                config: Some(m.config),
                layers: Some(m.layers),
                ..ManifestJson::of(&fetched, m.schema_version, m.annotations)
            };
            (manifest, config)
        }
    };
    let out = InspectJson {
        name: target.to_string(),
        manifest,
        image,
    };
    println!("{}", serde_json::to_string_pretty(&out).into_diagnostic()?);
    Ok(())
}

const PROVENANCE_FORMAT: &str = "{{json .Provenance}}";
const SBOM_FORMAT: &str = "{{json .SBOM}}";

/// buildx's `.Provenance` and `.SBOM`: for one image, `{KEY: predicate}` (`SLSA` or `SPDX`);
/// for several, a map from each platform to that. The predicates are read from the index's
/// attestation manifests, their statements of `predicate_type`; an image without one gets
/// `{}`.
fn predicates(
    client: &RegistryClient,
    target: &Reference,
    index: Option<&ImageIndex>,
    predicate_type: &str,
    key: &str,
) -> Result<serde_json::Value, Report> {
    let Some(index) = index else {
        return Ok(serde_json::json!({}));
    };
    let mut by_platform = serde_json::Map::new();
    let images: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !stitch::is_attestation(d) && d.platform.is_some())
        .collect();
    for image in &images {
        let platform = image.platform.as_ref().expect("filtered").to_string();
        let attestation = index.manifests.iter().find(|d| {
            stitch::is_attestation(d)
                && d.annotations.get(REFERENCE_DIGEST_ANNOTATION) == Some(&image.digest.to_string())
        });
        let mut stub = serde_json::Map::new();
        if let Some(attestation) = attestation {
            let pinned = target.with_digest(attestation.digest.clone());
            let fetched = client.fetch_manifest(&pinned).map_err(|e| miette!("{e}"))?;
            let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
                .into_diagnostic()
                .wrap_err_with(|| format!("{pinned} is not an attestation manifest"))?;
            let layer = manifest.layers.iter().find(|l| {
                l.annotations
                    .get(PREDICATE_TYPE_ANNOTATION)
                    .map(String::as_str)
                    == Some(predicate_type)
            });
            if let Some(layer) = layer {
                let bytes = client
                    .fetch_small_blob(&pinned, layer)
                    .map_err(|e| miette!("{e}"))?;
                let statement: serde_json::Value = serde_json::from_slice(&bytes)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("the statement {} is not JSON", layer.digest))?;
                stub.insert(key.to_string(), statement["predicate"].clone());
            }
        }
        by_platform.insert(platform, serde_json::Value::Object(stub));
    }
    Ok(match by_platform.len() {
        1 => by_platform.into_iter().next().expect("one").1,
        _ => serde_json::Value::Object(by_platform),
    })
}

/// A `key: value` line of the human output.
type Row<'a> = (&'a str, String);

/// `rows` as `prefix key value` lines, values starting in column `width` (after the prefix),
/// as Go's tabwriter (padding 1) lays out buildx's output.
fn write_aligned(out: &mut String, prefix: &str, rows: &[Row], width: usize) {
    for (key, value) in rows {
        // A row without a value ("Annotations:") gets no padding after its key.
        let line = format!("{prefix}{key:<width$}{value}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// buildx's human output: the reference, media type and digest, then for an index each
/// manifest with its platform.
fn human(target: &Reference, fetched: &FetchedManifest, index: Option<&ImageIndex>) -> String {
    let mut out = String::new();
    let top = [
        ("Name:", target.to_string()),
        ("MediaType:", fetched.media_type.clone()),
        ("Digest:", fetched.digest.to_string()),
    ];
    write_aligned(&mut out, "", &top, "MediaType:".len() + 1);
    let Some(index) = index else {
        return out;
    };
    out.push_str("\nManifests:\n");
    let blocks: Vec<(Vec<Row>, &BTreeMap<String, String>)> = index
        .manifests
        .iter()
        .map(|d| {
            let mut rows = vec![
                ("Name:", target.with_digest(d.digest.clone()).to_string()),
                ("MediaType:", d.media_type.clone()),
            ];
            if let Some(p) = &d.platform {
                rows.push(("Platform:", p.to_string()));
                if let Some(v) = &p.os_version {
                    rows.push(("OSVersion:", v.clone()));
                }
                if !p.os_features.is_empty() {
                    rows.push(("OSFeatures:", p.os_features.join(", ")));
                }
            }
            if !d.annotations.is_empty() {
                rows.push(("Annotations:", String::new()));
            }
            (rows, &d.annotations)
        })
        .collect();
    let width = blocks
        .iter()
        .flat_map(|(rows, _)| rows.iter().map(|(k, _)| k.len()))
        .max()
        .unwrap_or(0)
        + 1;
    for (i, (rows, annotations)) in blocks.iter().enumerate() {
        if i != 0 {
            out.push('\n');
        }
        write_aligned(&mut out, "  ", rows, width);
        let keys: Vec<String> = annotations.keys().map(|k| format!("{k}:")).collect();
        let annotation_width = keys.iter().map(String::len).max().unwrap_or(0) + 1;
        let annotation_rows: Vec<Row> = keys
            .iter()
            .zip(annotations.values())
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        write_aligned(&mut out, "    ", &annotation_rows, annotation_width);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_output_aligns_values_like_buildx() {
        let target = parse_ref("127.0.0.1:5000/app:1").unwrap();
        let d = |platform: &str| {
            let mut d = Descriptor::new(media::OCI_MANIFEST, Digest::of(platform.as_bytes()), 1);
            d.platform = Some(platform.parse().unwrap());
            d
        };
        let index = ImageIndex::new(media::OCI_INDEX, vec![d("linux/amd64"), d("linux/arm/v7")]);
        let bytes = kiln_oci::to_json_bytes(&index);
        let fetched = FetchedManifest {
            media_type: media::OCI_INDEX.into(),
            digest: Digest::of(&bytes),
            bytes,
        };
        let out = human(&target, &fetched, Some(&index));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Name:      127.0.0.1:5000/app:1");
        assert_eq!(lines[1], format!("MediaType: {}", media::OCI_INDEX));
        assert_eq!(lines[3], "");
        assert_eq!(lines[4], "Manifests:");
        assert_eq!(lines[7], "  Platform:  linux/amd64");
        assert_eq!(lines[8], "");
        assert_eq!(lines[11], "  Platform:  linux/arm/v7");
    }
}
