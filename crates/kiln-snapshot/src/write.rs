//! Overlay-format layer dir -> deterministic layer tar, compressed and hashed while it
//! streams.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, DigestWriter};
use tar::{EntryType, Header};

use crate::encoding::{Compressor, LayerEncoding};
use crate::estargz::{self, EstargzWriter};
use crate::fsmeta::{self, is_whiteout};
use crate::pargz;
use crate::{SnapshotError, at};

#[derive(Clone, Debug, Default)]
pub struct LayerOptions {
    /// How the tar is compressed.
    pub encoding: LayerEncoding,
    /// Entries with a newer mtime get this one instead (reproducible builds).
    pub source_date_epoch: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// sha256 of the compressed bytes written to `out`.
    pub digest: Digest,
    /// Number of compressed bytes written to `out`.
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The OCI media type of the blob.
    pub media_type: &'static str,
    /// Annotations the layer's descriptor carries (eStargz's table of contents).
    pub annotations: BTreeMap<String, String>,
}

/// What a tar is written to: told of each entry before its header, for eStargz, which
/// starts a gzip member at every file's payload and lists the entries at the end.
pub(crate) trait TarSink: Write {
    fn entry(&mut self, _header: &Header, _pax: &[(String, Vec<u8>)]) -> io::Result<()> {
        Ok(())
    }
}

/// A tar sink that only writes.
struct Plain<W>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> TarSink for Plain<W> {}

impl<W: Write> TarSink for EstargzWriter<'_, '_, W> {
    fn entry(&mut self, header: &Header, pax: &[(String, Vec<u8>)]) -> io::Result<()> {
        EstargzWriter::entry(self, header, pax)
    }
}

/// One tar entry to emit.
struct Item {
    /// The name in the tar: relative, `/`-separated, directories with a trailing `/`.
    name: Vec<u8>,
    /// `None` for the empty marker files OCI uses for whiteouts and opaque directories.
    source: Option<(PathBuf, Metadata)>,
}

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Write `dir` (an overlay-format layer dir) as an OCI layer tar to `out`, compressed as
/// `opts` says. Compression runs on every core; the bytes do not depend on how many there
/// are.
pub fn write_layer<W: Write>(
    dir: &Path,
    out: W,
    opts: &LayerOptions,
) -> Result<LayerBlob, SnapshotError> {
    write_layer_on_threads(dir, out, opts, pargz::default_threads())
}

/// Writes the tree under `dir` to `out` as a plain tar, entries as [`write_layer`] writes
/// them (a rootfs has no whiteouts to translate): `-o type=tar`.
pub fn write_tar<W: Write>(
    dir: &Path,
    out: W,
    source_date_epoch: Option<i64>,
) -> Result<(), SnapshotError> {
    let opts = LayerOptions {
        encoding: LayerEncoding::Uncompressed,
        source_date_epoch,
    };
    let mut tar = tar::Builder::new(Plain(out));
    write_entries(dir, &mut tar, &opts)?;
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(SnapshotError::Output)
}

/// Every entry under `dir`, sorted by name, into `tar`.
fn write_entries<W: TarSink>(
    dir: &Path,
    tar: &mut tar::Builder<W>,
    opts: &LayerOptions,
) -> Result<(), SnapshotError> {
    let mut items = Vec::new();
    collect(dir, &mut items)?;
    if let LayerEncoding::Estargz { .. } = opts.encoding {
        // eStargz writes its own landmark and table of contents. A layer dir extracted from
        // an eStargz blob holds the old ones, which would be in the tar twice (readers differ
        // on which counts); stargz-snapshotter's converter drops an old table of contents
        // for the same reason.
        let reserved = [estargz::NO_PREFETCH_LANDMARK, estargz::TOC_NAME];
        items.retain(|item| !reserved.iter().any(|name| item.name == name.as_bytes()));
    }
    items.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    // (dev, ino) of multiply-linked files -> name of the first one emitted.
    let mut first_links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for item in &items {
        write_item(tar, item, opts, &mut first_links)?;
    }
    Ok(())
}

pub(crate) fn write_layer_on_threads<W: Write>(
    dir: &Path,
    out: W,
    opts: &LayerOptions,
    threads: usize,
) -> Result<LayerBlob, SnapshotError> {
    std::thread::scope(|scope| {
        if let LayerEncoding::Estargz { level } = opts.encoding {
            let writer = EstargzWriter::new(scope, DigestWriter::new(out), level, threads);
            let mut tar = tar::Builder::new(writer);
            append_landmark(&mut tar)?;
            write_entries(dir, &mut tar, opts)?;
            tar.get_mut().end_of_entries();
            let writer = tar.into_inner().map_err(SnapshotError::Output)?;
            let done = writer.finish().map_err(SnapshotError::Output)?;
            let (digest, size, _) = done.out.finish();
            return Ok(LayerBlob {
                digest,
                size,
                diff_id: done.diff_id,
                media_type: opts.encoding.media_type(),
                annotations: done.annotations,
            });
        }
        let compressor = Compressor::new(scope, DigestWriter::new(out), opts.encoding, threads)
            .map_err(SnapshotError::Output)?;
        let mut tar = tar::Builder::new(Plain(DigestWriter::new(compressor)));
        write_entries(dir, &mut tar, opts)?;
        let Plain(plain) = tar.into_inner().map_err(SnapshotError::Output)?;
        let (diff_id, _, compressor) = plain.finish();
        let compressed = compressor.finish().map_err(SnapshotError::Output)?;
        let (digest, size, _) = compressed.finish();
        Ok(LayerBlob {
            digest,
            size,
            diff_id,
            media_type: opts.encoding.media_type(),
            annotations: BTreeMap::new(),
        })
    })
}

/// eStargz's first entry: the landmark saying that no file is to be prefetched, a regular
/// file holding the byte 0xf.
fn append_landmark<W: TarSink>(tar: &mut tar::Builder<W>) -> Result<(), SnapshotError> {
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(1);
    header.set_mtime(0);
    let mut pax = Vec::new();
    set_name(
        &mut header,
        estargz::NO_PREFETCH_LANDMARK.as_bytes(),
        &mut pax,
    );
    header.set_cksum();
    tar.get_mut()
        .entry(&header, &pax)
        .and_then(|()| tar.append(&header, &[0xf_u8][..]))
        .map_err(SnapshotError::Output)
}

/// List every entry under `dir` (not `dir` itself), translating overlay markers to OCI names.
/// Iterative (the caller sorts): a RUN step can nest directories as deep as PATH_MAX allows,
/// and a call per level overflowed a build thread's stack at about 1,900 levels.
fn collect(dir: &Path, items: &mut Vec<Item>) -> Result<(), SnapshotError> {
    let mut dirs: Vec<(PathBuf, Vec<u8>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            let path = entry.path();
            let md = fs::symlink_metadata(&path).map_err(at(&path))?;
            let file_name = entry.file_name();
            let mut name = prefix.clone();
            if is_whiteout(&md) {
                name.extend_from_slice(b".wh.");
                name.extend_from_slice(file_name.as_bytes());
                items.push(Item { name, source: None });
                continue;
            }
            if md.file_type().is_socket() {
                continue;
            }
            name.extend_from_slice(file_name.as_bytes());
            if md.is_dir() {
                name.push(b'/');
                if fsmeta::is_opaque(&path) {
                    let mut marker = name.clone();
                    marker.extend_from_slice(OPAQUE_MARKER);
                    items.push(Item {
                        name: marker,
                        source: None,
                    });
                }
                dirs.push((path.clone(), name.clone()));
            }
            items.push(Item {
                name,
                source: Some((path, md)),
            });
        }
    }
    Ok(())
}

fn write_item<W: TarSink>(
    tar: &mut tar::Builder<W>,
    item: &Item,
    opts: &LayerOptions,
    first_links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<(), SnapshotError> {
    let mut header = Header::new_ustar();
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    header.set_size(0);
    let Some((path, md)) = &item.source else {
        // Whiteout and opaque markers: empty files, no metadata worth keeping.
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        set_name(&mut header, &item.name, &mut pax);
        return append(tar, header, &pax, None);
    };

    let (uid, gid, mode) = fsmeta::owner_and_mode(path, md).map_err(at(path))?;
    header.set_mode(mode);
    header.set_uid(uid.into());
    header.set_gid(gid.into());
    let mtime = match opts.source_date_epoch {
        Some(epoch) => md.mtime().min(epoch),
        None => md.mtime(),
    };
    header.set_mtime(mtime.max(0) as u64);
    set_name(&mut header, &item.name, &mut pax);

    let ft = md.file_type();
    let mut link_target = None;
    if !ft.is_dir() && md.nlink() > 1 {
        let first = first_links
            .entry((md.dev(), md.ino()))
            .or_insert_with(|| item.name.clone());
        if *first != item.name {
            link_target = Some(first.clone());
        }
    }
    let mut contents = None;
    if let Some(target) = link_target {
        header.set_entry_type(EntryType::Link);
        set_link_name(&mut header, &target, &mut pax);
    } else {
        for (name, value) in fsmeta::list_xattrs(path).map_err(at(path))? {
            if !fsmeta::is_private_xattr(&name) {
                pax.push((
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(&name)),
                    value,
                ));
            }
        }
        if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
        } else if ft.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(path).map_err(at(path))?;
            set_link_name(&mut header, target.as_os_str().as_bytes(), &mut pax);
        } else if ft.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
        } else if ft.is_char_device() || ft.is_block_device() {
            header.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let (major, minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
            header.set_device_major(major).map_err(at(path))?;
            header.set_device_minor(minor).map_err(at(path))?;
        } else {
            header.set_entry_type(EntryType::Regular);
            header.set_size(md.len());
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(at(path))?;
            contents = Some(ExactLen {
                file,
                left: md.len(),
                path,
                failure: None,
            });
        }
    }
    append(tar, header, &pax, contents)
}

fn append<W: TarSink>(
    tar: &mut tar::Builder<W>,
    mut header: Header,
    pax: &[(String, Vec<u8>)],
    contents: Option<ExactLen<'_>>,
) -> Result<(), SnapshotError> {
    header.set_cksum();
    tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(SnapshotError::Output)?;
    tar.get_mut()
        .entry(&header, pax)
        .map_err(SnapshotError::Output)?;
    match contents {
        None => tar
            .append(&header, io::empty())
            .map_err(SnapshotError::Output),
        Some(mut file) => match tar.append(&header, &mut file) {
            Ok(()) => Ok(()),
            Err(e) => Err(match file.failure.take() {
                Some(source) => SnapshotError::Io {
                    path: file.path.to_path_buf(),
                    source,
                },
                None => SnapshotError::Output(e),
            }),
        },
    }
}

/// A file's contents, exactly as long as the header promised: a file that shrank while being
/// archived would otherwise leave a corrupt tar behind.
struct ExactLen<'p> {
    file: File,
    left: u64,
    path: &'p Path,
    /// Set when reading the file (not writing the archive) failed.
    failure: Option<io::Error>,
}

impl Read for ExactLen<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.try_into().unwrap_or(usize::MAX));
        let result = match self.file.read(&mut buf[..want]) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being archived",
            )),
            other => other,
        };
        match result {
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failure = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

/// Store a name as-is (no normalisation): in `name`, split over `prefix`/`name`, or in a PAX
/// `path` record when it fits neither.
fn set_name(header: &mut Header, name: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let ustar = header
        .as_ustar_mut()
        .expect("new_ustar() makes a ustar header");
    if name.len() <= ustar.name.len() {
        ustar.name[..name.len()].copy_from_slice(name);
        return;
    }
    // A `/` (not the trailing one of a directory) that leaves <= 155 bytes before and <= 100 after.
    let split = name[..name.len() - 1]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| i)
        .find(|&i| name.len() - i - 1 <= ustar.name.len());
    match split {
        Some(i) if i <= ustar.prefix.len() => {
            ustar.prefix[..i].copy_from_slice(&name[..i]);
            ustar.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
        }
        _ => {
            let n = ustar.name.len();
            ustar.name.copy_from_slice(&name[..n]);
            pax.push(("path".to_string(), name.to_vec()));
        }
    }
}

fn set_link_name(header: &mut Header, target: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let ustar = header
        .as_ustar_mut()
        .expect("new_ustar() makes a ustar header");
    let n = target.len().min(ustar.linkname.len());
    ustar.linkname[..n].copy_from_slice(&target[..n]);
    if target.len() > n {
        pax.push(("linkpath".to_string(), target.to_vec()));
    }
}
