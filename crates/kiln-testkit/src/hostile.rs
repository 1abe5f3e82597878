//! Hostile layers and archives: the generator of `testdata/hostile/`, one function per file.
//!
//! Each file attacks an extractor one way. Those that plant a symlink to a host path point it
//! at a canary directory the caller names, so a test can check the host from outside; the
//! committed files use [`COMMITTED_CANARY`]. `cargo test -p kiln-testkit --lib hostile`
//! checks the committed bytes against the generator; `KILN_WRITE_HOSTILE=1` rewrites them.
//!
//! To add a file, write a function that returns its bytes and list it in [`HOSTILE_FILES`].

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

/// One file of the corpus.
pub struct HostileFile {
    /// Its name in `testdata/hostile/`; `.tar.gz` files are gzip-compressed.
    pub name: &'static str,
    /// Its bytes, with symlinks aimed at the absolute directory `canary`.
    pub bytes: fn(canary: &Path) -> Vec<u8>,
}

pub const HOSTILE_FILES: &[HostileFile] = &[
    HostileFile {
        name: "long-name-bomb.tar.gz",
        bytes: long_name_bomb,
    },
    HostileFile {
        name: "long-link-bomb.tar.gz",
        bytes: long_link_bomb,
    },
    HostileFile {
        name: "pax-bomb.tar.gz",
        bytes: pax_bomb,
    },
    HostileFile {
        name: "sparse-1gib.tar.gz",
        bytes: sparse_1gib,
    },
    HostileFile {
        name: "sparse-1tib.tar.gz",
        bytes: sparse_1tib,
    },
    HostileFile {
        name: "dir-times-through-symlink.tar",
        bytes: dir_times_through_symlink,
    },
    HostileFile {
        name: "file-through-parent-symlink.tar",
        bytes: file_through_parent_symlink,
    },
    HostileFile {
        name: "whiteout-through-parent-symlink.tar",
        bytes: whiteout_through_parent_symlink,
    },
    HostileFile {
        name: "opaque-through-parent-symlink.tar",
        bytes: opaque_through_parent_symlink,
    },
    HostileFile {
        name: "hardlink-through-symlink.tar",
        bytes: hardlink_through_symlink,
    },
    HostileFile {
        name: "hardlink-dotdot.tar",
        bytes: hardlink_dotdot,
    },
];

/// Where the committed files' symlinks point.
pub const COMMITTED_CANARY: &str = "/kiln-hostile-canary";

/// Size of the bombs' oversized member: far above any limit a reader should have, and
/// compressed to about 130 KB.
const BOMB: u64 = 128 << 20;

/// `testdata/hostile/` of this checkout.
pub fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/hostile")
}

/// The bytes of the corpus file `name`, aimed at `canary`.
pub fn hostile_file(name: &str, canary: &Path) -> Vec<u8> {
    let file = HOSTILE_FILES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no hostile file {name}"));
    (file.bytes)(canary)
}

/// A GNU long name ('L') member of 128 MiB before a one-line file.
fn long_name_bomb(_: &Path) -> Vec<u8> {
    long_member_bomb(EntryType::GNULongName)
}

/// A GNU long link ('K') member of 128 MiB before a symlink.
fn long_link_bomb(_: &Path) -> Vec<u8> {
    long_member_bomb(EntryType::GNULongLink)
}

fn long_member_bomb(kind: EntryType) -> Vec<u8> {
    let mut out = GzEncoder::new(Vec::new(), Compression::best());
    out.write_all(header(kind, "././@LongLink", BOMB + 1, "").as_bytes())
        .unwrap();
    write_repeated(&mut out, b'a', BOMB);
    write_repeated(&mut out, 0, 1);
    pad(&mut out, BOMB + 1);
    match kind {
        EntryType::GNULongLink => append(&mut out, EntryType::Symlink, "link", "", b""),
        _ => append(&mut out, EntryType::Regular, "file", "", b"pwned\n"),
    }
    end(&mut out);
    out.finish().unwrap()
}

/// A PAX header ('x') of 128 MiB, one `comment` record, before a one-line file.
fn pax_bomb(_: &Path) -> Vec<u8> {
    let value = BOMB;
    // "<length> comment=<value>\n", the length counting its own digits.
    let body = "comment=".len() as u64 + value + 1;
    let mut length = body + 2;
    while length != body + 1 + length.to_string().len() as u64 {
        length = body + 1 + length.to_string().len() as u64;
    }
    let mut out = GzEncoder::new(Vec::new(), Compression::best());
    out.write_all(header(EntryType::XHeader, "PaxHeaders/file", length, "").as_bytes())
        .unwrap();
    out.write_all(format!("{length} comment=").as_bytes())
        .unwrap();
    write_repeated(&mut out, b'a', value);
    out.write_all(b"\n").unwrap();
    pad(&mut out, length);
    append(&mut out, EntryType::Regular, "file", "", b"pwned\n");
    end(&mut out);
    out.finish().unwrap()
}

/// A GNU sparse file of 1 GiB: one 512-byte region at its end, the rest a hole.
fn sparse_1gib(_: &Path) -> Vec<u8> {
    sparse(1 << 30)
}

/// A GNU sparse file of 1 TiB: one 512-byte region at its end, the rest a hole.
fn sparse_1tib(_: &Path) -> Vec<u8> {
    sparse(1 << 40)
}

fn sparse(size: u64) -> Vec<u8> {
    let mut header = header(EntryType::GNUSparse, "sparse", 512, "");
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(size);
    gnu.sparse[0].set_offset(size - 512);
    gnu.sparse[0].set_length(512);
    header.set_cksum();
    let mut out = GzEncoder::new(Vec::new(), Compression::best());
    out.write_all(header.as_bytes()).unwrap();
    out.write_all(&[b'x'; 512]).unwrap();
    end(&mut out);
    out.finish().unwrap()
}

/// `a/b/` (a directory with an old mtime), then `a` replaced by a symlink to the canary (which
/// has a `b` of its own), then more entries. A reader that sets directory times at the end,
/// by path, sets them on the canary's `b`.
fn dir_times_through_symlink(canary: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    append(&mut out, EntryType::Directory, "a/", "", b"");
    append(&mut out, EntryType::Directory, "a/b/", "", b"");
    append(&mut out, EntryType::Symlink, "a", path(canary), b"");
    append(&mut out, EntryType::Directory, "c/", "", b"");
    append(&mut out, EntryType::Regular, "c/file", "", b"after\n");
    end(&mut out);
    out
}

/// A directory replaced by a symlink to the canary, then a file beneath it.
fn file_through_parent_symlink(canary: &Path) -> Vec<u8> {
    through_parent_symlink(canary, EntryType::Regular, "a/pwned", b"pwned\n")
}

/// A directory replaced by a symlink to the canary, then a whiteout of the canary's file.
fn whiteout_through_parent_symlink(canary: &Path) -> Vec<u8> {
    through_parent_symlink(canary, EntryType::Regular, "a/.wh.canary", b"")
}

/// A directory replaced by a symlink to the canary, then an opaque marker in it.
fn opaque_through_parent_symlink(canary: &Path) -> Vec<u8> {
    through_parent_symlink(canary, EntryType::Regular, "a/.wh..wh..opq", b"")
}

fn through_parent_symlink(canary: &Path, kind: EntryType, name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append(&mut out, EntryType::Directory, "a/", "", b"");
    append(&mut out, EntryType::Symlink, "a", path(canary), b"");
    append(&mut out, kind, name, "", data);
    end(&mut out);
    out
}

/// A hard link to the canary's file through a symlink to the canary: linked, the layer's
/// `h` would be the host file.
fn hardlink_through_symlink(canary: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    append(&mut out, EntryType::Symlink, "l", path(canary), b"");
    append(&mut out, EntryType::Link, "h", "l/canary", b"");
    end(&mut out);
    out
}

/// A hard link to the canary's file by `../` far enough to reach `/`.
fn hardlink_dotdot(canary: &Path) -> Vec<u8> {
    let target = "../".repeat(16) + path(canary).trim_start_matches('/') + "/canary";
    let mut out = Vec::new();
    append(&mut out, EntryType::Link, "h", &target, b"");
    end(&mut out);
    out
}

fn path(canary: &Path) -> &str {
    canary.to_str().expect("a UTF-8 canary path")
}

/// A GNU header (long names need one); directories 0755, the rest 0644, mtime 1000000.
fn header(kind: EntryType, name: &str, size: u64, link: &str) -> Header {
    let mut header = Header::new_gnu();
    let gnu = header.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_000_000);
    header.set_cksum();
    header
}

/// One entry (header, data, padding). Names and link targets are written raw, so `..` and
/// absolute targets go in as they are.
fn append(out: &mut impl Write, kind: EntryType, name: &str, link: &str, data: &[u8]) {
    out.write_all(header(kind, name, data.len() as u64, link).as_bytes())
        .unwrap();
    out.write_all(data).unwrap();
    pad(out, data.len() as u64);
}

fn pad(out: &mut impl Write, size: u64) {
    let rest = size.next_multiple_of(512) - size;
    write_repeated(out, 0, rest);
}

fn write_repeated(out: &mut impl Write, byte: u8, mut n: u64) {
    let chunk = [byte; 64 << 10];
    while n > 0 {
        let len = n.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..len]).unwrap();
        n -= len as u64;
    }
}

/// The end-of-archive marker: two zero blocks.
fn end(out: &mut impl Write) {
    out.write_all(&[0; 1024]).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_corpus_matches_its_generator() {
        let dir = hostile_dir();
        let write = std::env::var_os("KILN_WRITE_HOSTILE").is_some();
        for file in HOSTILE_FILES {
            let bytes = (file.bytes)(Path::new(COMMITTED_CANARY));
            let path = dir.join(file.name);
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (KILN_WRITE_HOSTILE=1 writes it)", path.display())
            });
            assert!(
                committed == bytes,
                "{} differs from its generator (KILN_WRITE_HOSTILE=1 rewrites it)",
                path.display()
            );
        }
    }
}
