//! eStargz: a gzip layer that lazy-pulling snapshotters can read file by file, and that every
//! other reader takes as the ordinary gzip tar it also is.
//!
//! The layout (stargz-snapshotter's docs/estargz.md): a gzip member starts at the top of the
//! blob, at the payload of every non-empty regular file (and every [`CHUNK_SIZE`] bytes into
//! a larger one), at the table of contents, and at the footer. The table of contents is the
//! last tar entry, `stargz.index.json`, listing every other entry with the offset of the
//! member its payload starts in and the digest of each chunk. The footer, an empty gzip
//! member, carries that entry's offset in its Extra field. The layer descriptor names the
//! digest of the table of contents (`containerd.io/snapshot/stargz/toc.digest`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::thread::Scope;

use base64::Engine;
use kiln_oci::{Digest, DigestWriter, timefmt};
use serde::Serialize;
use tar::{EntryType, Header};

use crate::pargz::{Compressors, MemberPool, gzip_member};

/// The tar entry that holds the table of contents.
pub const TOC_NAME: &str = "stargz.index.json";
/// The layer annotation naming the digest of the table of contents.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The layer annotation with the size of the uncompressed tar.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// The landmark saying that nothing is to be prefetched (kiln orders files by name only).
pub(crate) const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Regular files are cut into gzip members of at most this many bytes of payload (the size
/// stargz-snapshotter's own writer uses).
const CHUNK_SIZE: u64 = 4 << 20;
const TAR_BLOCK: u64 = 512;

#[derive(Serialize)]
struct Toc<'a> {
    version: u32,
    entries: &'a [TocEntry],
}

/// One tar entry, or one chunk after the first of a regular file.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    modtime: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    mode: u64,
    uid: u64,
    gid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dev_major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dev_minor: u64,
    /// Values base64-encoded, as Go encodes the byte slices of stargz-snapshotter's type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where the writer is in the tar stream.
enum State {
    /// Between payloads: bytes go to the current member.
    Plain,
    /// `left` bytes of a regular file's header still to come; its payload starts a member.
    Header { left: u64, size: u64 },
    /// Inside a payload.
    Payload {
        /// The entry of the file.
        file: usize,
        /// The entry of the chunk being written (the file's own for the first).
        chunk: usize,
        left: u64,
        chunk_left: u64,
    },
    /// After the last entry: only the zero blocks that end a tar may come, and are dropped
    /// (the table of contents must be the last entry, so the writer ends the tar itself).
    Ended,
}

/// What the tar writer feeds; [`EstargzWriter::entry`] is told about each entry just before
/// its header is written.
pub(crate) struct EstargzWriter<'scope, 'env, W: Write> {
    level: u32,
    /// Compresses the members on every core and writes them in order.
    pool: MemberPool<'scope, 'env, W>,
    /// The member being filled, uncompressed.
    member: Vec<u8>,
    /// Members handed to the pool so far.
    members: usize,
    /// The uncompressed stream: the diff_id.
    tar: DigestWriter<io::Sink>,
    entries: Vec<TocEntry>,
    /// (entry, member its payload starts): offsets are known once the members are written.
    starts: Vec<(usize, usize)>,
    state: State,
    /// The payload of the file being written, and of its chunk being written.
    file_digest: DigestWriter<io::Sink>,
    chunk_digest: DigestWriter<io::Sink>,
}

/// What [`EstargzWriter::finish`] made.
pub(crate) struct Estargz<W> {
    pub out: W,
    pub diff_id: Digest,
    pub annotations: BTreeMap<String, String>,
}

impl<'scope, 'env, W: Write> EstargzWriter<'scope, 'env, W> {
    pub(crate) fn new(
        scope: &'scope Scope<'scope, 'env>,
        out: W,
        level: u32,
        threads: usize,
    ) -> Self {
        EstargzWriter {
            level,
            pool: MemberPool::new(scope, out, level, threads),
            member: Vec::new(),
            members: 0,
            tar: DigestWriter::new(io::sink()),
            entries: Vec::new(),
            starts: Vec::new(),
            state: State::Plain,
            file_digest: DigestWriter::new(io::sink()),
            chunk_digest: DigestWriter::new(io::sink()),
        }
    }

    /// The entry `header` (with its PAX records) is written next.
    pub(crate) fn entry(&mut self, header: &Header, pax: &[(String, Vec<u8>)]) -> io::Result<()> {
        let record = |key: &str| {
            pax.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        };
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let kind = match header.entry_type() {
            EntryType::Regular | EntryType::Continuous => "reg",
            EntryType::Directory => "dir",
            EntryType::Symlink => "symlink",
            EntryType::Link => "hardlink",
            EntryType::Char => "char",
            EntryType::Block => "block",
            EntryType::Fifo => "fifo",
            other => {
                return Err(io::Error::other(format!(
                    "eStargz has no entry type for {other:?}"
                )));
            }
        };
        let size = header.size()?;
        let mut entry = TocEntry {
            name: text(&record("path").map_or_else(|| header.path_bytes(), Into::into)),
            kind,
            size: if kind == "reg" { size } else { 0 },
            modtime: timefmt::rfc3339(header.mtime()? as i64),
            link_name: match kind {
                "symlink" | "hardlink" => text(
                    &record("linkpath")
                        .map(Into::into)
                        .or_else(|| header.link_name_bytes())
                        .unwrap_or_default(),
                ),
                _ => String::new(),
            },
            mode: header.mode()?.into(),
            uid: header.uid()?,
            gid: header.gid()?,
            ..Default::default()
        };
        if matches!(kind, "char" | "block") {
            entry.dev_major = header.device_major()?.unwrap_or(0).into();
            entry.dev_minor = header.device_minor()?.unwrap_or(0).into();
        }
        for (key, value) in pax {
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                entry.xattrs.insert(name.to_string(), encoded);
            }
        }
        self.entries.push(entry);
        if kind == "reg" && size > 0 {
            self.state = State::Header {
                left: TAR_BLOCK,
                size,
            };
        }
        Ok(())
    }

    /// The last entry has been written.
    pub(crate) fn end_of_entries(&mut self) {
        self.state = State::Ended;
    }

    /// Adds `buf` to the current member.
    fn write_member(&mut self, buf: &[u8]) -> io::Result<()> {
        self.tar.write_all(buf)?;
        self.member.extend_from_slice(buf);
        Ok(())
    }

    /// Ends the current member; the next byte starts a new one. Returns that one's index.
    fn cut(&mut self) -> io::Result<usize> {
        if !self.member.is_empty() {
            self.pool.submit(std::mem::take(&mut self.member))?;
            self.members += 1;
        }
        Ok(self.members)
    }

    /// Writes the table of contents as the last entry, ends the tar and writes the footer.
    pub(crate) fn finish(mut self) -> io::Result<Estargz<W>> {
        self.cut()?;
        let (mut out, offsets, toc_offset) = self.pool.finish()?;
        for (entry, member) in self.starts {
            self.entries[entry].offset = offsets[member];
        }
        let toc = serde_json::to_vec(&Toc {
            version: 1,
            entries: &self.entries,
        })
        .map_err(io::Error::other)?;
        let mut header = Header::new_ustar();
        header.set_path(TOC_NAME)?;
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(toc.len() as u64);
        header.set_mtime(0);
        header.set_cksum();
        let padding = (TAR_BLOCK - toc.len() as u64 % TAR_BLOCK) % TAR_BLOCK;
        let mut member = Vec::with_capacity(toc.len() + 4 * TAR_BLOCK as usize);
        member.extend_from_slice(header.as_bytes());
        member.extend_from_slice(&toc);
        member.resize(member.len() + padding as usize + 2 * TAR_BLOCK as usize, 0);
        self.tar.write_all(&member)?;
        out.write_all(&gzip_member(
            &mut Compressors::new(self.level),
            &member,
            self.level,
        )?)?;
        out.write_all(&footer(toc_offset))?;
        let (diff_id, uncompressed, _) = self.tar.finish();
        let annotations = BTreeMap::from([
            (
                TOC_DIGEST_ANNOTATION.to_string(),
                Digest::of(&toc).to_string(),
            ),
            (
                UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
                uncompressed.to_string(),
            ),
        ]);
        Ok(Estargz {
            out,
            diff_id,
            annotations,
        })
    }
}

impl<W: Write> Write for EstargzWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.state {
            State::Plain => buf.len(),
            State::Header { left, .. } => buf.len().min(*left as usize),
            State::Payload { chunk_left, .. } => buf.len().min(*chunk_left as usize),
            State::Ended => {
                if buf.iter().any(|&b| b != 0) {
                    return Err(io::Error::other("data after the end of the eStargz tar"));
                }
                return Ok(buf.len());
            }
        };
        self.write_member(&buf[..n])?;
        match &mut self.state {
            State::Header { left, size } => {
                *left -= n as u64;
                if *left == 0 {
                    let size = *size;
                    let member = self.cut()?;
                    let file = self.entries.len() - 1;
                    self.starts.push((file, member));
                    self.entries[file].chunk_size = size.min(CHUNK_SIZE);
                    self.state = State::Payload {
                        file,
                        chunk: file,
                        left: size,
                        chunk_left: size.min(CHUNK_SIZE),
                    };
                }
            }
            State::Payload {
                file,
                chunk,
                left,
                chunk_left,
            } => {
                self.file_digest.write_all(&buf[..n])?;
                self.chunk_digest.write_all(&buf[..n])?;
                *left -= n as u64;
                *chunk_left -= n as u64;
                if *chunk_left == 0 {
                    let (file, chunk, left) = (*file, *chunk, *left);
                    let fresh = || DigestWriter::new(io::sink());
                    let done = std::mem::replace(&mut self.chunk_digest, fresh());
                    self.entries[chunk].chunk_digest = done.finish().0.to_string();
                    if left == 0 {
                        // The last chunk of a file says 0, as the format asks.
                        self.entries[chunk].chunk_size = 0;
                        self.state = State::Plain;
                        let done = std::mem::replace(&mut self.file_digest, fresh());
                        self.entries[file].digest = done.finish().0.to_string();
                    } else {
                        let member = self.cut()?;
                        let chunk_offset = self.entries[file].size - left;
                        self.starts.push((self.entries.len(), member));
                        let next = TocEntry {
                            name: self.entries[file].name.clone(),
                            kind: "chunk",
                            chunk_offset,
                            chunk_size: left.min(CHUNK_SIZE),
                            ..Default::default()
                        };
                        self.entries.push(next);
                        if let State::Payload {
                            chunk, chunk_left, ..
                        } = &mut self.state
                        {
                            *chunk = self.entries.len() - 1;
                            *chunk_left = left.min(CHUNK_SIZE);
                        }
                    }
                }
            }
            // Between payloads only headers and padding come; a layer of many directories
            // or empty files must not grow one member without bound.
            State::Plain if self.member.len() as u64 >= CHUNK_SIZE => {
                self.cut()?;
            }
            State::Plain | State::Ended => {}
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The empty gzip member that ends an eStargz blob: its Extra field (subfield `SG`) holds
/// the offset of the table of contents' member as 16 hex digits and `STARGZ`.
fn footer(toc_offset: u64) -> [u8; 51] {
    let mut footer = [0u8; 51];
    // Magic, deflate, FEXTRA; mtime 0; no extra flags; OS unknown.
    footer[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    footer[10..12].copy_from_slice(&26u16.to_le_bytes());
    footer[12..14].copy_from_slice(b"SG");
    footer[14..16].copy_from_slice(&22u16.to_le_bytes());
    footer[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // A final stored block of length 0; the CRC and size of nothing are 0.
    footer[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    footer
}
