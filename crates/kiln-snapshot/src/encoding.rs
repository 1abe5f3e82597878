//! How a layer tar is compressed into its blob: buildx's `compression=` choices, and the one
//! writer each of them streams through.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::thread::Scope;

use kiln_oci::{DigestWriter, media};

use crate::pargz::{self, ParallelGzip};
use crate::write::LayerBlob;
use crate::{SnapshotError, decompress};

/// The compression of a layer blob kiln writes, with its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerEncoding {
    /// The tar itself (`application/vnd.oci.image.layer.v1.tar`).
    Uncompressed,
    /// gzip, levels 0 (stored) to 9.
    Gzip { level: u32 },
    /// zstd, levels 1 to [`LayerEncoding::MAX_ZSTD_LEVEL`].
    Zstd { level: i32 },
    /// gzip in eStargz's layout (a gzip member per file payload, a table of contents at the
    /// end), which lazy-pulling snapshotters read file by file; levels 0 to 9.
    Estargz { level: u32 },
}

impl Default for LayerEncoding {
    fn default() -> Self {
        LayerEncoding::Gzip {
            level: LayerEncoding::DEFAULT_GZIP_LEVEL,
        }
    }
}

impl LayerEncoding {
    pub const DEFAULT_GZIP_LEVEL: u32 = 6;
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    /// Levels above 19 (`--ultra`) use windows larger than the 64 MiB kiln's own
    /// decompressor accepts ([`crate::MAX_HISTORY_MIB`]), so kiln does not write them.
    pub const MAX_ZSTD_LEVEL: i32 = 19;

    /// The encoding buildx's `compression=NAME` names, at `level` (the default without one).
    /// `Err` says what is wrong with the name or the level.
    pub fn parse(name: &str, level: Option<i64>) -> Result<LayerEncoding, String> {
        let gzip_level = |default: u32| match level {
            None => Ok(default),
            Some(l @ 0..=9) => Ok(l as u32),
            Some(l) => Err(format!(
                "compression-level={l} is out of range for {name} (0 to 9)"
            )),
        };
        match name {
            "gzip" => Ok(LayerEncoding::Gzip {
                level: gzip_level(Self::DEFAULT_GZIP_LEVEL)?,
            }),
            "estargz" => Ok(LayerEncoding::Estargz {
                level: gzip_level(Self::DEFAULT_GZIP_LEVEL)?,
            }),
            "zstd" => match level {
                None | Some(0) => Ok(LayerEncoding::Zstd {
                    level: Self::DEFAULT_ZSTD_LEVEL,
                }),
                Some(l @ 1..=19) => Ok(LayerEncoding::Zstd { level: l as i32 }),
                Some(l) => Err(format!(
                    "compression-level={l} is out of range for zstd (1 to {}; higher levels need \
                     more memory to decompress than kiln gives a decoder)",
                    Self::MAX_ZSTD_LEVEL
                )),
            },
            "uncompressed" => match level {
                None => Ok(LayerEncoding::Uncompressed),
                Some(l) => Err(format!(
                    "compression-level={l} means nothing for uncompressed layers"
                )),
            },
            other => Err(format!(
                "unknown compression `{other}` (accepted: gzip, zstd, estargz, uncompressed)"
            )),
        }
    }

    /// The OCI media type of blobs in this encoding (eStargz is gzip to every reader).
    pub fn media_type(&self) -> &'static str {
        match self {
            LayerEncoding::Uncompressed => media::OCI_LAYER_TAR,
            LayerEncoding::Gzip { .. } | LayerEncoding::Estargz { .. } => media::OCI_LAYER_GZIP,
            LayerEncoding::Zstd { .. } => media::OCI_LAYER_ZSTD,
        }
    }

    /// Whether a blob compressed as `compression` (from its media type) already is in this
    /// encoding, whatever its level. eStargz is never assumed: it needs its table of contents.
    pub fn matches(&self, compression: media::LayerCompression) -> bool {
        matches!(
            (self, compression),
            (LayerEncoding::Uncompressed, media::LayerCompression::None)
                | (LayerEncoding::Gzip { .. }, media::LayerCompression::Gzip)
                | (LayerEncoding::Zstd { .. }, media::LayerCompression::Zstd)
        )
    }

    /// Whether re-encoding keeps the tar (and so the diff_id) as it is. eStargz rewrites it.
    pub fn keeps_tar(&self) -> bool {
        !matches!(self, LayerEncoding::Estargz { .. })
    }
}

impl fmt::Display for LayerEncoding {
    /// A name that tells encodings apart, level included (`zstd-3`): part of the store's key
    /// for the blobs of a layer in each encoding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerEncoding::Uncompressed => f.write_str("uncompressed"),
            LayerEncoding::Gzip { level } => write!(f, "gzip-{level}"),
            LayerEncoding::Zstd { level } => write!(f, "zstd-{level}"),
            LayerEncoding::Estargz { level } => write!(f, "estargz-{level}"),
        }
    }
}

/// A stream compressor for the encodings that compress a tar as it is (not eStargz, which
/// needs to see the entries). gzip and zstd both run on up to `threads` threads, and their
/// bytes do not depend on how many: gzip by pargz's fixed blocks, zstd because its
/// multi-threaded mode (one worker or more) cuts its jobs by size, not by thread count.
pub(crate) enum Compressor<'scope, 'env, W: Write> {
    Plain(W),
    Gzip(ParallelGzip<'scope, 'env, W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<'scope, 'env, W: Write> Compressor<'scope, 'env, W> {
    pub(crate) fn new(
        scope: &'scope Scope<'scope, 'env>,
        out: W,
        encoding: LayerEncoding,
        threads: usize,
    ) -> io::Result<Self> {
        Ok(match encoding {
            LayerEncoding::Uncompressed => Compressor::Plain(out),
            LayerEncoding::Gzip { level } | LayerEncoding::Estargz { level } => {
                Compressor::Gzip(ParallelGzip::new(scope, out, level, threads)?)
            }
            LayerEncoding::Zstd { level } => {
                let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
                encoder.multithread(threads.clamp(1, pargz::MAX_THREADS) as u32)?;
                Compressor::Zstd(encoder)
            }
        })
    }

    /// Ends the stream and returns the output.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(out) => Ok(out),
            Compressor::Gzip(gz) => gz.finish(),
            Compressor::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(out) => out.write(buf),
            Compressor::Gzip(gz) => gz.write(buf),
            Compressor::Zstd(encoder) => encoder.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(out) => out.flush(),
            Compressor::Gzip(gz) => gz.flush(),
            Compressor::Zstd(encoder) => encoder.flush(),
        }
    }
}

/// Re-encodes a layer blob (any compression [`decompress`] reads) as `encoding`, which must
/// keep the tar as it is ([`LayerEncoding::keeps_tar`]): the diff_id stays, only the blob
/// changes. Runs on every core.
pub fn recompress<R: BufRead, W: Write>(
    blob: R,
    out: W,
    encoding: LayerEncoding,
) -> Result<LayerBlob, SnapshotError> {
    assert!(encoding.keeps_tar(), "eStargz is written from a layer dir");
    std::thread::scope(|scope| {
        let mut tar = decompress(blob).map_err(SnapshotError::TarStream)?;
        let compressor = Compressor::new(
            scope,
            DigestWriter::new(out),
            encoding,
            pargz::default_threads(),
        )
        .map_err(SnapshotError::Output)?;
        let mut plain = DigestWriter::new(compressor);
        // Read and write apart, so that an error says whether the blob or the output failed.
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SnapshotError::TarStream(e)),
            };
            plain.write_all(&buf[..n]).map_err(SnapshotError::Output)?;
        }
        let (diff_id, _, compressor) = plain.finish();
        let compressed = compressor.finish().map_err(SnapshotError::Output)?;
        let (digest, size, mut out) = compressed.finish();
        out.flush().map_err(SnapshotError::Output)?;
        Ok(LayerBlob {
            digest,
            size,
            diff_id,
            media_type: encoding.media_type(),
            annotations: BTreeMap::new(),
        })
    })
}
