//! `kiln check`: lint a Dockerfile without building it.

use std::path::PathBuf;

use clap::Args;
use kiln_dockerfile::Level;
use miette::{IntoDiagnostic, Report, WrapErr, miette};

use crate::report;

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
    let text = std::fs::read_to_string(&dockerfile)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read the Dockerfile {}", dockerfile.display()))?;
    let name = dockerfile.display().to_string();
    let df = kiln_dockerfile::parse(&name, &text).map_err(|e| report::parse_error(&e, &text))?;
    let findings = kiln_dockerfile::check(&df);
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
