//! Build contexts that are not a directory here, as `docker buildx build` takes them: a git
//! repository (`https://host/repo.git#ref:subdir`, `git@host:repo.git`, `git://`, `ssh://`,
//! `file://`), or an http(s) URL of a tar archive (plain or compressed) or of a lone
//! Dockerfile. Each is fetched into a directory of kiln's scratch space and is then a
//! directory context like any other.
//!
//! git runs as the `git` program: it brings the user's own credential helpers, ssh setup and
//! `insteadOf` rules, which a library would have to re-implement (see docs/contexts.md).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::BuildError;
use crate::base::OCI_LAYOUT_SCHEME;
use crate::context::try_unpack_context;
use crate::fileops::http_get;
use crate::progress::Progress;

/// The most an http(s) context may weigh as downloaded (before it is unpacked, which has
/// limits of its own).
pub const MAX_CONTEXT_DOWNLOAD_BYTES: u64 = 4 << 30;

/// A context to fetch before the build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteContext {
    Git(GitContext),
    /// An http(s) URL that is not a git repository: a tar archive or a Dockerfile.
    Http(String),
}

/// `REMOTE#REF:SUBDIR`, as BuildKit's git references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitContext {
    /// What `git fetch` is given.
    pub remote: String,
    /// A branch, tag or commit; the remote's HEAD when absent.
    pub reference: Option<String>,
    /// The directory of the repository that is the context.
    pub subdir: Option<String>,
}

/// A context as fetched: the directory, and the Dockerfile when the download was one.
pub struct FetchedContext {
    pub dir: PathBuf,
    pub dockerfile: Option<PathBuf>,
}

/// What a `--build-context NAME=VALUE` stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// An image, as FROM names it: `docker-image://REF` is `REF`, `oci-layout://DIR[:TAG]`
    /// stays as it is.
    Image(String),
    /// A directory: a local one, or a git or http(s) context fetched into it.
    Dir(PathBuf),
}

impl NamedContext {
    /// `NAME=VALUE` as buildx takes it: VALUE is `docker-image://REF`, `oci-layout://...`, a
    /// git or http(s) URL (fetched under `scratch`, an empty dir the caller removes after the
    /// build) or a local directory.
    pub fn parse(
        spec: &str,
        scratch: &Path,
        progress: &Progress,
    ) -> Result<(String, NamedContext), BuildError> {
        let fail = |message: String| BuildError::RemoteContext {
            context: format!("--build-context {}", redacted(spec)),
            message,
        };
        let (name, value) = spec
            .split_once('=')
            .filter(|(name, value)| !name.is_empty() && !value.is_empty())
            .ok_or_else(|| fail("expected NAME=VALUE".into()))?;
        let context = if let Some(reference) = value.strip_prefix("docker-image://") {
            NamedContext::Image(reference.to_string())
        } else if value.starts_with(OCI_LAYOUT_SCHEME) {
            NamedContext::Image(value.to_string())
        } else if let Some(remote) = RemoteContext::parse(value) {
            match remote.fetch(scratch, progress)? {
                FetchedContext {
                    dir,
                    dockerfile: None,
                } => NamedContext::Dir(dir),
                FetchedContext { .. } => {
                    return Err(fail(format!(
                        "{} is neither a git repository nor a tar archive",
                        redacted(value)
                    )));
                }
            }
        } else {
            let dir = Path::new(value);
            match dir.canonicalize() {
                Ok(dir) if dir.is_dir() => NamedContext::Dir(dir),
                Ok(_) => return Err(fail(format!("{value} is not a directory"))),
                Err(e) => return Err(fail(format!("{value}: {e}"))),
            }
        };
        Ok((name.to_string(), context))
    }
}

/// The prefixes that make a context a git repository, whatever follows (BuildKit's, with
/// `ssh://` and `file://`, which git fetches as well).
const GIT_PREFIXES: [&str; 5] = ["git://", "git@", "ssh://", "file://", "github.com/"];

impl RemoteContext {
    /// What `spec` names, if it is not a local path: git for the forms above and for an
    /// http(s) URL whose path ends in `.git` (BuildKit's rule), else an http(s) download.
    pub fn parse(spec: &str) -> Option<RemoteContext> {
        let lower = spec.to_ascii_lowercase();
        let http = lower.starts_with("http://") || lower.starts_with("https://");
        let url = spec.split('#').next().unwrap_or(spec);
        let git_over_http = http && url.split('?').next().unwrap_or(url).ends_with(".git");
        if git_over_http || GIT_PREFIXES.iter().any(|p| lower.starts_with(p)) {
            return Some(RemoteContext::Git(GitContext::parse(spec)));
        }
        http.then(|| RemoteContext::Http(spec.to_string()))
    }

    /// Fetches the context into `scratch` (an empty directory the caller removes after the
    /// build).
    pub fn fetch(&self, scratch: &Path, progress: &Progress) -> Result<FetchedContext, BuildError> {
        match self {
            RemoteContext::Git(git) => git.fetch(scratch, progress),
            RemoteContext::Http(url) => fetch_http(url, scratch, progress),
        }
    }
}

impl std::fmt::Display for RemoteContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteContext::Git(git) => write!(f, "the git context {git}"),
            RemoteContext::Http(url) => write!(f, "the context {}", redacted(url)),
        }
    }
}

impl std::fmt::Display for GitContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redacted(&self.remote))?;
        if self.reference.is_some() || self.subdir.is_some() {
            write!(f, "#{}", self.reference.as_deref().unwrap_or(""))?;
        }
        if let Some(subdir) = &self.subdir {
            write!(f, ":{subdir}")?;
        }
        Ok(())
    }
}

impl GitContext {
    fn parse(spec: &str) -> GitContext {
        let (remote, fragment) = spec.split_once('#').unwrap_or((spec, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        // buildx's shorthand, which git alone would take for a path.
        let remote = match remote.starts_with("github.com/") {
            true => format!("https://{remote}"),
            false => remote.to_string(),
        };
        GitContext {
            remote,
            reference: some(reference),
            subdir: some(subdir.trim_matches('/')),
        }
    }

    fn fail(&self, message: String) -> BuildError {
        BuildError::RemoteContext {
            context: format!("the git context {self}"),
            message,
        }
    }

    /// A shallow fetch of the reference, its checkout with submodules (as BuildKit's git
    /// source), without `.git`; then the subdir.
    fn fetch(&self, scratch: &Path, progress: &Progress) -> Result<FetchedContext, BuildError> {
        // git would read it as one of its options (`--upload-pack=...`).
        if let Some(reference) = self.reference.as_ref().filter(|r| r.starts_with('-')) {
            return Err(self.fail(format!("{reference} is not a branch, tag or commit")));
        }
        progress.info(&format!("fetching the git context {self}"));
        let repo = scratch.join("repo");
        std::fs::create_dir(&repo).map_err(BuildError::io("creating a git checkout dir"))?;
        let git = |args: &[&str]| run_git(&repo, args, &self.remote).map_err(|m| self.fail(m));
        git(&["init", "-q"])?;
        git(&["remote", "add", "origin", &self.remote])?;
        // The file protocol only for a repository the user named so (and its submodules):
        // a remote's submodules must not read this machine's repositories.
        let file_allow = match self.remote.to_ascii_lowercase().starts_with("file://") {
            true => "protocol.file.allow=always",
            false => "protocol.file.allow=never",
        };
        let wanted = self.reference.as_deref().unwrap_or("HEAD");
        let shallow = git(&[
            "-c",
            file_allow,
            "fetch",
            "-q",
            "--depth=1",
            "--no-tags",
            "origin",
            wanted,
        ]);
        if let Err(e) = shallow {
            // A commit the server does not let be fetched by itself: fetch everything.
            if !looks_like_commit(wanted) {
                return Err(e);
            }
            git(&["-c", file_allow, "fetch", "-q", "--tags", "origin"])?;
            git(&["checkout", "-q", "--detach", wanted])?;
        } else {
            git(&["checkout", "-q", "--detach", "FETCH_HEAD"])?;
        }
        if repo.join(".gitmodules").is_file() {
            git(&[
                "-c",
                file_allow,
                "submodule",
                "update",
                "-q",
                "--init",
                "--recursive",
                "--depth=1",
            ])?;
        }
        std::fs::remove_dir_all(repo.join(".git"))
            .map_err(BuildError::io("removing the git context's .git"))?;
        let dir = match &self.subdir {
            None => repo,
            Some(subdir) => self.subdir_in(&repo, subdir)?,
        };
        Ok(FetchedContext {
            dir,
            dockerfile: None,
        })
    }

    /// `subdir` of the checkout at `repo`: a directory in it, however its links lead.
    fn subdir_in(&self, repo: &Path, subdir: &str) -> Result<PathBuf, BuildError> {
        let at = self.reference.as_deref().unwrap_or("HEAD");
        let joined = repo.join(subdir);
        let found = joined.canonicalize().ok().filter(|p| p.is_dir());
        match found {
            Some(dir) if dir.starts_with(repo.canonicalize().unwrap_or_default()) => Ok(dir),
            Some(_) => Err(self.fail(format!(
                "the directory {subdir} leads out of the repository"
            ))),
            None => Err(self.fail(format!("the repository has no directory {subdir} at {at}"))),
        }
    }
}

/// Whether `reference` may be a commit's (abbreviated) hash.
fn looks_like_commit(reference: &str) -> bool {
    (7..=64).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The host's variables for git that a fetch keeps: how it authenticates and which config it
/// reads. The others (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE, ... set by a hook or a
/// wrapper kiln runs under) would make git work on another repository.
const GIT_VARS_KEPT: [&str; 9] = [
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSH_VARIANT",
    "GIT_ASKPASS",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
];

/// Runs `git ARGS` in `dir`, never prompting and running no hook of the repository's. A
/// failure is `git <subcommand> exited <code>: <git's reason>`, with `remote`'s
/// password (if its URL has one) blanked.
fn run_git(dir: &Path, args: &[&str], remote: &str) -> Result<(), String> {
    let mut command = Command::new("git");
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("GIT_") && !GIT_VARS_KEPT.contains(&name_str.as_ref()) {
            command.env_remove(&name);
        }
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "protocol.ext.allow=never",
        ])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let subcommand = args
        .iter()
        .find(|a| **a != "-c" && !a.contains('='))
        .copied()
        .unwrap_or("");
    let output = command
        .output()
        .map_err(|e| format!("cannot run git ({e}); kiln fetches git contexts with it"))?;
    if output.status.success() {
        return Ok(());
    }
    // git's reason starts at its first `fatal:` or `error:` line (the lines after it, such
    // as `errno=Connection refused`, say more); else its last line.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .unwrap_or(lines.len().saturating_sub(1));
    let reason = lines[first.min(lines.len())..].join(" ");
    let code = output
        .status
        .code()
        .map_or_else(|| "on a signal".to_string(), |c| c.to_string());
    Err(blank_password(
        &format!("git {subcommand} exited {code}: {reason}"),
        remote,
    ))
}

/// `url` with the password of its user info (if any) replaced by `xxxxx`, as BuildKit shows
/// URLs.
pub fn redacted(url: &str) -> String {
    match password(url) {
        Some(pass) => url.replacen(&format!(":{pass}@"), ":xxxxx@", 1),
        None => url.to_string(),
    }
}

/// `text` with the password in `url` (if any) replaced by `xxxxx`.
fn blank_password(text: &str, url: &str) -> String {
    match password(url) {
        Some(pass) => text.replace(pass, "xxxxx"),
        None => text.to_string(),
    }
}

/// The password of `scheme://user:password@host/...`.
fn password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pass) = userinfo.split_once(':')?;
    (!pass.is_empty()).then_some(pass)
}

/// Downloads `url` and unpacks it if it is an archive; otherwise it is the Dockerfile of an
/// empty context (as BuildKit's http contexts).
fn fetch_http(
    url: &str,
    scratch: &Path,
    progress: &Progress,
) -> Result<FetchedContext, BuildError> {
    let fail = |message: String| BuildError::RemoteContext {
        context: format!("the context {}", redacted(url)),
        message: blank_password(&message, url),
    };
    progress.info(&format!("downloading the context {}", redacted(url)));
    let response = http_get(url).map_err(fail)?;
    let download = scratch.join("download");
    let mut file =
        std::fs::File::create(&download).map_err(BuildError::io("creating a download file"))?;
    let copied = std::io::copy(
        &mut response.take(MAX_CONTEXT_DOWNLOAD_BYTES + 1),
        &mut file,
    )
    .map_err(|e| fail(format!("reading the answer: {e}")))?;
    if copied > MAX_CONTEXT_DOWNLOAD_BYTES {
        return Err(fail(format!(
            "it is larger than the {} GiB a context download may be",
            MAX_CONTEXT_DOWNLOAD_BYTES >> 30
        )));
    }
    drop(file);
    let dir = scratch.join("context");
    std::fs::create_dir(&dir).map_err(BuildError::io("creating a context dir"))?;
    let dockerfile = match try_unpack_context(&download, &dir)? {
        true => None,
        false => Some(download),
    };
    Ok(FetchedContext { dir, dockerfile })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(remote: &str, reference: Option<&str>, subdir: Option<&str>) -> RemoteContext {
        RemoteContext::Git(GitContext {
            remote: remote.into(),
            reference: reference.map(Into::into),
            subdir: subdir.map(Into::into),
        })
    }

    #[test]
    fn contexts_are_told_apart_as_buildkit_does() {
        assert_eq!(
            RemoteContext::parse("https://host/repo.git#v1:app/web"),
            Some(git("https://host/repo.git", Some("v1"), Some("app/web")))
        );
        assert_eq!(
            RemoteContext::parse("git@host:org/repo.git#:sub"),
            Some(git("git@host:org/repo.git", None, Some("sub")))
        );
        assert_eq!(
            RemoteContext::parse("git://127.0.0.1:9418/repo"),
            Some(git("git://127.0.0.1:9418/repo", None, None))
        );
        assert_eq!(
            RemoteContext::parse("file:///srv/repo#main"),
            Some(git("file:///srv/repo", Some("main"), None))
        );
        assert_eq!(
            RemoteContext::parse("https://host/ctx.tar.gz"),
            Some(RemoteContext::Http("https://host/ctx.tar.gz".into()))
        );
        assert_eq!(
            RemoteContext::parse("github.com/org/repo#v2"),
            Some(git("https://github.com/org/repo", Some("v2"), None))
        );
        assert_eq!(RemoteContext::parse("./repo.git"), None);
        let sneaky = RemoteContext::parse("file:///nowhere#--upload-pack=touch /tmp/x").unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let err = sneaky
            .fetch(scratch.path(), &Progress::new(crate::ProgressMode::Quiet))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .ends_with("--upload-pack=touch /tmp/x is not a branch, tag or commit"),
            "{err}"
        );
        assert_eq!(RemoteContext::parse("ctx"), None);
    }

    #[test]
    fn passwords_are_never_shown() {
        let context = RemoteContext::parse("https://me:s3cret@host/repo.git#main").unwrap();
        assert_eq!(
            context.to_string(),
            "the git context https://me:xxxxx@host/repo.git#main"
        );
        assert_eq!(
            blank_password(
                "fatal: unable to access 'https://me:s3cret@host/'",
                "https://me:s3cret@host/repo.git"
            ),
            "fatal: unable to access 'https://me:xxxxx@host/'"
        );
        assert_eq!(redacted("https://host/a.tar"), "https://host/a.tar");
    }
}
