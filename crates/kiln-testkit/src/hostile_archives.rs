//! Decompression bombs: small compressed tars that expand to hundreds of MiB, and xz and zstd
//! streams whose headers ask for more memory than a decoder should take. They are compressed
//! by the Debian tools (xz, zstd, bzip2, gzip), and the xz and zstd headers are then patched
//! here, never through kiln's own decoders. `testdata/hostile/bomb-*` is their output;
//! `cargo run -p kiln-testkit --bin kiln-decompression-bombs -- testdata/hostile` writes them
//! again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One bomb: a compressed tar holding a single file, `zeros`, of `zeros_mib` MiB of zeros.
pub struct DecompressionBomb {
    /// Its file name, also under `testdata/hostile/`.
    pub name: &'static str,
    /// The size of its `zeros` file, in MiB.
    pub zeros_mib: u64,
    /// The dictionary or window its header asks for, in MiB, for xz and zstd; `None` where
    /// the format bounds it (gzip 32 KiB, bzip2 900 kB).
    pub history_mib: Option<u64>,
    compressor: &'static [&'static str],
    patch: Patch,
}

enum Patch {
    None,
    /// The LZMA2 dictionary-size byte of the first block header.
    XzDictionary(u8),
    /// The Window_Descriptor byte of the first frame header.
    ZstdWindow(u8),
}

/// Every decompression bomb. The 160 MiB ones expand to more than twice the largest history
/// a bounded decoder should keep (64 MiB), so a decoder that keeps that much fills it.
pub const DECOMPRESSION_BOMBS: &[DecompressionBomb] = &[
    DecompressionBomb {
        // ~120 KB that expand to 800 MiB, with a header asking for a 3 GiB dictionary.
        name: "bomb-xz-dict-3gib.tar.xz",
        zeros_mib: 800,
        history_mib: Some(3 << 10),
        compressor: &["xz", "-6", "-T1", "-c"],
        // Dictionary byte b means (2 | (b & 1)) << (b / 2 + 11) bytes: 39 is 3 GiB.
        patch: Patch::XzDictionary(39),
    },
    DecompressionBomb {
        // What `xz -9`, the largest preset, makes: a 64 MiB dictionary.
        name: "bomb-xz-9.tar.xz",
        zeros_mib: 160,
        history_mib: Some(64),
        compressor: &["xz", "-9", "-T1", "-c"],
        patch: Patch::None,
    },
    DecompressionBomb {
        // A 128 MiB window, what `zstd --ultra -22` and `--long` make and libzstd accepts by
        // default.
        name: "bomb-zstd-window-128mib.tar.zst",
        zeros_mib: 160,
        history_mib: Some(128),
        compressor: &["zstd", "-19", "-q", "-c"],
        // Window_Descriptor: exponent in the top five bits, window log = 10 + exponent.
        patch: Patch::ZstdWindow((27 - 10) << 3),
    },
    DecompressionBomb {
        name: "bomb-zstd-window-64mib.tar.zst",
        zeros_mib: 160,
        history_mib: Some(64),
        compressor: &["zstd", "-19", "-q", "-c"],
        patch: Patch::ZstdWindow((26 - 10) << 3),
    },
    DecompressionBomb {
        // About 200 bytes.
        name: "bomb-bzip2.tar.bz2",
        zeros_mib: 160,
        history_mib: None,
        compressor: &["bzip2", "-9", "-c"],
        patch: Patch::None,
    },
    DecompressionBomb {
        name: "bomb-gzip.tar.gz",
        zeros_mib: 160,
        history_mib: None,
        compressor: &["gzip", "-9", "-n", "-c"],
        patch: Patch::None,
    },
];

impl DecompressionBomb {
    /// Its checked-in copy under `testdata/hostile/`.
    pub fn testdata(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/hostile")
            .join(self.name)
    }

    /// Compresses its tar with its tool into `dir` and patches the header; returns the path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(self.name);
        let (tool, args) = self.compressor.split_first().unwrap();
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(File::create(&path).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("running {tool} (scripts/install-deps.sh installs it): {e}")
            });
        let mut stdin = child.stdin.take().unwrap();
        write_zeros_tar(&mut stdin, self.zeros_mib << 20);
        drop(stdin);
        assert!(child.wait().unwrap().success(), "{tool} failed");
        let mut bytes = std::fs::read(&path).unwrap();
        match self.patch {
            Patch::None => {}
            Patch::XzDictionary(byte) => patch_xz_dictionary(&mut bytes, byte),
            Patch::ZstdWindow(byte) => patch_zstd_window(&mut bytes, byte),
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// Writes every bomb into `dir`.
pub fn write_decompression_bombs(dir: &Path) -> Vec<PathBuf> {
    DECOMPRESSION_BOMBS.iter().map(|b| b.write(dir)).collect()
}

/// A tar holding one regular file, `zeros`, of `size` zero bytes.
fn write_zeros_tar(out: &mut impl Write, size: u64) {
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.write_all(header.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    // Padding to the block size, then the two zero blocks that end an archive.
    let pad = (512 - size % 512) % 512;
    out.write_all(&chunk[..pad as usize + 1024]).unwrap();
}

/// Sets the dictionary size of a one-filter LZMA2 block that single-threaded `xz` wrote, and
/// the block header's CRC32 again.
fn patch_xz_dictionary(xz: &mut [u8], dictionary_byte: u8) {
    const STREAM_HEADER: usize = 12;
    let block = &mut xz[STREAM_HEADER..];
    let header_len = (usize::from(block[0]) + 1) * 4;
    assert_eq!(
        block[1], 0,
        "expected one filter and no size fields (single-threaded xz)"
    );
    assert_eq!(
        &block[2..4],
        [0x21, 1],
        "expected LZMA2 with one property byte"
    );
    block[4] = dictionary_byte;
    let mut crc = flate2::Crc::new();
    crc.update(&block[..header_len - 4]);
    block[header_len - 4..header_len].copy_from_slice(&crc.sum().to_le_bytes());
}

/// Sets the Window_Descriptor of a zstd frame that carries one (no single-segment flag, as
/// `zstd` writes when it compresses standard input) and no dictionary ID.
fn patch_zstd_window(zst: &mut [u8], window_descriptor: u8) {
    assert_eq!(&zst[..4], [0x28, 0xb5, 0x2f, 0xfd], "zstd frame magic");
    let descriptor = zst[4];
    assert_eq!(descriptor & 0x20, 0, "expected no single-segment flag");
    assert_eq!(descriptor & 0x03, 0, "expected no dictionary ID");
    zst[5] = window_descriptor;
}
