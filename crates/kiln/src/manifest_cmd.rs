//! `kiln manifest`: docker manifest's verbs over a local store of unpushed lists
//! (`<root>/manifests/`), manifest-tool's `push-spec`, and the one-shot `create -t` that
//! stitches per-platform builds straight into a registry.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_oci::{Descriptor, ImageManifest, Platform, media};
use kiln_registry::{FetchedManifest, Reference, RegistryClient, stitch};
use miette::{IntoDiagnostic, Report, WrapErr, miette};
use serde::{Deserialize, Serialize};

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
        ListStore {
            dir: root.join("manifests"),
        }
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
    #[arg(long)]
    os: Option<String>,
    #[arg(long)]
    arch: Option<String>,
    #[arg(long)]
    variant: Option<String>,
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

/// One image of a list: where it came from, where it is (pinned by digest), and the
/// descriptor the index will hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The source as named on the command line, normalised.
    pub source: String,
    /// The image itself, `registry/repository@digest`.
    pub image: String,
    pub descriptor: Descriptor,
}

impl Entry {
    pub fn image_ref(&self) -> Result<Reference, Report> {
        parse_ref(&self.image)
    }
}

/// A list as kept in the local store.
#[derive(Debug, Serialize, Deserialize)]
struct StoredList {
    name: String,
    entries: Vec<Entry>,
}

/// Unpushed lists, one directory per list, each holding `list.json`.
struct ListStore {
    dir: PathBuf,
}

impl ListStore {
    /// The list's directory: its reference with `/`, `:` and `@` percent-escaped, so that
    /// distinct references never share one.
    fn list_dir(&self, list: &Reference) -> PathBuf {
        let escaped = list
            .to_string()
            .replace('/', "%2F")
            .replace(':', "%3A")
            .replace('@', "%40");
        self.dir.join(escaped)
    }

    fn load(&self, list: &Reference) -> Result<Option<StoredList>, Report> {
        let path = self.list_dir(list).join("list.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(miette!("cannot read {}: {e}", path.display())),
        };
        serde_json::from_str(&text)
            .into_diagnostic()
            .wrap_err_with(|| format!("{} is damaged", path.display()))
            .map(Some)
    }

    /// Writes the list through a temp file and a rename, so a reader never sees half a list.
    fn save(&self, list: &Reference, stored: &StoredList) -> Result<(), Report> {
        let dir = self.list_dir(list);
        std::fs::create_dir_all(&dir)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot create {}", dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).into_diagnostic()?;
        serde_json::to_writer_pretty(&mut tmp, stored).into_diagnostic()?;
        tmp.flush().into_diagnostic()?;
        tmp.persist(dir.join("list.json"))
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot write the list into {}", dir.display()))?;
        Ok(())
    }

    /// Deletes a list; false if there was none.
    fn remove(&self, list: &Reference) -> Result<bool, Report> {
        let dir = self.list_dir(list);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(miette!("cannot delete {}: {e}", dir.display())),
        }
    }

    fn load_existing(&self, list: &Reference) -> Result<StoredList, Report> {
        self.load(list)?.ok_or_else(|| {
            miette!("there is no local list {list}: make one with `kiln manifest create {list} SOURCE...`")
        })
    }
}

pub(crate) fn parse_ref(s: &str) -> Result<Reference, Report> {
    s.parse().map_err(|e| miette!("{e}"))
}

/// The entries `sources` contribute, each source's failure naming it. Attestation manifests
/// of index sources are dropped unless `keep_attestations`.
pub(crate) fn resolve_sources(
    client: &RegistryClient,
    sources: &[String],
    keep_attestations: bool,
) -> Result<Vec<Entry>, Report> {
    let mut entries = Vec::new();
    for s in sources {
        let r = parse_ref(s).wrap_err_with(|| format!("source {s}"))?;
        let found = stitch::platform_manifests(client, &r, keep_attestations)
            .map_err(|e| miette!("source {s}: {e}"))?;
        for (at, descriptor) in found {
            let image = Reference { tag: None, ..at };
            entries.push(Entry {
                source: r.to_string(),
                image: image.to_string(),
                descriptor,
            });
        }
    }
    Ok(entries)
}

/// Refuses two runnable entries for one platform: a runtime would only ever pull the first.
pub(crate) fn check_distinct_platforms(entries: &[Entry]) -> Result<(), Report> {
    for (i, e) in entries.iter().enumerate() {
        if stitch::is_attestation(&e.descriptor) {
            continue;
        }
        let Some(platform) = &e.descriptor.platform else {
            continue;
        };
        if let Some(dup) = entries[..i].iter().find(|d| {
            !stitch::is_attestation(&d.descriptor)
                && d.descriptor.platform.as_ref() == Some(platform)
        }) {
            return Err(miette!(
                "two sources provide {platform}: {} and {}",
                dup.source,
                e.source
            ));
        }
    }
    Ok(())
}

/// Copies the entries into every target's repository and pushes the index to each target.
pub(crate) fn push_entries(
    client: &RegistryClient,
    entries: &[Entry],
    targets: &[Reference],
) -> Result<kiln_oci::Digest, Report> {
    let pinned = entries
        .iter()
        .map(|e| Ok((e.image_ref()?, e.descriptor.clone())))
        .collect::<Result<Vec<_>, Report>>()?;
    let scratch = tempfile::tempdir().into_diagnostic()?;
    stitch::push_index(client, &pinned, targets, scratch.path()).map_err(|e| miette!("{e}"))
}

/// The index bytes (and media type) over `entries`.
pub(crate) fn index_bytes(entries: &[Entry]) -> (String, Vec<u8>) {
    let descriptors: Vec<Descriptor> = entries.iter().map(|e| e.descriptor.clone()).collect();
    stitch::index_of(&descriptors)
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
        sources.push(kiln_build::pushed_image(m).map_err(|e| miette!("{e}"))?);
    }
    if sources.is_empty() {
        return Err(miette!(
            "name at least one SOURCE image or --from-metadata file"
        ));
    }
    let parsed: Vec<Reference> = sources.iter().filter_map(|s| s.parse().ok()).collect();
    let client = args.access.client(parsed.iter().chain([&target]))?;
    let entries = resolve_sources(&client, &sources, args.keep_attestations)?;
    check_distinct_platforms(&entries)?;
    if !args.push {
        let (_, bytes) = index_bytes(&entries);
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let digest = push_entries(&client, &entries, std::slice::from_ref(&target))?;
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
    if list.digest.is_some() {
        return Err(miette!(
            "{list_name}: a list is named by a tag, not a digest"
        ));
    }
    let store = args.store.open();
    let existing = store.load(&list)?;
    let mut entries = match existing {
        Some(_) if !args.amend => {
            return Err(miette!(
                "a local list {list} exists already: add to it with `--amend`, or delete it with `kiln manifest rm {list}`"
            ));
        }
        Some(stored) => stored.entries,
        None => Vec::new(),
    };
    let parsed: Vec<Reference> = sources.iter().filter_map(|s| s.parse().ok()).collect();
    let client = args.access.client(parsed.iter().chain([&list]))?;
    let added = resolve_sources(&client, sources, args.keep_attestations)?;
    check_distinct_platforms(&added)?;
    // An amended entry replaces the one for the same image or the same (runnable) platform.
    entries.retain(|old| {
        !added.iter().any(|new| {
            new.descriptor.digest == old.descriptor.digest
                || (!stitch::is_attestation(&new.descriptor)
                    && new.descriptor.platform.is_some()
                    && new.descriptor.platform == old.descriptor.platform)
        })
    });
    entries.extend(added);
    let count = entries.len();
    store.save(
        &list,
        &StoredList {
            name: list.to_string(),
            entries,
        },
    )?;
    eprintln!("created local list {list} ({count} manifests)");
    Ok(())
}

/// The index of `entries` whose entry is `source`: the source as given to create, or the
/// image by digest. Errors name the candidates.
fn find_entry(list: &StoredList, source: &str) -> Result<usize, Report> {
    let wanted = parse_ref(source)?;
    let matches: Vec<usize> = list
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.source == wanted.to_string()
                || wanted.digest.as_ref().is_some_and(|d| {
                    *d == e.descriptor.digest
                        && e.image_ref().is_ok_and(|r| {
                            r.registry == wanted.registry && r.repository == wanted.repository
                        })
                })
        })
        .map(|(i, _)| i)
        .collect();
    let images = || {
        list.entries
            .iter()
            .map(|e| e.image.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(miette!(
            "the list {} has no entry {source}; its images: {}",
            list.name,
            images()
        )),
        _ => Err(miette!(
            "{source} is an index that gave {} entries of {}: name one by digest: {}",
            matches.len(),
            list.name,
            matches
                .iter()
                .map(|i| list.entries[*i].image.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// GOOS and GOARCH values: what docker accepts in a platform.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

/// Checks an entry's os and architecture are ones a runtime can match.
pub(crate) fn validate_platform(p: &Platform) -> Result<(), Report> {
    if !KNOWN_OS.contains(&p.os.as_str()) {
        return Err(miette!(
            "unknown os `{}`: expected one of {}",
            p.os,
            KNOWN_OS.join(", ")
        ));
    }
    if !KNOWN_ARCH.contains(&p.architecture.as_str()) {
        return Err(miette!(
            "unknown architecture `{}`: expected one of {}",
            p.architecture,
            KNOWN_ARCH.join(", ")
        ));
    }
    Ok(())
}

fn annotate(args: AnnotateArgs) -> Result<(), Report> {
    let list = parse_ref(&args.list)?;
    let store = args.store.open();
    let mut stored = store.load_existing(&list)?;
    let at = find_entry(&stored, &args.source)?;
    let entry = &mut stored.entries[at];
    let mut platform = entry
        .descriptor
        .platform
        .clone()
        .unwrap_or_else(|| Platform::new("", "", None));
    let set = |field: &mut String, value: &Option<String>| {
        if let Some(v) = value {
            *field = v.clone();
        }
    };
    set(&mut platform.os, &args.os);
    set(&mut platform.architecture, &args.arch);
    if let Some(v) = &args.variant {
        platform.variant = Some(v.clone()).filter(|v| !v.is_empty());
    }
    if let Some(v) = &args.os_version {
        platform.os_version = Some(v.clone()).filter(|v| !v.is_empty());
    }
    if let Some(features) = &args.os_features {
        platform.os_features = features.iter().filter(|f| !f.is_empty()).cloned().collect();
    }
    validate_platform(&platform).wrap_err_with(|| format!("annotating {}", entry.image))?;
    entry.descriptor.platform = Some(platform);
    store.save(&list, &stored)
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
        let stored = store.load_existing(list)?;
        let entry = &stored.entries[find_entry(&stored, &args.names[1])?];
        return inspect_entry(&client, entry, &args);
    }
    let target = &refs[0];
    if let Some(stored) = store.load(target)? {
        let (_, bytes) = index_bytes(&stored.entries);
        if args.raw {
            std::io::stdout().write_all(&bytes).into_diagnostic()?;
        } else if args.verbose {
            let all = stored
                .entries
                .iter()
                .map(|e| verbose_manifest(&client, &e.image_ref()?, e.descriptor.clone()))
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
fn inspect_entry(client: &RegistryClient, entry: &Entry, args: &InspectArgs) -> Result<(), Report> {
    let image = entry.image_ref()?;
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
    let stored = store.load_existing(&list)?;
    let mut names = vec![list.clone()];
    for e in &stored.entries {
        names.push(e.image_ref()?);
    }
    let client = args.access.client(names.iter())?;
    let digest = push_entries(&client, &stored.entries, std::slice::from_ref(&list))?;
    eprintln!(
        "pushed {list}@{digest} ({} manifests)",
        stored.entries.len()
    );
    println!("{digest}");
    if args.purge {
        store.remove(&list)?;
    }
    Ok(())
}

fn rm(args: RmArgs) -> Result<(), Report> {
    let store = args.store.open();
    let mut missing = Vec::new();
    for name in &args.lists {
        let list = parse_ref(name)?;
        if !store.remove(&list)? {
            missing.push(name.as_str());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(miette!("no local list named {}", missing.join(", ")))
    }
}

/// manifest-tool's `from-spec` YAML.
#[derive(Deserialize)]
struct Spec {
    image: String,
    #[serde(default)]
    tags: Vec<String>,
    manifests: Vec<SpecManifest>,
}

#[derive(Deserialize)]
struct SpecManifest {
    image: String,
    platform: Option<SpecPlatform>,
}

#[derive(Deserialize)]
struct SpecPlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
    /// manifest-tool has both `features` and `osfeatures`; both are OS features in OCI.
    #[serde(default, alias = "osfeatures")]
    features: Vec<String>,
    #[serde(default)]
    osversion: Option<String>,
}

impl SpecPlatform {
    fn to_platform(&self) -> Result<Platform, Report> {
        let mut p = Platform::new(&self.os, &self.architecture, self.variant.as_deref());
        p.variant = p.variant.filter(|v| !v.is_empty());
        p.os_version = self.osversion.clone().filter(|v| !v.is_empty());
        p.os_features = self.features.clone();
        validate_platform(&p)?;
        Ok(p)
    }
}

fn push_spec(args: PushSpecArgs) -> Result<(), Report> {
    let text = std::fs::read_to_string(&args.spec)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.spec.display()))?;
    let spec: Spec = serde_norway::from_str(&text)
        .into_diagnostic()
        .wrap_err_with(|| format!("{} is not a manifest-tool spec", args.spec.display()))?;
    if spec.manifests.is_empty() {
        return Err(miette!("{}: `manifests` is empty", args.spec.display()));
    }
    let image = parse_ref(&spec.image).wrap_err("the spec's `image`")?;
    let mut targets = vec![image.clone()];
    for tag in &spec.tags {
        let tagged = parse_ref(&format!("{}/{}:{tag}", image.registry, image.repository))
            .wrap_err("the spec's `tags`")?;
        targets.push(tagged);
    }
    let sources: Vec<Reference> = spec
        .manifests
        .iter()
        .map(|m| parse_ref(&m.image))
        .collect::<Result<_, _>>()?;
    let client = args.access.client(sources.iter().chain(&targets))?;
    let mut entries = Vec::new();
    for m in &spec.manifests {
        let mut found = resolve_sources(
            &client,
            std::slice::from_ref(&m.image),
            args.keep_attestations,
        )?;
        if let Some(platform) = &m.platform {
            let [only] = found.as_mut_slice() else {
                return Err(miette!(
                    "{} is an index of {} images: a `platform` can only be given for a single image",
                    m.image,
                    found.len()
                ));
            };
            only.descriptor.platform =
                Some(platform.to_platform().wrap_err_with(|| m.image.clone())?);
        }
        entries.extend(found);
    }
    check_distinct_platforms(&entries)?;
    let digest = push_entries(&client, &entries, &targets)?;
    let (_, bytes) = index_bytes(&entries);
    println!("Digest: {digest} {}", bytes.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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

    #[test]
    fn list_dirs_are_distinct_for_distinct_references() {
        let store = ListStore {
            dir: PathBuf::from("/x"),
        };
        let a = store.list_dir(&parse_ref("127.0.0.1:5000/a-b:1").unwrap());
        let b = store.list_dir(&parse_ref("127.0.0.1:5000/a/b:1").unwrap());
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x")));
    }
}
