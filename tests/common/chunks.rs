//! Chunks the cluster tests write: values derived from their keys, so any mix-up
//! between keys shows as a byte mismatch, and realistic LMCache metadata.

use slotline::{PutChunk, RemoteMetadata};

/// `len` pseudo-random bytes that are a pure function of `key` (FNV-1a seed,
/// xorshift64*).
pub fn value_for(key: &[u8], len: usize) -> Vec<u8> {
    let mut x = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
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
