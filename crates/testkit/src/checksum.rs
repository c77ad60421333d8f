//! Deterministic byte streams and a streaming checksum for bulk-transfer tests.
//!
//! Both are word-at-a-time on purpose: tests run unoptimised, and a byte-wise FNV over
//! 50 MiB each way would dominate the test's run time.

/// Seed of the stream a [`crate::SinkSourceBackend`] sends back to the client.
pub const BACKEND_SEED: u64 = 0x6261_636b_656e_6421; // "backend!"
/// Seed of the stream the client helpers send toward the backend.
pub const CLIENT_SEED: u64 = 0x636c_6965_6e74_2121; // "client!!"

/// A 64-bit streaming checksum: order-sensitive, length-sensitive, independent of how
/// the stream is split into chunks. Not cryptographic; it detects corruption,
/// truncation, reordering and duplication.
#[derive(Clone, Debug)]
pub struct Checksum {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Self {
        Checksum {
            h: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }

    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(27);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.pending));
            self.npending = 0;
        }
        let chunks = data.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of everything fed so far (does not consume the state).
    pub fn value(&self) -> u64 {
        let mut c = self.clone();
        if c.npending > 0 {
            let mut w = [0u8; 8];
            w[..c.npending].copy_from_slice(&c.pending[..c.npending]);
            c.mix(u64::from_le_bytes(w));
        }
        c.mix(c.len);
        fmix64(c.h)
    }
}

/// Checksum of one buffer.
pub fn checksum(data: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(data);
    c.value()
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The `k`-th 64-bit word of the stream for `seed` (splitmix64 of the position).
#[inline]
fn word(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic pseudo-random byte stream. Byte `i` depends only on `seed` and `i`,
/// so any chunking of `fill` calls yields the same stream.
#[derive(Clone, Debug)]
pub struct Pattern {
    seed: u64,
    pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern { seed, pos: 0 }
    }

    /// Bytes produced so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut out = buf;
        // Leading bytes up to the next word boundary.
        let off = (self.pos % 8) as usize;
        if off != 0 {
            let bytes = word(self.seed, self.pos / 8).to_le_bytes();
            let take = (8 - off).min(out.len());
            out[..take].copy_from_slice(&bytes[off..off + take]);
            self.pos += take as u64;
            out = &mut out[take..];
        }
        let mut k = self.pos / 8;
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&word(self.seed, k).to_le_bytes());
            k += 1;
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let n = rest.len();
            rest.copy_from_slice(&word(self.seed, k).to_le_bytes()[..n]);
        }
        self.pos += out.len() as u64;
    }
}

/// Generate the first `n` bytes of the stream for `seed` in chunks, handing each to `each`.
pub(crate) fn for_each_pattern_chunk<E>(
    seed: u64,
    n: u64,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let take = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..take]);
        each(&buf[..take])?;
        left -= take as u64;
    }
    Ok(())
}

/// Checksum of the first `n` bytes of the stream for `seed`: what a receiver of
/// `n` pattern bytes must report.
pub fn pattern_checksum(seed: u64, n: u64) -> u64 {
    let mut c = Checksum::new();
    let _ = for_each_pattern_chunk(seed, n, |chunk| {
        c.update(chunk);
        Ok::<(), std::convert::Infallible>(())
    });
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_independent_of_chunking() {
        let mut p = Pattern::new(7);
        let mut data = vec![0u8; 10_000];
        p.fill(&mut data);
        let whole = checksum(&data);
        for step in [1usize, 3, 7, 8, 9, 64, 4097] {
            let mut c = Checksum::new();
            for chunk in data.chunks(step) {
                c.update(chunk);
            }
            assert_eq!(c.value(), whole, "chunk size {step}");
            assert_eq!(c.len(), data.len() as u64);
        }
    }

    #[test]
    fn checksum_detects_changes() {
        let mut data = vec![0u8; 4096];
        Pattern::new(1).fill(&mut data);
        let base = checksum(&data);
        let mut flipped = data.clone();
        flipped[1234] ^= 1;
        assert_ne!(checksum(&flipped), base);
        assert_ne!(checksum(&data[..4095]), base, "truncation");
        let mut swapped = data.clone();
        swapped.swap(0, 8);
        assert_ne!(checksum(&swapped), base, "reordering of words");
        // Trailing zero bytes must change the result (length is mixed in).
        assert_ne!(checksum(&[]), checksum(&[0]));
        assert_ne!(checksum(&[0; 8]), checksum(&[0; 16]));
    }

    #[test]
    fn pattern_is_independent_of_chunking() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(42).fill(&mut whole);
        for step in [1usize, 5, 8, 13, 999] {
            let mut p = Pattern::new(42);
            let mut pieces = Vec::new();
            let mut left = whole.len();
            while left > 0 {
                let mut b = vec![0u8; step.min(left)];
                p.fill(&mut b);
                left -= b.len();
                pieces.extend_from_slice(&b);
            }
            assert_eq!(pieces, whole, "step {step}");
            assert_eq!(p.position(), 1000);
        }
        let mut other = vec![0u8; 1000];
        Pattern::new(43).fill(&mut other);
        assert_ne!(other, whole, "seed must matter");
    }

    #[test]
    fn pattern_checksum_matches_manual() {
        let mut data = vec![0u8; 200_003];
        Pattern::new(BACKEND_SEED).fill(&mut data);
        assert_eq!(pattern_checksum(BACKEND_SEED, 200_003), checksum(&data));
        assert_ne!(
            pattern_checksum(BACKEND_SEED, 10),
            pattern_checksum(CLIENT_SEED, 10)
        );
    }
}
