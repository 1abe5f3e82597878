//! Downloads in progress. Each try writes to a partial file of its own beside the destination
//! (`.<name>.<random>.part`), holds an exclusive `flock` on it while it runs, and renames it
//! into place once verified; a failed try's file is removed when it is dropped. A kiln that
//! was killed leaves its partial files behind, unlocked: the next download into the same
//! directory removes them.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::Duration;

const SUFFIX: &str = ".part";

/// A partial file this young may belong to a download that created it and has not locked it
/// yet (two consecutive calls), so it is left alone.
const YOUNG: Duration = Duration::from_secs(2);

/// A new, locked partial file for a download to `dest`.
pub(crate) fn create(dest: &Path) -> io::Result<tempfile::NamedTempFile> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let part = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(SUFFIX)
        .tempfile_in(parent(dest))?;
    part.as_file().try_lock().map_err(io::Error::from)?;
    Ok(part)
}

/// The directory `dest` is in (`.` for a bare name).
pub(crate) fn parent(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether `name` is a partial file's: this module's, or `<name>.part-<pid>` of kilns
/// before it.
fn is_partial(name: &str) -> bool {
    let legacy = name
        .rsplit_once(".part-")
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
    (name.starts_with('.') && name.ends_with(SUFFIX)) || legacy
}

/// Removes the partial files in `dir` that no running download holds. Best effort: a file
/// that cannot be opened or removed stays.
pub(crate) fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !is_partial(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let young = file
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().map_or(true, |age| age < YOUNG));
        if !young && file.try_lock().is_ok() {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_recognised() {
        assert!(is_partial(".abc.Xy12z.part"));
        assert!(is_partial("abc.part-4242"));
        assert!(!is_partial("abc"));
        assert!(!is_partial("abc.part"));
        assert!(!is_partial("abc.part-x"));
    }

    #[test]
    fn a_held_partial_stays_and_a_dropped_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        let held = create(&dest).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        held.as_file().set_modified(old).unwrap();
        remove_stale(dir.path());
        assert!(
            held.path().exists(),
            "a running download's file was removed"
        );
        let path = held.path().to_path_buf();
        drop(held);
        assert!(!path.exists(), "a failed try's file stays");
    }
}
