use std::fs;
use std::path::{Component, Path, PathBuf};

use kiln_dockerfile::IgnoreMatcher;

use crate::BuildError;
use crate::context_hash::{ContextDigest, ContextHasher};
use crate::context_record;

/// The build context: a directory, seen through `.dockerignore`. Paths never leave it: `..`
/// stops at its root and symlinks are resolved as if the context were `/`.
pub struct BuildContext {
    root: PathBuf,
    ignore: Option<IgnoreMatcher>,
    pub(crate) hasher: ContextHasher,
}

/// A COPY source found in the context.
pub struct ContextSource {
    /// Where it is on the host, symlinks already resolved inside the context.
    pub host_path: PathBuf,
    /// Its path relative to the context root, as `.dockerignore` sees it.
    pub rel: String,
}

const MAX_SYMLINK_HOPS: usize = 40;

/// Lexically cleans a context path: no root, no `.`, `..` stops at the root.
fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl BuildContext {
    /// Opens a context dir. `ignore_file` is the `.dockerignore` to apply, if any.
    pub fn open(root: &Path, ignore_file: Option<&Path>) -> Result<BuildContext, BuildError> {
        let root = root.canonicalize().map_err(BuildError::io(format!(
            "opening the build context {}",
            root.display()
        )))?;
        let ignore = match ignore_file {
            Some(f) if f.is_file() => {
                let text = fs::read_to_string(f)
                    .map_err(BuildError::io(format!("reading {}", f.display())))?;
                Some(IgnoreMatcher::parse(&text).map_err(|e| BuildError::Io {
                    context: format!("reading {}", f.display()),
                    source: std::io::Error::other(e.to_string()),
                })?)
            }
            _ => None,
        };
        Ok(BuildContext {
            root,
            ignore,
            hasher: ContextHasher::new(None),
        })
    }

    /// Keeps this context's record of file digests in `records` (for instance
    /// `<kiln root>/cache/context`; created when first written), in a file named after the
    /// context's canonical path, so that [`BuildContext::digest`] re-reads only the files whose
    /// stat changed since an earlier build. Without it, every digest reads every file.
    pub fn with_records_in(mut self, records: &Path) -> BuildContext {
        let record = context_record::record_path(records, &self.root);
        self.hasher = ContextHasher::new(Some(record));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content digest of what a COPY/ADD takes from `sources` (the results of
    /// [`BuildContext::sources`] for its patterns, in order), after `.dockerignore` and the
    /// `--exclude` matcher: the same as long as every entry that would be copied has the same
    /// path, type, mode, contents, link target and xattrs, whatever the order the OS lists
    /// them in and whatever their mtimes and owners; with what it took to compute (entries
    /// looked at, files read). See the `context_hash` module.
    pub fn digest(
        &self,
        sources: &[ContextSource],
        exclude: Option<&IgnoreMatcher>,
    ) -> Result<ContextDigest, BuildError> {
        self.hasher.digest(self, sources, exclude)
    }

    /// Whether a COPY of `source` with the `--exclude` matcher `exclude` takes the entry at
    /// `inner` (a path inside a directory source; empty for the source itself). The copy's
    /// walk and [`BuildContext::digest`] both decide with this, so the digest covers exactly
    /// what is copied.
    pub fn copy_takes(
        &self,
        source: &ContextSource,
        exclude: Option<&IgnoreMatcher>,
        inner: &Path,
    ) -> bool {
        match inner.as_os_str().is_empty() {
            true => {
                let is_dir = fs::symlink_metadata(&source.host_path).is_ok_and(|m| m.is_dir());
                self.takes_source(source, exclude, is_dir)
            }
            false => self.takes_inside(source, exclude, inner),
        }
    }

    /// `--exclude` filters what is inside a directory source, and drops a non-directory source
    /// whose name it matches.
    pub(crate) fn takes_source(
        &self,
        source: &ContextSource,
        exclude: Option<&IgnoreMatcher>,
        is_dir: bool,
    ) -> bool {
        exclude_lets_source(exclude, source.rel.rsplit('/').next().unwrap_or(""), is_dir)
    }

    /// `--exclude` matches paths relative to the source; `.dockerignore` relative to the
    /// context root.
    pub(crate) fn takes_inside(
        &self,
        source: &ContextSource,
        exclude: Option<&IgnoreMatcher>,
        inner: &Path,
    ) -> bool {
        if exclude.is_none() && self.ignore.is_none() {
            return true;
        }
        exclude_lets_inside(exclude, inner)
            && self.shows_inside(&source.rel, &source.host_path, inner)
    }

    /// Whether `.dockerignore` lets the entry at `inner` (relative to a directory source
    /// found by [`BuildContext::sources`], with its `rel` and `host_path`) into the context.
    fn shows_inside(&self, source_rel: &str, source_host: &Path, inner: &Path) -> bool {
        let inner_rel = inner.to_string_lossy();
        let rel = match source_rel.is_empty() {
            true => inner_rel.into_owned(),
            false => format!("{source_rel}/{inner_rel}"),
        };
        self.shows(&rel, &source_host.join(inner))
    }

    /// Whether `.dockerignore` lets the entry `rel` (on the host at `host`) into the context:
    /// it is not excluded, or it is an excluded directory holding something an exception
    /// pattern re-includes. BuildKit's context walker descends into such a directory and
    /// sends it only along with what it re-includes.
    fn shows(&self, rel: &str, host: &Path) -> bool {
        let Some(ignore) = &self.ignore else {
            return true;
        };
        rel.is_empty() || !ignore.is_excluded(rel) || holds_reincluded(ignore, rel, host)
    }

    /// Resolves `rel` (components, no `..`) inside the context, following symlinks as if the
    /// context were the filesystem root. Returns the host path and its cleaned relative path.
    fn resolve(&self, components: &[String]) -> Option<(PathBuf, Vec<String>)> {
        let mut resolved: Vec<String> = Vec::new();
        let mut pending: Vec<String> = components.iter().rev().cloned().collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            let candidate = self.root.join(resolved.join("/")).join(&part);
            let meta = fs::symlink_metadata(&candidate).ok()?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                let target = fs::read_link(&candidate).ok()?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            } else {
                resolved.push(part);
            }
        }
        let host = self.root.join(resolved.join("/"));
        Some((host, resolved))
    }

    /// Finds the files a COPY source names: a path, or a pattern with `*`, `?` or `[...]` in
    /// any component. Excluded paths are invisible. An empty result means nothing matched.
    pub fn sources(&self, pattern: &str) -> Vec<ContextSource> {
        let parts = clean(pattern);
        let mut found: Vec<Vec<String>> = vec![Vec::new()];
        for part in &parts {
            let mut next = Vec::new();
            for prefix in found {
                if has_glob(part) {
                    let Some((dir, clean_prefix)) = self.resolve(&prefix) else {
                        continue;
                    };
                    let Ok(entries) = fs::read_dir(&dir) else {
                        continue;
                    };
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| kiln_dockerfile::glob_match(part, n))
                        .collect();
                    names.sort();
                    for n in names {
                        let mut p = clean_prefix.clone();
                        p.push(n);
                        next.push(p);
                    }
                } else {
                    let mut p = prefix;
                    p.push(part.clone());
                    next.push(p);
                }
            }
            found = next;
        }
        found
            .into_iter()
            .filter_map(|p| self.resolve(&p))
            .filter(|(host, _)| fs::symlink_metadata(host).is_ok())
            .map(|(host_path, comps)| ContextSource {
                host_path,
                rel: comps.join("/"),
            })
            .filter(|s| self.shows(&s.rel, &s.host_path))
            .collect()
    }
}

/// Whether the `--exclude` matcher `exclude` lets a COPY take a source named `name` (its last
/// path component): a directory source always (what is inside is filtered), another source
/// unless its name is excluded. For the context, [`BuildContext::copy_takes`] adds
/// `.dockerignore`; a stage or image source has only this.
pub(crate) fn exclude_lets_source(
    exclude: Option<&IgnoreMatcher>,
    name: &str,
    is_dir: bool,
) -> bool {
    is_dir || !exclude.is_some_and(|m| m.is_excluded(name))
}

/// Whether the `--exclude` matcher lets a COPY take the entry at `inner` (relative to a
/// directory source).
pub(crate) fn exclude_lets_inside(exclude: Option<&IgnoreMatcher>, inner: &Path) -> bool {
    !exclude.is_some_and(|m| m.is_excluded(&inner.to_string_lossy()))
}

/// Whether the excluded directory `rel_dir` (on the host at `host_dir`) holds an entry that an
/// exception pattern re-includes, at any depth. An explicit stack: the context is untrusted
/// and may be deeper than the call stack.
fn holds_reincluded(ignore: &IgnoreMatcher, rel_dir: &str, host_dir: &Path) -> bool {
    let mut pending = vec![(rel_dir.to_string(), host_dir.to_path_buf())];
    while let Some((rel_dir, host_dir)) = pending.pop() {
        let is_dir = fs::symlink_metadata(&host_dir).is_ok_and(|m| m.is_dir());
        if !is_dir || !ignore.may_reinclude_under(&rel_dir) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&host_dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let rel = format!("{rel_dir}/{}", entry.file_name().to_string_lossy());
            if !ignore.is_excluded(&rel) {
                return true;
            }
            pending.push((rel, entry.path()));
        }
    }
    false
}

/// Unpacks a build context that came as a tar archive (kaniko's `tar://`; plain, gzip, bzip2,
/// xz or zstd, told apart by their bytes) into the empty directory `dest`. The archive is
/// untrusted: it is extracted as ADD extracts a local archive, so no entry is written outside
/// `dest` or through a symlink.
pub fn unpack_context(archive: &Path, dest: &Path) -> Result<(), BuildError> {
    match try_unpack_context(archive, dest)? {
        true => Ok(()),
        false => Err(BuildError::Io {
            context: format!("unpacking the build context {}", archive.display()),
            source: std::io::Error::other("it is not a tar archive (plain or compressed)"),
        }),
    }
}

/// [`unpack_context`], but a file that is no archive is `Ok(false)` (buildx's context `-`
/// may be a lone Dockerfile).
pub fn try_unpack_context(archive: &Path, dest: &Path) -> Result<bool, BuildError> {
    kiln_snapshot::extract_archive(archive, dest)
        .map(|stats| stats.is_some())
        .map_err(|e| BuildError::Io {
            context: format!("unpacking the build context {}", archive.display()),
            source: std::io::Error::other(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ctx(files: &[&str], ignore: Option<&str>) -> (tempfile::TempDir, BuildContext) {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            let p = t.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        let ig = ignore.map(|text| {
            let p = t.path().join(".dockerignore");
            fs::write(&p, text).unwrap();
            p
        });
        let c = BuildContext::open(t.path(), ig.as_deref()).unwrap();
        (t, c)
    }

    fn rels(c: &BuildContext, pattern: &str) -> Vec<String> {
        c.sources(pattern).into_iter().map(|s| s.rel).collect()
    }

    #[test]
    fn parent_dirs_stop_at_the_context_root() {
        let (_t, c) = ctx(&["etc/passwd"], None);
        assert_eq!(rels(&c, "../../etc/passwd"), vec!["etc/passwd"]);
    }

    #[test]
    fn wildcards_match_within_one_component() {
        let (_t, c) = ctx(&["a.txt", "b.txt", "sub/c.txt", "d.md"], None);
        assert_eq!(rels(&c, "*.txt"), vec!["a.txt", "b.txt"]);
        assert_eq!(rels(&c, "s*/*.txt"), vec!["sub/c.txt"]);
    }

    #[test]
    fn symlinks_never_leave_the_context() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host secret").unwrap();
        let (t, c) = ctx(&["inside"], None);
        symlink(outside.path().join("secret"), t.path().join("abs")).unwrap();
        symlink(
            "../../../../../../../..".to_string()
                + &outside.path().join("secret").to_string_lossy(),
            t.path().join("rel"),
        )
        .unwrap();
        // Both links resolve inside the context, where there is no such file.
        assert!(c.sources("abs").is_empty());
        assert!(c.sources("rel").is_empty());
        symlink("/inside", t.path().join("ok")).unwrap();
        let s = c.sources("ok");
        assert_eq!(fs::read_to_string(&s[0].host_path).unwrap(), "inside");
    }

    #[test]
    fn ignored_files_are_invisible() {
        let (_t, c) = ctx(
            &["keep.txt", "secret.env", "logs/a.log"],
            Some("*.env\nlogs\n"),
        );
        assert!(c.sources("secret.env").is_empty());
        assert!(c.sources("logs/a.log").is_empty());
        assert_eq!(rels(&c, "*"), vec![".dockerignore", "keep.txt"]);
    }

    #[test]
    fn excluded_dirs_show_only_what_exceptions_reinclude() {
        let (t, c) = ctx(
            &[
                "docs/keep.md",
                "docs/drop.md",
                "docs/deep/keep.md",
                "build/out",
            ],
            Some("docs\n!docs/keep.md\n!docs/deep/keep.md\nbuild\n!build/missing\n"),
        );
        let root = &c.sources(".")[0];
        let shown = |inner: &str| c.shows_inside(&root.rel, &root.host_path, Path::new(inner));
        assert!(shown("docs"), "docs holds re-included files");
        assert!(shown("docs/keep.md"));
        assert!(!shown("docs/drop.md"));
        assert!(shown("docs/deep"), "docs/deep holds a re-included file");
        assert!(shown("docs/deep/keep.md"));
        assert!(
            !shown("build"),
            "an exception that matches nothing does not bring the dir back"
        );
        assert_eq!(rels(&c, "docs"), vec!["docs"]);
        assert!(c.sources("build").is_empty());
        assert!(t.path().join("build/out").is_file());
    }
}
