//! STAND-IN, to be replaced by the context-hash helper's incremental `BuildContext` digest
//! (branch `ctxhash`): the content digest of what a COPY/ADD source (or a `RUN --mount`
//! bind of the context) reads from the build context, after `.dockerignore` and `--exclude`.
//! It reads every matched file each time; the real one keeps a record of each file's size,
//! mtime, ctime and inode so that a rebuild reads only the files that changed. The solver
//! calls [`context_digest`] from one place (`solve.rs`, `Solving::context_reads`).
//!
//! What is hashed, per entry in a stable order: its path relative to the source, its type,
//! its permission bits, a symlink's target and a file's content. Owners and times are not:
//! COPY gives context files owner 0:0 (or `--chown`), and a checkout that only touched mtimes
//! should not rebuild, as in BuildKit.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_dockerfile::IgnoreMatcher;
use kiln_oci::Digest;
use sha2::{Digest as _, Sha256};

use crate::context::BuildContext;

/// The digest of what `pattern` matches in `context` (as COPY sees it), without what
/// `excludes` (`--exclude` patterns) leave out; `None` when it matches nothing.
pub(crate) fn context_digest(
    context: &BuildContext,
    pattern: &str,
    excludes: &[String],
) -> io::Result<Option<Digest>> {
    let exclude = match excludes.is_empty() {
        true => None,
        false => Some(
            IgnoreMatcher::parse(&excludes.join("\n"))
                .map_err(|e| io::Error::other(e.to_string()))?,
        ),
    };
    let found = context.sources(pattern);
    if found.is_empty() {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    for source in found {
        hasher.update(source.rel.as_bytes());
        hasher.update([0]);
        // Walked with an explicit stack (deep trees cost no call stack), in name order.
        let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
        while let Some(inner) = pending.pop() {
            let host = match inner.as_os_str().is_empty() {
                true => source.host_path.clone(),
                false => source.host_path.join(&inner),
            };
            let meta = fs::symlink_metadata(&host)?;
            if !inner.as_os_str().is_empty() {
                let shown = context.shows_inside(&source.rel, &source.host_path, &inner);
                let excluded = exclude
                    .as_ref()
                    .is_some_and(|m| m.is_excluded(&inner.to_string_lossy()));
                if !shown || excluded {
                    continue;
                }
            }
            entry(&mut hasher, &inner, &host, &meta)?;
            if meta.is_dir() {
                let mut names: Vec<_> = fs::read_dir(&host)?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<io::Result<_>>()?;
                names.sort();
                // Reversed onto the stack, so they come off in name order.
                pending.extend(names.into_iter().rev().map(|name| inner.join(name)));
            }
        }
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    Ok(Some(digest.parse().expect("a sha256 in hex is a digest")))
}

fn entry(hasher: &mut Sha256, inner: &Path, host: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let kind = meta.file_type();
    let tag: &[u8] = if kind.is_dir() {
        b"d"
    } else if kind.is_symlink() {
        b"l"
    } else if kind.is_file() {
        b"f"
    } else if kind.is_fifo() {
        b"p"
    } else {
        b"o"
    };
    hasher.update(inner.as_os_str().as_bytes());
    hasher.update([0]);
    hasher.update(tag);
    hasher.update((meta.mode() & 0o7777).to_le_bytes());
    if kind.is_symlink() {
        hasher.update(fs::read_link(host)?.as_os_str().as_bytes());
    } else if kind.is_file() {
        hasher.update(meta.len().to_le_bytes());
        io::copy(&mut File::open(host)?, hasher)?;
    }
    hasher.update([0]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(ctx: &BuildContext, pattern: &str) -> Digest {
        context_digest(ctx, pattern, &[]).unwrap().unwrap()
    }

    #[test]
    fn content_and_modes_count_but_ignored_files_and_times_do_not() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("src")).unwrap();
        fs::write(t.path().join("src/a"), "a").unwrap();
        fs::write(t.path().join("src/skip.log"), "x").unwrap();
        let ignore = t.path().join(".dockerignore");
        fs::write(&ignore, "src/*.log\n").unwrap();
        let ctx = BuildContext::open(t.path(), Some(&ignore)).unwrap();
        let first = digest(&ctx, "src");

        fs::write(t.path().join("src/skip.log"), "changed").unwrap();
        let file = File::options()
            .write(true)
            .open(t.path().join("src/a"))
            .unwrap();
        file.set_modified(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(
            digest(&ctx, "src"),
            first,
            "an ignored file or an mtime changed it"
        );

        fs::write(t.path().join("src/a"), "b").unwrap();
        let changed = digest(&ctx, "src");
        assert_ne!(changed, first);
        fs::set_permissions(
            t.path().join("src/a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(digest(&ctx, "src"), changed);

        assert!(context_digest(&ctx, "nothing*", &[]).unwrap().is_none());
        assert_ne!(digest(&ctx, "src/a"), digest(&ctx, "src"));
        let excluded = context_digest(&ctx, "src", &["a".into()]).unwrap().unwrap();
        assert_ne!(excluded, digest(&ctx, "src"));
    }
}
