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

    /// Every distinct payload of the pool, in order.
    pub fn pool(&self) -> &[Bytes] {
        &self.values
    }

    /// The payload of chunk number `idx` of a run.
    pub fn value(&self, idx: usize) -> &Bytes {
        &self.values[idx % self.values.len()]
    }
}

/// `--keys`: which writes the PUT phase times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Keys {
    /// Every timed PUT writes a key never written before in this run (the server pays
    /// first-touch page faults).
    Fresh,
    /// The keys are written once untimed, then the timed PUTs overwrite them.
    Overwrite,
    /// Both: a fresh PUT pass, then an overwrite pass over the same keys (the fresh
    /// pass is the overwrite's pre-population), so a run costs one PUT phase more.
    Both,
}

/// The key pattern of one timed PUT pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPattern {
    /// Keys never written before in this run.
    Fresh,
    /// Keys that exist, with values of the same size.
    Overwrite,
}

impl KeyPattern {
    /// `fresh` or `overwrite`.
    pub fn name(self) -> &'static str {
        match self {
            KeyPattern::Fresh => "fresh",
            KeyPattern::Overwrite => "overwrite",
        }
    }
}

impl Keys {
    /// The PUT passes of one run over the run's keys, in order: `Some(p)` is timed and
    /// reported under `p`, `None` is an untimed pre-population.
    pub fn put_passes(self) -> &'static [Option<KeyPattern>] {
        match self {
            Keys::Fresh => &[Some(KeyPattern::Fresh)],
            Keys::Overwrite => &[None, Some(KeyPattern::Overwrite)],
            Keys::Both => &[Some(KeyPattern::Fresh), Some(KeyPattern::Overwrite)],
        }
    }

    /// The patterns reported, in order.
    pub fn patterns(self) -> Vec<KeyPattern> {
        self.put_passes().iter().flatten().copied().collect()
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

    /// Fresh passes write only keys not yet written in the run (nor by another client
    /// or run: prefixes differ); overwrite passes only keys that exist.
    #[test]
    fn key_patterns() {
        use std::collections::HashSet;
        let data = Data::new(64, 8).unwrap();
        let mut seen_runs: HashSet<Vec<u8>> = HashSet::new();
        for keys in [Keys::Fresh, Keys::Overwrite, Keys::Both] {
            for (run, tag) in [(0, "naive"), (0, "parallel"), (1, "naive")] {
                let wl = Workload::new(&data, tag, run, 4, 2, KeyLayout::Raw);
                let mut written: HashSet<&[u8]> = HashSet::new();
                let mut timed = Vec::new();
                for pass in keys.put_passes() {
                    for k in &wl.keys {
                        let existed = !written.insert(&k[..]);
                        match pass {
                            Some(KeyPattern::Fresh) => assert!(!existed, "{keys:?}"),
                            Some(KeyPattern::Overwrite) => assert!(existed, "{keys:?}"),
                            None => {}
                        }
                    }
                    timed.extend(*pass);
                }
                assert_eq!(timed, keys.patterns());
                assert_eq!(written.len(), 8, "distinct keys per run");
                if keys == Keys::Fresh {
                    for k in &wl.keys {
                        assert!(seen_runs.insert(k.clone()), "key reused across runs");
                    }
                }
            }
        }
        assert_eq!(
            Keys::Both.patterns(),
            [KeyPattern::Fresh, KeyPattern::Overwrite]
        );
        assert_eq!(Keys::Overwrite.patterns(), [KeyPattern::Overwrite]);
    }
}
