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
