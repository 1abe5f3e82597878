//! `kiln du` and `kiln prune`: buildx's flags mapped onto kiln-build's `usage` module.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kiln_build::{Filters, Hold, PruneOptions, Store, Usage};
use miette::{IntoDiagnostic, Report, miette};

use crate::build_cmd::default_root;

#[derive(Args)]
pub struct PruneArgs {
    /// Also remove base images and internal records (plain prune keeps them).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only what matches: until=DURATION (not used for that long), id=PREFIX, type=TYPE
    /// (repeatable).
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Remove least recently used entries only until the cache takes no more than SIZE
    /// (e.g. 10GB, 512MiB).
    #[arg(long, value_name = "SIZE", value_parser = kiln_build::parse_size)]
    keep_storage: Option<u64>,
    /// Accepted for buildx's scripts: kiln never asks for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
    /// List each removed entry in full.
    #[arg(long)]
    verbose: bool,
    /// Give up if running builds still use the root after this long (e.g. 10m); by
    /// default prune waits for them.
    #[arg(long, value_name = "DURATION", value_parser = kiln_build::parse_duration)]
    timeout: Option<Duration>,
    /// kiln's cache and work directory.
    #[arg(long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
}

#[derive(Args)]
pub struct DuArgs {
    /// Only what matches: until=DURATION, id=PREFIX, type=TYPE (repeatable), as for prune.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Show every entry in full.
    #[arg(long)]
    verbose: bool,
    /// Output format: table, or json (exact bytes, for scripts).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
    /// kiln's cache and work directory.
    #[arg(long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
}

fn filters(specs: &[String]) -> Result<Filters, Report> {
    Filters::parse(specs).map_err(|e| miette!("--filter: {e}"))
}

pub fn prune(args: PruneArgs) -> Result<(), Report> {
    let _ = args.force;
    let options = PruneOptions {
        all: args.all,
        keep_storage: args.keep_storage,
        filters: filters(&args.filters)?,
    };
    let root = args.root.unwrap_or_else(default_root);
    let waiting = || {
        eprintln!(
            "kiln prune: waiting for the builds using {} to finish",
            root.display()
        )
    };
    let hold = Hold::Exclusive {
        timeout: args.timeout,
    };
    let store = Store::open_holding(&root, hold, &waiting).map_err(|e| miette!("{e}"))?;
    let pruned = kiln_build::prune(&store, &options).map_err(|e| miette!("{e}"))?;
    let now = kiln_build::now_secs();
    let mut out = match (args.verbose, pruned.removed.is_empty()) {
        (_, true) => String::new(),
        (true, false) => kiln_build::render_verbose(&pruned.removed, now),
        (false, false) => kiln_build::render_table(&pruned.removed, now),
    };
    out += &kiln_build::render_total(pruned.freed);
    print!("{out}");
    Ok(())
}

pub fn du(args: DuArgs) -> Result<(), Report> {
    let filters = filters(&args.filters)?;
    let root = args.root.unwrap_or_else(default_root);
    let usage = Usage::read(&root).map_err(|e| miette!("{e}"))?;
    let now = kiln_build::now_secs();
    let shown: Vec<_> = usage
        .entries
        .iter()
        .filter(|e| filters.matches(e, now))
        .cloned()
        .collect();
    if args.format == "json" {
        let summary = usage.summary();
        let json = serde_json::json!({ "entries": shown, "summary": summary });
        println!("{}", serde_json::to_string_pretty(&json).into_diagnostic()?);
        return Ok(());
    }
    let mut out = match args.verbose {
        true => kiln_build::render_verbose(&shown, now),
        false => kiln_build::render_table(&shown, now),
    };
    // As buildx: the totals of the whole root without a filter; with one, what it selected.
    out += &match filters.is_empty() {
        true => usage.summary().render(),
        false => kiln_build::render_total(shown.iter().map(|e| e.size).sum()),
    };
    print!("{out}");
    Ok(())
}
