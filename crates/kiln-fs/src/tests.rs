use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::PathBuf;

use super::*;

/// A root dir and, beside it, an `outside` dir with a canary file; `root/link` and
/// `root/dir/link` point at `outside` by absolute path.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    /// The canary's owner when it was made.
    owner: u32,
}

const OLD: Timestamp = Timestamp {
    sec: 1_000_000_000,
    nsec: 0,
};

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("dir")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("canary"), "canary").unwrap();
    fs::create_dir(outside.join("empty")).unwrap();
    symlink(&outside, root.join("link")).unwrap();
    symlink(&outside, root.join("dir/link")).unwrap();
    let canary = Dir::open(&outside).unwrap();
    for name in ["", "canary", "empty"] {
        canary.set_times(OsStr::new(name), OLD, OLD).unwrap();
    }
    let owner = fs::metadata(outside.join("canary")).unwrap().uid();
    Setup {
        _tmp: tmp,
        root,
        outside,
        owner,
    }
}

impl Setup {
    fn dir(&self) -> Dir {
        Dir::open(&self.root).unwrap()
    }

    /// The canary dir is as `setup` left it: contents, mode and times.
    fn assert_outside_untouched(&self) {
        assert_eq!(fs::read(self.outside.join("canary")).unwrap(), b"canary");
        assert!(self.outside.join("empty").is_dir());
        for path in [
            self.outside.clone(),
            self.outside.join("canary"),
            self.outside.join("empty"),
        ] {
            let md = fs::symlink_metadata(&path).unwrap();
            assert_eq!(md.mtime(), OLD.sec, "{} changed", path.display());
            assert_eq!(md.uid(), self.owner, "{} changed owner", path.display());
            assert_ne!(md.mode() & 0o7777, 0o700, "{} changed mode", path.display());
        }
        assert!(fs::symlink_metadata(self.outside.join("new")).is_err());
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or_else(|| panic!("not an OS error: {e}"))
}

#[test]
fn open_dir_refuses_symlinks_parents_and_absolute_paths() {
    let s = setup();
    let root = s.dir();
    for walk in [Dir::open_dir, Dir::open_dir_stepwise] {
        assert_eq!(
            errno(walk(&root, Path::new("link")).unwrap_err()),
            Errno::LOOP
        );
        assert_eq!(
            errno(walk(&root, Path::new("dir/link/empty")).unwrap_err()),
            Errno::LOOP
        );
        assert!(walk(&root, Path::new("./dir/.")).is_ok());
        assert!(walk(&root, Path::new("")).is_ok());
    }
    for escape in ["..", "dir/../..", "dir/..", "/tmp"] {
        assert_eq!(
            errno(root.open_dir(Path::new(escape)).unwrap_err()),
            Errno::XDEV,
            "{escape}"
        );
    }
    fs::write(s.root.join("file"), "").unwrap();
    assert_eq!(
        errno(root.open_dir(Path::new("file/x")).unwrap_err()),
        Errno::NOTDIR
    );
}

#[test]
fn names_must_be_single_components() {
    let root = setup().dir();
    for bad in ["", ".", "..", "dir/link", "/etc"] {
        let err = root.remove_file(OsStr::new(bad)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
    }
    // The empty name is the directory itself only where a method says so.
    assert!(root.metadata(OsStr::new("")).unwrap().is_dir());
}

#[test]
fn every_operation_on_a_symlink_acts_on_the_link_or_fails() {
    let s = setup();
    let dir = s.dir().open_dir(Path::new("dir")).unwrap();
    let link = OsStr::new("link");
    assert!(dir.metadata(link).unwrap().is_symlink());
    assert_eq!(errno(dir.set_mode(link, 0o700).unwrap_err()), Errno::LOOP);
    dir.set_owner(link, 1234, 1234).unwrap();
    dir.set_times(link, OLD, OLD).unwrap();
    assert_eq!(
        fs::symlink_metadata(s.root.join("dir/link")).unwrap().uid(),
        1234
    );
    // user.* xattrs are not allowed on symlinks: refused, not applied to the target.
    assert!(dir.set_xattr(link, b"user.kiln", b"x").is_err());
    assert_eq!(
        errno(dir.create_file(link, 0o644).unwrap_err()),
        Errno::EXIST
    );
    assert_eq!(
        errno(dir.create_dir(link, 0o755).unwrap_err()),
        Errno::EXIST
    );
    assert_eq!(errno(dir.remove_dir(link).unwrap_err()), Errno::NOTDIR);
    dir.remove_file(link).unwrap();
    assert!(fs::symlink_metadata(s.root.join("dir/link")).is_err());
    s.assert_outside_untouched();
}

#[test]
fn remove_all_removes_links_inside_without_following_them() {
    let s = setup();
    let root = s.dir();
    fs::create_dir_all(s.root.join("dir/deep/er")).unwrap();
    symlink("/", s.root.join("dir/deep/er/slash")).unwrap();
    fs::write(s.root.join("dir/deep/file"), "x").unwrap();
    root.remove_all(OsStr::new("dir")).unwrap();
    root.remove_all(OsStr::new("link")).unwrap();
    let mut left = root.names().unwrap();
    left.sort();
    assert_eq!(left, Vec::<OsString>::new());
    s.assert_outside_untouched();
}

#[test]
fn remove_all_of_a_tree_deeper_than_the_descriptor_limit() {
    // 30,000 levels: one descriptor or one stack frame per level would run out (the limit
    // is 1,024 in a pod, 20,000 here; a test thread's stack holds a few thousand frames).
    let s = setup();
    let root = s.dir();
    let a = OsStr::new("a");
    root.create_dir(a, 0o755).unwrap();
    let mut dir = root.open_dir(Path::new("a")).unwrap();
    for level in 0..30_000 {
        if level % 1000 == 0 {
            dir.create_file(OsStr::new("file"), 0o644).unwrap();
            dir.symlink(OsStr::new("/"), OsStr::new("slash")).unwrap();
        }
        dir.create_dir(a, 0o755).unwrap();
        dir = dir.open_dir(Path::new("a")).unwrap();
    }
    drop(dir);
    root.remove_all(a).unwrap();
    assert!(!root.names().unwrap().contains(&a.to_os_string()));
    s.assert_outside_untouched();
}

/// In a new dir `name` of `root`: `wide` files in `name/wide`, and `deep` directories each in
/// the one before.
fn wide_and_deep(root: &Dir, name: &OsStr, wide: usize, deep: usize) {
    root.create_dir(name, 0o755).unwrap();
    let top = root.open_dir(Path::new(name)).unwrap();
    top.create_dir(OsStr::new("wide"), 0o755).unwrap();
    let files = top.open_dir(Path::new("wide")).unwrap();
    for i in 0..wide {
        files
            .create_file(OsStr::new(&format!("{i}")), 0o644)
            .unwrap();
    }
    let mut dir = top;
    for _ in 0..deep {
        dir.create_dir(OsStr::new("d"), 0o755).unwrap();
        dir = dir.open_dir(Path::new("d")).unwrap();
    }
}

#[test]
fn remove_all_of_a_tree_both_wide_and_deep() {
    // Each entry is looked at once, from the list of names still to remove; the removed
    // directory is never listed again (ext4 never shrinks a directory, so listing it at every
    // level after it held a wide one cost width x depth: 25.9 s against 9.5 s for 400,000
    // files beside a 16,000-deep chain, measured by hand).
    let s = setup();
    let root = s.dir();
    wide_and_deep(&root, OsStr::new("both"), 5_000, 2_000);
    root.remove_all(OsStr::new("both")).unwrap();
    assert_eq!(root.names().unwrap().len(), 2, "only dir and link are left");
    s.assert_outside_untouched();
}

#[test]
fn metadata_and_changes_of_the_directory_itself() {
    let s = setup();
    let dir = s.dir().open_dir(Path::new("dir")).unwrap();
    let this = OsStr::new("");
    dir.set_mode(this, 0o750).unwrap();
    dir.set_times(this, OLD, OLD).unwrap();
    let md = dir.metadata(this).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o750);
    assert_eq!(md.modified(), OLD);
    assert_eq!(
        fs::metadata(s.root.join("dir"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
}

#[test]
fn files_nodes_and_links_are_made_in_the_directory() {
    let s = setup();
    let root = s.dir();
    let name = OsStr::new;
    let mut file = root.create_file(name("f"), 0o600).unwrap();
    io::Write::write_all(&mut file, b"data").unwrap();
    root.set_mode(name("f"), 0o4755).unwrap();
    root.hard_link(name("h"), &root, name("f")).unwrap();
    root.make_node(name("p"), NodeKind::Fifo, 0o644, 0, 0)
        .unwrap();
    root.set_mode(name("p"), 0o640).unwrap();
    root.symlink(OsStr::new("/nowhere"), name("s")).unwrap();
    let md = fs::symlink_metadata(s.root.join("h")).unwrap();
    assert_eq!((md.nlink(), md.mode() & 0o7777), (2, 0o4755));
    assert_eq!(
        fs::symlink_metadata(s.root.join("p")).unwrap().mode() & 0o7777,
        0o640
    );
    assert_eq!(
        fs::read_link(s.root.join("s")).unwrap(),
        Path::new("/nowhere")
    );
    // A hard link of a symlink is a second link, not the file it names.
    root.hard_link(name("h2"), &root, name("link")).unwrap();
    assert!(root.metadata(name("h2")).unwrap().is_symlink());
    s.assert_outside_untouched();
}

/// Creates nothing, records nothing.
fn no_creation(path: &Path, kind: EntryKind) {
    panic!("{} ({kind:?}) was to be created", path.display());
}

/// `make_in_root`, returning the entries it created, in order.
fn make(root: &Dir, path: &str, last: EntryKind) -> io::Result<(Entry, Vec<(PathBuf, EntryKind)>)> {
    let mut created = Vec::new();
    let entry = root.make_in_root(Path::new(path), last, &mut |path, kind| {
        created.push((path.to_path_buf(), kind))
    })?;
    Ok((entry, created))
}

/// The inode number of what `entry` holds.
fn ino(entry: &Entry) -> u64 {
    rustix::fs::fstat(entry).unwrap().st_ino
}

#[test]
fn symlinks_resolve_in_root_and_never_lead_out() {
    let s = setup();
    let root = s.dir();
    let outside = s.outside.to_str().unwrap();
    // Absolute, `..` past the top, and relative links that climb out.
    symlink(format!("/tmp/../../..{outside}"), s.root.join("dotdot")).unwrap();
    symlink("../../../../..", s.root.join("dir/up")).unwrap();
    fs::create_dir_all(s.root.join("dir/inside")).unwrap();
    let inside = ino(&Entry {
        fd: rustix::fs::open(
            s.root.join("dir/inside").as_path(),
            OFlags::PATH,
            Mode::empty(),
        )
        .unwrap(),
    });
    let lookups: [fn(&Dir, &Path) -> io::Result<Entry>; 2] =
        [Dir::open_in_root, |dir, path| dir.walk_in_root(path, None)];
    for open in lookups {
        for path in [
            "/dir/inside",
            "../../dir/./inside",
            "dir/up/dir/inside",
            "dir/up/../dir/inside",
        ] {
            assert_eq!(
                ino(&open(&root, Path::new(path)).unwrap()),
                inside,
                "{path}"
            );
        }
        for path in [
            "link/canary",
            "dotdot/canary",
            "dir/link/canary",
            "dir/up/tmp",
        ] {
            let err = open(&root, Path::new(path)).unwrap_err();
            assert_eq!(errno(err), Errno::NOENT, "{path}");
        }
    }

    // What is missing is made inside, where the link would lead if the root were `/`: each
    // component of the outside dir's path, then `new` and `file`.
    let in_root = Path::new(outside.trim_start_matches('/'));
    let (file, created) = make(&root, "/link/new/file", EntryKind::File).unwrap();
    assert!(file.metadata().unwrap().is_file());
    let mut expected: Vec<(PathBuf, EntryKind)> = in_root
        .ancestors()
        .map(|dir| (dir.to_path_buf(), EntryKind::Dir))
        .filter(|(dir, _)| !dir.as_os_str().is_empty())
        .collect();
    expected.reverse();
    expected.push((in_root.join("new"), EntryKind::Dir));
    expected.push((in_root.join("new/file"), EntryKind::File));
    assert_eq!(created, expected);
    assert!(s.root.join(in_root).join("new/file").is_file());
    // Through `..` and the second link, the same places: nothing new is made.
    let (again, created) = make(&root, "dotdot/new/file", EntryKind::File).unwrap();
    assert_eq!((ino(&again), created), (ino(&file), Vec::new()));
    let (dir, _) = make(&root, "dir/up/dir/link/made", EntryKind::Dir).unwrap();
    assert!(dir.metadata().unwrap().is_dir());
    assert!(
        s.root
            .join(outside.trim_start_matches('/'))
            .join("made")
            .is_dir()
    );
    s.assert_outside_untouched();
}

#[test]
fn a_dangling_final_symlink_is_made_where_it_leads_inside() {
    let s = setup();
    let root = s.dir();
    let target = s.outside.join("new");
    symlink(&target, s.root.join("hosts")).unwrap();
    let (entry, created) = make(&root, "hosts", EntryKind::File).unwrap();
    let relative = target.strip_prefix("/").unwrap();
    assert_eq!(
        created.last().unwrap(),
        &(relative.to_path_buf(), EntryKind::File)
    );
    assert_eq!(
        ino(&entry),
        fs::metadata(s.root.join(relative)).unwrap().ino()
    );
    assert!(
        fs::symlink_metadata(s.root.join("hosts"))
            .unwrap()
            .is_symlink()
    );
    s.assert_outside_untouched();
}

#[test]
fn symlink_loops_wrong_kinds_and_files_on_the_way_fail() {
    let s = setup();
    let root = s.dir();
    symlink("b", s.root.join("a")).unwrap();
    symlink("/a", s.root.join("b")).unwrap();
    symlink("self", s.root.join("self")).unwrap();
    fs::write(s.root.join("file"), "").unwrap();
    for path in ["a", "a/x", "self/x"] {
        assert_eq!(
            errno(root.open_in_root(Path::new(path)).unwrap_err()),
            Errno::LOOP
        );
        assert_eq!(
            errno(root.walk_in_root(Path::new(path), None).unwrap_err()),
            Errno::LOOP
        );
        assert_eq!(
            errno(make(&root, path, EntryKind::Dir).unwrap_err()),
            Errno::LOOP
        );
    }
    let wrong = |path, kind| errno(make(&root, path, kind).unwrap_err());
    assert_eq!(wrong("file", EntryKind::Dir), Errno::NOTDIR);
    assert_eq!(wrong("file/x", EntryKind::File), Errno::NOTDIR);
    assert_eq!(wrong("dir", EntryKind::File), Errno::ISDIR);
    assert_eq!(wrong("/", EntryKind::File), Errno::ISDIR);
    // The root itself, and a final `..`.
    let (top, created) = make(&root, "dir/..", EntryKind::Dir).unwrap();
    assert_eq!(
        (ino(&top), created.len()),
        (fs::metadata(&s.root).unwrap().ino(), 0)
    );
    assert_eq!(
        ino(&root.walk_in_root(Path::new("/dir/../.."), None).unwrap()),
        fs::metadata(&s.root).unwrap().ino()
    );
    s.assert_outside_untouched();
}

#[test]
fn magic_links_are_refused() {
    // procfs as the root: /proc/self/root and /proc/self/cwd lead to the host's `/`.
    let proc = Dir::open(Path::new("/proc")).unwrap();
    for path in ["self/root/etc", "self/cwd", "thread-self/root"] {
        assert_eq!(
            errno(proc.open_in_root(Path::new(path)).unwrap_err()),
            Errno::LOOP,
            "{path}"
        );
        assert_eq!(
            errno(proc.walk_in_root(Path::new(path), None).unwrap_err()),
            Errno::LOOP,
            "{path}"
        );
        let made = proc.make_in_root(Path::new(path), EntryKind::Dir, &mut no_creation);
        assert_eq!(errno(made.unwrap_err()), Errno::LOOP, "{path}");
    }
    // A plain symlink in a root that names a magic link is only a path inside the root.
    let s = setup();
    symlink("/proc/self/root", s.root.join("magic")).unwrap();
    let made = make(&s.dir(), "magic/x", EntryKind::Dir).unwrap();
    assert!(made.0.metadata().unwrap().is_dir());
    assert!(s.root.join("proc/self/root/x").is_dir());
}

#[test]
fn entries_are_made_beneath_the_checked_directory_while_it_is_swapped_for_a_link() {
    let s = setup();
    let root = s.dir();
    // `a` changes between a directory and a symlink to the outside dir as fast as it can.
    fs::create_dir(s.root.join("a")).unwrap();
    symlink(&s.outside, s.root.join("swap")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, dir) = (stop.clone(), Dir::open(&s.root).unwrap());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    &dir.fd,
                    "a",
                    &dir.fd,
                    "swap",
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
            }
        })
    };
    for _ in 0..2000 {
        for kind in [EntryKind::File, EntryKind::Dir] {
            // Failing is fine (the entry changed under the walk); landing outside is not.
            if let Ok((entry, _)) = make(&root, "a/b/c", kind) {
                drop(entry);
            }
            let _ = root
                .open_dir(Path::new("a"))
                .and_then(|a| a.remove_all(OsStr::new("b")));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    s.assert_outside_untouched();
    assert!(fs::symlink_metadata(s.outside.join("b")).is_err());
}
