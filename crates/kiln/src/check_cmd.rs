//! `kiln check`: lint a Dockerfile without building it.

use std::path::PathBuf;

use clap::Args;
use kiln_dockerfile::Level;
use miette::{Report, miette};

#[derive(Args)]
pub struct CheckArgs {
    /// The build context directory (where the Dockerfile is looked for).
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(
        short = 'f',
        long = "file",
        visible_alias = "dockerfile",
        value_name = "PATH"
    )]
    file: Option<PathBuf>,
}

/// Prints every finding as `FILE:LINE: Rule: message` with the source line under it. Fails
/// when a finding is an error (all are, with `# check=error=true`).
pub fn run(args: CheckArgs) -> Result<(), Report> {
    let dockerfile = crate::build_cmd::context_dockerfile(args.file.as_deref(), &args.context)?;
    let crate::build_cmd::DockerfileSource { name, text, parsed } =
        crate::build_cmd::read_dockerfile(&dockerfile)?;
    let findings = kiln_dockerfile::check(&parsed);
    let lines: Vec<&str> = text.lines().collect();
    for finding in &findings {
        let source = lines.get(finding.line - 1).copied().unwrap_or_default();
        println!(
            "{name}:{}: {}: {}\n {} | {}",
            finding.line, finding.rule, finding.message, finding.line, source
        );
    }
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    let warnings = findings.len() - errors;
    if errors > 0 {
        return Err(miette!(
            "{name}: {errors} check(s) failed as errors, {warnings} warning(s)"
        ));
    }
    eprintln!("{name}: {warnings} warning(s)");
    Ok(())
}
