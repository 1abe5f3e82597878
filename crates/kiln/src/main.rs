//! The `kiln` command line.

mod build_cmd;
mod buildx_flags;
mod cache_cmd;
mod check_cmd;
mod copy_cmd;
mod dockerfile_cmd;
mod executor_cmd;
mod imagetools_cmd;
mod isolation_args;
mod kaniko_cache_args;
mod login_cmd;
mod manifest_cmd;
mod registry_args;
mod report;
mod run_args;
mod warmer_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `kiln --version`: the crate's version, the commit it was built from and that commit's date.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KILN_COMMIT"),
    ", ",
    env!("KILN_COMMIT_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "kiln",
    version = VERSION,
    about = "Build container images from Dockerfiles, without a daemon or privileges"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Build an image from a Dockerfile (buildx and kaniko flags).
    Build(Box<build_cmd::BuildArgs>),
    /// Build with kaniko's executor flags and defaults (a drop-in for /kaniko/executor).
    Executor(Box<executor_cmd::ExecutorArgs>),
    /// Store base images in a directory for --cache-dir (kaniko's warmer).
    Warmer(warmer_cmd::WarmerArgs),
    /// Work with image indexes in registries.
    #[command(subcommand)]
    Manifest(manifest_cmd::ManifestCommand),
    /// Inspect registry images and merge them into indexes (buildx imagetools).
    #[command(subcommand)]
    Imagetools(imagetools_cmd::ImagetoolsCommand),
    /// Copy images between registries, OCI layouts and archives (skopeo copy syntax).
    Copy(copy_cmd::CopyArgs),
    /// Check credentials against a registry and save them (docker login).
    Login(login_cmd::LoginArgs),
    /// Remove saved credentials for a registry (docker logout).
    Logout(login_cmd::LogoutArgs),
    /// Lint a Dockerfile: BuildKit's build checks plus multi-platform checks.
    Check(check_cmd::CheckArgs),
    /// Inspect a Dockerfile the way kiln parses it.
    #[command(subcommand)]
    Dockerfile(dockerfile_cmd::DockerfileCommand),
    /// Remove build cache: step records, cache mounts, base images with --all (buildx prune).
    Prune(cache_cmd::PruneArgs),
    /// Show what the build cache holds and what prune would free (buildx du).
    Du(cache_cmd::DuArgs),
    /// Print kiln's version, the commit it was built from and that commit's date.
    Version,
    /// Print a shell completion script: `kiln completion bash > /etc/bash_completion.d/kiln`.
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: kiln.1 and one per subcommand (kiln-build.1, kiln-manifest-push.1, ...).
    Man {
        /// The directory to write them into, e.g. /usr/local/share/man/man1 (created if
        /// missing).
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// The command line; called `executor` (the image's `/kiln/executor`, in kaniko's place at
/// `/kaniko/executor`), kiln is `kiln executor`.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_os_string());
    if name.is_some_and(|n| n == "executor") {
        args.insert(1, "executor".into());
    }
    args
}

fn main() -> ExitCode {
    // Both must run before any thread exists: the helper re-enters namespaces.
    if let Err(e) = kiln_sandbox::enter_rootless_if_needed() {
        eprintln!("kiln: {e}");
        return ExitCode::from(1);
    }
    kiln_sandbox::helper_main_if_requested();

    // Long messages stay on one line: CI logs are searched, not read in a narrow terminal.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));
    let args = arguments();
    if args.get(1).is_some_and(|a| a == "build")
        && let Some(why) = buildx_flags::explain(&args[2..])
    {
        eprintln!("{why}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Commands::Build(args) => build_cmd::run(*args),
        Commands::Executor(args) => executor_cmd::run(*args),
        Commands::Warmer(args) => warmer_cmd::run(args),
        Commands::Manifest(cmd) => manifest_cmd::run(cmd),
        Commands::Imagetools(cmd) => imagetools_cmd::run(cmd),
        Commands::Copy(args) => copy_cmd::run(args),
        Commands::Login(args) => login_cmd::login(args),
        Commands::Logout(args) => login_cmd::logout(args),
        Commands::Check(args) => check_cmd::run(args),
        Commands::Dockerfile(cmd) => dockerfile_cmd::run(cmd),
        Commands::Prune(args) => cache_cmd::prune(args),
        Commands::Du(args) => cache_cmd::du(args),
        Commands::Version => {
            println!("kiln {VERSION}");
            Ok(())
        }
        Commands::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Written whole afterwards: clap_complete panics if its writer fails (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "kiln", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(miette::miette!("writing the completion script: {e}"))
                }
                _ => Ok(()),
            }
        }
        Commands::Man { dir } => write_man_pages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(1)
        }
    }
}

fn write_man_pages(dir: &std::path::Path) -> miette::Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir))
        .map_err(|e| miette::miette!("writing man pages into {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument a user can see says what it does.
    #[test]
    fn every_visible_flag_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_hide_set() && !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "kiln", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
