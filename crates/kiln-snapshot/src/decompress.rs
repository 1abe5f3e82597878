//! Layer blobs and ADD archives, decompressed as streams in bounded memory.
//!
//! The format comes from the first bytes, never from a media type or a file name: registries
//! mislabel, and Docker sniffs ADD archives the same way. Each decoder streams, and the
//! memory it may take is capped before it allocates: gzip keeps a 32 KiB window and bzip2
//! at most a 900 kB block by their formats, while xz and zstd streams name their own
//! dictionary or window size, so those are checked against [`MAX_HISTORY_MIB`]. A stream
//! that asks for more fails with a [`DecompressError`] naming the limit. Concatenated streams
//! (gzip members, bzip2 and xz streams, zstd frames) are read one after another.

use std::io::{self, BufRead, Read};

use flate2::bufread::MultiGzDecoder;

/// The most history an xz or zstd decoder may keep, in MiB: the 64 MiB dictionary of
/// `xz -9`, the largest xz preset, and the window of zstd levels up to 21. More (`zstd
/// --ultra -22`, `--long`, custom xz dictionaries) would push a whole extraction past the
/// 100 MiB kiln aims to stay under.
pub const MAX_HISTORY_MIB: u64 = 64;

/// liblzma counts its own state on top of the dictionary: `xz -9` needs 64 MiB + 64 KiB.
const XZ_MEMLIMIT: u64 = (MAX_HISTORY_MIB + 1) << 20;

/// log2 of the largest zstd window, in bytes.
const ZSTD_WINDOW_LOG_MAX: u32 = MAX_HISTORY_MIB.ilog2() + 20;

/// The compression of a layer blob or an archive, as its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// How many first bytes [`Compression::sniff`] needs to tell every format apart.
    pub const SNIFF_LEN: usize = 6;

    /// The format of a stream that starts with `head` (its first [`Compression::SNIFF_LEN`]
    /// bytes, or all of a shorter stream). Anything unrecognised is taken as uncompressed.
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, 0x08, ..] => Compression::Gzip,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            // A zstd stream may open with a skippable frame (magic 0x184D2A50..=0x184D2A5F).
            [0x50..=0x5f, 0x2a, 0x4d, 0x18, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// A stream that asks for more memory than kiln gives a decoder. It reaches callers inside
/// the `io::Error` of a read, whose message is this one.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error(
        "the xz stream needs more than the {} MiB kiln allows an xz decoder \
         (a dictionary of at most {MAX_HISTORY_MIB} MiB, as `xz -9` makes)",
        XZ_MEMLIMIT >> 20
    )]
    XzMemoryLimit,
    #[error(
        "a zstd frame asks for a window larger than the {MAX_HISTORY_MIB} MiB kiln allows \
         (zstd levels up to 21 stay within it; --ultra -22 and --long do not)"
    )]
    ZstdWindowLimit,
}

impl DecompressError {
    /// The limit error inside `e`, if a decoder refused a stream for its memory.
    pub fn find(e: &io::Error) -> Option<&DecompressError> {
        e.get_ref()?.downcast_ref()
    }
}

/// Wraps a layer blob or an archive so that reading it yields the uncompressed bytes. The
/// format is sniffed from the first bytes (see [`Compression::sniff`]); an uncompressed
/// stream passes through. Fails only if those first bytes cannot be read.
pub fn decompress<'a, R: BufRead + 'a>(mut blob: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; Compression::SNIFF_LEN];
    let got = read_up_to(&mut blob, &mut head)?;
    let whole = io::Cursor::new(head[..got].to_vec()).chain(blob);
    Ok(match Compression::sniff(&head[..got]) {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(MultiGzDecoder::new(whole)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(whole)),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(io::Error::from)?;
            Box::new(NamedLimits {
                decoder: liblzma::bufread::XzDecoder::new_stream(whole, stream),
                limit: xz_limit,
            })
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(whole)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(NamedLimits {
                decoder,
                limit: zstd_limit,
            })
        }
    })
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
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

/// A decoder whose memory-limit error is replaced by the [`DecompressError`] that says
/// which limit it was; every other error passes as it is.
struct NamedLimits<D> {
    decoder: D,
    limit: fn(&io::Error) -> Option<DecompressError>,
}

impl<D: Read> Read for NamedLimits<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf).map_err(|e| match (self.limit)(&e) {
            Some(limit) => io::Error::new(io::ErrorKind::InvalidData, limit),
            None => e,
        })
    }
}

fn xz_limit(e: &io::Error) -> Option<DecompressError> {
    let inner = e.get_ref()?.downcast_ref::<liblzma::stream::Error>()?;
    matches!(inner, liblzma::stream::Error::MemLimit).then_some(DecompressError::XzMemoryLimit)
}

fn zstd_limit(e: &io::Error) -> Option<DecompressError> {
    use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;
    let inner = e.get_ref()?.downcast_ref::<zstd::Error>()?;
    inner
        .is(ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge)
        .then_some(DecompressError::ZstdWindowLimit)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    const COMPRESSED: [Compression; 4] = [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Xz,
        Compression::Zstd,
    ];

    /// A tar holding one file of `len` patterned bytes.
    fn sample_tar(name: &str, len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(len as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, &data[..]).unwrap();
        builder.into_inner().unwrap()
    }

    /// `data` compressed by the format's own encoder.
    fn compress(format: Compression, data: &[u8]) -> Vec<u8> {
        match format {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
        }
    }

    fn decompressed(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompress(bytes)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn hostile(name: &str) -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/hostile"
        ))
        .join(name)
    }

    /// The bytes `testdata/hostile/<name>` decompresses to, counted, not kept.
    fn hostile_len(name: &str) -> io::Result<u64> {
        let file = std::fs::File::open(hostile(name)).unwrap();
        io::copy(&mut decompress(io::BufReader::new(file))?, &mut io::sink())
    }

    fn limit_of(result: io::Result<impl std::fmt::Debug>) -> String {
        let err = result.expect_err("a stream over the limit must fail");
        let limit = DecompressError::find(&err).unwrap_or_else(|| panic!("no limit in {err}"));
        assert_eq!(
            err.to_string(),
            limit.to_string(),
            "the message names the limit"
        );
        format!("{limit:?}")
    }

    #[test]
    fn every_format_round_trips_by_its_first_bytes() {
        let tar = sample_tar("file", 300_000);
        for format in COMPRESSED {
            let bytes = compress(format, &tar);
            assert_eq!(Compression::sniff(&bytes[..Compression::SNIFF_LEN]), format);
            assert!(decompressed(&bytes).unwrap() == tar, "{format:?}");
        }
        assert!(
            decompressed(&tar).unwrap() == tar,
            "a plain tar passes through"
        );
    }

    #[test]
    fn concatenated_streams_are_read_to_the_end() {
        let (a, b) = (sample_tar("a", 70_000), sample_tar("b", 5));
        for format in COMPRESSED {
            let mut bytes = compress(format, &a);
            bytes.extend(compress(format, &b));
            assert!(
                decompressed(&bytes).unwrap() == [&a[..], &b[..]].concat(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn a_stream_cut_short_is_an_error_not_an_early_end() {
        let tar = sample_tar("file", 300_000);
        for format in COMPRESSED {
            let bytes = compress(format, &tar);
            assert!(
                decompressed(&bytes[..bytes.len() / 2]).is_err(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn a_zstd_stream_may_open_with_a_skippable_frame() {
        let tar = sample_tar("file", 1000);
        let mut bytes = 0x184d_2a53_u32.to_le_bytes().to_vec();
        bytes.extend(4u32.to_le_bytes());
        bytes.extend(b"skip");
        bytes.extend(compress(Compression::Zstd, &tar));
        assert_eq!(Compression::sniff(&bytes), Compression::Zstd);
        assert!(decompressed(&bytes).unwrap() == tar);
    }

    #[test]
    fn short_and_unknown_streams_pass_through() {
        for bytes in [
            &b""[..],
            b"B",
            b"BZ",
            b"\x1f\x8b",
            b"\xfd7zXZ",
            b"plain text",
        ] {
            assert_eq!(Compression::sniff(bytes), Compression::None);
            assert_eq!(decompressed(bytes).unwrap(), bytes);
        }
    }

    #[test]
    fn the_hostile_corpus_is_refused_at_the_limit_or_decoded_within_it() {
        assert_eq!(
            limit_of(hostile_len("bomb-xz-dict-3gib.tar.xz")),
            "XzMemoryLimit"
        );
        assert_eq!(
            limit_of(hostile_len("bomb-zstd-window-128mib.tar.zst")),
            "ZstdWindowLimit"
        );
        // A 512-byte header, 160 MiB of zeros, the two end blocks.
        let tar_len = 512 + (160 << 20) + 1024;
        for name in [
            "bomb-xz-9.tar.xz",
            "bomb-zstd-window-64mib.tar.zst",
            "bomb-bzip2.tar.bz2",
            "bomb-gzip.tar.gz",
        ] {
            assert_eq!(hostile_len(name).unwrap(), tar_len, "{name}");
        }
    }

    #[test]
    fn a_later_stream_over_the_limit_fails_too() {
        for (format, bomb, limit) in [
            (Compression::Xz, "bomb-xz-dict-3gib.tar.xz", "XzMemoryLimit"),
            (
                Compression::Zstd,
                "bomb-zstd-window-128mib.tar.zst",
                "ZstdWindowLimit",
            ),
        ] {
            let mut bytes = compress(format, &sample_tar("first", 1000));
            bytes.extend(std::fs::read(hostile(bomb)).unwrap());
            assert_eq!(limit_of(decompressed(&bytes)), limit, "{format:?}");
        }
    }

    #[test]
    fn a_gzip_header_name_is_bounded() {
        // flate2 keeps FNAME in memory, up to 64 KiB; a longer one is refused.
        let mut bytes = vec![0x1f, 0x8b, 0x08, 0x08, 0, 0, 0, 0, 0, 0xff];
        bytes.extend(std::iter::repeat_n(b'a', 1 << 20));
        bytes.push(0);
        assert!(decompressed(&bytes).is_err());
    }
}
