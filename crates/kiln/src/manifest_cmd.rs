//! `kiln manifest`: docker manifest's verbs over a local store of unpushed lists
//! (`<root>/manifests/`), manifest-tool's `push-spec`, and the one-shot `create -t` that
//! stitches per-platform builds straight into a registry.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_oci::{Descriptor, ImageManifest, media};
use kiln_registry::{FetchedManifest, Reference, RegistryClient};
use kiln_transport::manifest_list::{
    ListEntry, ListStore, PlatformEdit, check_distinct_platforms, index_bytes, push_entries,
    resolve_sources,
};
use kiln_transport::manifest_spec::PushSpec;
use miette::{IntoDiagnostic, Report, WrapErr, miette};
use serde::Serialize;

use crate::registry_args::RegistryArgs;

#[derive(Subcommand)]
pub enum ManifestCommand {
    /// Create a local manifest list, or with `-t TAG` an index at once.
    ///
    /// `create [--amend] LIST SOURCE...` keeps the list locally until `push` (docker
    /// manifest). With `-t TAG`, every name is a SOURCE and the index is printed, or pushed
    /// with `--push`.
    Create(CreateArgs),
    /// Set the platform fields of one entry of a local list.
    Annotate(AnnotateArgs),
    /// Show a local list, or an image or index in a registry.
    Inspect(InspectArgs),
    /// Push a local list: missing images are copied into its repository, the index last.
    Push(PushArgs),
    /// Delete local lists.
    Rm(RmArgs),
    /// Push the index a manifest-tool `from-spec` YAML file describes.
    PushSpec(PushSpecArgs),
}

/// Registry access for the docker manifest verbs: `--insecure` as docker has it, plus kiln's
/// registry flags.
#[derive(Args)]
struct Access {
    /// Reach the registries named on this command over plain HTTP.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Access {
    /// A client for these flags; with `--insecure`, the registries of `names` are insecure.
    fn client<'a>(
        &self,
        names: impl IntoIterator<Item = &'a Reference>,
    ) -> Result<RegistryClient, Report> {
        let mut registry = self.registry.clone();
        if self.insecure {
            registry
                .insecure_registries
                .extend(names.into_iter().map(|r| r.registry.clone()));
        }
        registry.client()
    }
}

/// Where unpushed lists are kept.
#[derive(Args)]
struct StoreArgs {
    /// kiln's cache and work directory; lists are kept in its `manifests/` directory.
    #[arg(long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
}

impl StoreArgs {
    fn open(&self) -> ListStore {
        let root = self
            .root
            .clone()
            .unwrap_or_else(crate::build_cmd::default_root);
        ListStore::in_root(&root)
    }
}

#[derive(Args)]
pub struct CreateArgs {
    /// `LIST SOURCE...`; with `-t`, `SOURCE...` only. A source is `repo@sha256:...` or
    /// `repo:tag`; an index contributes its platform images.
    #[arg(value_name = "NAME", required_unless_present = "from_metadata")]
    names: Vec<String>,
    /// Add the sources to an existing local list (an entry of the same platform is replaced).
    #[arg(short = 'a', long, conflicts_with = "tag")]
    amend: bool,
    /// Make the index for this tag at once instead of a local list.
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    tag: Option<String>,
    /// `kiln build --metadata-file` outputs to include (with `-t`).
    #[arg(long = "from-metadata", value_name = "FILE", num_args = 1.., requires = "tag")]
    from_metadata: Vec<PathBuf>,
    /// With `-t`: push the index (and any missing blobs). Without it, the index is printed.
    #[arg(long, requires = "tag")]
    push: bool,
    /// Keep the attestation manifests of index sources (platform unknown/unknown).
    #[arg(long)]
    keep_attestations: bool,
    #[command(flatten)]
    access: Access,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct AnnotateArgs {
    /// The local list.
    #[arg(value_name = "LIST")]
    list: String,
    /// The entry: the source as given to `create`, or `repo@sha256:...`.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// Set the entry's operating system (`linux`, `windows`).
    #[arg(long)]
    os: Option<String>,
    /// Set the entry's architecture (`amd64`, `arm64`, `arm`, ...).
    #[arg(long)]
    arch: Option<String>,
    /// Set the entry's CPU variant (`v7` for arm, `v8` for arm64).
    #[arg(long)]
    variant: Option<String>,
    /// Set the entry's OS version (Windows images: `10.0.17763.1234`).
    #[arg(long = "os-version")]
    os_version: Option<String>,
    /// Comma-separated (repeatable); replaces the entry's features.
    #[arg(long = "os-features", value_delimiter = ',')]
    os_features: Option<Vec<String>>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// `[LIST] REF`: a local list or registry image; with two names, the entry REF of LIST.
    #[arg(value_name = "NAME", num_args = 1..=2, required = true)]
    names: Vec<String>,
    /// Each manifest with its reference, descriptor and content.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// The exact bytes (of a local list: the bytes `push` would send).
    #[arg(long, conflicts_with = "verbose")]
    raw: bool,
    #[command(flatten)]
    access: Access,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct PushArgs {
    /// The local list to push, to the reference it is named by.
    #[arg(value_name = "LIST")]
    list: String,
    /// Delete the local list once it is pushed.
    #[arg(short = 'p', long)]
    purge: bool,
    #[command(flatten)]
    access: Access,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct RmArgs {
    /// The local lists to delete.
    #[arg(value_name = "LIST", required = true)]
    lists: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct PushSpecArgs {
    /// manifest-tool's YAML: `image`, optional `tags`, `manifests[].image` and `.platform`.
    #[arg(value_name = "SPEC.yaml")]
    spec: PathBuf,
    /// Keep the attestation manifests of index sources (platform unknown/unknown).
    #[arg(long)]
    keep_attestations: bool,
    #[command(flatten)]
    access: Access,
}

/// Reports a library error as it reads.
fn report(e: impl std::fmt::Display) -> Report {
    miette!("{e}")
}

pub(crate) fn parse_ref(s: &str) -> Result<Reference, Report> {
    s.parse().map_err(report)
}

/// The entries `sources` contribute, checked for two sources of one platform.
pub(crate) fn distinct_entries(
    client: &RegistryClient,
    sources: &[String],
    keep_attestations: bool,
) -> Result<Vec<ListEntry>, Report> {
    let entries = resolve_sources(client, sources, keep_attestations).map_err(report)?;
    check_distinct_platforms(&entries).map_err(report)?;
    Ok(entries)
}

/// JSON re-indented with `indent`, keys and values exactly as in `json` (no reordering).
pub(crate) fn reindent(json: &[u8], indent: &str) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        for _ in 0..depth {
            out.extend_from_slice(indent.as_bytes());
        }
    };
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        match b {
            b'"' => {
                let start = i;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                out.extend_from_slice(&json[start..(i + 1).min(json.len())]);
            }
            b'{' | b'[' => {
                let close = if b == b'{' { b'}' } else { b']' };
                let next = json[i + 1..].iter().position(|c| !c.is_ascii_whitespace());
                if next.is_some_and(|n| json[i + 1 + n] == close) {
                    out.extend_from_slice(&[b, close]);
                    i += 1 + next.unwrap_or(0);
                } else {
                    out.push(b);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// docker's indentation for manifests it prints.
fn docker_pretty(json: &[u8]) -> String {
    reindent(json, "   ")
}

pub fn run(command: ManifestCommand) -> Result<(), Report> {
    match command {
        ManifestCommand::Create(args) if args.tag.is_some() => create_and_stitch(args),
        ManifestCommand::Create(args) => create_local(args),
        ManifestCommand::Annotate(args) => annotate(args),
        ManifestCommand::Inspect(args) => inspect(args),
        ManifestCommand::Push(args) => push(args),
        ManifestCommand::Rm(args) => rm(args),
        ManifestCommand::PushSpec(args) => push_spec(args),
    }
}

/// `create -t TAG SOURCE...`: the index made at once, printed or pushed.
fn create_and_stitch(args: CreateArgs) -> Result<(), Report> {
    let target = parse_ref(args.tag.as_deref().unwrap_or_default())?;
    let mut sources = args.names.clone();
    for m in &args.from_metadata {
        sources.push(kiln_build::pushed_image(m).map_err(report)?);
    }
    if sources.is_empty() {
        return Err(miette!(
            "name at least one SOURCE image or --from-metadata file"
        ));
    }
    let parsed: Vec<Reference> = sources.iter().filter_map(|s| s.parse().ok()).collect();
    let client = args.access.client(parsed.iter().chain([&target]))?;
    let entries = distinct_entries(&client, &sources, args.keep_attestations)?;
    if !args.push {
        let (_, bytes) = index_bytes(&entries);
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let digest = push_entries(&client, &entries, std::slice::from_ref(&target)).map_err(report)?;
    eprintln!("pushed {target}@{digest} ({} manifests)", entries.len());
    println!("{digest}");
    Ok(())
}

/// `create [--amend] LIST SOURCE...`: a local list, nothing pushed.
fn create_local(args: CreateArgs) -> Result<(), Report> {
    let Some((list_name, sources)) = args.names.split_first() else {
        return Err(miette!("name the LIST and at least one SOURCE"));
    };
    if sources.is_empty() {
        return Err(miette!("name at least one SOURCE image for {list_name}"));
    }
    let list = parse_ref(list_name)?;
    let store = args.store.open();
    let mut kept = store.start(list_name, &list, args.amend).map_err(report)?;
    let parsed: Vec<Reference> = sources.iter().filter_map(|s| s.parse().ok()).collect();
    let client = args.access.client(parsed.iter().chain([&list]))?;
    kept.amend(distinct_entries(&client, sources, args.keep_attestations)?);
    store.save(&list, &kept).map_err(report)?;
    eprintln!(
        "created local list {list} ({} manifests)",
        kept.entries.len()
    );
    Ok(())
}

fn annotate(args: AnnotateArgs) -> Result<(), Report> {
    let list = parse_ref(&args.list)?;
    let store = args.store.open();
    let mut kept = store.load_existing(&list).map_err(report)?;
    let edit = PlatformEdit {
        os: args.os,
        architecture: args.arch,
        variant: args.variant,
        os_version: args.os_version,
        os_features: args.os_features,
    };
    kept.annotate(&args.source, &edit).map_err(report)?;
    store.save(&list, &kept).map_err(report)
}

/// What `inspect --verbose` shows of one manifest, as docker does.
#[derive(Serialize)]
struct VerboseManifest {
    #[serde(rename = "Ref")]
    reference: String,
    #[serde(rename = "Descriptor")]
    descriptor: Descriptor,
    #[serde(rename = "SchemaV2Manifest", skip_serializing_if = "Option::is_none")]
    docker_manifest: Option<ImageManifest>,
    #[serde(rename = "OCIManifest", skip_serializing_if = "Option::is_none")]
    oci_manifest: Option<ImageManifest>,
}

/// The manifest `image` (pinned) with the descriptor an index gives it.
fn verbose_manifest(
    client: &RegistryClient,
    image: &Reference,
    descriptor: Descriptor,
) -> Result<VerboseManifest, Report> {
    let fetched = client
        .fetch_manifest(image)
        .map_err(|e| miette!("{image}: {e}"))?;
    verbose_of(image, descriptor, &fetched)
}

/// `fetched`, the manifest `image` (pinned), with the descriptor an index gives it.
fn verbose_of(
    image: &Reference,
    descriptor: Descriptor,
    fetched: &FetchedManifest,
) -> Result<VerboseManifest, Report> {
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("{image} is not an image manifest"))?;
    let docker = fetched.media_type == media::DOCKER_MANIFEST;
    Ok(VerboseManifest {
        reference: image.to_string(),
        descriptor,
        docker_manifest: docker.then(|| manifest.clone()),
        oci_manifest: (!docker).then_some(manifest),
    })
}

fn print_verbose<T: Serialize>(value: &T) -> Result<(), Report> {
    let compact = serde_json::to_vec(value).into_diagnostic()?;
    println!("{}", docker_pretty(&compact));
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<(), Report> {
    let store = args.store.open();
    let refs = args
        .names
        .iter()
        .map(|n| parse_ref(n))
        .collect::<Result<Vec<_>, _>>()?;
    let client = args.access.client(refs.iter())?;
    if let [list, _] = refs.as_slice() {
        let kept = store.load_existing(list).map_err(report)?;
        let entry = &kept.entries[kept.find_entry(&args.names[1]).map_err(report)?];
        return inspect_entry(&client, entry, &args);
    }
    let target = &refs[0];
    if let Some(stored) = store.load(target).map_err(report)? {
        let (_, bytes) = stored.index_bytes();
        if args.raw {
            std::io::stdout().write_all(&bytes).into_diagnostic()?;
        } else if args.verbose {
            let all = stored
                .entries
                .iter()
                .map(|e| {
                    let image = e.image_ref().map_err(report)?;
                    verbose_manifest(&client, &image, e.descriptor.clone())
                })
                .collect::<Result<Vec<_>, _>>()?;
            print_verbose(&all)?;
        } else {
            println!("{}", docker_pretty(&bytes));
        }
        return Ok(());
    }
    let fetched = client.fetch_manifest(target).map_err(|e| miette!("{e}"))?;
    if args.raw {
        return std::io::stdout()
            .write_all(&fetched.bytes)
            .into_diagnostic();
    }
    if !args.verbose {
        println!("{}", docker_pretty(&fetched.bytes));
        return Ok(());
    }
    if media::is_index(&fetched.media_type) {
        let index: kiln_oci::ImageIndex = serde_json::from_slice(&fetched.bytes)
            .into_diagnostic()
            .wrap_err_with(|| format!("{target} is not a readable index"))?;
        let all = index
            .manifests
            .into_iter()
            .map(|d| verbose_manifest(&client, &target.with_digest(d.digest.clone()), d))
            .collect::<Result<Vec<_>, _>>()?;
        return print_verbose(&all);
    }
    let descriptor = Descriptor::new(
        &fetched.media_type,
        fetched.digest.clone(),
        fetched.bytes.len() as u64,
    );
    // Already fetched: no second round trip for the same manifest.
    print_verbose(&verbose_of(
        &target.with_digest(fetched.digest.clone()),
        descriptor,
        &fetched,
    )?)
}

/// `inspect LIST REF`: the image of one entry.
fn inspect_entry(
    client: &RegistryClient,
    entry: &ListEntry,
    args: &InspectArgs,
) -> Result<(), Report> {
    let image = entry.image_ref().map_err(report)?;
    if args.verbose {
        return print_verbose(&verbose_manifest(client, &image, entry.descriptor.clone())?);
    }
    let fetched = client.fetch_manifest(&image).map_err(|e| miette!("{e}"))?;
    if args.raw {
        std::io::stdout()
            .write_all(&fetched.bytes)
            .into_diagnostic()
    } else {
        println!("{}", docker_pretty(&fetched.bytes));
        Ok(())
    }
}

fn push(args: PushArgs) -> Result<(), Report> {
    let list = parse_ref(&args.list)?;
    let store = args.store.open();
    let kept = store.load_existing(&list).map_err(report)?;
    let mut names = vec![list.clone()];
    for e in &kept.entries {
        names.push(e.image_ref().map_err(report)?);
    }
    let client = args.access.client(names.iter())?;
    let digest =
        push_entries(&client, &kept.entries, std::slice::from_ref(&list)).map_err(report)?;
    eprintln!("pushed {list}@{digest} ({} manifests)", kept.entries.len());
    println!("{digest}");
    if args.purge {
        store.remove(&list).map_err(report)?;
    }
    Ok(())
}

fn rm(args: RmArgs) -> Result<(), Report> {
    let store = args.store.open();
    let mut missing = Vec::new();
    for name in &args.lists {
        let list = parse_ref(name)?;
        if !store.remove(&list).map_err(report)? {
            missing.push(name.as_str());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(miette!("no local list named {}", missing.join(", ")))
    }
}

fn push_spec(args: PushSpecArgs) -> Result<(), Report> {
    let spec = PushSpec::read(&args.spec).map_err(report)?;
    let sources = spec.images.iter().map(|i| &i.reference);
    let client = args.access.client(sources.chain(&spec.targets))?;
    let entries = spec
        .entries(&client, args.keep_attestations)
        .map_err(report)?;
    check_distinct_platforms(&entries).map_err(report)?;
    let digest = push_entries(&client, &entries, &spec.targets).map_err(report)?;
    let (_, bytes) = index_bytes(&entries);
    println!("Digest: {digest} {}", bytes.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reindent_keeps_order_and_strings() {
        let src = br#"{"b":1,"a":[],"s":"x,{y}:\"z\"","m":[{"k":{}}]}"#;
        let out = reindent(src, "  ");
        assert_eq!(
            out,
            "{\n  \"b\": 1,\n  \"a\": [],\n  \"s\": \"x,{y}:\\\"z\\\"\",\n  \"m\": [\n    {\n      \"k\": {}\n    }\n  ]\n}"
        );
        let again: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            again,
            serde_json::from_slice::<serde_json::Value>(src).unwrap()
        );
    }
}
