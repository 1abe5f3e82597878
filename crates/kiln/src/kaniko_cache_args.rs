//! kaniko's cache flags, honoured alike by `kiln build` and `kiln executor`: the registry
//! cache (`--cache`, `--cache-repo`, ...) mapped onto `--cache-from`/`--cache-to` specs, and
//! the base-image cache (`--cache-dir`).

use std::path::{Path, PathBuf};

use clap::Args;
use clap::builder::BoolishValueParser;
use kiln_build::{CacheLocation, CacheMode, CacheSpec};
use kiln_registry::Reference;
use kiln_transport::BaseImageCache;
use miette::{Report, miette};

/// kaniko's default `--cache-ttl`: two weeks.
const DEFAULT_TTL: &str = "336h";

/// kaniko's booleans are Go flags: `--flag`, `--flag=true` or `--flag=false`.
#[derive(Args)]
#[command(next_help_heading = "Cache (kaniko's flags)")]
pub struct KanikoCacheArgs {
    /// Use a registry cache of step results (kaniko): at --cache-repo, else at the first
    /// destination's repository with `/cache` added. Read, and written unless
    /// --no-push-cache.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    cache: Option<bool>,
    /// The registry repository of the --cache=true cache, or `oci:DIR` for an OCI layout.
    #[arg(long, alias = "cacheRepo", value_name = "REPO|oci:DIR")]
    cache_repo: Option<String>,
    /// A directory of base images written by kaniko's warmer or `kiln warmer`: FROM images
    /// found there (by their manifest's digest) are read from it, not pulled.
    #[arg(long, alias = "cacheDir", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Cache records and --cache-dir images older than this are not used (e.g. 336h, 30m).
    #[arg(long, alias = "cacheTTL", value_name = "DURATION")]
    cache_ttl: Option<String>,
    /// Read the --cache=true cache but do not write to it.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    no_push_cache: Option<bool>,
    /// Cache RUN steps' results (default true).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    cache_run_layers: Option<bool>,
    /// Cache COPY and ADD steps' results (default true: kiln keys them by what they copy).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    cache_copy_layers: Option<bool>,
}

impl KanikoCacheArgs {
    fn ttl(&self) -> Result<std::time::Duration, Report> {
        let ttl = self.cache_ttl.as_deref().unwrap_or(DEFAULT_TTL);
        kiln_build::parse_duration(ttl).map_err(|e| miette!("--cache-ttl: {e}"))
    }

    /// The `--cache-from` and `--cache-to` specs `--cache=true` stands for: the cache at
    /// `--cache-repo`, else at `names[0]`'s repository plus `/cache`, as kaniko derives it;
    /// every stage's steps, as kaniko caches them.
    pub fn specs(&self, names: &[Reference]) -> Result<(Vec<CacheSpec>, Vec<CacheSpec>), Report> {
        if self.cache != Some(true) {
            return Ok((Vec::new(), Vec::new()));
        }
        let location = match (&self.cache_repo, names.first()) {
            (Some(repo), _) => match repo.strip_prefix("oci:") {
                Some(dir) if !dir.is_empty() => CacheLocation::Local {
                    dir: PathBuf::from(dir),
                    tag: "latest".into(),
                },
                Some(_) => return Err(miette!("--cache-repo {repo}: the layout path is empty")),
                None => CacheLocation::Registry(
                    repo.parse()
                        .map_err(|e| miette!("--cache-repo {repo}: {e}"))?,
                ),
            },
            (None, Some(name)) => CacheLocation::Registry(
                format!("{}/{}/cache", name.registry, name.repository)
                    .parse()
                    .map_err(|e| miette!("the cache repository derived from {name}: {e}"))?,
            ),
            (None, None) => {
                return Err(miette!(
                    "--cache=true needs --cache-repo, or a destination to derive it from"
                ));
            }
        };
        let spec = CacheSpec {
            location,
            mode: CacheMode::Max,
            ignore_error: true,
            ttl: Some(self.ttl()?),
            run_steps: self.cache_run_layers.unwrap_or(true),
            copy_steps: self.cache_copy_layers.unwrap_or(true),
            // A kaniko cache repo is shared by the projects and branches that name it.
            merge: true,
        };
        let to = match self.no_push_cache == Some(true) {
            true => Vec::new(),
            false => vec![spec.clone()],
        };
        Ok((vec![spec], to))
    }

    /// kaniko's `--cache-dir`, or `default` when it is a directory (kaniko executor's
    /// `/cache`).
    pub fn base_cache(&self, default: Option<&Path>) -> Result<Option<BaseImageCache>, Report> {
        let dir = match (&self.cache_dir, default) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) if dir.is_dir() => dir.to_path_buf(),
            (None, _) => return Ok(None),
        };
        Ok(Some(BaseImageCache::new(dir, self.ttl()?)))
    }
}
