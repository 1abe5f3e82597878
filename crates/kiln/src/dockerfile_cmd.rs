//! `kiln dockerfile`: the parser's view of a Dockerfile, for tools and editors.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::report;

#[derive(Subcommand)]
pub enum DockerfileCommand {
    /// Parse a Dockerfile and print its instructions (arguments unexpanded).
    Parse(ParseArgs),
}

#[derive(Args)]
pub struct ParseArgs {
    /// Print JSON: directives, and per instruction keyword, flags, args, heredocs and lines.
    #[arg(long)]
    json: bool,
    /// The Dockerfile to parse.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

pub fn run(command: DockerfileCommand) -> Result<(), Report> {
    let DockerfileCommand::Parse(args) = command;
    if !args.json {
        return Err(miette!(
            "only JSON output exists so far: run `kiln dockerfile parse --json {}`",
            args.file.display()
        ));
    }
    let text = std::fs::read_to_string(&args.file)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read the Dockerfile {}", args.file.display()))?;
    let name = args.file.display().to_string();
    let df =
        kiln_dockerfile::parse_syntax(&name, &text).map_err(|e| report::parse_error(&e, &text))?;
    let json = serde_json::to_string_pretty(&kiln_dockerfile::to_json(&df)).into_diagnostic()?;
    println!("{json}");
    Ok(())
}
