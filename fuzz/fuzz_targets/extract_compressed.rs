//! Layer extraction through each compression. The first byte says what the rest is:
//! - 0: a layer blob as it is, so the sniffing and the decoders meet hostile compressed bytes;
//! - 1 to 4: a tar, compressed here with gzip, bzip2, xz or zstd, so extraction meets hostile
//!   tars through each decoder, and the decoder must give the tar back byte for byte.
//!
//! `decompress` then `extract_layer` into a temp dir must return, never panic, and never take
//! more than libFuzzer's RSS limit. Output is capped at 4 MiB: a few bytes of bzip2 can
//! expand to gigabytes, and the disk is not what this target checks.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;

const OUTPUT_CAP: u64 = 4 << 20;

fn compress(format: u8, tar: &[u8]) -> Vec<u8> {
    match format {
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        3 => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        _ => zstd::stream::encode_all(tar, 1).unwrap(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let blob = match mode % 5 {
        0 => rest.to_vec(),
        format => {
            let blob = compress(format, rest);
            let mut back = Vec::new();
            kiln_snapshot::decompress(&blob[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == rest, "format {format} did not round-trip");
            blob
        }
    };
    let Ok(stream) = kiln_snapshot::decompress(&blob[..]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("layer");
    std::fs::create_dir(&dest).unwrap();
    let _ = kiln_snapshot::extract_layer(stream.take(OUTPUT_CAP), &dest);
});
