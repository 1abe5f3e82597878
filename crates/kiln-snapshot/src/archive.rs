//! ADD of a local archive: a tar, plain or compressed with gzip, bzip2, xz or zstd. As Docker
//! does, the format comes from the content, not the file name, and a file that does not
//! start with a valid tar header is no archive (ADD copies it as it is).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::decompress::{DecompressError, decompress};
use crate::extract::{ExtractStats, extract_plain};
use crate::{SnapshotError, at};

const TAR_BLOCK: usize = 512;

/// Extracts `archive` into the empty directory `dest` if it is a (compressed) tar; `None`
/// if it is not. Entries that would leave `dest` or pass through a symlink are refused as
/// for layers; `.wh.` names are ordinary files here.
pub fn extract_archive(archive: &Path, dest: &Path) -> Result<Option<ExtractStats>, SnapshotError> {
    let file = File::open(archive).map_err(at(archive))?;
    let mut stream = decompress(BufReader::new(file)).map_err(at(archive))?;
    let mut first = [0u8; TAR_BLOCK];
    match stream.read_exact(&mut first) {
        // A stream refused for the memory it asks is an archive kiln will not open, not a
        // file to copy as it is.
        Err(e) if DecompressError::find(&e).is_some() => return Err(at(archive)(e)),
        Err(_) => return Ok(None),
        Ok(()) if !is_tar_header(&first) => return Ok(None),
        Ok(()) => {}
    }
    extract_plain(io::Cursor::new(first).chain(stream), dest).map(Some)
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
