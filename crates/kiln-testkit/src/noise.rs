//! Test data that compresses to nothing less than itself and never repeats at test sizes, so
//! a transfer that skipped or repeated a piece cannot produce the right digest by accident.

/// A xorshift64 stream of bytes: the same seed gives the same bytes.
pub struct Noise {
    state: u64,
}

impl Noise {
    /// The stream for `seed`; distinct seeds give distinct streams, random from the first
    /// byte. (The seed is scrambled with splitmix64 first: taken as it was, `seed | 1`, the
    /// seeds 2n and 2n+1 gave the same stream, and small seeds a run of zero bits.)
    pub fn new(seed: u64) -> Noise {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift64 never leaves the state 0.
        Noise { state: z.max(1) }
    }

    /// Fills `buf` with the stream's next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = &mut self.state;
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `len` bytes of the stream for `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    Noise::new(seed).fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_seeds_give_different_streams() {
        let streams: Vec<Vec<u8>> = (0..64).map(|seed| noise(64, seed)).collect();
        for (i, a) in streams.iter().enumerate() {
            assert!(streams[i + 1..].iter().all(|b| a != b), "seed {i}");
            // Random from the first byte: no run of zero bytes at the start.
            assert!(
                a[..8].iter().filter(|&&b| b == 0).count() < 3,
                "seed {i}: {a:?}"
            );
        }
    }
}
