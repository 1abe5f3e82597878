//! `kiln build`: the buildx flags, with the kaniko executor's names as aliases.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use clap::Args;
use clap::builder::BoolishValueParser;
use kiln_build::{
    Annotation, Annotations, Attestations, BuildError, BuildMetadata, BuildOptions, CacheSpec,
    Hold, OriginClients, Output, OutputFlags, Progress, ProgressMode, SecretSource, Secrets,
    StepKind, Store,
};
use kiln_oci::{Descriptor, Platform};
use kiln_registry::{Reference, RegistryClient};
use kiln_transport::BaseImageCache;
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::isolation_args::IsolationArgs;
use crate::kaniko_cache_args::KanikoCacheArgs;
use crate::registry_args::RegistryArgs;
use crate::report;
use crate::run_args::RunStepArgs;

#[derive(Args)]
pub struct BuildArgs {
    /// The build context: a directory, `-` (a tar or a Dockerfile on stdin), a git URL
    /// (`https://host/repo.git#REF:DIR`, `git@host:repo.git`, `file://`) or an http(s) URL
    /// of a tar archive or a Dockerfile.
    #[arg(help_heading = "Input", value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
    /// The build context (kaniko's spelling); overrides CONTEXT.
    #[arg(
        help_heading = "Input",
        short = 'c',
        long = "context",
        value_name = "DIR"
    )]
    context_flag: Option<PathBuf>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(
        help_heading = "Input",
        short = 'f',
        long = "file",
        visible_alias = "dockerfile",
        value_name = "PATH"
    )]
    file: Option<PathBuf>,
    /// Name and tag the image (repeatable).
    #[arg(
        help_heading = "Output",
        short = 't',
        long = "tag",
        value_name = "NAME[:TAG]"
    )]
    tags: Vec<String>,
    /// Push to this reference (kaniko's spelling of `-t NAME --push`; repeatable).
    #[arg(
        help_heading = "Output",
        short = 'd',
        long = "destination",
        value_name = "NAME[:TAG]"
    )]
    destinations: Vec<String>,
    /// Push the image to the registry named by each tag.
    #[arg(help_heading = "Output", long)]
    push: bool,
    /// Build but do not push, even with --destination (kaniko).
    #[arg(help_heading = "Output", long)]
    no_push: bool,
    /// Output: type=registry, type=image[,push=true], type=oci,dest=PATH[,tar=false]
    ///
    /// buildx's comma-separated KEY=VALUE list; repeatable. For example:
    ///   -o type=registry                push to each -t name
    ///   -o type=oci,dest=app.tar        OCI archive; dest=- is stdout
    ///   -o type=oci,dest=app,tar=false  OCI layout directory
    ///   -o type=docker,dest=app.tar     docker load-able, 1 platform
    ///   -o type=local,dest=rootfs       the files; also `-o rootfs`
    ///   -o type=tar,dest=rootfs.tar     files as a tar; `-o -` stdout
    /// registry, oci and docker also take name= and rewrite-timestamp=true; registry and oci
    /// compression=gzip|zstd|estargz|uncompressed, compression-level=N, force-compression.
    #[arg(
        verbatim_doc_comment,
        help_heading = "Output",
        short = 'o',
        long = "output",
        value_name = "SPEC"
    )]
    outputs: Vec<String>,
    /// Write an OCI layout directory here (kaniko's --oci-layout-path).
    #[arg(help_heading = "Output", long, value_name = "DIR")]
    oci_layout_path: Option<PathBuf>,
    /// A build-time variable; a bare KEY takes its value from the environment.
    #[arg(help_heading = "Input", long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// A named context (repeatable) that `FROM NAME`, `COPY --from=NAME` and `RUN --mount
    /// from=NAME` read instead of the stage or image NAME: a directory, a git or http(s)
    /// URL, docker-image://REF or oci-layout://DIR[:TAG|@DIGEST].
    #[arg(
        help_heading = "Input",
        long = "build-context",
        value_name = "NAME=VALUE"
    )]
    build_contexts: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(help_heading = "Input", long)]
    target: Option<String>,
    /// Target platforms, a comma list of os/arch[/variant] (default: the host's); repeatable.
    #[arg(
        help_heading = "Platforms",
        long,
        alias = "custom-platform",
        value_name = "PLATFORMS"
    )]
    platform: Vec<String>,
    /// How many platforms build at once (default: the number of cores).
    #[arg(help_heading = "Platforms", long, value_name = "N")]
    jobs: Option<usize>,
    /// Where qemu-<arch>-static lives, for RUN steps of foreign platforms.
    #[arg(
        help_heading = "Platforms",
        long,
        env = "KILN_QEMU_DIR",
        value_name = "DIR"
    )]
    qemu_dir: Option<PathBuf>,
    /// Push without a tag: the image is known by its digest only (see --metadata-file).
    #[arg(help_heading = "Output", long)]
    push_by_digest: bool,
    /// Write the result's digest, media type, size and platform as JSON (buildx's keys).
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Write the image's digest (of its manifest, or of the index of several platforms).
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Set a label in the image config (repeatable); it wins over the Dockerfile's LABEL.
    #[arg(help_heading = "Output", long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Annotate the manifests (repeatable): [TYPE[,TYPE]][[PLATFORM]]:KEY=VALUE, TYPE one of
    /// manifest (the default), index, manifest-descriptor, index-descriptor.
    #[arg(
        help_heading = "Output",
        long = "annotation",
        value_name = "[TYPE][[PLATFORM]]:KEY=VALUE"
    )]
    annotations: Vec<String>,
    /// Attach SLSA provenance to each image: true (mode=min), false, mode=min or mode=max.
    #[arg(
        help_heading = "Attestations",
        long,
        value_name = "true|false|mode=min|max"
    )]
    provenance: Option<String>,
    /// Attach an SPDX SBOM of each image's packages (dpkg, apk, Go binaries): true or false.
    #[arg(help_heading = "Attestations", long, value_name = "true|false")]
    sbom: Option<String>,
    /// An attestation (repeatable): type=provenance[,mode=min|max] or type=sbom.
    #[arg(
        help_heading = "Attestations",
        long = "attest",
        value_name = "type=TYPE[,...]"
    )]
    attest: Vec<String>,
    #[command(flatten, next_help_heading = "Registries")]
    registry: RegistryArgs,
    #[command(flatten, next_help_heading = "RUN steps")]
    isolation: IsolationArgs,
    #[command(flatten, next_help_heading = "RUN steps")]
    run_steps: RunStepArgs,
    /// Progress output: auto (tty on a terminal, else plain), plain, tty (a live display),
    /// rawjson (buildx's JSON status events, one per line) or quiet.
    #[arg(help_heading = "Progress", long, default_value = "auto", value_parser = ["auto", "plain", "tty", "rawjson", "quiet"])]
    progress: String,
    /// Do not check, before the first step, that every destination takes pushes (kaniko).
    #[arg(help_heading = "Output", long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    skip_push_permission_check: Option<bool>,
    /// Print only the image's digest (on stdout): --progress quiet.
    #[arg(help_heading = "Progress", short = 'q', long)]
    quiet: bool,
    /// Write the image digest to this file (kaniko's --digest-file).
    #[arg(help_heading = "Output", long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// kiln's cache and work directory.
    #[arg(help_heading = "Cache", long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// A secret for `RUN --mount=type=secret` (repeatable): id=ID,src=FILE or id=ID,env=VAR
    ///
    /// The secret is mounted only into the RUN steps that ask for it and never enters a layer
    /// or the cache key. For example, for `RUN --mount=type=secret,id=npmrc,target=/root/.npmrc`
    /// and `RUN --mount=type=secret,id=token,env=TOKEN`:
    ///   --secret id=npmrc,src=$HOME/.npmrc
    ///   --secret id=token,env=GITHUB_TOKEN
    #[arg(
        verbatim_doc_comment,
        help_heading = "Secrets",
        long = "secret",
        value_name = "id=ID,src=FILE|env=VAR"
    )]
    secrets: Vec<String>,
    /// An SSH agent socket for `RUN --mount=type=ssh` (repeatable): ID=SOCKET, or ID alone
    /// for $SSH_AUTH_SOCK; the usual ID is `default`.
    #[arg(help_heading = "Secrets", long = "ssh", value_name = "ID[=SOCKET]")]
    ssh: Vec<String>,
    /// An OCI layout (directory or oci-archive file) to take FROM images from before any
    /// registry, by their ref name (e.g. written by `kiln copy ... oci:DIR:NAME`).
    #[arg(help_heading = "Input", long = "base-dir", value_name = "DIR")]
    base_dir: Option<PathBuf>,
    /// Run every step, using nothing from the cache (what runs is still recorded).
    #[arg(help_heading = "Cache", long)]
    no_cache: bool,
    /// Run the steps of this stage without the cache (repeatable, or a comma list).
    #[arg(
        help_heading = "Cache",
        long = "no-cache-filter",
        value_name = "STAGE",
        value_delimiter = ','
    )]
    no_cache_filter: Vec<String>,
    /// A registry cache to take step results from (repeatable, tried in order):
    /// type=registry,ref=REF, or REF.
    #[arg(help_heading = "Cache", long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// Where to export the build's step results after the images are delivered (repeatable):
    /// type=registry,ref=REF[,mode=min|max][,ignore-error=true|false].
    #[arg(help_heading = "Cache", long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    #[command(flatten)]
    kaniko_cache: KanikoCacheArgs,
}

/// The directories the caches live in (local caches, `--cache-dir`): an in-place build
/// keeps them.
pub(crate) fn cache_dirs<'a>(
    from: &'a [CacheSpec],
    to: &'a [CacheSpec],
    base_cache: Option<&'a BaseImageCache>,
) -> impl Iterator<Item = &'a Path> {
    from.iter()
        .chain(to)
        .filter_map(|spec| spec.location.dir())
        .chain(base_cache.map(BaseImageCache::dir))
}

/// `--label KEY=VALUE`s.
pub(crate) fn parse_labels(given: &[String]) -> Result<BTreeMap<String, String>, Report> {
    given
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(miette!("--label {l}: expected KEY=VALUE")),
        })
        .collect()
}

/// `--cache-from` or `--cache-to` specs.
pub(crate) fn parse_cache_specs(specs: &[String]) -> Result<Vec<CacheSpec>, Report> {
    specs
        .iter()
        .map(|spec| CacheSpec::parse(spec).map_err(|e| miette!("{e}")))
        .collect()
}

/// `--secret id=ID,src=FILE`, `id=ID,env=VAR` (buildx's form; `source=` and `type=` too). With
/// neither, the variable named ID.
fn parse_secret(spec: &str) -> Result<(String, SecretSource), Report> {
    let (mut id, mut file, mut var, mut kind) = (None, None, None, None);
    for part in spec.split(',') {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let value = value.to_string();
        match key.trim() {
            "id" => id = Some(value),
            "src" | "source" => file = Some(PathBuf::from(value)),
            "env" => var = Some(value),
            "type" if value == "file" || value == "env" => kind = Some(value),
            other => return Err(miette!("--secret {spec}: unknown key `{other}`")),
        }
    }
    let id = id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| miette!("--secret {spec}: needs id=ID"))?;
    let source = match (file, var) {
        (Some(_), Some(_)) => {
            return Err(miette!("--secret id={id}: give src= or env=, not both"));
        }
        (Some(file), None) => {
            std::fs::metadata(&file)
                .into_diagnostic()
                .wrap_err_with(|| format!("--secret id={id}: {}", file.display()))?;
            SecretSource::File(file)
        }
        (None, Some(var)) => SecretSource::Env(var),
        (None, None) if kind.as_deref() == Some("file") => SecretSource::File(PathBuf::from(&id)),
        (None, None) => SecretSource::Env(id.clone()),
    };
    Ok((id, source))
}

/// `--ssh ID=SOCKET`, or `--ssh ID` for the agent in $SSH_AUTH_SOCK.
fn parse_ssh(spec: &str) -> Result<(String, PathBuf), Report> {
    let (id, socket) = match spec.split_once('=') {
        Some((id, socket)) => (id, PathBuf::from(socket)),
        None => {
            let socket = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                miette!("--ssh {spec}: SSH_AUTH_SOCK is not set; pass --ssh {spec}=SOCKET")
            })?;
            (spec, PathBuf::from(socket))
        }
    };
    std::fs::metadata(&socket)
        .into_diagnostic()
        .wrap_err_with(|| format!("--ssh {id}: {}", socket.display()))?;
    Ok((id.to_string(), socket))
}

/// kiln's own directory, as `/kaniko` is kaniko's (`KILN_DIR`, `--kiln-dir` move it): its
/// docker config lives in `.docker`, and in kiln's image its store in `store`.
pub(crate) const DEFAULT_KILN_DIR: &str = "/kiln";

pub(crate) fn default_root() -> PathBuf {
    // Run from its own directory, as in its image, kiln keeps its store there: an in-place
    // build's steps run in this / as root, and a Dockerfile's cleanup (`rm -rf /root/.cache`,
    // `rm -rf /tmp/*`) would delete a store in the usual places.
    let kiln_dir = std::env::var_os("KILN_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_KILN_DIR), PathBuf::from);
    let store = kiln_dir.join("store");
    // Made here if it can be (not by a user other than the image's).
    if std::env::current_exe().is_ok_and(|exe| exe.starts_with(&kiln_dir))
        && std::fs::create_dir_all(&store).is_ok()
    {
        return store;
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("kiln");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/kiln");
    }
    std::env::temp_dir().join("kiln")
}

/// The `.dockerignore` BuildKit would use: `<Dockerfile>.dockerignore` beside the Dockerfile
/// wins over the one at the context root.
pub(crate) fn ignore_file(dockerfile: &Path, context: &Path) -> Result<Option<PathBuf>, Report> {
    let beside = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    let found = [beside, context.join(".dockerignore")]
        .into_iter()
        .find(|p| p.is_file());
    // One in the context stays in it: its bad line is in its error, as the Dockerfile's is.
    if let Some(file) = found.as_ref().filter(|f| lies_in(f, context)) {
        within_context("the .dockerignore", file, context)?;
    }
    Ok(found)
}

/// Whether `file` is one of the context's, so that it must not lead out of it: spelled as a
/// path under the context with no `..` below it (`-f ctx/link/Dockerfile ctx`, whose `link` the
/// context chose), or in a directory that is the context or inside it, however either is
/// spelled (`-f Dockerfile .` names a file of the context without its path).
pub(crate) fn lies_in(file: &Path, context: &Path) -> bool {
    if let (Ok(file), Ok(context)) = (std::path::absolute(file), std::path::absolute(context))
        && let Ok(below) = file.strip_prefix(&context)
        && !below.components().any(|c| c == Component::ParentDir)
    {
        return true;
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), context.canonicalize()) {
        (Ok(dir), Ok(context)) => dir.starts_with(context),
        _ => false,
    }
}

/// The Dockerfile `-f` names, else `Dockerfile` of `context`. One of the context's must stay
/// in it; a path the user typed outside the context is theirs to read.
pub(crate) fn context_dockerfile(file: Option<&Path>, context: &Path) -> Result<PathBuf, Report> {
    let path = file.map_or_else(|| context.join("Dockerfile"), Path::to_path_buf);
    if path.exists() && lies_in(&path, context) {
        within_context("the Dockerfile", &path, context)?;
    }
    Ok(path)
}

/// Fails unless `path`, its symlinks followed, is `context` or inside it. The context (a tar's
/// above all) is untrusted: a `Dockerfile -> /proc/self/environ` would print the job's
/// secrets in the parse error, and a sub path `app -> /` would make the host the context.
pub(crate) fn within_context(what: &str, path: &Path, context: &Path) -> Result<(), Report> {
    let real = |p: &Path| {
        p.canonicalize()
            .into_diagnostic()
            .wrap_err_with(|| format!("resolving {}", p.display()))
    };
    if real(path)?.starts_with(real(context)?) {
        return Ok(());
    }
    Err(miette!(
        "{what} {} leads out of the build context {}",
        path.display(),
        context.display()
    ))
}

/// `--build-arg KEY[=VALUE]`s; a bare KEY takes its value from the environment, and is left
/// out when the environment has none.
pub(crate) fn parse_build_args(given: &[String]) -> BTreeMap<String, String> {
    let mut build_args = BTreeMap::new();
    for a in given {
        match a.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            None => std::env::var(a)
                .ok()
                .and_then(|v| build_args.insert(a.clone(), v)),
        };
    }
    build_args
}

/// `SOURCE_DATE_EPOCH` as a build arg, else from the environment.
pub(crate) fn source_date_epoch(build_args: &BTreeMap<String, String>) -> Option<i64> {
    build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .and_then(|v| v.parse().ok())
}

/// Comma lists of platforms, without repeats; the host's when none is given.
pub(crate) fn parse_platforms(given: &[String], flag: &str) -> Result<Vec<Platform>, Report> {
    let mut platforms = Vec::new();
    for p in given.iter().flat_map(|p| p.split(',')) {
        let p = p
            .trim()
            .parse::<Platform>()
            .map_err(|e| miette!("{flag}: {e}"))?;
        if !platforms.contains(&p) {
            platforms.push(p);
        }
    }
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    Ok(platforms)
}

/// A Dockerfile as read and parsed; its text stays for error reports with source carets.
pub(crate) struct DockerfileSource {
    pub name: String,
    pub text: String,
    pub parsed: kiln_dockerfile::Dockerfile,
}

pub(crate) fn read_dockerfile(path: &Path) -> Result<DockerfileSource, Report> {
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read the Dockerfile {}", path.display()))?;
    let name = path.display().to_string();
    let parsed =
        kiln_dockerfile::parse(&name, &text).map_err(|e| report::parse_error(&e, &text))?;
    Ok(DockerfileSource { name, text, parsed })
}

/// kiln's store at `root`, held until the outputs are written: `kiln prune` waits for it, and
/// the build for prune.
pub(crate) fn open_store(root: &Path, progress: &Progress) -> Result<Store, Report> {
    let waiting = || progress.info(&format!("waiting for kiln prune on {}", root.display()));
    let store = Store::open_holding(root, Hold::Shared, &waiting).map_err(|e| miette!("{e}"))?;
    if let Some(warning) = store.warning() {
        progress.warning(warning);
    }
    Ok(store)
}

/// Before the first step, as kaniko does: every repository a registry output pushes to must
/// take a blob upload with the credentials found (`--skip-push-permission-check` skips it).
pub(crate) fn check_push_access(
    push: &RegistryClient,
    outputs: &[Output],
    progress: &Progress,
) -> Result<(), Report> {
    let mut checked: Vec<(&str, &str)> = Vec::new();
    for output in outputs {
        let Output::Registry { names, .. } = output else {
            continue;
        };
        for name in names {
            let repository = (name.registry.as_str(), name.repository.as_str());
            if checked.contains(&repository) {
                continue;
            }
            checked.push(repository);
            progress.detail(&format!("checking that {name} takes pushes"));
            push.check_push(name).map_err(|e| {
                miette!("{e}").wrap_err(format!(
                    "cannot push to {}/{} with {}; nothing was built \
                     (--skip-push-permission-check builds anyway)",
                    name.registry,
                    name.repository,
                    push.credential_source(&name.registry)
                ))
            })?;
        }
    }
    Ok(())
}

/// Where a build reads base images from and pushes to: kaniko keeps separate TLS and
/// plain-HTTP settings for pulls and pushes, `kiln build` uses one client for both.
pub(crate) struct Clients<'c> {
    pub pull: &'c RegistryClient,
    pub push: &'c RegistryClient,
    /// Reads and writes the build caches (kaniko: with the push flags).
    pub cache: &'c RegistryClient,
}

/// Builds `dockerfile` and delivers it to `outputs`: what `kiln build` and `kiln executor`
/// share once their flags are mapped. Prints the summary; returns what the first output knows
/// the image by (the stored manifest when there is no output) and the build's result.
pub(crate) fn build_and_deliver(
    dockerfile: &DockerfileSource,
    options: &BuildOptions,
    store: &Store,
    clients: Clients<'_>,
    names: &[Reference],
    outputs: &[Output],
    progress: &Progress,
) -> Result<(Descriptor, kiln_build::BuildResult), Report> {
    let text = &dockerfile.text;
    let to_report = |e: BuildError| match e {
        BuildError::Parse(p) => report::parse_error(&p, text),
        BuildError::Dockerfile {
            path,
            line,
            column: Some(column),
            message,
        } => report::position_error(&path, line, column, &message, None, text),
        BuildError::Dockerfile {
            path,
            line,
            column: None,
            message,
        } => report::line_error(&path, line, &message, text),
        BuildError::MissingSource { ref path, line, .. }
        | BuildError::UnknownStage { ref path, line, .. } => {
            // The report shows `path:line` itself; keep everything after it (the source name).
            let message = e.to_string();
            let message = message
                .strip_prefix(&format!("{path}:{line}: "))
                .unwrap_or(&message);
            report::line_error(path, line, message, text)
        }
        other => miette!("{other}"),
    };
    let started = std::time::Instant::now();
    let result = kiln_build::build(
        &dockerfile.parsed,
        options,
        store,
        clients.pull,
        clients.cache,
        progress,
    )
    .map_err(to_report)?;
    let caches = kiln_build::registry_refs(&options.cache_from);
    let origins = OriginClients {
        pull: clients.pull,
        cache: clients.cache,
        caches: &caches,
    };
    let delivered = kiln_build::deliver(
        store,
        (origins, clients.push),
        &result.images,
        names,
        outputs,
        &options.annotations,
        progress,
    )
    .map_err(to_report)?;
    kiln_build::export_caches(
        (clients.cache, clients.push),
        store,
        &result.records,
        &options.cache_to,
        progress,
    )
    .map_err(to_report)?;
    print_summary(progress, &result);
    let top = match delivered {
        Some(d) => d,
        // No output asked for: the image stays in kiln's store, known by its manifest.
        None => result.images[0].manifest.clone(),
    };
    let platforms: Vec<String> = result
        .images
        .iter()
        .map(|i| i.platform.to_string())
        .collect();
    progress.info(&format!(
        "built {} for {} in {:.1}s",
        top.digest,
        platforms.join(", "),
        started.elapsed().as_secs_f64()
    ));
    Ok((top, result))
}

/// The context `-` and `-f -` of buildx: the build context as a tar (plain or compressed) on
/// standard input, or a lone Dockerfile there (then the context is empty); or the Dockerfile
/// on standard input. Saved under `scratch`; returns the context dir and the Dockerfile path
/// to use.
fn from_stdin(
    context: PathBuf,
    file: Option<PathBuf>,
    scratch: &Path,
) -> Result<(PathBuf, Option<PathBuf>), Report> {
    let stdin = Path::new("-");
    let (context_in, file_in) = (context == stdin, file.as_deref() == Some(stdin));
    if !context_in && !file_in {
        return Ok((context, file));
    }
    if context_in && file_in {
        return Err(miette!(
            "the context - and -f - both read standard input: give one of them as a path"
        ));
    }
    let saved = scratch.join("stdin");
    save_stdin(&saved)?;
    if file_in {
        return Ok((context, Some(saved)));
    }
    let dir = scratch.join("context");
    std::fs::create_dir(&dir).into_diagnostic()?;
    let archive = kiln_build::try_unpack_context(&saved, &dir).map_err(|e| miette!("{e}"))?;
    Ok(fetched_paths(dir, (!archive).then_some(saved), file))
}

/// buildx's remote contexts: a git repository or an http(s) URL (see
/// [`kiln_build::RemoteContext`]), fetched under `scratch`. Returns the context dir and the
/// Dockerfile path to use.
fn from_remote(
    context: PathBuf,
    file: Option<PathBuf>,
    scratch: &Path,
    progress: &Progress,
) -> Result<(PathBuf, Option<PathBuf>), Report> {
    // As in buildx, a directory that is there wins over a URL-like name (`github.com/x`).
    let remote = context.to_str().and_then(kiln_build::RemoteContext::parse);
    let Some(remote) = remote.filter(|_| !context.is_dir()) else {
        return Ok((context, file));
    };
    let fetched = remote
        .fetch(scratch, progress)
        .map_err(|e| miette!("{e}"))?;
    let (dir, file) = fetched_paths(fetched.dir, fetched.dockerfile, file);
    // Named after the context, not after the scratch dir it was fetched into.
    let dockerfile = file.clone().unwrap_or_else(|| dir.join("Dockerfile"));
    if let Ok(inside) = dockerfile.strip_prefix(&dir)
        && !dockerfile.exists()
    {
        return Err(miette!("{remote} has no {}", inside.display()));
    }
    Ok((dir, file))
}

/// The context dir and Dockerfile of a context kiln unpacked or fetched into `dir`. As for
/// docker build, a relative -f names a file of that context, not of the working directory
/// (and so stays subject to within_context); a context that came as a lone Dockerfile (no
/// archive) has nothing to copy from, and that file is the Dockerfile unless -f names one.
fn fetched_paths(
    dir: PathBuf,
    lone_dockerfile: Option<PathBuf>,
    file: Option<PathBuf>,
) -> (PathBuf, Option<PathBuf>) {
    match lone_dockerfile {
        None => {
            let file = file.map(|f| dir.join(f));
            (dir, file)
        }
        Some(dockerfile) => (dir, Some(file.unwrap_or(dockerfile))),
    }
}

/// Saves standard input, whole, in `path` (a context or Dockerfile piped in).
pub(crate) fn save_stdin(path: &Path) -> Result<(), Report> {
    let mut file = std::fs::File::create(path).into_diagnostic()?;
    std::io::copy(&mut std::io::stdin().lock(), &mut file)
        .and_then(|_| std::io::Write::flush(&mut file))
        .into_diagnostic()
        .wrap_err("reading standard input")
}

pub fn run(args: BuildArgs) -> Result<(), Report> {
    let mut names = Vec::new();
    for t in args.tags.iter().chain(&args.destinations) {
        names.push(t.parse::<Reference>().map_err(|e| miette!("{e}"))?);
    }
    let platforms = parse_platforms(&args.platform, "--platform")?;
    let build_args = parse_build_args(&args.build_args);
    let source_date_epoch = source_date_epoch(&build_args);
    let output_flags = OutputFlags {
        specs: &args.outputs,
        source_date_epoch,
        // kaniko pushes to its --destination names unless told --no-push.
        push: (args.push || !args.destinations.is_empty()) && !args.no_push,
        push_by_digest: args.push_by_digest,
        oci_layout_path: args.oci_layout_path.as_deref(),
        docker_archive_path: None,
        format: Default::default(),
    };
    let outputs =
        Output::from_flags(&output_flags, &names, platforms.len()).map_err(|e| miette!("{e}"))?;
    let annotations = Annotations(
        args.annotations
            .iter()
            .map(|a| Annotation::parse(a))
            .collect::<Result<_, _>>()
            .map_err(|e| miette!("{e}"))?,
    );
    annotations
        .check(platforms.len(), &outputs, &names)
        .map_err(|e| miette!("{e}"))?;
    let attestations = Attestations::from_flags(
        args.provenance.as_deref(),
        args.sbom.as_deref(),
        &args.attest,
    )
    .map_err(|e| miette!("{e}"))?;

    let root = args.root.clone().unwrap_or_else(default_root);
    let quiet = args.quiet || args.progress == "quiet";
    let progress = Progress::new(match quiet {
        true => ProgressMode::Quiet,
        false => ProgressMode::from_flag(&args.progress).expect("clap checks --progress"),
    });
    let store = open_store(&root, &progress)?;
    // A context from stdin or a URL lives here until the build ends.
    let context_scratch = store.temp_dir("context-").map_err(|e| miette!("{e}"))?;
    let (context, file) = from_stdin(
        args.context_flag.clone().unwrap_or(args.context.clone()),
        args.file.clone(),
        context_scratch.path(),
    )?;
    let (context, file) = from_remote(context, file, context_scratch.path(), &progress)?;
    let mut named_contexts = BTreeMap::new();
    for (n, spec) in args.build_contexts.iter().enumerate() {
        let scratch = context_scratch.path().join(format!("named-{n}"));
        std::fs::create_dir(&scratch).into_diagnostic()?;
        let (name, named) = kiln_build::NamedContext::parse(spec, &scratch, &progress)
            .map_err(|e| miette!("{e}"))?;
        named_contexts.insert(name, named);
    }
    let dockerfile_path = context_dockerfile(file.as_deref(), &context)?;
    let dockerfile = read_dockerfile(&dockerfile_path)?;
    if outputs.is_empty() {
        progress.warning(
            "no output asked for: the image stays in kiln's store only, where nothing else \
             can use it; add --push, -o type=oci,dest=FILE, -o type=docker,dest=- | podman \
             load, or -o DIR for its files",
        );
    }
    let client_options = args.registry.client_options()?;
    let mut client = RegistryClient::new(&client_options).map_err(|e| miette!("{e}"))?;
    if let Some(observer) = progress.transfer_observer() {
        client = client.observing_transfers(observer);
    }
    let secret_sources: BTreeMap<String, SecretSource> = args
        .secrets
        .iter()
        .map(|spec| parse_secret(spec))
        .collect::<Result<_, _>>()?;
    let ssh: BTreeMap<String, PathBuf> = args
        .ssh
        .iter()
        .map(|spec| parse_ssh(spec))
        .collect::<Result<_, _>>()?;
    // What an in-place build must not delete: what it reads or writes outside its store
    // once steps run (secrets are read before).
    let (kaniko_from, kaniko_to) = args.kaniko_cache.specs(&names)?;
    let cache_from = [parse_cache_specs(&args.cache_from)?, kaniko_from].concat();
    let cache_to = [parse_cache_specs(&args.cache_to)?, kaniko_to].concat();
    let base_cache = args.kaniko_cache.base_cache(None)?;
    let (isolation, in_place) = args.isolation.options(
        std::iter::once(dockerfile_path.as_path())
            .chain(ssh.values().map(PathBuf::as_path))
            .chain(cache_dirs(&cache_from, &cache_to, base_cache.as_ref()))
            .chain(outputs.iter().filter_map(Output::path))
            .chain(
                [&args.digest_file, &args.metadata_file, &args.iidfile]
                    .into_iter()
                    .flatten()
                    .map(PathBuf::as_path),
            )
            .chain(client_options.files().iter().map(PathBuf::as_path)),
    );
    let options = BuildOptions {
        dockerfile_path: dockerfile.name.clone(),
        ignore_file: ignore_file(&dockerfile_path, &context)?,
        context_dir: context,
        build_args,
        target: args.target.clone(),
        platforms,
        jobs: args.jobs.unwrap_or_else(default_jobs),
        qemu_dir: args.qemu_dir.clone(),
        sandbox_helper: std::env::current_exe().into_diagnostic()?,
        source_date_epoch,
        secrets: Secrets::load(&secret_sources).map_err(|e| miette!("{e}"))?,
        ssh,
        base_dir: args.base_dir.clone(),
        base_cache,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        labels: parse_labels(&args.labels)?,
        annotations,
        isolation,
        in_place,
        network: args.run_steps.network(),
        step_options: args.run_steps.step_options()?,
        cache_from,
        cache_to,
        layer_encoding: Output::layer_encoding(&outputs),
        attestations,
        named_contexts,
    };
    let clients = Clients {
        pull: &client,
        push: &client,
        cache: &client,
    };
    if args.skip_push_permission_check != Some(true) {
        check_push_access(&client, &outputs, &progress)?;
    }
    let (top, result) = build_and_deliver(
        &dockerfile,
        &options,
        &store,
        clients,
        &names,
        &outputs,
        &progress,
    )?;
    let write = |f: &PathBuf, digest: &kiln_oci::Digest| {
        std::fs::write(f, digest.to_string())
            .into_diagnostic()
            .wrap_err_with(|| format!("writing {}", f.display()))
    };
    if let Some(f) = &args.digest_file {
        write(f, &top.digest)?;
    }
    if let Some(f) = &args.iidfile {
        // The image ID a docker archive is loaded as is its config's digest; anything else
        // knows the image by its manifest's (or index's).
        let docker_only = !outputs.is_empty()
            && outputs
                .iter()
                .all(|o| matches!(o, Output::DockerArchive { .. }));
        match (docker_only, result.images.as_slice()) {
            (true, [image]) => write(f, &image.config.digest)?,
            _ => write(f, &top.digest)?,
        }
    }
    if let Some(f) = &args.metadata_file {
        BuildMetadata::new(&top, &result.images, &names, args.push_by_digest)
            .write(f)
            .map_err(|e| miette!("{e}"))?;
    }
    // An archive on standard output is the output; the digest would corrupt it.
    if quiet && !outputs.iter().any(Output::to_stdout) {
        println!("{}", top.digest);
    }
    Ok(())
}

/// As many platforms at once as there are cores.
pub(crate) fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many steps ran and how many came from the cache; then each step with its platform,
/// whether it ran under emulation (or came from the cache), and its time.
fn print_summary(progress: &Progress, result: &kiln_build::BuildResult) {
    if result.steps.is_empty() {
        return;
    }
    let count = |kind| result.steps.iter().filter(|s| s.kind == kind).count();
    progress.info(&format!(
        "build summary: {} steps ran, {} cached",
        count(StepKind::Ran),
        count(StepKind::Cached)
    ));
    for step in &result.steps {
        let how = match step.kind {
            StepKind::Cached => "cached",
            _ if step.emulated => "emulated",
            _ => "native",
        };
        progress.info(&format!(
            "  {:<16} {:<8} {:>8.2}s  [{}] {}",
            step.platform.to_string(),
            how,
            step.elapsed.as_secs_f64(),
            step.label,
            step.instruction
        ));
    }
}
