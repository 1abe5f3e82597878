//! Puts the commit kiln is built from, and that commit's date, into `kiln --version`. The
//! commit's date rather than the build's, so that building the same commit twice gives the
//! same binary (kiln's own image is built reproducibly). Without git (a source tarball):
//! "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KILN_COMMIT={commit}");
    println!("cargo:rustc-env=KILN_COMMIT_DATE={date}");
    // Built again when HEAD moves (a commit, a checkout); `--git-path` finds each file in a
    // worktree too. (Paths are relative to this package, as cargo reads them.)
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
