//! How RUN steps are isolated: the flags `kiln build` and `kiln executor` share.

use std::path::{Path, PathBuf};

use clap::Args;
use clap::builder::BoolishValueParser;
use kiln_build::{InPlaceOptions, Isolation};

#[derive(Args, Clone, Debug)]
pub struct IsolationArgs {
    /// How RUN steps run: `namespaces` (kiln's own user and mount namespaces), `in-place`
    /// (directly in the / kiln runs in, as kaniko does: for containers that refuse
    /// namespaces), or `auto`: namespaces, unless kiln runs in a container that refuses them.
    #[arg(long, env = "KILN_ISOLATION", default_value = "auto", value_parser = ["auto", "namespaces", "in-place"])]
    pub isolation: String,
    /// kiln's own directory, which in-place builds leave alone (kaniko's --kaniko-dir);
    /// `kiln executor` reads credentials from DIR/.docker. Default: /kiln.
    #[arg(long, alias = "kaniko-dir", env = "KILN_DIR", value_name = "DIR")]
    pub kiln_dir: Option<PathBuf>,
    /// A path in-place builds leave alone, besides kiln's directory and every mount point
    /// (repeatable; `KILN_IGNORE_PATH` takes a `:`-separated list, as kiln's debug image sets
    /// for its /busybox).
    #[arg(
        long,
        value_name = "PATH",
        env = "KILN_IGNORE_PATH",
        value_delimiter = ':'
    )]
    pub ignore_path: Vec<PathBuf>,
    /// Build in place even where kiln finds no sign of a container (it rewrites /).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub force: Option<bool>,
    /// After an in-place build, remove what the build left in / (kaniko's --cleanup).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub cleanup: Option<bool>,
}

impl IsolationArgs {
    /// The isolation asked for, and what in-place builds leave alone: kiln's directory,
    /// `--ignore-path`s, and `files` the build reads or writes outside kiln's store.
    pub fn options<'a>(
        &self,
        files: impl IntoIterator<Item = &'a Path>,
    ) -> (Isolation, InPlaceOptions) {
        let isolation = match self.isolation.as_str() {
            "namespaces" => Isolation::Namespaces,
            "in-place" => Isolation::InPlace,
            _ => Isolation::Auto,
        };
        let mut keep = self.ignore_path.clone();
        if let Some(listed) = std::env::var_os("KILN_IGNORE_PATH") {
            keep.extend(std::env::split_paths(&listed).filter(|p| !p.as_os_str().is_empty()));
        }
        keep.extend(files.into_iter().map(Path::to_path_buf));
        let defaults = InPlaceOptions::default();
        let options = InPlaceOptions {
            kiln_dir: self.kiln_dir.clone().unwrap_or(defaults.kiln_dir),
            keep,
            force: self.force == Some(true),
            cleanup: self.cleanup == Some(true),
        };
        (isolation, options)
    }
}
