//! Tests on real files and real tar bytes. They run as root (as kiln does) to set owners,
//! device nodes and `security.capability`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use kiln_fs::NodeKind;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use crate::fsmeta::{self, get_xattr, in_parent, list_xattrs};
use crate::*;

// The `Dir`-based metadata calls, by path: test trees are made by the tests themselves.

fn set_mtime(path: &Path, sec: i64, nsec: i64) -> std::io::Result<()> {
    let (dir, name) = in_parent(path)?;
    fsmeta::set_mtime(&dir, name, sec, nsec)
}

fn set_xattr(path: &Path, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let (dir, name) = in_parent(path)?;
    dir.set_xattr(name, key, value)
}

fn make_node(
    path: &Path,
    kind: NodeKind,
    mode: u32,
    major: u32,
    minor: u32,
) -> std::io::Result<bool> {
    let (dir, name) = in_parent(path)?;
    fsmeta::make_node(&dir, name, kind, mode, (major, minor))
}

fn make_whiteout(path: &Path) -> std::io::Result<()> {
    let (dir, name) = in_parent(path)?;
    fsmeta::make_whiteout(&dir, name)
}

/// A v2 file capability granting cap_net_raw (bit 13) permitted + effective.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn write_file(path: &Path, data: &[u8], mode: u32, owner: (u32, u32), mtime: i64) {
    fs::write(path, data).unwrap();
    lchown(path, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime, 0).unwrap();
}

fn mkdir(path: &Path, mode: u32, owner: (u32, u32)) {
    fs::create_dir(path).unwrap();
    lchown(path, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Everything a user could notice about a tree: type, mode, owner, mtime, xattrs, contents,
/// symlink targets, device numbers and which paths share an inode.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    for p in paths {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = md.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink->{}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file sha256={}",
                hex::encode(Sha256::digest(fs::read(&p).unwrap()))
            )
        } else if ft.is_char_device() {
            format!("chardev {:x}", md.rdev())
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            "other".to_string()
        };
        let link = if !ft.is_dir() && md.nlink() > 1 {
            first_of_inode
                .entry(md.ino())
                .or_insert_with(|| rel.clone())
                .clone()
        } else {
            String::new()
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        let xattrs: Vec<String> = list_xattrs(&p)
            .unwrap()
            .into_iter()
            .map(|(name, value)| {
                format!("{}={}", String::from_utf8_lossy(&name), hex::encode(value))
            })
            .collect();
        out.insert(
            rel,
            format!(
                "{what} mode={mode:o} owner={}:{} mtime={} xattrs={xattrs:?} hardlink-of={link}",
                md.uid(),
                md.gid(),
                md.mtime()
            ),
        );
    }
    out
}

fn layer_bytes(dir: &Path, opts: &LayerOptions) -> (Vec<u8>, LayerBlob) {
    let mut out = Vec::new();
    let blob = write_layer(dir, &mut out, opts).unwrap();
    (out, blob)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    decompress(bytes).unwrap().read_to_end(&mut tar).unwrap();
    tar
}

/// (name, entry type, pax records) of one tar entry.
type TarEntry = (String, EntryType, Vec<(String, Vec<u8>)>);

fn tar_entries(tar: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let kind = e.header().entry_type();
        let pax = match e.pax_extensions().unwrap() {
            Some(p) => p
                .map(|r| {
                    let r = r.unwrap();
                    (r.key().unwrap().to_string(), r.value_bytes().to_vec())
                })
                .collect(),
            None => Vec::new(),
        };
        out.push((name, kind, pax));
    }
    out
}

/// A source tree exercising every kind of entry and metadata a layer carries.
fn rich_tree(root: &Path) {
    mkdir(&root.join("bin"), 0o755, (0, 0));
    write_file(
        &root.join("bin/ping"),
        b"\x7fELF ping",
        0o4755,
        (0, 0),
        1_600_000_000,
    );
    set_xattr(&root.join("bin/ping"), b"security.capability", &CAP_NET_RAW).unwrap();
    write_file(
        &root.join("bin/tool"),
        b"tool",
        0o755,
        (1000, 2000),
        1_600_000_001,
    );
    set_xattr(&root.join("bin/tool"), b"user.comment", b"made by a test").unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-alias")).unwrap();
    symlink("tool", root.join("bin/sh")).unwrap();
    symlink("/etc/../bin/tool", root.join("bin/abs")).unwrap();
    mkdir(&root.join("tmp"), 0o1777, (0, 0));
    make_node(&root.join("tmp/fifo"), NodeKind::Fifo, 0o600, 0, 0).unwrap();
    mkdir(&root.join("dev"), 0o755, (0, 0));
    make_node(&root.join("dev/null"), NodeKind::CharDevice, 0o666, 1, 3).unwrap();
    let long_dir = root.join("d".repeat(120));
    mkdir(&long_dir, 0o700, (7, 8));
    write_file(
        &long_dir.join("f".repeat(200)),
        b"long",
        0o640,
        (7, 8),
        1_500_000_000,
    );
    // Links and nodes too: left at "now", two trees made a second apart would differ.
    for entry in ["bin/sh", "bin/abs", "tmp/fifo", "dev/null"] {
        set_mtime(&root.join(entry), 1_450_000_000, 0).unwrap();
    }
    for dir in ["bin", "tmp", "dev"] {
        set_mtime(&root.join(dir), 1_400_000_000, 0).unwrap();
    }
    set_mtime(&long_dir, 1_400_000_001, 0).unwrap();
}

#[test]
fn round_trip_keeps_modes_owners_xattrs_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let back = tmp.path().join("back");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&back).unwrap();
    rich_tree(&src);
    let (bytes, _) = layer_bytes(&src, &LayerOptions::default());
    let stats = extract_layer(decompress(&bytes[..]).unwrap(), &back).unwrap();
    assert_eq!(stats.entries, 12);
    let before = describe(&src);
    assert_eq!(describe(&back), before);
    // The comparison covers these; spell out the ones a user would look for first.
    let ping = &before["bin/ping"];
    assert!(
        ping.contains("mode=4755") && ping.contains("security.capability"),
        "{ping}"
    );
    assert!(before["bin/tool-alias"].contains("hardlink-of=bin/tool"));
    assert_eq!(
        fs::metadata(back.join("bin/tool")).unwrap().ino(),
        fs::metadata(back.join("bin/tool-alias")).unwrap().ino()
    );
}

#[test]
fn overlay_markers_become_oci_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path();
    make_whiteout(&upper.join("gone")).unwrap();
    fs::create_dir(upper.join("opq")).unwrap();
    set_xattr(&upper.join("opq"), b"user.overlay.opaque", b"y").unwrap();
    set_xattr(&upper.join("opq"), b"user.keep", b"1").unwrap();
    fs::write(upper.join("opq/new"), b"n").unwrap();
    set_xattr(&upper.join("opq/new"), b"user.kiln.owner", b"7:8").unwrap();
    fs::create_dir(upper.join("trusted")).unwrap();
    set_xattr(&upper.join("trusted"), b"trusted.overlay.opaque", b"y").unwrap();

    let (bytes, _) = layer_bytes(upper, &LayerOptions::default());
    let entries = tar_entries(&gunzip(&bytes));
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            ".wh.gone",
            "opq/",
            "opq/.wh..wh..opq",
            "opq/new",
            "trusted/",
            "trusted/.wh..wh..opq"
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e.1 == EntryType::Regular || e.1 == EntryType::Directory)
    );
    let keys: Vec<&str> = entries
        .iter()
        .flat_map(|e| e.2.iter().map(|(k, _)| k.as_str()))
        .collect();
    assert_eq!(
        keys,
        ["SCHILY.xattr.user.keep"],
        "overlay xattrs and kiln's owner records must not leak"
    );
}

/// A tar written with raw headers, so that hostile names reach the extractor unchanged.
fn raw_tar(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(if *kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn oci_whiteouts_become_overlay_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = raw_tar(&[
        (".wh.gone", EntryType::Regular, "", b""),
        ("d/", EntryType::Directory, "", b""),
        ("d/.wh..wh..opq", EntryType::Regular, "", b""),
        ("d/f", EntryType::Regular, "", b"data"),
        ("e/.wh.x", EntryType::Regular, "", b""),
    ]);
    extract_layer(&tar[..], tmp.path()).unwrap();
    let gone = fs::symlink_metadata(tmp.path().join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    let x = fs::symlink_metadata(tmp.path().join("e/x")).unwrap();
    assert!(x.file_type().is_char_device() && x.rdev() == 0);
    assert_eq!(
        get_xattr(&tmp.path().join("d"), b"user.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(tmp.path().join("d/f")).unwrap(), b"data");
    assert_eq!(
        fs::metadata(tmp.path().join("d")).unwrap().mtime(),
        1_000_000,
        "dir mtime set last"
    );
    let names: Vec<_> = describe(tmp.path()).into_keys().collect();
    assert_eq!(
        names,
        ["d", "d/f", "e", "e/x", "gone"],
        "no .wh. files left"
    );
}

#[test]
fn same_tree_gives_identical_bytes_and_sorted_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    rich_tree(&a);
    fs::write(a.join("a-b"), b"sorts before a/").unwrap();
    set_mtime(&a.join("a-b"), 5, 0).unwrap();
    let (first, blob1) = layer_bytes(&a, &LayerOptions::default());
    let (second, blob2) = layer_bytes(&a, &LayerOptions::default());
    assert_eq!(first, second);
    assert_eq!(blob1, blob2);

    // The same content made again elsewhere, over a second later (whole-second tar times),
    // with other inode numbers.
    let b = tmp.path().join("b");
    fs::create_dir(&b).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rich_tree(&b);
    fs::write(b.join("a-b"), b"sorts before a/").unwrap();
    set_mtime(&b.join("a-b"), 5, 0).unwrap();
    assert_eq!(layer_bytes(&b, &LayerOptions::default()).1, blob1);

    let names: Vec<String> = tar_entries(&gunzip(&first))
        .into_iter()
        .map(|e| e.0)
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('/') && !n.starts_with("./"))
    );
    assert!(names.contains(&"bin/".to_string()) && names.contains(&"a-b".to_string()));
}

#[test]
fn digests_describe_the_bytes_written() {
    let tmp = tempfile::tempdir().unwrap();
    rich_tree(tmp.path());
    let (bytes, blob) = layer_bytes(tmp.path(), &LayerOptions::default());
    assert_eq!(blob.size, bytes.len() as u64);
    assert_eq!(blob.digest.hex(), hex::encode(Sha256::digest(&bytes)));
    assert_eq!(
        blob.diff_id.hex(),
        hex::encode(Sha256::digest(gunzip(&bytes)))
    );
    assert_ne!(blob.digest, blob.diff_id);
}

#[test]
fn source_date_epoch_clamps_only_newer_mtimes() {
    let tmp = tempfile::tempdir().unwrap();
    write_file(&tmp.path().join("old"), b"o", 0o644, (0, 0), 100);
    write_file(&tmp.path().join("new"), b"n", 0o644, (0, 0), 2_000_000_000);
    let opts = LayerOptions {
        source_date_epoch: Some(1_000),
        ..LayerOptions::default()
    };
    let (bytes, _) = layer_bytes(tmp.path(), &opts);
    let tar = gunzip(&bytes);
    let mut archive = tar::Archive::new(&tar[..]);
    let mtimes: Vec<(String, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mtimes,
        [("new".to_string(), 1_000), ("old".to_string(), 100)]
    );
}

#[test]
fn decompress_sniffs_the_format() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), b"x").unwrap();
    let (gz, _) = layer_bytes(tmp.path(), &LayerOptions::default());
    let plain = gunzip(&gz);
    assert_eq!(&plain[..2], b"f\0");
    assert_eq!(gunzip(&plain), plain, "an uncompressed tar passes through");
}

#[test]
fn dotdot_entry_is_rejected_and_nothing_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let tar = raw_tar(&[
        ("ok", EntryType::Regular, "", b"1"),
        ("../evil", EntryType::Regular, "", b"x"),
    ]);
    let err = extract_layer(&tar[..], &dest).err().unwrap();
    assert!(matches!(err, SnapshotError::EntryEscapes { .. }));
    assert_eq!(
        err.to_string(),
        "layer entry `../evil` would land outside the rootfs"
    );
    assert!(!tmp.path().join("evil").exists());
}

#[test]
fn entries_through_symlinks_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_abs = outside.to_str().unwrap().to_string();
    for target in ["../../..", "..", outside_abs.as_str()] {
        let dest = tempfile::tempdir_in(tmp.path()).unwrap();
        let tar = raw_tar(&[
            ("a", EntryType::Symlink, target, b""),
            (
                "a/passwd",
                EntryType::Regular,
                "",
                b"root::0:0::/:/bin/sh\n",
            ),
        ]);
        let err = extract_layer(&tar[..], dest.path()).err().unwrap();
        assert_eq!(
            err.to_string(),
            "layer entry `a/passwd` goes through the symlink `a`; refusing to follow it",
            "symlink to {target}"
        );
        assert!(!outside.join("passwd").exists() && !tmp.path().join("passwd").exists());
    }
}

#[test]
fn hard_links_must_stay_inside_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, b"s").unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();

    let tar = raw_tar(&[("x", EntryType::Link, "../secret", b"")]);
    let err = extract_layer(&tar[..], &dest).err().unwrap();
    assert!(
        matches!(err, SnapshotError::HardLinkEscapes { .. }),
        "{err}"
    );

    let absolute = secret.to_str().unwrap().to_string();
    let tar = raw_tar(&[("y", EntryType::Link, &absolute, b"")]);
    let err = extract_layer(&tar[..], &dest).err().unwrap();
    assert!(
        err.to_string()
            .contains(&format!("`y` points to `{absolute}`")),
        "{err}"
    );
    assert_eq!(
        fs::metadata(&secret).unwrap().nlink(),
        1,
        "no link to the outside was made"
    );

    // A parent replaced by a symlink after the target was written must not be followed.
    let dest2 = tmp.path().join("dest2");
    fs::create_dir(&dest2).unwrap();
    let tar = raw_tar(&[
        ("d/f", EntryType::Regular, "", b"in"),
        ("d", EntryType::Symlink, tmp.path().to_str().unwrap(), b""),
        ("link", EntryType::Link, "d/f", b""),
    ]);
    assert!(extract_layer(&tar[..], &dest2).is_err());

    // A link to an earlier file of the layer works.
    let dest3 = tmp.path().join("dest3");
    fs::create_dir(&dest3).unwrap();
    let tar = raw_tar(&[
        ("f", EntryType::Regular, "", b"in"),
        ("g", EntryType::Link, "f", b""),
    ]);
    extract_layer(&tar[..], &dest3).unwrap();
    assert_eq!(
        fs::metadata(dest3.join("f")).unwrap().ino(),
        fs::metadata(dest3.join("g")).unwrap().ino()
    );
}

/// Three layers: base, one that deletes and makes /b opaque, one that deletes again.
fn three_layers(root: &Path) -> LayerStack {
    let l: Vec<PathBuf> = (0..3).map(|i| root.join(format!("l{i}"))).collect();
    for d in &l {
        fs::create_dir(d).unwrap();
    }
    for p in ["a", "b", "c", "c/sub"] {
        fs::create_dir(l[0].join(p)).unwrap();
    }
    for p in ["a/f1", "a/f2", "b/x", "c/old", "c/sub/deep"] {
        fs::write(l[0].join(p), p).unwrap();
    }
    symlink("/a", l[0].join("link")).unwrap();
    symlink("../../../a/f2", l[0].join("c/up")).unwrap();

    fs::create_dir(l[1].join("a")).unwrap();
    make_whiteout(&l[1].join("a/f1")).unwrap();
    fs::create_dir(l[1].join("b")).unwrap();
    set_xattr(&l[1].join("b"), b"user.overlay.opaque", b"y").unwrap();
    fs::write(l[1].join("b/y"), b"y").unwrap();
    fs::write(l[1].join("d"), b"d").unwrap();

    make_whiteout(&l[2].join("d")).unwrap();
    fs::create_dir(l[2].join("c")).unwrap();
    fs::write(l[2].join("c/new"), b"new").unwrap();
    make_whiteout(&l[2].join("c/sub")).unwrap();
    LayerStack::new(l)
}

#[test]
fn layer_stack_applies_whiteouts_opaque_dirs_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = three_layers(tmp.path());
    let l = stack.layers().to_vec();
    let p = |s: &str| PathBuf::from(s);
    assert_eq!(stack.lookup(&p("/a/f1"), false), None, "whited out in l1");
    assert_eq!(stack.lookup(&p("/a/f2"), false), Some(l[0].join("a/f2")));
    assert_eq!(stack.lookup(&p("/b/x"), false), None, "hidden by opaque /b");
    assert_eq!(stack.lookup(&p("/b/y"), false), Some(l[1].join("b/y")));
    assert_eq!(stack.lookup(&p("/d"), false), None);
    assert_eq!(stack.lookup(&p("/c/sub/deep"), false), None);
    assert_eq!(stack.lookup(&p("/c"), false), Some(l[2].join("c")));
    assert_eq!(stack.lookup(&p("/link"), false), Some(l[0].join("link")));
    assert_eq!(stack.lookup(&p("/link"), true), Some(l[1].join("a")));
    assert_eq!(stack.lookup(&p("/link/f2"), false), Some(l[0].join("a/f2")));
    assert_eq!(
        stack.lookup(&p("/c/up"), true),
        Some(l[0].join("a/f2")),
        "`..` clamps at the root"
    );
    assert_eq!(stack.lookup(&p("/link/f1"), true), None);

    let names = |s: &str| -> Vec<String> {
        stack
            .read_dir(&p(s))
            .unwrap()
            .into_iter()
            .map(|n| n.into_string().unwrap())
            .collect()
    };
    assert_eq!(names("/"), ["a", "b", "c", "link"]);
    assert_eq!(names("/a"), ["f2"]);
    assert_eq!(names("/b"), ["y"]);
    assert_eq!(names("/c"), ["new", "old", "up"]);
    assert_eq!(names("/link"), ["f2"]);
    assert_eq!(stack.read_dir(&p("/a/f2")), None);

    let out = tmp.path().join("export");
    stack.export(&p("/"), &out).unwrap();
    let exported: Vec<String> = describe(&out).into_keys().collect();
    assert_eq!(
        exported,
        [
            "a", "a/f2", "b", "b/y", "c", "c/new", "c/old", "c/up", "link"
        ]
    );
    assert_eq!(fs::read(out.join("c/new")).unwrap(), b"new");
    assert!(matches!(
        stack.export(&p("/d"), &tmp.path().join("x")),
        Err(SnapshotError::NotInImage { .. })
    ));
}

#[test]
fn copy_creates_parents_like_the_image_below() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    fs::create_dir(&base).unwrap();
    mkdir(&base.join("usr"), 0o750, (5, 6));
    mkdir(&base.join("usr/share"), 0o775, (0, 50));
    set_mtime(&base.join("usr/share"), 2222, 0).unwrap();
    set_mtime(&base.join("usr"), 1111, 0).unwrap();
    let below = LayerStack::new(vec![base]);

    let src = tmp.path().join("hello.txt");
    write_file(&src, b"hi", 0o600, (1234, 1234), 3333);
    let src2 = tmp.path().join("second.txt");
    write_file(&src2, b"2", 0o644, (0, 0), 4444);
    let layer = tmp.path().join("layer");
    fs::create_dir(&layer).unwrap();
    let target = Path::new("/usr/share/new/dir/hello.txt");
    let n = copy_into_layer(&src, &layer, target, &below, &CopyOptions::default()).unwrap();
    assert_eq!(n, 1);
    std::thread::sleep(std::time::Duration::from_millis(10));
    copy_into_layer(
        &src2,
        &layer,
        Path::new("/usr/share/new/dir/second.txt"),
        &below,
        &CopyOptions::default(),
    )
    .unwrap();

    let tree = describe(&layer);
    let expected: BTreeMap<String, String> = [
        ("usr", "dir mode=750 owner=5:6 mtime=1111"),
        ("usr/share", "dir mode=775 owner=0:50 mtime=2222"),
        ("usr/share/new", "dir mode=755 owner=0:0 mtime=0"),
        ("usr/share/new/dir", "dir mode=755 owner=0:0 mtime=0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), format!("{v} xattrs=[] hardlink-of=")))
    .collect();
    for (k, v) in &expected {
        assert_eq!(&tree[k], v, "{k}");
    }
    let hello = &tree["usr/share/new/dir/hello.txt"];
    assert!(hello.contains("mode=600 owner=0:0 mtime=3333"), "{hello}");
}

#[test]
fn copy_dir_applies_chown_chmod_and_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ctx");
    fs::create_dir(&src).unwrap();
    mkdir(&src.join("sub"), 0o700, (0, 0));
    write_file(&src.join("sub/a"), b"a", 0o755, (0, 0), 10);
    write_file(&src.join("b"), b"b", 0o600, (0, 0), 20);
    write_file(&src.join("skip.log"), b"no", 0o600, (0, 0), 30);
    symlink("/etc/shadow", src.join("ln")).unwrap();
    let layer = tmp.path().join("layer");
    fs::create_dir(&layer).unwrap();
    let below = LayerStack::new(Vec::new());
    let keep = |p: &Path| p.extension().is_none_or(|e| e != "log");
    let opts = CopyOptions {
        chown: Some((1000, 1001)),
        chmod: Some(Chmod::Octal(0o640)),
        filter: Some(&keep),
        ..Default::default()
    };
    let n = copy_into_layer(&src, &layer, Path::new("/app"), &below, &opts).unwrap();
    assert_eq!(n, 5, "app, sub, sub/a, b, ln");
    let tree = describe(&layer);
    let keys: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(keys, ["app", "app/b", "app/ln", "app/sub", "app/sub/a"]);
    for (path, desc) in &tree {
        assert!(desc.contains("owner=1000:1001"), "{path}: {desc}");
        if path != "app/ln" {
            assert!(desc.contains("mode=640"), "{path}: {desc}");
        }
    }
    assert_eq!(
        fs::read_link(layer.join("app/ln")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(tree["app/sub/a"].contains("mtime=10"));
}

#[test]
fn copy_follows_image_symlinks_for_the_target_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    fs::create_dir_all(base.join("run")).unwrap();
    fs::create_dir(base.join("var")).unwrap();
    symlink("../run", base.join("var/run")).unwrap();
    let below = LayerStack::new(vec![base]);
    let src = tmp.path().join("pid");
    fs::write(&src, b"1").unwrap();
    let layer = tmp.path().join("layer");
    fs::create_dir(&layer).unwrap();
    copy_into_layer(
        &src,
        &layer,
        Path::new("/var/run/app.pid"),
        &below,
        &CopyOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(layer.join("run/app.pid")).unwrap(), b"1");
    assert!(
        fs::symlink_metadata(layer.join("var")).is_err(),
        "the symlink's dir is not recreated"
    );
}

fn archive_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(EntryType::Regular);
        header.set_path(name).unwrap();
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn archives_extract_with_whiteout_names_as_plain_files() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = archive_with(&[
        ("dir/keep", b"k"),
        ("dir/.wh.keep", b"w"),
        (".wh..wh..opq", b"o"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let archive = tmp.path().join("a.bin");
    fs::write(&archive, gz.finish().unwrap()).unwrap();
    let dest = tmp.path().join("out");
    fs::create_dir(&dest).unwrap();
    let stats = extract_archive(&archive, &dest)
        .unwrap()
        .expect("a gzip tar");
    assert_eq!(stats.entries, 3);
    assert_eq!(fs::read(dest.join("dir/keep")).unwrap(), b"k");
    assert_eq!(fs::read(dest.join("dir/.wh.keep")).unwrap(), b"w");
    assert_eq!(fs::read(dest.join(".wh..wh..opq")).unwrap(), b"o");
}

#[test]
fn non_archives_and_empty_archives_are_not_extracted() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    fs::create_dir(&dest).unwrap();
    for (name, bytes) in [
        (
            "text.tar",
            b"just some text that is not a tar header".to_vec(),
        ),
        ("empty.tar", vec![0u8; 1024]),
        ("short", vec![1, 2, 3]),
    ] {
        let path = tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        assert!(extract_archive(&path, &dest).unwrap().is_none(), "{name}");
    }
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
}

/// A layer several compression blocks long: a pseudo-random 16 KiB pattern repeated (deflate
/// only shrinks it by finding the previous copy, which may sit in the block before), then
/// incompressible bytes.
fn multi_block_layer(root: &Path) -> Vec<u8> {
    let mut pattern = vec![0u8; 16 << 10];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for chunk in pattern.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let mut data = pattern.repeat(160);
    for _ in 0..(512 << 10) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    write_file(&root.join("big.bin"), &data, 0o644, (0, 0), 7);
    write_file(
        &root.join("small"),
        b"after the big one\n",
        0o644,
        (0, 0),
        7,
    );
    data
}

#[test]
fn a_layer_of_random_and_text_blocks_round_trips_and_the_text_shrinks() {
    // Blocks deflate cannot shrink (random, already compressed) are stored without a match
    // search, the others deflated, each primed with the one before: the stream must stay
    // one that gunzip reads back whole, and text must still shrink.
    let tmp = tempfile::tempdir().unwrap();
    let mut random = vec![0u8; 2 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in random.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    write_file(&tmp.path().join("random.bin"), &random, 0o644, (0, 0), 7);
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes())
        .collect();
    write_file(&tmp.path().join("text.txt"), &text, 0o644, (0, 0), 7);
    let (bytes, blob) = layer_bytes(tmp.path(), &LayerOptions::default());
    // The random bytes as they are, plus a few bytes per 64 KiB; the text: a tenth or less.
    assert!(
        bytes.len() < random.len() + text.len() / 10 + (64 << 10),
        "{} bytes",
        bytes.len()
    );
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(blob.diff_id.hex(), hex::encode(Sha256::digest(&tar)));
    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    extract_layer(&tar[..], &back).unwrap();
    assert!(fs::read(back.join("random.bin")).unwrap() == random);
    assert!(fs::read(back.join("text.txt")).unwrap() == text);
}

#[test]
fn compressed_bytes_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    multi_block_layer(tmp.path());
    let encodings = [
        LayerEncoding::Gzip { level: 1 },
        LayerEncoding::Gzip { level: 6 },
        LayerEncoding::Gzip { level: 9 },
        LayerEncoding::Zstd { level: 3 },
        LayerEncoding::Zstd { level: 19 },
        LayerEncoding::Estargz { level: 6 },
        LayerEncoding::Uncompressed,
    ];
    for encoding in encodings {
        let opts = LayerOptions {
            encoding,
            source_date_epoch: None,
        };
        let mut one = Vec::new();
        let blob_one = write::write_layer_on_threads(tmp.path(), &mut one, &opts, 1).unwrap();
        for threads in [2, 3, 8] {
            let mut many = Vec::new();
            let blob =
                write::write_layer_on_threads(tmp.path(), &mut many, &opts, threads).unwrap();
            assert!(one == many, "{encoding}: 1 and {threads} threads differ");
            assert_eq!(blob, blob_one);
        }
        // What `write_layer` picks for this machine gives the same bytes too.
        assert_eq!(layer_bytes(tmp.path(), &opts).0, one);
    }
}

/// Runs `tool args` with `input` on standard input; its standard output.
fn filter(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool} {args:?} failed");
    out.stdout
}

#[test]
fn zstd_and_uncompressed_layers_hold_the_same_tar_as_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = multi_block_layer(tmp.path());
    let (gz, gz_blob) = layer_bytes(tmp.path(), &LayerOptions::default());
    let tar = gunzip(&gz);

    let zstd = LayerOptions {
        encoding: LayerEncoding::Zstd { level: 3 },
        source_date_epoch: None,
    };
    let (zst, blob) = layer_bytes(tmp.path(), &zstd);
    assert_eq!(
        blob.media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    // The reference tool reads it back to the same tar, and so does kiln's decompressor.
    assert!(
        filter("zstd", &["-dc"], &zst) == tar,
        "zstd -d gave another tar"
    );
    assert!(gunzip(&zst) == tar);
    assert_eq!(blob.diff_id, gz_blob.diff_id);
    assert_eq!(blob.digest.hex(), hex::encode(Sha256::digest(&zst)));
    assert_eq!(blob.size, zst.len() as u64);
    assert!(
        blob.size < gz_blob.size,
        "zstd -3 is smaller here than gzip -6"
    );

    let plain = LayerOptions {
        encoding: LayerEncoding::Uncompressed,
        source_date_epoch: None,
    };
    let (raw, blob) = layer_bytes(tmp.path(), &plain);
    assert!(raw == tar);
    assert_eq!(blob.media_type, "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(blob.digest, blob.diff_id);
    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    extract_layer(&raw[..], &back).unwrap();
    assert!(fs::read(back.join("big.bin")).unwrap() == data);

    // The level is honoured.
    let level = |level| {
        let opts = LayerOptions {
            encoding: LayerEncoding::Gzip { level },
            source_date_epoch: None,
        };
        layer_bytes(tmp.path(), &opts).1.size
    };
    assert!(level(0) > level(9), "gzip -0 stores, -9 compresses");
}

#[test]
fn recompress_keeps_the_tar_and_changes_only_the_blob() {
    let tmp = tempfile::tempdir().unwrap();
    multi_block_layer(tmp.path());
    let (gz, gz_blob) = layer_bytes(tmp.path(), &LayerOptions::default());
    for encoding in [
        LayerEncoding::Zstd { level: 5 },
        LayerEncoding::Uncompressed,
        LayerEncoding::Gzip { level: 1 },
    ] {
        let mut out = Vec::new();
        let blob = recompress(&gz[..], &mut out, encoding).unwrap();
        assert_eq!(blob.diff_id, gz_blob.diff_id, "{encoding}");
        assert_eq!(blob.media_type, encoding.media_type());
        assert_eq!(blob.digest.hex(), hex::encode(Sha256::digest(&out)));
        // The same bytes as writing the layer dir in that encoding.
        let direct = LayerOptions {
            encoding,
            source_date_epoch: None,
        };
        assert!(layer_bytes(tmp.path(), &direct).0 == out, "{encoding}");
    }
    // A blob that is not what it claims fails as the blob's fault.
    let err = recompress(
        &b"\x1f\x8b\x08garbage"[..],
        Vec::new(),
        LayerEncoding::Uncompressed,
    )
    .unwrap_err();
    assert!(matches!(err, SnapshotError::TarStream(_)), "{err}");
}

#[test]
fn an_estargz_layer_made_from_an_extracted_estargz_layer_has_one_landmark_and_toc() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("layer");
    fs::create_dir(&root).unwrap();
    let opts = LayerOptions {
        encoding: LayerEncoding::Estargz { level: 6 },
        source_date_epoch: None,
    };
    write_file(&root.join("a.txt"), b"a\n", 0o644, (0, 0), 5);
    let (first, _) = layer_bytes(&root, &opts);
    // Extracted, the first blob's landmark and table of contents are files of the dir.
    let extracted = tmp.path().join("extracted");
    fs::create_dir(&extracted).unwrap();
    tar::Archive::new(&gunzip(&first)[..])
        .unpack(&extracted)
        .unwrap();
    assert!(extracted.join("stargz.index.json").is_file());
    let (again, _) = layer_bytes(&extracted, &opts);
    let names: Vec<String> = tar_entries(&gnu_gunzip(&again))
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        names,
        [".no.prefetch.landmark", "a.txt", "stargz.index.json"]
    );
}

#[test]
fn estargz_layers_carry_their_table_of_contents_and_stay_plain_gzip_tars() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("layer");
    fs::create_dir(&root).unwrap();
    // A file over two 4 MiB chunks, a small file, an empty one, a directory, a symlink.
    let mut big = Vec::with_capacity(9 << 20);
    let mut x: u64 = 7;
    while big.len() < (9 << 20) + 123 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes()[..3]);
    }
    fs::create_dir(root.join("bin")).unwrap();
    write_file(&root.join("bin/big"), &big, 0o755, (0, 0), 5);
    write_file(&root.join("small.txt"), b"hello\n", 0o600, (1000, 1000), 5);
    write_file(&root.join("empty"), b"", 0o644, (0, 0), 5);
    symlink("bin/big", root.join("link")).unwrap();
    let opts = LayerOptions {
        encoding: LayerEncoding::Estargz { level: 6 },
        source_date_epoch: None,
    };
    let (blob_bytes, blob) = layer_bytes(&root, &opts);
    assert_eq!(
        blob.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    // Every gzip reader takes it as one tar: GNU gzip, then the tar's entries.
    let tar = gnu_gunzip(&blob_bytes);
    assert_eq!(blob.diff_id.hex(), hex::encode(Sha256::digest(&tar)));
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        [
            ".no.prefetch.landmark",
            "bin/",
            "bin/big",
            "empty",
            "link",
            "small.txt",
            "stargz.index.json"
        ]
    );
    assert_eq!(
        blob.annotations["io.containers.estargz.uncompressed-size"],
        tar.len().to_string()
    );

    // The footer: an empty gzip member whose Extra field points at the TOC's member.
    let footer = &blob_bytes[blob_bytes.len() - 51..];
    assert_eq!(&footer[..4], &[0x1f, 0x8b, 0x08, 0x04]);
    assert_eq!(&footer[12..14], b"SG");
    assert_eq!(&footer[32..38], b"STARGZ");
    let toc_offset =
        usize::from_str_radix(std::str::from_utf8(&footer[16..32]).unwrap(), 16).unwrap();
    assert!(gunzip(footer).is_empty());
    let member = |offset: usize| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&blob_bytes[offset..])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let toc_tar = member(toc_offset);
    let mut archive = tar::Archive::new(toc_tar.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap(), Path::new("stargz.index.json"));
    let mut toc_bytes = Vec::new();
    entry.read_to_end(&mut toc_bytes).unwrap();
    assert_eq!(
        blob.annotations["containerd.io/snapshot/stargz/toc.digest"],
        format!("sha256:{}", hex::encode(Sha256::digest(&toc_bytes)))
    );
    let toc: serde_json::Value = serde_json::from_slice(&toc_bytes).unwrap();
    assert_eq!(toc["version"], 1);
    let entries = toc["entries"].as_array().unwrap();

    // Each chunk's member starts at its offset and holds exactly the chunk's bytes.
    let chunks: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["name"] == "bin/big").collect();
    assert_eq!(chunks.len(), 3, "9 MiB in 4 MiB chunks: {chunks:?}");
    assert_eq!(chunks[0]["type"], "reg");
    assert_eq!(chunks[0]["size"], big.len());
    assert_eq!(chunks[0]["mode"], 0o755);
    assert_eq!(
        chunks[0]["digest"],
        format!("sha256:{}", hex::encode(Sha256::digest(&big)))
    );
    let mut start = 0usize;
    for (i, chunk) in chunks.iter().enumerate() {
        let len = if i == 2 { big.len() - start } else { 4 << 20 };
        assert_eq!(chunk["chunkOffset"].as_u64().unwrap_or(0), start as u64);
        assert_eq!(
            chunk["chunkSize"].as_u64().unwrap_or(0),
            if i == 2 { 0 } else { len as u64 }
        );
        if i > 0 {
            assert_eq!(chunk["type"], "chunk");
        }
        let at = chunk["offset"].as_u64().unwrap() as usize;
        let bytes = member(at);
        assert!(bytes[..len] == big[start..start + len], "chunk {i}");
        assert_eq!(
            chunk["chunkDigest"],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(&big[start..start + len]))
            )
        );
        start += len;
    }
    let small = entries.iter().find(|e| e["name"] == "small.txt").unwrap();
    assert_eq!(
        (small["uid"].as_u64(), small["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert!(member(small["offset"].as_u64().unwrap() as usize).starts_with(b"hello\n"));
    let link = entries.iter().find(|e| e["name"] == "link").unwrap();
    assert_eq!(
        (link["type"].as_str(), link["linkName"].as_str()),
        (Some("symlink"), Some("bin/big"))
    );
    let empty = entries.iter().find(|e| e["name"] == "empty").unwrap();
    assert!(
        empty.get("offset").is_none(),
        "an empty file starts no member"
    );
    assert!(entries.iter().all(|e| e["name"] != "stargz.index.json"));

    // The same bytes on any number of threads, and kiln extracts it.
    let mut one = Vec::new();
    write::write_layer_on_threads(&root, &mut one, &opts, 1).unwrap();
    assert!(one == blob_bytes);
    let back = tmp.path().join("back");
    fs::create_dir(&back).unwrap();
    extract_layer(&tar[..], &back).unwrap();
    assert!(fs::read(back.join("bin/big")).unwrap() == big);
}

#[test]
fn parallel_gzip_is_one_standard_member_that_keeps_matches_across_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = multi_block_layer(tmp.path());
    let (bytes, blob) = layer_bytes(tmp.path(), &LayerOptions::default());

    // flate2's single-member decoder reads it all: no concatenated members.
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(blob.diff_id.hex(), hex::encode(Sha256::digest(&tar)));
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries = archive.entries().unwrap();
    let mut big = entries.next().unwrap().unwrap();
    assert_eq!(big.path().unwrap(), Path::new("big.bin"));
    let mut read_back = Vec::new();
    big.read_to_end(&mut read_back).unwrap();
    assert!(read_back == data, "big.bin came back different");

    assert!(gnu_gunzip(&bytes) == tar, "gzip -d gave other bytes");

    // Matches reach back into the previous block: restarting every 256 KiB block would cost
    // one literal copy of the 16 KiB pattern per block (10 blocks) on top of the random tail.
    assert!(
        bytes.len() < (512 + 16 * 10) << 10,
        "{} bytes: repeats across blocks were not found",
        bytes.len()
    );
}

/// A directory on the "host" that the hostile files' absolute symlinks point at: a file
/// `canary`, an empty dir `b`, everything with old times. Nothing may change it.
struct Canary {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    before: BTreeMap<String, String>,
}

impl Canary {
    fn new() -> Canary {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("canary");
        fs::create_dir(&dir).unwrap();
        write_file(&dir.join("canary"), b"canary\n", 0o644, (0, 0), 1_111_111);
        fs::create_dir(dir.join("b")).unwrap();
        set_mtime(&dir.join("b"), 1_222_222, 0).unwrap();
        set_mtime(&dir, 1_333_333, 0).unwrap();
        let before = Canary::describe(&dir);
        Canary {
            _tmp: tmp,
            dir,
            before,
        }
    }

    /// `describe` of the tree, and of the directory itself.
    fn describe(dir: &Path) -> BTreeMap<String, String> {
        let mut all = describe(dir);
        let md = fs::symlink_metadata(dir).unwrap();
        let this = format!("mode={:o} mtime={}", md.mode(), md.mtime());
        all.insert(".".into(), this);
        all
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            Canary::describe(&self.dir),
            self.before,
            "{what} changed the canary"
        );
    }
}

/// The uncompressed tar of a hostile corpus file aimed at `canary`.
fn hostile_tar(name: &str, canary: &Path) -> Vec<u8> {
    let bytes = kiln_testkit::hostile_file(name, canary);
    match name.ends_with(".gz") {
        true => gunzip(&bytes),
        false => bytes,
    }
}

/// What extracting each hostile file must do; `sparse-1tib` is only built end to end, under
/// a file size limit (a reader without a limit would write 1 TiB).
fn check_hostile_outcome(name: &str, dest: &Path, result: Result<ExtractStats, SnapshotError>) {
    let message = result.as_ref().err().map(ToString::to_string);
    if let Some(message) = &message {
        assert!(
            message.len() < 600,
            "{name}: an error of {} bytes",
            message.len()
        );
    }
    match name {
        "long-name-bomb.tar.gz" => assert!(
            matches!(&result, Err(SnapshotError::TooLarge { what: "GNU long name", size: 134217729, limit: 4097, entry, .. }) if entry.starts_with("aaaa")),
            "{name}: {message:?}"
        ),
        "long-link-bomb.tar.gz" => assert!(
            matches!(
                &result,
                Err(SnapshotError::TooLarge {
                    what: "GNU long link target",
                    ..
                })
            ),
            "{name}: {message:?}"
        ),
        "pax-bomb.tar.gz" => assert!(
            matches!(&result, Err(SnapshotError::TooLarge { what: "PAX header", entry, offset: 0, .. }) if entry == "PaxHeaders/file"),
            "{name}: {message:?}"
        ),
        "sparse-1gib.tar.gz" => {
            result.unwrap();
            let md = fs::metadata(dest.join("sparse")).unwrap();
            assert_eq!(md.len(), 1 << 30);
            assert!(
                md.blocks() * 512 < 1 << 20,
                "{} blocks written",
                md.blocks()
            );
            let mut tail = Vec::new();
            let mut file = fs::File::open(dest.join("sparse")).unwrap();
            std::io::Seek::seek(&mut file, std::io::SeekFrom::End(-513)).unwrap();
            file.read_to_end(&mut tail).unwrap();
            assert_eq!(tail[0], 0);
            assert!(tail[1..].iter().all(|b| *b == b'x'));
        }
        "dir-times-through-symlink.tar" => {
            result.unwrap();
            assert!(fs::symlink_metadata(dest.join("a")).unwrap().is_symlink());
            assert_eq!(fs::read(dest.join("c/file")).unwrap(), b"after\n");
        }
        "file-through-parent-symlink.tar"
        | "whiteout-through-parent-symlink.tar"
        | "opaque-through-parent-symlink.tar" => assert!(
            matches!(&result, Err(SnapshotError::EntryThroughSymlink { symlink, .. }) if symlink == "a"),
            "{name}: {message:?}"
        ),
        "hardlink-through-symlink.tar" => assert!(
            matches!(&result, Err(SnapshotError::EntryThroughSymlink { symlink, .. }) if symlink == "l"),
            "{name}: {message:?}"
        ),
        "hardlink-dotdot.tar" => assert!(
            matches!(&result, Err(SnapshotError::HardLinkEscapes { .. })),
            "{name}: {message:?}"
        ),
        other => panic!("no expected outcome for {other}"),
    }
}

#[test]
fn hostile_layers_fail_cleanly_or_extract_safely() {
    for file in kiln_testkit::HOSTILE_FILES {
        if file.name == "sparse-1tib.tar.gz" {
            continue;
        }
        let canary = Canary::new();
        let tar = hostile_tar(file.name, &canary.dir);
        let dest = tempfile::tempdir().unwrap();
        let result = extract_layer(&tar[..], dest.path());
        check_hostile_outcome(file.name, dest.path(), result);
        canary.assert_untouched(file.name);
    }
}

#[test]
fn hostile_archives_fail_cleanly_or_extract_safely() {
    for file in kiln_testkit::HOSTILE_FILES {
        if file.name == "sparse-1tib.tar.gz" {
            continue;
        }
        let canary = Canary::new();
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join(file.name);
        fs::write(&archive, kiln_testkit::hostile_file(file.name, &canary.dir)).unwrap();
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        let result = extract_archive(&archive, &dest).map(|stats| stats.expect("an archive"));
        check_hostile_outcome(file.name, &dest, result);
        canary.assert_untouched(file.name);
    }
}

/// A tar whose one file carries `records` in a PAX header.
fn pax_tar(records: &[(&str, &[u8])], data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions(records.iter().copied())
        .unwrap();
    let mut header = Header::new_ustar();
    header.set_path("f").unwrap();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(7);
    header.set_cksum();
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn pax_records_are_split_by_length_and_capped() {
    // A value may hold newlines (a binary xattr such as a file capability can).
    let tmp = tempfile::tempdir().unwrap();
    let tar = pax_tar(
        &[("SCHILY.xattr.user.nl", b"a\nb\n"), ("mtime", b"9.5")],
        b"x",
    );
    extract_layer(&tar[..], tmp.path()).unwrap();
    let f = tmp.path().join("f");
    assert_eq!(get_xattr(&f, b"user.nl").unwrap().unwrap(), b"a\nb\n");
    assert_eq!(fs::metadata(&f).unwrap().mtime(), 9);

    // kiln's own owner record (kept where kiln cannot chown) is never taken from a layer.
    let tmp = tempfile::tempdir().unwrap();
    let tar = pax_tar(
        &[
            ("SCHILY.xattr.user.kiln.owner", b"0:0"),
            ("SCHILY.xattr.user.kept", b"1"),
        ],
        b"x",
    );
    extract_layer(&tar[..], tmp.path()).unwrap();
    let f = tmp.path().join("f");
    assert_eq!(get_xattr(&f, b"user.kiln.owner").unwrap(), None);
    assert_eq!(get_xattr(&f, b"user.kept").unwrap().unwrap(), b"1");

    let big = vec![b'v'; (64 << 10) + 1];
    let tar = pax_tar(&[("SCHILY.xattr.user.big", &big)], b"x");
    let err = extract_layer(&tar[..], tempfile::tempdir().unwrap().path()).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::TooLarge {
                what: "xattr value",
                limit: 65536,
                ..
            }
        ),
        "{err}"
    );
    let long = vec![b'p'; 4097];
    let tar = pax_tar(&[("path", &long)], b"x");
    let err = extract_layer(&tar[..], tempfile::tempdir().unwrap().path()).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::TooLarge {
                what: "PAX path",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ppp... (4097 bytes)"), "{err}");

    // A PAX size overrides the header's (Go writes 0 there for files over 8 GiB).
    let mut tar = pax_tar(&[("size", b"3")], b"");
    let header_at = tar.len() - 1024 - 512;
    let mut header = Header::from_byte_slice(&tar[header_at..header_at + 512]).clone();
    header.set_size(0);
    header.set_cksum();
    tar.truncate(header_at);
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(b"abc");
    tar.resize(tar.len() + 509 + 1024, 0);
    let dest = tempfile::tempdir().unwrap();
    extract_layer(&tar[..], dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join("f")).unwrap(), b"abc");
}

/// A GNU sparse entry of `size` bytes whose last 512 are data, the rest a hole.
fn sparse_entry(name: &str, size: u64) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(512);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(size);
    gnu.sparse[0].set_offset(size - 512);
    gnu.sparse[0].set_length(512);
    header.set_cksum();
    let mut entry = header.as_bytes().to_vec();
    entry.extend_from_slice(&[b'x'; 512]);
    entry
}

#[test]
fn sparse_files_of_a_layer_are_capped_together() {
    let dest = tempfile::tempdir().unwrap();
    let mut tar = sparse_entry("a", 5 << 30);
    tar.extend(sparse_entry("b", 3 << 30));
    tar.extend(sparse_entry("c", 1 << 30));
    tar.resize(tar.len() + 1024, 0);
    let err = extract_layer(&tar[..], dest.path()).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::TooLarge { entry, size, limit: 8589934592, .. } if entry == "c" && *size == 9 << 30),
        "{err}"
    );
    for (name, size) in [("a", 5u64 << 30), ("b", 3 << 30)] {
        let md = fs::metadata(dest.path().join(name)).unwrap();
        assert_eq!(md.len(), size);
        assert!(md.blocks() < 64, "{name}: {} blocks", md.blocks());
    }
}

#[test]
fn sparse_maps_are_capped() {
    // 65537 one-byte regions: 4 in the header, the rest in extension blocks of 21.
    let regions = (1u64 << 16) + 1;
    let mut header = Header::new_gnu();
    header.set_path("s").unwrap();
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(regions);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(regions * 2);
    let mut next = 0..regions;
    for slot in gnu.sparse.iter_mut() {
        let i = next.next().unwrap();
        slot.set_offset(i * 2);
        slot.set_length(1);
    }
    gnu.set_is_extended(true);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    while next.start < regions {
        let mut ext = tar::GnuExtSparseHeader::new();
        for slot in ext.sparse.iter_mut() {
            if let Some(i) = next.next() {
                slot.set_offset(i * 2);
                slot.set_length(1);
            }
        }
        ext.set_is_extended(next.start < regions);
        tar.extend_from_slice(ext.as_bytes());
    }
    tar.resize(
        tar.len() + regions.next_multiple_of(512) as usize + 1024,
        b'x',
    );
    let err = extract_layer(&tar[..], tempfile::tempdir().unwrap().path()).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::TooLarge {
                what: "sparse map (regions)",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn directories_keep_their_entry_times_when_children_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = raw_tar(&[
        ("d/", EntryType::Directory, "", b""),
        ("d/f", EntryType::Regular, "", b"1"),
        ("d/g/", EntryType::Directory, "", b""),
        ("d/g/h", EntryType::Regular, "", b"2"),
        ("d/f", EntryType::Regular, "", b"replaced"),
    ]);
    extract_layer(&tar[..], tmp.path()).unwrap();
    for dir in ["d", "d/g"] {
        let mtime = fs::metadata(tmp.path().join(dir)).unwrap().mtime();
        assert_eq!(mtime, 1_000_000, "{dir}");
    }
}

#[test]
fn copies_keep_the_holes_of_sparse_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sparse");
    let mut file = fs::File::create(&src).unwrap();
    std::io::Write::write_all(&mut file, b"head").unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(1 << 30)).unwrap();
    std::io::Write::write_all(&mut file, b"tail").unwrap();
    file.set_len((1 << 31) + 1).unwrap();
    drop(file);
    let layer = tmp.path().join("layer");
    fs::create_dir(&layer).unwrap();
    let below = LayerStack::new(Vec::new());
    copy_into_layer(
        &src,
        &layer,
        Path::new("/copy"),
        &below,
        &CopyOptions::default(),
    )
    .unwrap();
    let copy = layer.join("copy");
    let md = fs::metadata(&copy).unwrap();
    assert_eq!(md.len(), (1 << 31) + 1);
    assert!(md.blocks() < 256, "{} blocks written", md.blocks());
    let mut bytes = fs::File::open(&copy).unwrap();
    let mut head = [0; 8];
    bytes.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"head\0\0\0\0");
    std::io::Seek::seek(&mut bytes, std::io::SeekFrom::Start((1 << 30) - 2)).unwrap();
    let mut tail = [0; 8];
    bytes.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"\0\0tail\0\0");
}

#[test]
fn directory_times_survive_revisits_and_late_entries() {
    // Each entry with its own mtime: the times a directory ends with are those of its last
    // own entry, whatever went into it before or after, and the layer root keeps its own.
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mtime) in [
        ("d/", EntryType::Directory, 100),
        ("d/f", EntryType::Regular, 1),
        ("e/", EntryType::Directory, 200),
        ("e/x", EntryType::Regular, 2),
        ("d/g", EntryType::Regular, 3),
        ("e/y", EntryType::Regular, 4),
        ("e/", EntryType::Directory, 300),
        ("e/z", EntryType::Regular, 5),
        ("top", EntryType::Regular, 6),
        ("n/m/deep", EntryType::Regular, 7),
        ("n/", EntryType::Directory, 400),
    ] {
        let mut h = Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(mtime);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    set_mtime(tmp.path(), 50, 0).unwrap();
    extract_layer(&tar[..], tmp.path()).unwrap();
    let mtime = |p: &str| fs::metadata(tmp.path().join(p)).unwrap().mtime();
    assert_eq!(mtime("d"), 100);
    assert_eq!(mtime("e"), 300);
    assert_eq!(mtime("n"), 400);
    assert_eq!(mtime("e/z"), 5);
    assert_eq!(
        fs::metadata(tmp.path()).unwrap().mtime(),
        50,
        "the layer root"
    );
}

/// `describe` of a live tree without the paths it keeps.
fn describe_without(root: &Path, kept: &[&str]) -> BTreeMap<String, String> {
    let mut tree = describe(root);
    tree.retain(|path, _| {
        !kept.iter().any(|k| {
            path == k || path.starts_with(&format!("{k}/")) || k.starts_with(&format!("{path}/"))
        })
    });
    tree
}

#[test]
fn live_root_takes_a_stack_keeps_its_kept_paths_and_captures_changes_as_a_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = three_layers(tmp.path());
    let layers = stack.layers().to_vec();
    let live = tmp.path().join("live");
    for d in ["live", "live/mnt", "live/etc", "live/junk"] {
        fs::create_dir(tmp.path().join(d)).unwrap();
    }
    fs::write(live.join("mnt/keep"), b"a volume").unwrap();
    fs::write(live.join("etc/hosts"), b"127.0.0.1 localhost").unwrap();
    fs::write(live.join("junk/x"), b"left by the last stage").unwrap();
    let kept = ["mnt", "etc/hosts"];
    let root = LiveRoot::new(&live, kept.iter().map(PathBuf::from).collect());

    let exported = tmp.path().join("export");
    stack.export(Path::new("/"), &exported).unwrap();
    root.reset(&layers).unwrap();
    let reset = describe_without(&live, &kept);
    assert_eq!(
        reset,
        describe(&exported),
        "a reset shows the stack's merged tree"
    );
    assert_eq!(fs::read(live.join("mnt/keep")).unwrap(), b"a volume");
    assert_eq!(
        fs::read(live.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost"
    );

    // One layer at a time, its whiteouts and opaque dirs applied to the live tree: the same.
    root.reset(&layers[..1]).unwrap();
    root.apply(&layers[1]).unwrap();
    root.apply(&layers[2]).unwrap();
    assert_eq!(describe_without(&live, &kept), reset);

    // A step: a rewrite that keeps size and mtime, a delete, new entries, a hard link, a
    // chmod, and a directory replaced by a file.
    let record = root.inventory().unwrap();
    let f2 = live.join("a/f2");
    let mtime = fs::symlink_metadata(&f2).unwrap().mtime();
    fs::write(&f2, b"A/F2").unwrap();
    set_mtime(&f2, mtime, 0).unwrap();
    fs::remove_file(live.join("c/old")).unwrap();
    fs::create_dir_all(live.join("n/m")).unwrap();
    fs::write(live.join("n/m/file"), b"new").unwrap();
    fs::hard_link(&f2, live.join("a/f3")).unwrap();
    fs::set_permissions(live.join("b/y"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::remove_dir_all(live.join("b")).unwrap();
    fs::write(live.join("b"), b"now a file").unwrap();
    fs::write(live.join("mnt/ignored"), b"written to a volume").unwrap();
    let (changes, _) = root.changes(&record, &[]).unwrap();
    assert!(
        changes.changed.contains(&PathBuf::from("a/f2")),
        "ctime shows the rewrite"
    );
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    root.capture(&changes, &upper).unwrap();
    let in_upper = describe(&upper);
    assert!(
        in_upper["c/old"].starts_with("chardev 0"),
        "a deletion is a whiteout"
    );
    assert!(
        !in_upper.contains_key("mnt/ignored"),
        "kept paths are not captured"
    );
    assert!(!in_upper.contains_key("c/new"), "unchanged files stay out");
    assert_eq!(in_upper["a/f3"].split(" hardlink-of=").nth(1), Some("a/f2"));

    let mut with_step = layers.clone();
    with_step.push(upper);
    let after = tmp.path().join("after");
    LayerStack::new(with_step)
        .export(Path::new("/"), &after)
        .unwrap();
    assert_eq!(
        describe(&after),
        describe_without(&live, &kept),
        "the captured layer on top of the stack gives the tree the step left"
    );
}

#[test]
fn a_path_is_kept_where_it_or_a_symlink_on_its_way_leads_to_a_kept_one() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path();
    fs::create_dir_all(live.join("kiln/.docker")).unwrap();
    fs::create_dir_all(live.join("etc")).unwrap();
    fs::create_dir_all(live.join("tmp")).unwrap();
    fs::write(live.join("etc/hosts"), b"127.0.0.1 localhost").unwrap();
    // Absolute symlinks resolve in the tree, not on the host.
    symlink("/kiln", live.join("data")).unwrap();
    symlink("../kiln/.docker", live.join("tmp/rel")).unwrap();
    symlink("/etc", live.join("conf")).unwrap();
    let root = LiveRoot::new(
        live,
        vec![PathBuf::from("kiln"), PathBuf::from("etc/hosts")],
    );
    let kiln = Some(live.join("kiln"));
    let hosts = Some(live.join("etc/hosts"));
    assert_eq!(root.kept_at(Path::new("/kiln")), kiln, "a kept path");
    assert_eq!(root.kept_at(Path::new("/kiln/.docker/config.json")), kiln);
    assert_eq!(
        root.kept_at(Path::new("/data/token")),
        kiln,
        "through a symlink"
    );
    assert_eq!(
        root.kept_at(Path::new("/tmp/rel/new/dirs/config.json")),
        kiln,
        "through a relative symlink, to what does not exist yet"
    );
    assert_eq!(root.kept_at(Path::new("/etc")), hosts, "it holds one");
    assert_eq!(root.kept_at(Path::new("/conf/hosts")), hosts);
    assert!(root.kept_at(Path::new("/")).is_some());
    for free in [
        "/data",
        "/conf",
        "/tmp/x",
        "/etc/hostname",
        "/kilnx",
        "/new/dir",
    ] {
        assert_eq!(root.kept_at(Path::new(free)), None, "{free}");
    }
}

#[test]
fn a_directory_whose_only_change_is_an_xattr_is_captured() {
    // A default ACL (setfacl -d) or a label on a directory moves its ctime only.
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir_all(live.join("srv/data")).unwrap();
    fs::write(live.join("srv/data/file"), b"x").unwrap();
    let root = LiveRoot::new(&live, Vec::new());
    let record = root.inventory().unwrap();
    set_xattr(&live.join("srv/data"), b"user.kiln.test", b"1").unwrap();
    let (changes, _) = root.changes(&record, &[]).unwrap();
    assert_eq!(changes.changed, vec![PathBuf::from("srv/data")]);
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    root.capture(&changes, &upper).unwrap();
    assert_eq!(
        get_xattr(&upper.join("srv/data"), b"user.kiln.test").unwrap(),
        Some(b"1".to_vec())
    );
}

#[test]
fn a_symlink_on_the_way_to_a_kept_path_is_cleared_and_whited_out_like_any_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    fs::create_dir_all(live.join("elsewhere")).unwrap();
    let root = LiveRoot::new(&live, vec![PathBuf::from("results/kept")]);
    // A whiteout in a layer for what a step made a symlink.
    symlink("/elsewhere", live.join("results")).unwrap();
    let layer = tmp.path().join("layer");
    fs::create_dir(&layer).unwrap();
    make_whiteout(&layer.join("results")).unwrap();
    root.apply(&layer).unwrap();
    assert!(fs::symlink_metadata(live.join("results")).is_err());
    // A reset of a tree that holds one.
    symlink("/elsewhere", live.join("results")).unwrap();
    root.reset(&[]).unwrap();
    assert!(fs::symlink_metadata(live.join("results")).is_err());
    assert!(fs::symlink_metadata(live.join("elsewhere")).is_err());
}

/// Gzip `data` with [`crate::pargz::ParallelGzip`] on `threads` threads at `level`.
/// What GNU gzip, which checks the CRC and length in the trailer, decompresses `gz` to.
fn gnu_gunzip(gz: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.gz");
    fs::write(&path, gz).unwrap();
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "gzip -d failed");
    out.stdout
}

fn pargz_bytes(data: &[u8], level: u32, threads: usize) -> Vec<u8> {
    std::thread::scope(|scope| {
        let mut gz = crate::pargz::ParallelGzip::new(scope, Vec::new(), level, threads).unwrap();
        std::io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    })
}

/// `len` bytes of random files as a tar holds them: each after a 512-byte header, padded
/// with zeros (a layer of compressed or random artifacts).
pub(crate) fn random_files_as_tar_holds_them(len: usize) -> Vec<u8> {
    let mut files = Vec::new();
    let mut seed = 10;
    while files.len() < len {
        let mut header = format!("data/dir000/file{seed:03}.bin").into_bytes();
        header.resize(512, 0);
        files.extend_from_slice(&header);
        files.extend_from_slice(&xorshift_bytes(8389, seed));
        files.resize(files.len().next_multiple_of(512), 0);
        seed += 1;
    }
    files.truncate(len);
    files
}

#[test]
fn random_files_between_headers_shrink_as_much_as_at_the_streams_level() {
    // Such blocks get deflate's run-length strategy instead of level 6's match search: the
    // stream must stay one gzip reads back, the same for any thread count, and as small as
    // flate2's one-thread level 6 within 1%.
    let data = random_files_as_tar_holds_them(3 << 20);
    let one = pargz_bytes(&data, 6, 1);
    assert!(
        one == pargz_bytes(&data, 6, 2),
        "thread count changed the bytes"
    );
    assert!(gnu_gunzip(&one) == data, "gzip -d gave other bytes");
    let mut reference = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut reference, &data).unwrap();
    let reference = reference.finish().unwrap().len();
    assert!(
        one.len() <= reference + reference / 100,
        "{} bytes against level 6's {reference}",
        one.len()
    );
    assert!(
        one.len() < data.len() - data.len() / 16,
        "{} bytes",
        one.len()
    );
}

pub(crate) fn xorshift_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn stored_blocks_at_every_boundary_round_trip_through_gzip_and_match_across_threads() {
    let block = 256 << 10;
    let random = xorshift_bytes(3 * block + 70_000, 0x9e37_79b9_7f4a_7c15);
    for len in [
        0,
        1,
        4095,
        4096,
        4097,
        65_535,
        65_536,
        65_537,
        block - 1,
        block,
        block + 1,
        block + 4095,
        block + 4096,
        2 * block + 65_536,
        3 * block + 70_000,
    ] {
        for level in [1, 6, 9] {
            let data = &random[..len];
            let one = pargz_bytes(data, level, 1);
            for threads in [2, 5] {
                assert!(
                    one == pargz_bytes(data, level, threads),
                    "len {len} level {level}"
                );
            }
            assert!(
                gnu_gunzip(&one) == data,
                "len {len} level {level}: other bytes"
            );
            assert!(
                len < 4096 || one.len() <= len + len / 1000 + 64,
                "len {len}: {} bytes",
                one.len()
            );
        }
    }
}

#[test]
fn a_block_that_repeats_after_a_random_first_64k_is_still_deflated() {
    // Bytes spread evenly and a random first 64 KiB pass the byte-spread test, but the remaining
    // 192 KiB of the block repeat a 16 KiB pattern that deflate's window covers.
    let head = xorshift_bytes(64 << 10, 1);
    // Every byte value exactly 64 times, shuffled: repeating it keeps the spread even.
    let mut pattern: Vec<u8> = (0..16 << 10).map(|i| i as u8).collect();
    let order = xorshift_bytes(16 << 10, 2);
    for i in (1..pattern.len()).rev() {
        let j = (usize::from(order[i]) << 8 | usize::from(order[i - 1])) % (i + 1);
        pattern.swap(i, j);
    }
    let mut data = head;
    while data.len() < 256 << 10 {
        data.extend_from_slice(&pattern);
    }
    let gz = pargz_bytes(&data, 6, 1);
    assert!(gz.len() < 128 << 10, "{} bytes for 256 KiB", gz.len());
}

#[test]
fn a_pooled_gzip_member_is_the_bytes_parallel_gzip_makes() {
    let block = 256 << 10;
    let mut compressors = crate::pargz::Compressors::new(6);
    for len in [0, 1, 5000, block, block + 1, 3 * block, 3 * block + 77] {
        let data = xorshift_bytes(len, len as u64 + 1)
            .into_iter()
            .enumerate()
            // Half random, half text-like, so every effort the blocks can get is used.
            .map(|(i, b)| if i % 3 == 0 { b } else { b'a' + (i % 7) as u8 })
            .collect::<Vec<u8>>();
        let pooled = crate::pargz::gzip_member(&mut compressors, &data, 6).unwrap();
        assert!(pooled == pargz_bytes(&data, 6, 3), "{len} bytes");
        assert!(gunzip(&pooled) == data);
    }
}
