//! `kiln build`: the buildx flags, with the kaniko executor's names as aliases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_build::{BuildError, BuildOptions, Output, Progress, ProgressMode, Store};
use kiln_oci::Platform;
use kiln_registry::{ClientOptions, Reference, RegistryClient};
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::report;

#[derive(Args)]
pub struct BuildArgs {
    /// The build context directory.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
    /// The build context (kaniko's spelling); overrides CONTEXT.
    #[arg(short = 'c', long = "context", value_name = "DIR")]
    context_flag: Option<PathBuf>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(
        short = 'f',
        long = "file",
        visible_alias = "dockerfile",
        value_name = "PATH"
    )]
    file: Option<PathBuf>,
    /// Name and tag the image (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// Push to this reference (kaniko's spelling of `-t NAME --push`; repeatable).
    #[arg(short = 'd', long = "destination", value_name = "NAME[:TAG]")]
    destinations: Vec<String>,
    /// Push the image to the registry named by each tag.
    #[arg(long)]
    push: bool,
    /// Build but do not push, even with --destination (kaniko).
    #[arg(long)]
    no_push: bool,
    /// Output: type=registry, type=image[,push=true], type=oci,dest=PATH[,tar=false].
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Write an OCI layout directory here (kaniko's --oci-layout-path).
    #[arg(long, value_name = "DIR")]
    oci_layout_path: Option<PathBuf>,
    /// A build-time variable; a bare KEY takes its value from the environment.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// Target platform, os/arch[/variant] (default: the host's).
    #[arg(long, alias = "custom-platform", value_name = "PLATFORM")]
    platform: Option<String>,
    /// Registries to reach over plain HTTP (repeatable). Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Progress output: auto, plain or quiet.
    #[arg(long, default_value = "auto", value_parser = ["auto", "plain", "tty", "quiet"])]
    progress: String,
    /// Write the image digest to this file (kaniko's --digest-file).
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// kiln's cache and work directory.
    #[arg(long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
}

fn default_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("kiln");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/kiln");
    }
    std::env::temp_dir().join("kiln")
}

fn parse_output(spec: &str, names: &[Reference]) -> Result<Option<Output>, Report> {
    let mut kv = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        kv.insert(k.trim().to_string(), v.trim().to_string());
    }
    let kind = kv.get("type").map(String::as_str).unwrap_or("");
    let named = |kv: &BTreeMap<String, String>| -> Result<Vec<Reference>, Report> {
        match kv.get("name") {
            Some(n) => n
                .split(',')
                .map(|s| s.parse::<Reference>().map_err(|e| miette!("{e}")))
                .collect(),
            None => Ok(names.to_vec()),
        }
    };
    match kind {
        "registry" => Ok(Some(Output::Registry(named(&kv)?))),
        "image" if kv.get("push").is_some_and(|v| v == "true") => {
            Ok(Some(Output::Registry(named(&kv)?)))
        }
        "image" => Ok(None),
        "oci" => {
            let dest = kv
                .get("dest")
                .filter(|d| !d.is_empty())
                .ok_or_else(|| miette!("-o type=oci needs dest=PATH"))?;
            if kv.get("tar").is_some_and(|v| v == "false") {
                Ok(Some(Output::OciDir(PathBuf::from(dest))))
            } else {
                Ok(Some(Output::OciArchive(PathBuf::from(dest))))
            }
        }
        other => Err(miette!(
            "output type `{other}` is not supported by this version of kiln (supported: registry, image, oci)"
        )),
    }
}

/// The `.dockerignore` BuildKit would use: `<Dockerfile>.dockerignore` beside the Dockerfile
/// wins over the one at the context root.
fn ignore_file(dockerfile: &Path, context: &Path) -> Option<PathBuf> {
    let beside = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    [beside, context.join(".dockerignore")]
        .into_iter()
        .find(|p| p.is_file())
}

pub fn run(args: BuildArgs) -> Result<(), Report> {
    let context = args.context_flag.clone().unwrap_or(args.context.clone());
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read the Dockerfile {}", dockerfile.display()))?;
    let df_name = dockerfile.display().to_string();
    let df = kiln_dockerfile::parse(&df_name, &text).map_err(|e| report::parse_error(&e, &text))?;

    let mut names = Vec::new();
    for t in args.tags.iter().chain(&args.destinations) {
        names.push(t.parse::<Reference>().map_err(|e| miette!("{e}"))?);
    }
    let mut outputs = Vec::new();
    for spec in &args.outputs {
        outputs.extend(parse_output(spec, &names)?);
    }
    let push_requested = args.push || (!args.destinations.is_empty() && !args.no_push);
    if push_requested && !args.no_push {
        if names.is_empty() {
            return Err(miette!("--push needs at least one -t NAME:TAG to push to"));
        }
        outputs.push(Output::Registry(names.clone()));
    }
    if let Some(dir) = &args.oci_layout_path {
        outputs.push(Output::OciDir(dir.clone()));
    }
    if outputs
        .iter()
        .any(|o| matches!(o, Output::Registry(tags) if tags.is_empty()))
    {
        return Err(miette!(
            "pushing needs a name: pass -t NAME:TAG or -o type=registry,name=NAME:TAG"
        ));
    }

    let mut build_args = BTreeMap::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            None => std::env::var(a)
                .ok()
                .and_then(|v| build_args.insert(a.clone(), v)),
        };
    }
    let platform = match &args.platform {
        None => Platform::host(),
        Some(p) if p.contains(',') => {
            return Err(miette!(
                "building several platforms at once is not supported by this version of kiln yet; pass one --platform"
            ));
        }
        Some(p) => p.parse::<Platform>().map_err(|e| miette!("{e}"))?,
    };
    let source_date_epoch = build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .and_then(|v| v.parse().ok());

    let root = args.root.clone().unwrap_or_else(default_root);
    let store = Store::open(&root).map_err(|e| miette!("{e}"))?;
    let client = RegistryClient::new(&ClientOptions {
        insecure_registries: args.insecure_registries.clone(),
    })
    .map_err(|e| miette!("{e}"))?;
    let progress = Progress::new(if args.progress == "quiet" {
        ProgressMode::Quiet
    } else {
        ProgressMode::Plain
    });
    let options = BuildOptions {
        dockerfile_path: df_name.clone(),
        ignore_file: ignore_file(&dockerfile, &context),
        context_dir: context,
        build_args,
        target: args.target.clone(),
        platform,
        sandbox_helper: std::env::current_exe().into_diagnostic()?,
        source_date_epoch,
    };
    let to_report = |e: BuildError| match e {
        BuildError::Parse(p) => report::parse_error(&p, &text),
        BuildError::Dockerfile {
            path,
            line,
            message,
        } => report::line_error(&path, line, &message, &text),
        BuildError::MissingSource { ref path, line, .. }
        | BuildError::UnknownStage { ref path, line, .. } => {
            // The report shows `path:line` itself; keep everything after it (the source name).
            let message = e.to_string();
            let message = message
                .strip_prefix(&format!("{path}:{line}: "))
                .unwrap_or(&message);
            report::line_error(path, line, message, &text)
        }
        other => miette!("{other}"),
    };
    let started = std::time::Instant::now();
    let image = kiln_build::build(&df, &options, &store, &client, &progress).map_err(to_report)?;
    kiln_build::deliver(&store, &client, &image, &names, &outputs, &progress).map_err(to_report)?;
    progress.info(&format!(
        "built {} for {} in {:.1}s",
        image.manifest.digest,
        image.platform,
        started.elapsed().as_secs_f64()
    ));
    if let Some(f) = &args.digest_file {
        std::fs::write(f, image.manifest.digest.to_string()).into_diagnostic()?;
    }
    if args.progress == "quiet" {
        println!("{}", image.manifest.digest);
    }
    Ok(())
}
