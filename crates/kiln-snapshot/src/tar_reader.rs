//! A tar stream, entry by entry, in bounded memory.
//!
//! The `tar` crate decodes the header fields, but its entry iterator reads a GNU long name,
//! long link or PAX header into memory whole, however large the header says it is, and its
//! raw mode neither applies a PAX `size` nor skips GNU sparse map blocks. So the framing is
//! done here, and everything held in memory has a limit:
//!
//! - names and link targets: [`MAX_PATH`] bytes, Linux's `PATH_MAX` (nothing in a container
//!   could use a longer path);
//! - a PAX header ('x', and the ignored global 'g'): [`MAX_PAX`], as Go's archive/tar allows
//!   (which Docker, containerd and BuildKit read and write layers with);
//! - an xattr value: [`MAX_XATTR_VALUE`], Linux's `XATTR_SIZE_MAX`;
//! - the map of a GNU sparse file: [`MAX_SPARSE_REGIONS`] regions (1 MiB); and the sizes
//!   (holes included) of all sparse files of one archive together: [`MAX_SPARSE_SIZE`].
//!
//! A file's data is never held: the caller streams it from [`TarReader::data`].

use std::io::{self, Read};

use tar::{EntryType, GnuExtSparseHeader, GnuSparseHeader, Header};

use crate::fsmeta::{EntryMeta, is_private_xattr};
use crate::{SnapshotError, shown};

const BLOCK: u64 = 512;

pub(crate) const MAX_PATH: usize = 4096;
pub(crate) const MAX_PAX: u64 = 1 << 20;
pub(crate) const MAX_XATTR_VALUE: usize = 64 << 10;
pub(crate) const MAX_SPARSE_REGIONS: usize = 1 << 16;
/// 8 GiB, the largest size a plain ustar header can state. Holes cost no disk when extracted,
/// and copies keep them, but a layer written from a copy holds their zeros (compressed), and
/// whatever reads the file reads them all: a few bytes of sparse map must not stand for
/// terabytes. Docker and BuildKit never write sparse entries.
pub(crate) const MAX_SPARSE_SIZE: u64 = 8 << 30;

/// One entry of the stream, with the extension headers before it applied.
pub(crate) struct TarEntry {
    pub kind: EntryType,
    pub path: Vec<u8>,
    pub link_name: Vec<u8>,
    /// Mode, owner, mtime and xattrs; PAX records override the header's fields.
    pub meta: EntryMeta,
    /// Major and minor number of a device node.
    pub device: (u32, u32),
    /// The data regions of a GNU sparse file; its data is the regions' bytes in order.
    pub sparse: Option<SparseMap>,
}

pub(crate) struct SparseMap {
    /// (offset, length), in increasing order, not overlapping.
    pub regions: Vec<(u64, u64)>,
    /// The file's size, holes included.
    pub size: u64,
}

pub(crate) struct TarReader<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    pos: u64,
    /// Data bytes of the current entry not read yet, and the padding after them.
    left: u64,
    padding: u64,
    /// The sizes of the sparse files so far, holes included.
    sparse_total: u64,
}

/// The extension headers seen before an entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            pos: 0,
            left: 0,
            padding: 0,
            sparse_total: 0,
        }
    }

    /// The next entry, or `None` at the end of the archive (a zero block or the end of the
    /// stream). Data of the previous entry that was not read is skipped.
    pub(crate) fn next(&mut self) -> Result<Option<TarEntry>, SnapshotError> {
        self.skip(self.left + self.padding)?;
        (self.left, self.padding) = (0, 0);
        let offset = self.pos;
        let mut ext = Extensions::default();
        loop {
            let header_at = self.pos;
            let mut header = Header::new_old();
            let read = self.read_block(header.as_mut_bytes())?;
            if !read || header.as_bytes().iter().all(|b| *b == 0) {
                if ext.long_name.is_some() || ext.long_link.is_some() || ext.pax.is_some() {
                    return Err(stream_error(
                        "the archive ends after an extension header, before its entry",
                    ));
                }
                return Ok(None);
            }
            check_checksum(&header)?;
            let size = header.entry_size().map_err(SnapshotError::TarStream)?;
            let kind = header.entry_type();
            let slot = match kind {
                EntryType::GNULongName => &mut ext.long_name,
                EntryType::GNULongLink => &mut ext.long_link,
                EntryType::XHeader => &mut ext.pax,
                EntryType::XGlobalHeader => {
                    // Global PAX records (a comment, a charset) mean nothing for a layer.
                    self.limit(&header, header_at, size, "global PAX header", MAX_PAX)?;
                    self.skip(padded(size))?;
                    continue;
                }
                _ => return self.entry(header, offset, size, ext).map(Some),
            };
            if slot.is_some() {
                return Err(stream_error(
                    "two extension headers of one kind for one entry",
                ));
            }
            let (what, limit) = match kind {
                EntryType::XHeader => ("PAX header", MAX_PAX),
                EntryType::GNULongName => ("GNU long name", MAX_PATH as u64 + 1),
                _ => ("GNU long link target", MAX_PATH as u64 + 1),
            };
            self.limit(&header, header_at, size, what, limit)?;
            let mut contents = vec![0; size as usize];
            self.read_exact(&mut contents)?;
            self.skip(padded(size) - size)?;
            if kind != EntryType::XHeader {
                // GNU names are NUL-terminated.
                let end = contents.iter().position(|b| *b == 0);
                contents.truncate(end.unwrap_or(contents.len()));
            }
            *slot = Some(contents);
        }
    }

    /// Reads the current entry's data (for a sparse file: its regions, in order).
    pub(crate) fn data(&mut self) -> EntryData<'_, R> {
        EntryData { tar: self }
    }

    /// Fails if an extension member of `size` bytes is over `limit`, naming it by its first
    /// bytes (a long name) or its header's name, and where it is.
    fn limit(
        &mut self,
        header: &Header,
        at: u64,
        size: u64,
        what: &'static str,
        limit: u64,
    ) -> Result<(), SnapshotError> {
        if size <= limit {
            return Ok(());
        }
        let mut entry = header.path_bytes().into_owned();
        if matches!(
            header.entry_type(),
            EntryType::GNULongName | EntryType::GNULongLink
        ) {
            // The name is the start of the member itself: read enough of it to show.
            let mut start = vec![0; size.min(1024) as usize];
            self.read_exact(&mut start)?;
            let end = start.iter().position(|b| *b == 0).unwrap_or(start.len());
            start.truncate(end);
            entry = start;
        }
        Err(SnapshotError::TooLarge {
            entry: shown(&entry),
            offset: at,
            what,
            size,
            limit,
        })
    }

    fn entry(
        &mut self,
        header: Header,
        offset: u64,
        mut size: u64,
        ext: Extensions,
    ) -> Result<TarEntry, SnapshotError> {
        let mut path = ext
            .long_name
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let mut link_name = ext
            .long_link
            .unwrap_or_else(|| header.link_name_bytes().unwrap_or_default().into_owned());
        let field_error = |path: &[u8]| {
            let entry = shown(path);
            move |source| SnapshotError::Entry { entry, source }
        };
        let old = header.as_old();
        let number = |field: &[u8], parsed: io::Result<u64>| match is_blank(field) {
            true => Ok(0),
            false => parsed.map_err(field_error(&path)),
        };
        let mut meta = EntryMeta {
            mode: number(&old.mode, header.mode().map(u64::from))? as u32 & 0o7777,
            uid: number(&old.uid, header.uid())? as u32,
            gid: number(&old.gid, header.gid())? as u32,
            mtime: number(&old.mtime, header.mtime())? as i64,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        if let Some(pax) = &ext.pax {
            for (key, value) in pax_records(pax)? {
                let too_large =
                    |entry: &[u8], what, size: usize, limit: usize| SnapshotError::TooLarge {
                        entry: shown(entry),
                        offset,
                        what,
                        size: size as u64,
                        limit: limit as u64,
                    };
                let number = || std::str::from_utf8(value).ok();
                match key {
                    b"path" if value.len() > MAX_PATH => {
                        return Err(too_large(value, "PAX path", value.len(), MAX_PATH));
                    }
                    b"linkpath" if value.len() > MAX_PATH => {
                        let len = value.len();
                        return Err(too_large(&path, "PAX link target", len, MAX_PATH));
                    }
                    b"path" => path = value.to_vec(),
                    b"linkpath" => link_name = value.to_vec(),
                    b"size" => {
                        size = number().and_then(|v| v.parse().ok()).ok_or_else(|| {
                            field_error(&path)(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the PAX size record is not a number",
                            ))
                        })?;
                    }
                    b"uid" => meta.uid = number().and_then(|v| v.parse().ok()).unwrap_or(meta.uid),
                    b"gid" => meta.gid = number().and_then(|v| v.parse().ok()).unwrap_or(meta.gid),
                    b"mtime" => {
                        let secs = number().and_then(|v| v.split('.').next()?.parse().ok());
                        meta.mtime = secs.unwrap_or(meta.mtime);
                    }
                    _ => {
                        let Some(name) = key.strip_prefix(b"SCHILY.xattr.") else {
                            continue;
                        };
                        if value.len() > MAX_XATTR_VALUE {
                            let len = value.len();
                            return Err(too_large(&path, "xattr value", len, MAX_XATTR_VALUE));
                        }
                        // An image must not smuggle overlayfs' markers or kiln's owner
                        // records into a layer dir.
                        if !is_private_xattr(name) {
                            meta.xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let kind = header.entry_type();
        let device = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let sparse = match kind {
            EntryType::GNUSparse => Some(self.sparse_map(&header, &path, offset, size)?),
            _ => None,
        };
        (self.left, self.padding) = (size, padded(size) - size);
        Ok(TarEntry {
            kind,
            path,
            link_name,
            meta,
            device,
            sparse,
        })
    }

    /// The map of an old GNU sparse entry: up to 4 regions in its header, then extension
    /// blocks of 21 while `isextended` says so. `stored` is how many data bytes follow.
    fn sparse_map(
        &mut self,
        header: &Header,
        path: &[u8],
        offset: u64,
        stored: u64,
    ) -> Result<SparseMap, SnapshotError> {
        let invalid = |message: &str| SnapshotError::Entry {
            entry: shown(path),
            source: io::Error::new(io::ErrorKind::InvalidData, message.to_string()),
        };
        let too_large = |what, size, limit| SnapshotError::TooLarge {
            entry: shown(path),
            offset,
            what,
            size,
            limit,
        };
        let gnu = header
            .as_gnu()
            .ok_or_else(|| invalid("a GNU sparse entry without a GNU header"))?;
        let size = gnu.real_size().map_err(SnapshotError::TarStream)?;
        self.sparse_total = self.sparse_total.saturating_add(size);
        if self.sparse_total > MAX_SPARSE_SIZE {
            let total = self.sparse_total;
            return Err(too_large(
                "size with the sparse files before it",
                total,
                MAX_SPARSE_SIZE,
            ));
        }
        let mut regions = Vec::new();
        let mut add = |blocks: &[GnuSparseHeader]| -> Result<(), SnapshotError> {
            for block in blocks.iter().filter(|b| !b.is_empty()) {
                let region = (block.offset(), block.length());
                let (Ok(start), Ok(len)) = region else {
                    return Err(invalid("a sparse map entry is not a number"));
                };
                regions.push((start, len));
            }
            if regions.len() > MAX_SPARSE_REGIONS {
                let limit = MAX_SPARSE_REGIONS as u64;
                return Err(too_large(
                    "sparse map (regions)",
                    regions.len() as u64,
                    limit,
                ));
            }
            Ok(())
        };
        add(&gnu.sparse)?;
        let mut extended = gnu.is_extended();
        while extended {
            let mut block = GnuExtSparseHeader::new();
            if !self.read_block(block.as_mut_bytes())? {
                return Err(stream_error("the archive ends inside a sparse map"));
            }
            add(block.sparse())?;
            extended = block.is_extended();
        }
        let (mut end, mut data) = (0u64, 0u64);
        for &(start, len) in &regions {
            let region_end = start.checked_add(len).filter(|e| *e <= size);
            match region_end {
                Some(region_end) if start >= end => end = region_end,
                _ => {
                    return Err(invalid(
                        "sparse regions overlap or lie beyond the file's size",
                    ));
                }
            }
            data += len;
        }
        if data != stored {
            return Err(invalid(
                "the sparse map does not add up to the entry's data",
            ));
        }
        Ok(SparseMap { regions, size })
    }

    /// Fills `buf` with the next block; `false` if the stream ends before it.
    fn read_block(&mut self, buf: &mut [u8]) -> Result<bool, SnapshotError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(stream_error("the archive ends inside a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SnapshotError::TarStream(e)),
            }
        }
        self.pos += got as u64;
        Ok(true)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner
            .read_exact(buf)
            .map_err(SnapshotError::TarStream)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), SnapshotError> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(SnapshotError::TarStream)?;
        self.pos += skipped;
        if skipped < n {
            return Err(stream_error("the archive ends inside an entry"));
        }
        Ok(())
    }
}

/// The data of the current entry.
pub(crate) struct EntryData<'t, R> {
    tar: &'t mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tar = &mut *self.tar;
        if tar.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(tar.left).unwrap_or(usize::MAX));
        let n = tar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside this entry's data",
            ));
        }
        tar.left -= n as u64;
        tar.pos += n as u64;
        Ok(n)
    }
}

/// A numeric header field left empty (NULs or spaces): 0, as Go's archive/tar reads it.
fn is_blank(field: &[u8]) -> bool {
    field.iter().all(|b| matches!(b, 0 | b' '))
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

fn stream_error(message: &str) -> SnapshotError {
    SnapshotError::TarStream(io::Error::new(
        io::ErrorKind::InvalidData,
        message.to_string(),
    ))
}

/// The checksum field holds the sum of the header's bytes, itself counted as spaces.
fn check_checksum(header: &Header) -> Result<(), SnapshotError> {
    let bytes = header.as_bytes();
    let sum: u32 = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    match header.cksum() {
        Ok(stored) if stored == sum => Ok(()),
        _ => Err(stream_error("archive header checksum mismatch")),
    }
}

/// A key and its value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX header, `"<length> <key>=<value>\n"` each, the length counting the
/// whole record. Split by length, not at newlines: values (xattrs) may hold any byte.
fn pax_records(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, SnapshotError> {
    let malformed = || stream_error("malformed PAX record");
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or_else(malformed)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|len| *len > space + 1 && *len <= data.len())
            .ok_or_else(malformed)?;
        let (record, rest) = data.split_at(len);
        let body = record[space + 1..]
            .strip_suffix(b"\n")
            .ok_or_else(malformed)?;
        let equals = body.iter().position(|b| *b == b'=').ok_or_else(malformed)?;
        records.push((&body[..equals], &body[equals + 1..]));
        data = rest;
    }
    Ok(records)
}
