//! ADD of a local archive: a tar, plain or compressed with gzip, bzip2, xz or zstd. As Docker
//! does, the format comes from the content, not the file name, and a file that does not
//! start with a valid tar header is no archive (ADD copies it as it is).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::thread::JoinHandle;

use flate2::read::MultiGzDecoder;

use crate::extract::{ExtractStats, extract_plain};
use crate::{SnapshotError, at};

const TAR_BLOCK: usize = 512;

/// Extracts `archive` into the empty directory `dest` if it is a (compressed) tar; `None`
/// if it is not. Entries that would leave `dest` or pass through a symlink are refused as
/// for layers; `.wh.` names are ordinary files here.
pub fn extract_archive(archive: &Path, dest: &Path) -> Result<Option<ExtractStats>, SnapshotError> {
    let mut probe = decoder(archive)?;
    let mut first = [0u8; TAR_BLOCK];
    if probe.read_exact(&mut first).is_err() || !is_tar_header(&first) {
        return Ok(None);
    }
    drop(probe);
    let stream = decoder(archive)?;
    extract_plain(stream, dest).map(Some)
}

/// Reads `path` decompressed, by its magic number.
fn decoder(path: &Path) -> Result<Box<dyn Read + Send>, SnapshotError> {
    let mut magic = [0u8; 6];
    let mut file = File::open(path).map_err(at(path))?;
    let got = read_up_to(&mut file, &mut magic).map_err(at(path))?;
    file.seek(SeekFrom::Start(0)).map_err(at(path))?;
    let file = BufReader::new(file);
    Ok(match &magic[..got] {
        [0x1f, 0x8b, 0x08, ..] => Box::new(MultiGzDecoder::new(file)),
        [b'B', b'Z', b'h', ..] => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Box::new(XzReader::spawn(file).map_err(at(path))?),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            ruzstd::decoding::StreamingDecoder::new(file)
                .map_err(|e| at(path)(io::Error::new(io::ErrorKind::InvalidData, e)))?,
        ),
        _ => Box::new(file),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Whether a 512-byte block is a tar header: not all zeros (an empty archive is no archive,
/// as for Docker) and its checksum field matches its bytes.
fn is_tar_header(block: &[u8; TAR_BLOCK]) -> bool {
    let field = &block[148..156];
    let stored = std::str::from_utf8(field)
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    // The checksum field counts as spaces. Some old writers summed signed bytes.
    let (unsigned, signed) = block
        .iter()
        .enumerate()
        .fold((0u32, 0i64), |(u, s), (i, b)| {
            if (148..156).contains(&i) {
                (u + 32, s + 32)
            } else {
                (u + u32::from(*b), s + i64::from(*b as i8))
            }
        });
    block.iter().any(|b| *b != 0) && stored.is_some_and(|s| s == unsigned || i64::from(s) == signed)
}

/// xz decompression as a `Read`: lzma-rs only writes to a `Write`, so it runs on a thread
/// feeding a pipe. A decoding error surfaces where the stream ends.
struct XzReader {
    pipe: io::PipeReader,
    worker: Option<JoinHandle<io::Result<()>>>,
}

impl XzReader {
    fn spawn(mut input: BufReader<File>) -> io::Result<XzReader> {
        let (pipe, mut writer) = io::pipe()?;
        let worker = std::thread::spawn(move || {
            lzma_rs::xz_decompress(&mut input, &mut writer).map_err(|e| match e {
                lzma_rs::error::Error::IoError(e) | lzma_rs::error::Error::HeaderTooShort(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, format!("{other:?}")),
            })
        });
        Ok(XzReader {
            pipe,
            worker: Some(worker),
        })
    }
}

impl Read for XzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(worker) = self.worker.take()
        {
            worker
                .join()
                .map_err(|_| io::Error::other("the xz decoder panicked"))??;
        }
        Ok(n)
    }
}
