//! What a command changed in a live tree, found without reading any file: the in-place model
//! (kaniko's), where a RUN step runs directly in a container's `/` and the layer is what
//! differs between a record taken before the step and the tree after it.
//!
//! An [`Inventory`] maps each entry's path to its stamp: inode and device, type and mode,
//! owner, size, mtime, ctime and link count. ctime is what makes this sound: the kernel sets
//! it on every change of contents, mode, owner, links or xattrs, and a program cannot set it
//! back (`touch -r` and `utimensat` restore mtime only). So a rewrite that keeps size and mtime
//! still shows, and xattrs need not be read. The walk runs on every core, a directory at a
//! time, through descriptors that never follow a symlink ([`kiln_fs::Dir`]); paths the caller
//! names (kiln's own directory, mount points) are neither recorded nor entered.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use kiln_fs::{Dir, Timestamp};

/// What is compared of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
    nlink: u64,
}

impl Stamp {
    fn of(md: &kiln_fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: md.modified(),
            ctime: md.changed(),
            nlink: md.nlink(),
        }
    }
}

/// Every entry under a root (relative paths; the root itself is not an entry), as of a walk.
#[derive(Debug)]
pub struct Inventory {
    entries: HashMap<PathBuf, Stamp>,
}

/// What differs between two walks, as paths relative to the root, sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New entries and entries whose stamp changed (a directory whose entries changed is one
    /// of them: its mtime moved).
    pub changed: Vec<PathBuf>,
    /// Entries gone, outermost only: what was below a deleted directory is not listed.
    pub deleted: Vec<PathBuf>,
}

impl Inventory {
    /// Walks `root`, leaving out the entries at the relative paths `skip` and what is below
    /// them.
    pub fn take(root: &Path, skip: &[PathBuf]) -> io::Result<Inventory> {
        let skip: HashSet<&Path> = skip.iter().map(PathBuf::as_path).collect();
        let entries = walk(Dir::open(root)?, &skip)?;
        Ok(Inventory { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What changed under `root` since this inventory was taken, and the inventory of now
    /// (the record for the next step).
    pub fn changes(&self, root: &Path, skip: &[PathBuf]) -> io::Result<(Changes, Inventory)> {
        let now = Inventory::take(root, skip)?;
        let changed: Vec<PathBuf> = now
            .entries
            .iter()
            .filter(|(path, stamp)| self.entries.get(*path) != Some(*stamp))
            .map(|(path, _)| path.clone())
            .collect();
        let gone: HashSet<&Path> = self
            .entries
            .keys()
            .filter(|path| !now.entries.contains_key(*path))
            .map(PathBuf::as_path)
            .collect();
        let mut deleted: Vec<PathBuf> = gone
            .iter()
            .filter(|path| !path.ancestors().skip(1).any(|a| gone.contains(a)))
            .map(|path| path.to_path_buf())
            .collect();
        // A directory that only saw entries come and go (a mount point kiln put in place for
        // the step and took away) is not a change: it keeps its own metadata and has no
        // changed entry below it.
        let below_changes: HashSet<&Path> = changed
            .iter()
            .chain(&deleted)
            .flat_map(|path| path.ancestors().skip(1))
            .collect();
        let only_times = |path: &PathBuf| {
            let (Some(before), Some(after)) = (self.entries.get(path), now.entries.get(path))
            else {
                return false;
            };
            let is_dir = after.mode & libc::S_IFMT == libc::S_IFDIR;
            is_dir
                && (before.dev, before.ino, before.mode, before.uid, before.gid)
                    == (after.dev, after.ino, after.mode, after.uid, after.gid)
                && !below_changes.contains(path.as_path())
        };
        let mut changed: Vec<PathBuf> =
            changed.iter().filter(|p| !only_times(p)).cloned().collect();
        changed.sort();
        deleted.sort();
        Ok((Changes { changed, deleted }, now))
    }
}

/// Directories waiting to be read, and how many are being read: the walk is over when both
/// are zero. Waiting directories are paths, not descriptors, so a wide tree never holds more
/// than one descriptor per thread (pods often allow 1,024).
struct Queue {
    state: Mutex<(Vec<PathBuf>, usize)>,
    ready: Condvar,
}

fn walk(root: Dir, skip: &HashSet<&Path>) -> io::Result<HashMap<PathBuf, Stamp>> {
    let queue = Queue {
        state: Mutex::new((vec![PathBuf::new()], 0)),
        ready: Condvar::new(),
    };
    let failed: Mutex<Option<io::Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let found: Vec<Vec<(PathBuf, Stamp)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| walk_worker(&root, &queue, skip, &failed)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a walking thread panicked"))
            .collect()
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    Ok(found.into_iter().flatten().collect())
}

/// Takes directories off the queue until the walk is over; returns what it found.
fn walk_worker(
    root: &Dir,
    queue: &Queue,
    skip: &HashSet<&Path>,
    failed: &Mutex<Option<io::Error>>,
) -> Vec<(PathBuf, Stamp)> {
    let mut found = Vec::new();
    loop {
        let rel = {
            let mut state = queue.state.lock().unwrap();
            loop {
                if let Some(next) = state.0.pop() {
                    state.1 += 1;
                    break next;
                }
                if state.1 == 0 {
                    return found;
                }
                state = queue.ready.wait(state).unwrap();
            }
        };
        let read = match root.open_dir(&rel) {
            Ok(dir) => read_dir(&rel, &dir, skip, &mut found),
            // Removed since its parent was read: not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", rel.display()))),
        };
        let mut state = queue.state.lock().unwrap();
        match read {
            Ok(subdirs) => state.0.extend(subdirs),
            Err(e) => {
                failed.lock().unwrap().get_or_insert(e);
                // Nothing more to do: let every thread finish.
                state.0.clear();
            }
        }
        state.1 -= 1;
        queue.ready.notify_all();
    }
}

/// Stamps the entries of `dir` (at `rel`) into `found`; returns its subdirectories to walk.
fn read_dir(
    rel: &Path,
    dir: &Dir,
    skip: &HashSet<&Path>,
    found: &mut Vec<(PathBuf, Stamp)>,
) -> io::Result<Vec<PathBuf>> {
    let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", rel.display()));
    let mut subdirs = Vec::new();
    let names: Vec<OsString> = dir.names().map_err(at)?;
    for name in names {
        let path = rel.join(&name);
        if skip.contains(path.as_path()) {
            continue;
        }
        let md = match dir.metadata(&name) {
            Ok(md) => md,
            // Gone since the listing (a process still running in the tree): not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(e)),
        };
        if md.is_dir() {
            subdirs.push(path.clone());
        }
        found.push((path, Stamp::of(&md)));
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    /// A small tree: files, a nested directory, a symlink, a skipped directory.
    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc/conf.d")).unwrap();
        fs::create_dir_all(root.join("var/cache/deep")).unwrap();
        fs::create_dir_all(root.join("kiln/root")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/conf.d/a"), "a").unwrap();
        fs::write(root.join("var/cache/deep/x"), "x").unwrap();
        fs::write(root.join("kiln/root/store"), "kiln's own").unwrap();
        std::os::unix::fs::symlink("passwd", root.join("etc/link")).unwrap();
    }

    #[test]
    fn nothing_done_is_no_change() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let skip = paths(&["kiln"]);
        let before = Inventory::take(tmp.path(), &skip).unwrap();
        assert_eq!(before.len(), 9, "{before:?}");
        let (changes, _) = before.changes(tmp.path(), &skip).unwrap();
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn every_kind_of_change_shows_and_skipped_paths_never_do() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        tree(root);
        let skip = paths(&["kiln"]);
        let before = Inventory::take(root, &skip).unwrap();
        // A rewrite with the same size, its mtime put back (`touch -r`): only ctime tells.
        let passwd = root.join("etc/passwd");
        let mtime = fs::metadata(&passwd).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&passwd, "evil:x:0:0::/root:/bin/sh\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&passwd)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&passwd).unwrap().modified().unwrap(), mtime);
        // A mode change, a new file, a deleted tree, a retargeted symlink, and a change in
        // the skipped directory.
        fs::set_permissions(root.join("etc/conf.d/a"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(root.join("etc/new"), "new").unwrap();
        fs::remove_dir_all(root.join("var/cache")).unwrap();
        fs::remove_file(root.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("new", root.join("etc/link")).unwrap();
        fs::write(root.join("kiln/root/store"), "changed").unwrap();

        let (changes, after) = before.changes(root, &skip).unwrap();

        assert_eq!(
            changes.changed,
            paths(&[
                "etc",
                "etc/conf.d/a",
                "etc/link",
                "etc/new",
                "etc/passwd",
                "var"
            ])
        );
        assert_eq!(changes.deleted, paths(&["var/cache"]), "outermost only");
        // The inventory of now is the record for the next step.
        let (again, _) = after.changes(root, &skip).unwrap();
        assert_eq!(again, Changes::default());
    }

    #[test]
    fn a_new_hard_link_changes_its_file_too() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("bin"), "x").unwrap();
        let before = Inventory::take(root, &[]).unwrap();
        fs::hard_link(root.join("bin"), root.join("alias")).unwrap();
        let (changes, _) = before.changes(root, &[]).unwrap();
        assert_eq!(changes.changed, paths(&["alias", "bin"]));
    }
}
