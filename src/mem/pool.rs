//! Value buffers of `get()`: a bounded pool per shard. A large value read with `get()`
//! lands in a buffer the engine allocates; a fresh allocation of megabytes is fresh
//! pages the kernel must fault in (and zero) while the value arrives, which costs about
//! as much as receiving it. So the buffer of a [`Chunk`](crate::Chunk) goes back to the
//! pool of the shard that filled it when the chunk is dropped, and that shard's next
//! value of about the same size is received into it.
//!
//! Bounded: the pool holds at most its byte bound (the engine's
//! `max_node_inflight_bytes` per shard); a buffer that does not fit evicts the oldest
//! ones (so the pool follows a change of value size) or, larger than the whole bound,
//! is freed. Values under [`POOL_MIN`] are not pooled (the allocator serves them from
//! memory it already has). A chunk whose `data` the caller takes
//! ([`Chunk::into_data`](crate::Chunk::into_data), `std::mem::take`) simply keeps it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Values smaller than this are allocated and freed as usual.
pub(crate) const POOL_MIN: usize = 64 * 1024;

/// A pooled buffer serves a value up to this much shorter than itself (in 1/8ths of
/// the value): sizes that differ a little reuse, a small value does not pin a huge one.
const SLACK_EIGHTHS: usize = 2;

/// One shard's pool of value buffers, shared with the chunks that hold them.
pub struct ValuePool {
    free: Mutex<Free>,
    bound: usize,
    reused: AtomicU64,
    allocated: AtomicU64,
    returned: AtomicU64,
    evicted: AtomicU64,
}

#[derive(Default)]
struct Free {
    /// Oldest first. Each buffer's `len` bytes are initialized (a value was there).
    bufs: VecDeque<Vec<u8>>,
    /// Sum of the buffers' capacities.
    bytes: usize,
}

impl std::fmt::Debug for ValuePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.stats();
        f.debug_struct("ValuePool")
            .field("bound", &self.bound)
            .field("held_bytes", &s.held_bytes)
            .finish_non_exhaustive()
    }
}

/// What the value pools did (summed over shards in [`Stats`](crate::Stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValuePoolStats {
    /// Values received into a pooled buffer (no allocation).
    pub reused: u64,
    /// Values of at least 64 KiB that needed a fresh allocation.
    pub allocated: u64,
    /// Buffers given back by dropped chunks and kept.
    pub returned: u64,
    /// Buffers freed instead of kept: evicted to make room, or larger than the bound.
    pub evicted: u64,
    /// Bytes the pools hold now.
    pub held_bytes: u64,
    /// The most bytes the pools may hold (sum of the per-shard bounds).
    pub bound_bytes: u64,
}

impl ValuePoolStats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &ValuePoolStats) {
        self.reused += o.reused;
        self.allocated += o.allocated;
        self.returned += o.returned;
        self.evicted += o.evicted;
        self.held_bytes += o.held_bytes;
        self.bound_bytes += o.bound_bytes;
    }
}

impl ValuePool {
    /// An empty pool holding at most `bound` bytes.
    pub(crate) fn new(bound: usize) -> ValuePool {
        ValuePool {
            free: Mutex::new(Free::default()),
            bound,
            reused: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of exactly `len` initialized bytes for a value: a pooled one when one
    /// fits, else a fresh allocation. `None` for values under [`POOL_MIN`] (the caller
    /// allocates those itself).
    pub(crate) fn take(&self, len: usize) -> Option<Vec<u8>> {
        if len < POOL_MIN {
            return None;
        }
        let most = len.saturating_add(len / 8 * SLACK_EIGHTHS);
        let found = {
            let mut f = self.lock();
            // The newest fitting buffer: the one most likely still in the cache.
            let at = f
                .bufs
                .iter()
                .rposition(|b| b.len() >= len && b.len() <= most);
            at.and_then(|i| f.bufs.remove(i)).inspect(|b| {
                f.bytes -= b.capacity();
            })
        };
        match found {
            Some(mut b) => {
                b.truncate(len);
                self.reused.fetch_add(1, Relaxed);
                Some(b)
            }
            None => {
                self.allocated.fetch_add(1, Relaxed);
                Some(vec![0u8; len])
            }
        }
    }

    /// Takes back the buffer of a dropped chunk (or frees it, see the module).
    pub(crate) fn give(&self, b: Vec<u8>) {
        let cap = b.capacity();
        if b.len() < POOL_MIN || cap > self.bound {
            if b.len() >= POOL_MIN {
                self.evicted.fetch_add(1, Relaxed);
            }
            return;
        }
        // Freed outside the lock.
        let mut out = Vec::new();
        {
            let mut f = self.lock();
            while f.bytes + cap > self.bound {
                match f.bufs.pop_front() {
                    Some(old) => {
                        f.bytes -= old.capacity();
                        out.push(old);
                    }
                    None => break,
                }
            }
            f.bytes += cap;
            f.bufs.push_back(b);
        }
        self.returned.fetch_add(1, Relaxed);
        self.evicted.fetch_add(out.len() as u64, Relaxed);
    }

    /// The counters and what the pool holds now.
    pub fn stats(&self) -> ValuePoolStats {
        ValuePoolStats {
            reused: self.reused.load(Relaxed),
            allocated: self.allocated.load(Relaxed),
            returned: self.returned.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            held_bytes: self.lock().bytes as u64,
            bound_bytes: self.bound as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_within_the_bound_and_follows_a_new_size() {
        let p = ValuePool::new(4 * POOL_MIN);
        assert!(p.take(POOL_MIN - 1).is_none());
        let bufs: Vec<Vec<u8>> = (0..6).map(|_| p.take(POOL_MIN).unwrap()).collect();
        assert_eq!(p.stats().allocated, 6);
        for b in bufs {
            p.give(b);
        }
        let s = p.stats();
        // Four fit; the first two were evicted by the later ones.
        assert_eq!((s.returned, s.evicted), (6, 2));
        assert!(s.held_bytes <= 4 * POOL_MIN as u64, "{s:?}");
        let b = p.take(POOL_MIN).unwrap();
        assert_eq!(b.len(), POOL_MIN);
        assert_eq!(p.stats().reused, 1);
        // A value within the slack of a longer buffer reuses it, at its own length.
        p.give(vec![7u8; POOL_MIN + 1000]);
        let c = p.take(POOL_MIN).unwrap();
        assert_eq!((c.len(), p.stats().reused), (POOL_MIN, 2));
        assert_eq!(c.capacity(), POOL_MIN + 1000);
        // A value twice as large does not fit a pooled buffer.
        let d = p.take(2 * POOL_MIN).unwrap();
        assert_eq!((d.len(), p.stats().allocated), (2 * POOL_MIN, 7));
        // Larger than the whole bound: freed, never held.
        p.give(vec![0u8; 5 * POOL_MIN]);
        assert!(p.stats().held_bytes <= 4 * POOL_MIN as u64);
        // The new size pushes the old ones out.
        for _ in 0..3 {
            p.give(vec![1u8; 2 * POOL_MIN]);
        }
        let s = p.stats();
        assert!(s.held_bytes <= 4 * POOL_MIN as u64, "{s:?}");
        assert_eq!(p.take(2 * POOL_MIN).unwrap(), vec![1u8; 2 * POOL_MIN]);
    }
}
