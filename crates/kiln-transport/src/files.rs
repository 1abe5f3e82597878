//! Reading files out of a layout directory or a tar archive, and writing files so that they
//! appear whole or not at all.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use kiln_oci::{Descriptor, DigestReader};

use crate::{ImageSource, TransportError};

/// Manifests, indexes, `index.json` and `manifest.json` are read into memory: at most as much
/// as kiln takes from a registry (4 MiB, distribution's limit for manifests).
pub(crate) const MAX_JSON_BYTES: u64 = kiln_registry::MAX_MANIFEST_BYTES;

/// The most header bytes (headers, GNU long names, PAX records) one scan of a tar archive
/// reads. The `tar` crate holds a long name or PAX record in memory whole, however large its
/// header says it is, and the index holds every member's name: this bounds both. An image
/// archive has a few members per blob, each with a header or two; as a seek empties the read
/// buffer, each member costs a buffer fill (8 KiB), so this is about 8,000 members.
const MAX_TAR_HEADER_BYTES: u64 = 64 << 20;

/// "larger than 4 MiB", for messages.
fn too_large() -> String {
    format!("larger than {} MiB", MAX_JSON_BYTES >> 20)
}

/// An open file of a layout or archive, and its size.
pub(crate) type OpenFile<'a> = (Box<dyn Read + 'a>, u64);

/// The files of an image location: a directory, or the members of a tar archive.
pub(crate) enum Files {
    Dir(PathBuf),
    Tar(TarIndex),
}

/// Where each member of a tar archive lies, found by one pass over its headers, so members
/// can be read later by seeking instead of unpacking the archive.
pub(crate) struct TarIndex {
    file: PathBuf,
    /// Regular members: (offset of the data, size).
    members: HashMap<String, (u64, u64)>,
    /// Symbolic and hard links: the archive path they resolve to.
    links: HashMap<String, String>,
}

/// `a/./b/../c` as `a/c`, without touching the filesystem; `None` if it leaves the root.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// Opens `path` (symlinks followed) for reading if it is a regular file. A FIFO would block the
/// open, and a device could give endless bytes or block its reads: an archive or manifest
/// someone else can put in place (kaniko's `--cache-dir`) must not hang kiln.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // O_NONBLOCK changes nothing for a regular file's reads.
    match file.metadata()?.is_file() {
        true => Ok(file),
        false => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )),
    }
}

/// A reader that fails once more than its budget has been read through it; seeks are free.
struct ReadBudget<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ReadBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "its headers are larger than {} MiB",
                MAX_TAR_HEADER_BYTES >> 20
            ))
        })?;
        Ok(n)
    }
}

impl<R: Seek> Seek for ReadBudget<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl TarIndex {
    pub(crate) fn scan(file: &Path) -> Result<TarIndex, TransportError> {
        let context = || format!("reading the archive {}", file.display());
        let f = open_regular(file).map_err(TransportError::io(context()))?;
        // Members' data is seeked over: what is read is headers.
        let mut archive = tar::Archive::new(ReadBudget {
            inner: BufReader::new(f),
            left: MAX_TAR_HEADER_BYTES,
        });
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        for entry in archive
            .entries_with_seek()
            .map_err(TransportError::io(context()))?
        {
            let entry = entry.map_err(TransportError::io(context()))?;
            let path = entry.path().map_err(TransportError::io(context()))?;
            let Some(name) = normalize(&path) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let Some(target) = entry.link_name().map_err(TransportError::io(context()))?
                    else {
                        continue;
                    };
                    // A symlink is relative to its own directory; a hard link names a member.
                    let resolved = if kind == tar::EntryType::Symlink {
                        normalize(&path.parent().unwrap_or(Path::new("")).join(&target))
                    } else {
                        normalize(&target)
                    };
                    if let Some(resolved) = resolved {
                        links.insert(name, resolved);
                    }
                }
                _ => {}
            }
        }
        Ok(TarIndex {
            file: file.to_path_buf(),
            members,
            links,
        })
    }

    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize(Path::new(name))?;
        // Links of links, but never round in circles.
        for _ in 0..8 {
            if let Some(found) = self.members.get(&name) {
                return Some(*found);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }
}

impl Files {
    /// What these files are, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Files::Dir(d) => d.display().to_string(),
            Files::Tar(t) => t.file.display().to_string(),
        }
    }

    /// Opens a file by its path inside the layout or archive; `Ok(None)` if there is none.
    pub(crate) fn open(&self, name: &str) -> Result<Option<OpenFile<'_>>, TransportError> {
        let context = || format!("reading {name} in {}", self.describe());
        match self {
            Files::Dir(dir) => match File::open(dir.join(name)) {
                Ok(f) => {
                    let size = f.metadata().map_err(TransportError::io(context()))?.len();
                    Ok(Some((Box::new(BufReader::new(f)), size)))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(TransportError::io(context())(e)),
            },
            Files::Tar(index) => {
                let Some((offset, size)) = index.locate(name) else {
                    return Ok(None);
                };
                let mut f = open_regular(&index.file).map_err(TransportError::io(context()))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(TransportError::io(context()))?;
                Ok(Some((Box::new(BufReader::new(f).take(size)), size)))
            }
        }
    }

    /// Opens a file that must exist.
    pub(crate) fn open_required(&self, name: &str) -> Result<OpenFile<'_>, TransportError> {
        self.open(name)?
            .ok_or_else(|| TransportError::invalid(self.describe(), format!("has no {name}")))
    }

    /// Reads a small file (JSON) into memory, at most `MAX_JSON_BYTES`.
    pub(crate) fn read_small(&self, name: &str) -> Result<Vec<u8>, TransportError> {
        let (reader, size) = self.open_required(name)?;
        let refuse = |size: String| {
            TransportError::invalid(
                self.describe(),
                format!("{name} is {} ({size})", too_large()),
            )
        };
        if size > MAX_JSON_BYTES {
            return Err(refuse(format!("{size} bytes")));
        }
        // A file's size may not be what reading it gives (a device, a file still growing).
        let bytes = read_capped(reader, MAX_JSON_BYTES).map_err(TransportError::io(format!(
            "reading {name} in {}",
            self.describe()
        )))?;
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(refuse("as read".into()));
        }
        Ok(bytes)
    }
}

/// Creates the directory `path` lies in (`.` for a bare name) and returns it.
pub(crate) fn create_parent(path: &Path) -> Result<&Path, TransportError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent)
        .map_err(TransportError::io(format!("creating {}", parent.display())))?;
    Ok(parent)
}

/// The temp file a write to `dest` goes through, in the same directory so the final rename
/// is atomic. Mode 0644 before the umask, as other tools write layouts and archives.
pub(crate) fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile, TransportError> {
    let parent = create_parent(dest)?;
    tempfile::Builder::new()
        .prefix(".kiln-part-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(parent)
        .map_err(TransportError::io(format!(
            "creating a file in {}",
            parent.display()
        )))
}

/// A temp dir beside `dest` that becomes it by a rename: mode 0755 before the umask, as the
/// directory it becomes should be.
pub(crate) fn temp_dir_beside(
    dest: &Path,
    prefix: &str,
) -> Result<tempfile::TempDir, TransportError> {
    let parent = create_parent(dest)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o755))
        .tempdir_in(parent)
        .map_err(TransportError::io(format!(
            "creating a directory in {}",
            parent.display()
        )))
}

/// Puts the blob `desc` of `source` at `dest`: a hard link to the source's own verified file
/// when it has one (or a copy of it across filesystems), else a verified stream.
pub(crate) fn place_blob(
    source: &dyn ImageSource,
    desc: &Descriptor,
    dest: &Path,
) -> Result<(), TransportError> {
    let Some(local) = source.local_blob(desc) else {
        return source.blob_to_file(desc, dest);
    };
    // A hard link costs nothing when both are on one filesystem.
    if fs::hard_link(&local, dest).is_ok() {
        return Ok(());
    }
    let tmp = temp_beside(dest)?;
    let context = || format!("copying {} to {}", local.display(), dest.display());
    fs::copy(&local, tmp.path()).map_err(TransportError::io(context()))?;
    tmp.persist(dest)
        .map_err(|e| TransportError::io(context())(e.error))?;
    Ok(())
}

/// Streams `reader` into `dest`, checking it hashes to `desc`'s digest and size; `dest`
/// appears only when it does. `location` and `what` name the content in the error.
pub fn write_verified(
    reader: impl Read,
    desc: &Descriptor,
    dest: &Path,
    location: &str,
    what: &'static str,
) -> Result<(), TransportError> {
    let tmp = temp_beside(dest)?;
    // A byte past the size already makes it a mismatch: a source claiming terabytes (a sparse
    // archive member) is not copied to the end.
    let mut hashed = DigestReader::new(reader.take(desc.size.saturating_add(1)));
    let mut out = BufWriter::new(tmp.as_file());
    let context = || format!("copying {what} {} from {location}", desc.digest);
    io::copy(&mut hashed, &mut out).map_err(TransportError::io(context()))?;
    out.flush().map_err(TransportError::io(context()))?;
    drop(out);
    let (actual, size) = hashed.finish();
    if actual != desc.digest || size != desc.size {
        return Err(TransportError::DigestMismatch {
            location: location.to_string(),
            what,
            expected: desc.digest.clone(),
            actual,
            size,
        });
    }
    tmp.persist(dest)
        .map_err(|e| TransportError::io(format!("storing {}", dest.display()))(e.error))?;
    Ok(())
}

/// Reads small content, at most `cap` bytes and one more (which tells that there was more).
pub(crate) fn read_capped(reader: impl Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(cap.min(MAX_JSON_BYTES) as usize);
    reader.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads small content (a manifest, at most 4 MiB) fully, checking it against `desc`.
pub fn read_verified(
    reader: impl Read,
    desc: &Descriptor,
    location: &str,
    what: &'static str,
) -> Result<Vec<u8>, TransportError> {
    if desc.size > MAX_JSON_BYTES {
        return Err(TransportError::invalid(
            location,
            format!(
                "{what} {} is {} (its descriptor says {} bytes)",
                desc.digest,
                too_large(),
                desc.size
            ),
        ));
    }
    let bytes = read_capped(reader, desc.size).map_err(TransportError::io(format!(
        "reading {what} {} from {location}",
        desc.digest
    )))?;
    let actual = kiln_oci::Digest::of(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(TransportError::DigestMismatch {
            location: location.to_string(),
            what,
            expected: desc.digest.clone(),
            actual,
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to `dest` through a temp file and a rename.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), TransportError> {
    let mut tmp = temp_beside(dest)?;
    let context = || format!("writing {}", dest.display());
    tmp.write_all(bytes)
        .map_err(TransportError::io(context()))?;
    tmp.flush().map_err(TransportError::io(context()))?;
    tmp.persist(dest)
        .map_err(|e| TransportError::io(context())(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_oci::{Digest, media};

    #[test]
    fn metadata_larger_than_a_registry_may_send_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let files = Files::Dir(t.path().to_path_buf());
        std::fs::write(t.path().join("index.json"), vec![b' '; 5 << 20]).unwrap();
        std::os::unix::fs::symlink("/dev/zero", t.path().join("manifest.json")).unwrap();
        for name in ["index.json", "manifest.json"] {
            let e = files.read_small(name).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("larger than 4 MiB"), "{e}");
        }
        let desc = Descriptor::new(media::OCI_MANIFEST, Digest::of(b"m"), 5 << 20);
        let e = read_verified(std::io::repeat(b' '), &desc, "oci:x", "manifest").unwrap_err();
        assert!(e.to_string().contains("larger than 4 MiB"), "{e}");
    }

    #[test]
    fn a_mismatching_stream_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("blob");
        let desc = Descriptor::new(media::OCI_LAYER_TAR, Digest::of(b"promised"), 8);
        let e = write_verified(&b"tampered"[..], &desc, &dest, "oci:x", "blob").unwrap_err();
        assert!(e.to_string().contains(&desc.digest.to_string()), "{e}");
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "no temp file or blob left"
        );
        write_verified(&b"promised"[..], &desc, &dest, "oci:x", "blob").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"promised");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_source_longer_than_its_descriptor_is_read_no_further() {
        // Endless bytes, which fail the test past 1 MiB.
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0 += buf.len() as u64;
                assert!(self.0 < 1 << 20, "read past the blob's size");
                buf.fill(b'x');
                Ok(buf.len())
            }
        }
        let t = tempfile::tempdir().unwrap();
        let desc = Descriptor::new(media::OCI_LAYER_TAR, Digest::of(b"promised"), 8);
        let e = write_verified(Endless(0), &desc, &t.path().join("blob"), "oci:x", "blob");
        assert!(
            matches!(e, Err(TransportError::DigestMismatch { size: 9, .. })),
            "{e:?}"
        );
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_archives_headers_are_read_within_a_budget() {
        let t = tempfile::tempdir().unwrap();
        let header = |kind: tar::EntryType, name: &str, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_path(name).unwrap();
            h.set_cksum();
            *h.as_bytes()
        };
        // A GNU long name of 1 GiB, in a sparse file: the tar crate would hold it whole.
        let long = t.path().join("long.tar");
        let mut f = File::create(&long).unwrap();
        f.write_all(&header(
            tar::EntryType::GNULongName,
            "././@LongLink",
            1 << 30,
        ))
        .unwrap();
        f.set_len(512 + (1 << 30)).unwrap();
        // 160,000 empty members, 80 MB of headers: an index of millions would not fit memory.
        let many = t.path().join("many.tar");
        let mut f = BufWriter::new(File::create(&many).unwrap());
        for n in 0..160_000 {
            f.write_all(&header(tar::EntryType::Regular, &format!("m{n}"), 0))
                .unwrap();
        }
        f.flush().unwrap();
        for archive in [long, many] {
            let e = TarIndex::scan(&archive)
                .err()
                .expect("a scan within budget");
            assert!(
                e.to_string().contains("headers are larger than 64 MiB"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_archive_that_is_no_regular_file_is_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        for path in [fifo.as_path(), Path::new("/dev/zero"), t.path()] {
            let e = TarIndex::scan(path).err().expect("refused");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn links_in_cycles_or_out_of_the_archive_and_special_members_give_nothing() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut link = |kind: tar::EntryType, name: &str, target: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        };
        link(tar::EntryType::Symlink, "a", "b");
        link(tar::EntryType::Symlink, "b", "a");
        link(tar::EntryType::Link, "c", "c");
        link(tar::EntryType::Symlink, "passwd", "../../../../etc/passwd");
        link(tar::EntryType::Symlink, "absolute", "/etc/passwd");
        link(tar::EntryType::Link, "hard", "/etc/passwd");
        for kind in [tar::EntryType::Fifo, tar::EntryType::Char] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            b.append_data(&mut h, format!("{kind:?}"), io::empty())
                .unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
        let files = Files::Tar(TarIndex::scan(&path).unwrap());
        for name in ["a", "b", "c", "passwd", "absolute", "hard", "Fifo", "Char"] {
            assert!(files.open(name).unwrap().is_none(), "{name}");
        }
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("index.json");
        write_atomic(&dest, b"first").unwrap();
        write_atomic(&dest, b"second").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn tar_members_are_read_by_seeking_and_links_followed() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "./one/layer.tar", &b"hello"[..])
            .unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "two/layer.tar", "../one/layer.tar")
            .unwrap();
        b.into_inner().unwrap().flush().unwrap();
        let files = Files::Tar(TarIndex::scan(&path).unwrap());
        let read = |n: &str| {
            let (mut r, size) = files.open(n).unwrap().unwrap();
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            (s, size)
        };
        assert_eq!(read("one/layer.tar"), ("hello".into(), 5));
        assert_eq!(read("two/layer.tar"), ("hello".into(), 5));
        assert!(files.open("three").unwrap().is_none());
    }
}
