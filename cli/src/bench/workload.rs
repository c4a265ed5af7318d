//! The workload (keys, values, metadata) and the verification of what is read back.

use super::*;

/// Values and metadata shared by every run: a pool of distinct pseudo-random payloads,
/// each starting with its pool index so that a value served for the wrong key is caught
/// even where only the first bytes are checked.
pub struct Data {
    /// Payload bytes per chunk.
    pub value_size: usize,
    values: Vec<Bytes>,
    /// Metadata every chunk carries.
    pub meta: RemoteMetadata,
    /// `meta.encode()`.
    pub meta_bytes: Vec<u8>,
}

impl Data {
    /// Generates the pool for `keys` chunks of `value_size` bytes.
    pub fn new(value_size: usize, keys: usize) -> Result<Data, BenchError> {
        let pool = (POOL_BYTES / value_size.max(1)).clamp(2, keys.max(2));
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut values = Vec::with_capacity(pool);
        for idx in 0..pool {
            let mut v = vec![0u8; value_size];
            for w in v.chunks_mut(8) {
                // xorshift64: cheap, and never the zero pages a lazy server might fake.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let b = seed.to_le_bytes();
                w.copy_from_slice(&b[..w.len()]);
            }
            let tag = (idx as u64).to_le_bytes();
            let n = tag.len().min(v.len());
            v[..n].copy_from_slice(&tag[..n]);
            values.push(Bytes::from(v));
        }
        // LMCache's KV_2LTD / bfloat16 when the size allows a [2, 1, 1, n/4] shape.
        let meta = if value_size % 4 == 0 && value_size > 0 {
            RemoteMetadata::new(value_size, 1, 3, &[2, 1, 1, value_size / 4])?
        } else {
            RemoteMetadata::new(value_size, 4, 6, &[value_size])?
        };
        let meta_bytes = meta.encode();
        Ok(Data {
            value_size,
            values,
            meta,
            meta_bytes,
        })
    }

    /// The payload of chunk number `idx` of a run.
    pub fn value(&self, idx: usize) -> &Bytes {
        &self.values[idx % self.values.len()]
    }
}

/// One client's run: its keys, cut into batches.
pub struct Workload<'a> {
    /// Values and metadata.
    pub data: &'a Data,
    /// LMCache key strings, `batch * batches` of them.
    pub keys: Vec<Vec<u8>>,
    /// Chunks per batch.
    pub batch: usize,
    /// Number of batches.
    pub batches: usize,
    /// Key layout in use.
    pub layout: KeyLayout,
}

impl<'a> Workload<'a> {
    /// Keys shaped like LMCache's (`model@world@worker@hash@dtype`) under a prefix unique
    /// to this process, run and client.
    pub fn new(
        data: &'a Data,
        tag: &str,
        run: usize,
        batch: usize,
        batches: usize,
        layout: KeyLayout,
    ) -> Workload<'a> {
        let pid = std::process::id();
        let keys = (0..batch * batches)
            .map(|i| {
                format!(
                    "slotline-bench/{pid}/r{run}-{tag}@1@0@{:x}@bfloat16",
                    0x1000_0000 + i
                )
                .into_bytes()
            })
            .collect();
        Workload {
            data,
            keys,
            batch,
            batches,
            layout,
        }
    }

    /// Index of the first chunk of batch `b`.
    pub fn first(&self, b: usize) -> usize {
        b * self.batch
    }

    /// Keys of batch `b`.
    pub fn batch_keys(&self, b: usize) -> &[Vec<u8>] {
        let s = self.first(b);
        &self.keys[s..s + self.batch]
    }

    /// Payload of chunk `i` of batch `b`.
    pub fn value(&self, b: usize, i: usize) -> &Bytes {
        self.data.value(self.first(b) + i)
    }

    /// Whether the layout stores metadata.
    pub fn has_meta(&self) -> bool {
        self.layout.keys_per_chunk() == 2
    }
}

/// Checks what a GET returned; counts misses and mismatches and keeps the first problem.
pub struct Verifier<'w, 'a> {
    wl: &'w Workload<'a>,
    pub(super) batch: usize,
    /// Chunks not found.
    pub misses: u64,
    /// Chunks found with wrong bytes or metadata.
    pub mismatches: u64,
    /// Description of the first miss or mismatch.
    pub first: Option<String>,
}

impl<'w, 'a> Verifier<'w, 'a> {
    pub(super) fn new(wl: &'w Workload<'a>) -> Self {
        Verifier {
            wl,
            batch: 0,
            misses: 0,
            mismatches: 0,
            first: None,
        }
    }

    /// Checks chunk `i` of the current batch: `data` is its payload (None on a miss),
    /// `meta` its decoded metadata where the client exposes it.
    pub fn check(&mut self, i: usize, data: Option<&[u8]>, meta: Option<&RemoteMetadata>) {
        let idx = self.wl.first(self.batch) + i;
        let key = || String::from_utf8_lossy(&self.wl.keys[idx]).into_owned();
        let Some(data) = data else {
            self.misses += 1;
            if self.first.is_none() {
                self.first = Some(format!("miss: {}", key()));
            }
            return;
        };
        let want = self.wl.data.value(idx);
        let head = want.len().min(64);
        let problem = if data.len() != want.len() {
            Some(format!("{} bytes instead of {}", data.len(), want.len()))
        } else if data[..head] != want[..head]
            || data[data.len() - head..] != want[want.len() - head..]
        {
            Some("wrong bytes".to_string())
        } else if idx % SAMPLE_EVERY == 0 && data != &want[..] {
            Some("wrong bytes (full comparison)".to_string())
        } else if self.wl.has_meta() && meta.is_none() {
            Some("no metadata returned".to_string())
        } else if meta.is_some_and(|m| *m != self.wl.data.meta) {
            Some(format!(
                "metadata {} instead of {}",
                meta.map(|m| m.to_string()).unwrap_or_default(),
                self.wl.data.meta
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.mismatches += 1;
            if self.first.is_none() {
                self.first = Some(format!("mismatch: {}: {p}", key()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_catches_wrong_values() {
        let data = Data::new(100, 4).unwrap();
        let wl = Workload::new(&data, "t", 0, 2, 2, KeyLayout::Lmcache);
        let mut v = Verifier::new(&wl);
        v.batch = 1;
        v.check(0, Some(wl.value(1, 0)), Some(&data.meta));
        assert_eq!((v.misses, v.mismatches), (0, 0));
        v.check(1, Some(wl.value(1, 0)), Some(&data.meta));
        assert_eq!(v.mismatches, 1);
        v.check(1, None, None);
        assert_eq!(v.misses, 1);
        assert!(v.first.unwrap().contains("mismatch"));
    }
}
