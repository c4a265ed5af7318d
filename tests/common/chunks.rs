//! Chunks the cluster tests write, and the PRNG behind them: values derived from their keys, so any mix-up
//! between keys shows as a byte mismatch, and realistic LMCache metadata.

use slotline::{PutChunk, RemoteMetadata};

/// Small deterministic PRNG (xorshift64*), so failures reproduce from the printed seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is taken as 1: xorshift never leaves 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 pseudo-random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `len` pseudo-random bytes that are a pure function of `key` (seeded by its FNV-1a
/// hash).
pub fn value_for(key: &[u8], len: usize) -> Vec<u8> {
    let seed = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut r = Rng::new(seed | 1);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Realistic metadata for a payload of `len` bytes: KV_2LTD, bfloat16.
pub fn meta_for(len: usize) -> RemoteMetadata {
    RemoteMetadata::new(len, 1, 3, &[2, 1, len / 2, 1]).expect("valid metadata")
}

/// The chunks for `keys`, each with its own value of `len` bytes and its metadata.
pub fn chunks_for(keys: &[Vec<u8>], len: usize) -> Vec<PutChunk> {
    keys.iter()
        .map(|k| PutChunk::new(k.clone(), value_for(k, len), Some(meta_for(len))))
        .collect()
}
