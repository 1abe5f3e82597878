//! `kiln executor`: kaniko's executor command line, with kaniko's defaults, mapped onto the
//! same build as `kiln build`. A job that ran `/kaniko/executor ...` runs `/kiln/executor ...`.

use std::path::{Component, Path, PathBuf};

use clap::Args;
use clap::builder::BoolishValueParser;
use kiln_build::{
    BuildOptions, ImageFormat, LogStyle, Output, OutputFlags, Progress, ProgressMode, Secrets,
};
use kiln_registry::{ClientOptions, Reference, RegistryClient, RetryPolicy};
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::build_cmd::{self, Clients, DEFAULT_KILN_DIR};

/// kaniko executor's `--cache-dir` default, used when it is a directory.
const KANIKO_CACHE_DIR: &str = "/cache";
use crate::isolation_args::IsolationArgs;
use crate::kaniko_cache_args::KanikoCacheArgs;
use crate::registry_args::RegistryArgs;

/// kaniko's booleans are Go flags: `--flag`, `--flag=true` or `--flag=false`, hence
/// `require_equals` and `Option<bool>` (`None`: not given).
#[derive(Args)]
pub struct ExecutorArgs {
    /// The build context: a directory (or dir://DIR), or a tar archive, plain or compressed
    /// (tar://FILE; tar://stdin reads it from standard input).
    #[arg(
        short = 'c',
        long,
        default_value = "/workspace/",
        value_name = "DIR|dir://DIR|tar://FILE"
    )]
    context: String,
    /// A directory inside the context to use as the context.
    #[arg(long, value_name = "PATH")]
    context_sub_path: Option<PathBuf>,
    /// The Dockerfile: a path as given, else relative to the context.
    #[arg(short = 'f', long, default_value = "Dockerfile", value_name = "PATH")]
    dockerfile: PathBuf,
    /// Push the image here (repeatable).
    #[arg(short = 'd', long = "destination", value_name = "NAME[:TAG]")]
    destinations: Vec<String>,
    /// Build (and write files) without pushing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    no_push: Option<bool>,
    /// Write the image as a `docker save` archive here, tagged with every destination.
    #[arg(long, alias = "tarPath", value_name = "FILE")]
    tar_path: Option<PathBuf>,
    /// Write the image as an OCI layout directory here.
    #[arg(long, value_name = "DIR")]
    oci_layout_path: Option<PathBuf>,
    /// Write the image's digest here.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Write `NAME@DIGEST` here, one line per destination.
    #[arg(long, value_name = "FILE")]
    image_name_with_digest_file: Option<PathBuf>,
    /// Write `NAME:TAG@DIGEST` here, one line per destination.
    #[arg(long, value_name = "FILE")]
    image_name_tag_with_digest_file: Option<PathBuf>,
    /// A build-time variable (repeatable); a bare KEY takes its value from the environment.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// A label for the image (repeatable); it wins over the Dockerfile's LABEL.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// Do not check, before the first step, that every destination takes pushes.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    skip_push_permission_check: Option<bool>,
    /// Build only the stages the target needs; kiln always does.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    skip_unused_stages: Option<bool>,
    /// The platform to build for (default: the host's).
    #[arg(long, alias = "customPlatform", value_name = "OS/ARCH[/VARIANT]")]
    custom_platform: Option<String>,
    /// Timestamps of 1970 in the image and its files, so rebuilds give the same digest
    /// (a SOURCE_DATE_EPOCH build arg wins).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    reproducible: Option<bool>,
    /// How the image's new layers are compressed: gzip or zstd (also estargz and
    /// uncompressed, as buildx's compression=).
    #[arg(long, value_name = "NAME", default_value = "gzip")]
    compression: String,
    /// The compression level: 0 to 9 for gzip, 1 to 19 for zstd.
    #[arg(long, value_name = "N")]
    compression_level: Option<i64>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Do not verify TLS certificates of the registries base images come from.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    skip_tls_verify_pull: Option<bool>,
    /// Push to registries that speak plain HTTP (TLS is tried first).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    insecure: Option<bool>,
    /// Pull from registries that speak plain HTTP (TLS is tried first).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    insecure_pull: Option<bool>,
    /// Retries of a failed push request (kiln retries 4 times at least).
    #[arg(long, value_name = "N", default_value_t = 0)]
    push_retry: u32,
    /// Retries of a failed download request (kiln retries 4 times at least).
    #[arg(long, value_name = "N", default_value_t = 0)]
    image_download_retry: u32,
    /// panic, fatal, error and warn print only warnings and errors; info, debug and trace
    /// print every step.
    #[arg(short = 'v', long, default_value = "info", value_parser = ["panic", "fatal", "error", "warn", "info", "debug", "trace"])]
    verbosity: String,
    /// text and color: kiln's own lines; json: one JSON object per line (level, msg, time).
    #[arg(long, default_value = "color", value_parser = ["text", "color", "json"])]
    log_format: String,
    /// Put the time in front of every line.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    log_timestamp: Option<bool>,
    /// kiln's cache and work directory.
    #[arg(long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(flatten)]
    isolation: IsolationArgs,

    // kaniko's snapshot options, which have no meaning for kiln: one notice.
    #[arg(long, hide = true, alias = "snapshotMode")]
    snapshot_mode: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    use_new_run: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    single_snapshot: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    compressed_caching: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ignore_var_run: Option<String>,
    #[arg(long, hide = true)]
    image_fs_extract_retry: Option<String>,

    #[command(flatten)]
    kaniko_cache: KanikoCacheArgs,
}

/// kaniko keeps separate TLS and plain-HTTP settings for pulling base images and pushing.
#[derive(Clone, Copy)]
enum Direction {
    Pull,
    Push,
}

/// Where the build context comes from.
enum ContextSource {
    Dir(PathBuf),
    Tar(PathBuf),
    TarStdin,
}

fn parse_context(given: &str) -> Result<ContextSource, Report> {
    if let Some(dir) = given.strip_prefix("dir://") {
        return Ok(ContextSource::Dir(PathBuf::from(dir)));
    }
    if let Some(file) = given.strip_prefix("tar://") {
        return Ok(if file == "stdin" {
            ContextSource::TarStdin
        } else {
            ContextSource::Tar(PathBuf::from(file))
        });
    }
    if let Some((scheme, _)) = given.split_once("://") {
        let given = kiln_build::redacted_url(given);
        return Err(miette!(
            "--context {given}: kiln reads dir:// and tar:// contexts, not {scheme}://; \
             fetch it first (git clone, or download the archive) and pass the directory or \
             tar://FILE"
        ));
    }
    Ok(ContextSource::Dir(PathBuf::from(given)))
}

/// `sub` inside `context`, as kaniko joins them: a leading `/` does not leave the context.
fn sub_path(context: &Path, sub: &Path) -> PathBuf {
    let rel: PathBuf = sub
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    context.join(rel)
}

/// kaniko's Dockerfile lookup: the path as given if it exists, else relative to the context
/// (and then inside it, unless the path says `..`).
fn resolve_dockerfile(given: &Path, context: &Path) -> Result<PathBuf, Report> {
    if given.is_absolute() || given.exists() {
        return build_cmd::context_dockerfile(Some(given), context);
    }
    let in_context = context.join(given);
    if in_context.exists() {
        // `..` in the flag is the user's choice to look outside; a symlink is the context's.
        if !given.components().any(|c| c == Component::ParentDir) {
            build_cmd::within_context("the Dockerfile", &in_context, context)?;
        }
        return Ok(in_context);
    }
    Err(miette!(
        "no Dockerfile at {} or {}: pass --dockerfile PATH (absolute, or relative to the context)",
        given.display(),
        in_context.display()
    ))
}

/// kaniko's `--image-name-with-digest-file` (`NAME@DIGEST`) and, with `with_tag`,
/// `--image-name-tag-with-digest-file` (`NAME:TAG@DIGEST`): one line per destination.
fn names_with_digest(names: &[Reference], digest: &str, with_tag: bool) -> String {
    names
        .iter()
        .map(|r| {
            let tag = match (&r.tag, with_tag) {
                (Some(tag), true) => format!(":{tag}"),
                _ => String::new(),
            };
            format!("{}/{}{tag}@{digest}\n", r.registry, r.repository)
        })
        .collect()
}

impl ExecutorArgs {
    /// One line naming the given kaniko flags kiln has no use for.
    fn notice(&self) -> Option<String> {
        let given = |name: &str, set: bool| set.then(|| format!("--{name}"));
        let meaningless: Vec<String> = [
            given("snapshot-mode", self.snapshot_mode.is_some()),
            given("use-new-run", self.use_new_run.is_some()),
            given("single-snapshot", self.single_snapshot.is_some()),
            given("compressed-caching", self.compressed_caching.is_some()),
            given("ignore-var-run", self.ignore_var_run.is_some()),
            given(
                "image-fs-extract-retry",
                self.image_fs_extract_retry.is_some(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!meaningless.is_empty()).then(|| {
            format!(
                "notice: ignoring {}: kiln finds each step's changes from a record of every \
                 file's metadata (ctime included) and writes one layer per step, so kaniko's \
                 snapshot options have no meaning here",
                meaningless.join(", ")
            )
        })
    }

    /// A registry client's options for pulls or for pushes: the flags kaniko shares with `kiln build`,
    /// kaniko's TLS and plain-HTTP flags for that direction, credentials from kiln's
    /// directory, and the retries asked for.
    fn client_options(&self, direction: Direction) -> Result<ClientOptions, Report> {
        let (skip_verify, http_fallback, retries) = match direction {
            Direction::Pull => (
                self.skip_tls_verify_pull == Some(true),
                self.insecure_pull,
                self.image_download_retry,
            ),
            Direction::Push => (
                self.registry.skip_tls_verify,
                self.insecure,
                self.push_retry,
            ),
        };
        let registry = RegistryArgs {
            skip_tls_verify: skip_verify,
            ..self.registry.clone()
        };
        let mut options = registry.client_options()?;
        options.config.http_fallback = http_fallback == Some(true);
        // kaniko's image sets DOCKER_CONFIG=/kaniko/.docker, and --kaniko-dir moves it to
        // DIR/.docker; kiln's directory plays that part.
        let docker_dir = match (&self.isolation.kiln_dir, std::env::var_os("DOCKER_CONFIG")) {
            (Some(dir), _) => dir.join(".docker"),
            (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
            (None, _) => Path::new(DEFAULT_KILN_DIR).join(".docker"),
        };
        options.credentials.docker_config = docker_dir.join("config.json");
        options.retry = RetryPolicy {
            attempts: options.retry.attempts.max(retries.saturating_add(1)),
            ..options.retry
        };
        Ok(options)
    }
}

pub fn run(args: ExecutorArgs) -> Result<(), Report> {
    let no_push = args.no_push == Some(true);
    if !no_push && args.destinations.is_empty() {
        return Err(miette!("you must provide --destination, or use --no-push"));
    }
    let names = args
        .destinations
        .iter()
        .map(|d| {
            d.parse::<Reference>()
                .map_err(|e| miette!("--destination {d}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let needs_names = [
        (
            "--image-name-with-digest-file",
            &args.image_name_with_digest_file,
        ),
        (
            "--image-name-tag-with-digest-file",
            &args.image_name_tag_with_digest_file,
        ),
        ("--tar-path", &args.tar_path),
    ];
    for (flag, value) in needs_names {
        if value.is_some() && names.is_empty() {
            return Err(miette!(
                "{flag} needs at least one --destination to name the image"
            ));
        }
    }
    let quiet = matches!(
        args.verbosity.as_str(),
        "panic" | "fatal" | "error" | "warn"
    );
    let progress = Progress::new(if quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Plain
    })
    .styled(LogStyle {
        json: args.log_format == "json",
        timestamps: args.log_timestamp == Some(true),
    });
    if let Some(notice) = args.notice() {
        progress.info(&notice);
    }

    let root = args.root.clone().unwrap_or_else(build_cmd::default_root);
    let store = build_cmd::open_store(&root, &progress)?;
    // A tar context is unpacked into kiln's own scratch space, removed when the build ends.
    let unpacked;
    let context = match parse_context(&args.context)? {
        ContextSource::Dir(dir) => dir,
        source => {
            unpacked = store.temp_dir("context-").map_err(|e| miette!("{e}"))?;
            let archive = match source {
                ContextSource::Tar(file) => file,
                _ => {
                    let path = unpacked.path().join("stdin.tar");
                    build_cmd::save_stdin(&path)
                        .wrap_err("reading the build context from standard input")?;
                    path
                }
            };
            let dir = unpacked.path().join("context");
            std::fs::create_dir(&dir).into_diagnostic()?;
            kiln_build::unpack_context(&archive, &dir).map_err(|e| miette!("{e}"))?;
            dir
        }
    };
    let context = match &args.context_sub_path {
        Some(sub) => {
            let inner = sub_path(&context, sub);
            let dotdot = sub.components().any(|c| c == Component::ParentDir);
            if inner.is_dir() && !dotdot {
                build_cmd::within_context("--context-sub-path", &inner, &context)?;
            }
            inner
        }
        None => context,
    };
    if !context.is_dir() {
        return Err(miette!(
            "the build context {} is not a directory",
            context.display()
        ));
    }
    let dockerfile_path = resolve_dockerfile(&args.dockerfile, &context)?;
    let dockerfile = build_cmd::read_dockerfile(&dockerfile_path)?;

    let platforms =
        build_cmd::parse_platforms(args.custom_platform.as_slice(), "--custom-platform")?;
    let output_flags = OutputFlags {
        push: !no_push,
        oci_layout_path: args.oci_layout_path.as_deref(),
        docker_archive_path: args.tar_path.as_deref(),
        format: ImageFormat::compressed(&args.compression, args.compression_level)
            .map_err(|e| miette!("--compression: {e}"))?,
        ..OutputFlags::default()
    };
    let outputs =
        Output::from_flags(&output_flags, &names, platforms.len()).map_err(|e| miette!("{e}"))?;
    let build_args = build_cmd::parse_build_args(&args.build_args);
    let reproducible = args.reproducible == Some(true);
    let source_date_epoch = build_cmd::source_date_epoch(&build_args).or(reproducible.then_some(0));
    let (cache_from, cache_to) = args.kaniko_cache.specs(&names)?;
    let base_cache = args
        .kaniko_cache
        .base_cache(Some(Path::new(KANIKO_CACHE_DIR)))?;
    let pull_options = args.client_options(Direction::Pull)?;
    let push_options = args.client_options(Direction::Push)?;
    let client = |options: &ClientOptions| RegistryClient::new(options).map_err(|e| miette!("{e}"));
    let (pull, push) = (client(&pull_options)?, client(&push_options)?);
    let registry_files: Vec<PathBuf> = [pull_options.files(), push_options.files()].concat();
    // What an in-place build must not delete: what it writes outside its store.
    let (isolation, in_place) = args.isolation.options(
        std::iter::once(dockerfile_path.as_path())
            .chain(outputs.iter().filter_map(Output::path))
            .chain(build_cmd::cache_dirs(
                &cache_from,
                &cache_to,
                base_cache.as_ref(),
            ))
            .chain(registry_files.iter().map(PathBuf::as_path))
            .chain(
                [
                    &args.digest_file,
                    &args.image_name_with_digest_file,
                    &args.image_name_tag_with_digest_file,
                ]
                .into_iter()
                .filter_map(|f| f.as_deref()),
            ),
    );
    let options = BuildOptions {
        dockerfile_path: dockerfile.name.clone(),
        ignore_file: build_cmd::ignore_file(&dockerfile_path, &context)?,
        context_dir: context,
        build_args,
        target: args.target.clone(),
        platforms,
        jobs: build_cmd::default_jobs(),
        qemu_dir: std::env::var_os("KILN_QEMU_DIR").map(PathBuf::from),
        sandbox_helper: std::env::current_exe().into_diagnostic()?,
        source_date_epoch,
        secrets: Secrets::default(),
        ssh: Default::default(),
        base_dir: None,
        base_cache,
        no_cache: false,
        no_cache_filter: Vec::new(),
        labels: build_cmd::parse_labels(&args.labels)?,
        annotations: Default::default(),
        isolation,
        in_place,
        // kaniko has no --network, --add-host, --ulimit or --shm-size.
        network: Default::default(),
        step_options: Default::default(),
        cache_from,
        cache_to,
        layer_encoding: Output::layer_encoding(&outputs),
        // kaniko has no attestations.
        attestations: Default::default(),
        named_contexts: Default::default(),
    };
    // kaniko reaches its cache repo with the push flags, reading as writing.
    let clients = Clients {
        pull: &pull,
        push: &push,
        cache: &push,
    };
    if args.skip_push_permission_check != Some(true) {
        build_cmd::check_push_access(&push, &outputs, &progress)?;
    }
    let (top, _) = build_cmd::build_and_deliver(
        &dockerfile,
        &options,
        &store,
        clients,
        &names,
        &outputs,
        &progress,
    )?;
    let digest = top.digest.to_string();
    let write = |path: &Path, content: &str| {
        std::fs::write(path, content)
            .into_diagnostic()
            .wrap_err_with(|| format!("writing {}", path.display()))
    };
    if let Some(f) = &args.digest_file {
        write(f, &digest)?;
    }
    if let Some(f) = &args.image_name_with_digest_file {
        write(f, &names_with_digest(&names, &digest, false))?;
    }
    if let Some(f) = &args.image_name_tag_with_digest_file {
        write(f, &names_with_digest(&names, &digest, true))?;
    }
    Ok(())
}
