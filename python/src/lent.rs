//! Lent memory: which caller bytes are in the engine's hands right now, process-wide.
//!
//! Every request on caller buffers takes a [`Lease`] on their address ranges before it
//! can reach the engine, and keeps it until the engine has handed every buffer back
//! (the lease lives inside the request's job and is dropped when the job finishes; a
//! job leaked at a bounded `close` keeps its lease, and so its memory, forever).
//!
//! The rule: a *writable* lend (a read's destination, a `copy_into`) overlaps nothing
//! else lent; read-only lends (a write's source) may overlap each other. A lend that
//! breaks it is refused before any I/O, naming both ranges. This is what makes
//! [`View`](crate::views::View)'s `&mut [u8]` unique among the engine's accesses: two
//! destinations of one read, or a read and a write in flight on the same bytes, would
//! otherwise be two shard threads (or the kernel) writing the same memory at once.
//!
//! Cheap: a batch of `n` buffers costs `n` map look-ups and inserts under one lock.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Where a range came from, for the error text.
#[derive(Clone, Copy, Debug)]
struct Owner {
    end: usize,
    lease: u64,
    idx: usize,
}

/// What a lease holds, to remove it again.
#[derive(Clone, Copy, Debug)]
enum Key {
    Write(usize),
    Read(usize, u64),
}

struct Set {
    /// Writable ranges by start; disjoint, so their ends are ordered like their starts.
    writes: BTreeMap<usize, Owner>,
    /// Read-only ranges by (start, unique seq); they may overlap each other.
    reads: BTreeMap<(usize, u64), Owner>,
    /// The lengths of `reads` (a multiset): bounds how far back an overlap can start.
    read_lens: BTreeMap<usize, usize>,
    seq: u64,
}

static LENT: Mutex<Set> = Mutex::new(Set {
    writes: BTreeMap::new(),
    reads: BTreeMap::new(),
    read_lens: BTreeMap::new(),
    seq: 0,
});

fn lock() -> MutexGuard<'static, Set> {
    // Every update below leaves the maps consistent before anything can panic.
    LENT.lock().unwrap_or_else(|e| e.into_inner())
}

impl Set {
    /// A lent range overlapping `[s, e)`: writable ones always, read-only ones only
    /// when `writable`.
    fn conflict(&self, s: usize, e: usize, writable: bool) -> Option<(usize, Owner, bool)> {
        if let Some((&ws, w)) = self.writes.range(..e).next_back() {
            if w.end > s {
                return Some((ws, *w, true));
            }
        }
        if !writable {
            return None;
        }
        let longest = self.read_lens.keys().next_back().copied().unwrap_or(0);
        let lo = s.saturating_sub(longest);
        self.reads
            .range((lo, 0)..(e, 0))
            .find(|(_, r)| r.end > s)
            .map(|(&(rs, _), r)| (rs, *r, false))
    }

    fn insert(&mut self, s: usize, o: Owner, writable: bool) -> Key {
        if writable {
            self.writes.insert(s, o);
            return Key::Write(s);
        }
        self.seq += 1;
        let k = (s, self.seq);
        self.reads.insert(k, o);
        *self.read_lens.entry(o.end - s).or_insert(0) += 1;
        Key::Read(k.0, k.1)
    }

    fn remove(&mut self, key: Key) {
        match key {
            Key::Write(s) => {
                self.writes.remove(&s);
            }
            Key::Read(s, seq) => {
                if let Some(o) = self.reads.remove(&(s, seq)) {
                    let len = o.end - s;
                    if let Some(n) = self.read_lens.get_mut(&len) {
                        *n -= 1;
                        if *n == 0 {
                            self.read_lens.remove(&len);
                        }
                    }
                }
            }
        }
    }
}

/// The ranges of one request, lent until this is dropped.
#[derive(Debug)]
pub struct Lease {
    keys: Vec<Key>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut set = lock();
        for k in self.keys.drain(..) {
            set.remove(k);
        }
    }
}

fn describe(s: usize, e: usize, writable: bool) -> String {
    let how = if writable { "written" } else { "read" };
    format!("[{s:#x}, {:#x}) ({} bytes, {how})", e, e - s)
}

/// Lends `ranges` (`(address, length)`, in request order; empty ones are skipped),
/// all writable or all read-only. Refused, lending nothing, if one overlaps another
/// of the same request or of a request in flight in a way the rule forbids.
pub fn lend(ranges: &[(usize, usize)], writable: bool) -> Result<Lease, String> {
    let mut set = lock();
    set.seq += 1;
    let lease = set.seq;
    let mut keys = Vec::with_capacity(ranges.len());
    for (idx, &(s, len)) in ranges.iter().enumerate() {
        if len == 0 {
            continue;
        }
        let e = s.saturating_add(len);
        if let Some((os, o, owritable)) = set.conflict(s, e, writable) {
            for k in keys.drain(..) {
                set.remove(k);
            }
            drop(set);
            let other = if o.lease == lease {
                format!("buffer {} of the same request", o.idx)
            } else {
                format!(
                    "a buffer of a request still in flight (its buffer {})",
                    o.idx
                )
            };
            return Err(format!(
                "buffer {idx} {} overlaps {other} {}: overlapping buffers may only be \
                 shared by writes (reads need memory of their own)",
                describe(s, e, writable),
                describe(os, o.end, owritable),
            ));
        }
        keys.push(set.insert(s, Owner { end: e, lease, idx }, writable));
    }
    Ok(Lease { keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide and the tests run in parallel: each test uses
    // addresses of its own (a leaked allocation's range), never overlapping another's.
    fn base(len: usize) -> usize {
        Box::leak(vec![0u8; len].into_boxed_slice()).as_ptr() as usize
    }

    #[test]
    fn disjoint_writes_are_lent_and_returned() {
        let b = base(4096);
        let l = lend(&[(b, 100), (b + 100, 100), (b + 300, 0)], true).unwrap();
        assert_eq!(l.keys.len(), 2);
        drop(l);
        let again = lend(&[(b, 200)], true).unwrap();
        drop(again);
    }

    #[test]
    fn the_same_buffer_twice_in_one_read_is_refused() {
        let b = base(4096);
        let e = lend(&[(b, 64), (b, 64)], true).unwrap_err();
        assert!(e.contains("buffer 1"), "{e}");
        assert!(e.contains("buffer 0 of the same request"), "{e}");
        // Nothing stayed lent: the whole range is free again.
        drop(lend(&[(b, 4096)], true).unwrap());
    }

    #[test]
    fn overlapping_slices_are_refused_in_either_order() {
        let b = base(4096);
        assert!(lend(&[(b + 10, 20), (b, 11)], true).is_err());
        assert!(lend(&[(b, 11), (b + 10, 20)], true).is_err());
        // Touching is not overlapping.
        drop(lend(&[(b, 10), (b + 10, 20)], true).unwrap());
    }

    #[test]
    fn writes_share_but_a_read_and_a_write_do_not() {
        let b = base(4096);
        let w1 = lend(&[(b, 100), (b + 50, 100)], false).unwrap();
        let w2 = lend(&[(b, 100)], false).unwrap();
        // A long read-only range far before the new one still counts.
        let w3 = lend(&[(b + 1000, 2000)], false).unwrap();
        let e = lend(&[(b + 120, 10)], true).unwrap_err();
        assert!(e.contains("in flight"), "{e}");
        assert!(lend(&[(b + 2990, 4)], true).is_err());
        drop(lend(&[(b + 150, 850)], true).unwrap());
        drop((w1, w2, w3));
        let r = lend(&[(b, 4096)], true).unwrap();
        let e = lend(&[(b + 4000, 8)], false).unwrap_err();
        assert!(e.contains("written"), "{e}");
        drop(r);
    }
}
