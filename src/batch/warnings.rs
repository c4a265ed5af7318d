//! Per-key warnings of one batch, aggregated: one WARN line per batch and kind of
//! failure (a count and the first two keys), at most one line per second per kind.
//!
//! A batch of 256 keys on a dead server used to log 256 lines, and every batch after it
//! as many; a log that floods hides the first line that matters. The counters in
//! `metrics` still count every key.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Keys named in one line.
const KEYS_SHOWN: usize = 2;
/// Least time between two lines of the same kind.
const GAP_MS: u64 = 1000;
/// Rate-limit buckets (kinds are hashed onto them).
const BUCKETS: usize = 32;

struct Entry {
    what: &'static str,
    count: usize,
    keys: Vec<String>,
    detail: String,
}

/// Collects a batch's per-key warnings; [`KeyWarnings::emit`] logs them.
#[derive(Default)]
pub(crate) struct KeyWarnings {
    entries: Vec<Entry>,
}

impl KeyWarnings {
    /// A key failed or was read as a miss for reason `what` (a fixed label: the
    /// error kind, "corrupt", ...). `key` and `detail` are rendered only for the
    /// first keys of a kind.
    pub fn add(
        &mut self,
        what: &'static str,
        key: impl FnOnce() -> String,
        detail: impl FnOnce() -> String,
    ) {
        match self.entries.iter_mut().find(|e| e.what == what) {
            Some(e) => {
                e.count += 1;
                if e.keys.len() < KEYS_SHOWN {
                    e.keys.push(key());
                }
            }
            None => self.entries.push(Entry {
                what,
                count: 1,
                keys: vec![key()],
                detail: detail(),
            }),
        }
    }

    /// Logs one line per kind, unless a line of that kind was logged less than a
    /// second ago; the next line says how many keys the skipped ones covered.
    pub fn emit(self, op: &'static str) {
        for e in self.entries {
            let limiter = &limiters()[bucket(e.what)];
            let Some(suppressed) = limiter.admit(e.count) else {
                continue;
            };
            let keys = e.keys.join(", ");
            tracing::warn!(
                op,
                kind = e.what,
                count = e.count,
                keys = %keys,
                detail = %e.detail,
                suppressed_keys = suppressed,
                "keys failed or read as misses (first keys named; suppressed_keys: same kind, not logged in the last second)"
            );
        }
    }
}

struct Limiter {
    /// Milliseconds since `epoch()` before which no line is logged.
    next_ms: AtomicU64,
    /// Keys of lines not logged since the last line.
    suppressed: AtomicU64,
}

impl Limiter {
    /// `Some(keys suppressed since the last line)` when a line may be logged now.
    fn admit(&self, count: usize) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now < next
            || self
                .next_ms
                .compare_exchange(next, now + GAP_MS, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(count as u64, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn limiters() -> &'static [Limiter] {
    static L: OnceLock<Vec<Limiter>> = OnceLock::new();
    L.get_or_init(|| {
        (0..BUCKETS)
            .map(|_| Limiter {
                next_ms: AtomicU64::new(0),
                suppressed: AtomicU64::new(0),
            })
            .collect()
    })
}

fn bucket(what: &str) -> usize {
    let h = what
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    h % BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_per_kind_with_two_keys() {
        let mut w = KeyWarnings::default();
        let mut rendered = 0;
        for i in 0..100 {
            w.add(
                "timeout",
                || {
                    rendered += 1;
                    format!("k{i}")
                },
                || "slow".into(),
            );
        }
        w.add("corrupt", || "c".into(), || "bad".into());
        assert_eq!(rendered, 2, "keys rendered only for the lines");
        assert_eq!(w.entries.len(), 2);
        assert_eq!(w.entries[0].count, 100);
        assert_eq!(w.entries[0].keys, vec!["k0", "k1"]);
        assert_eq!(w.entries[1].count, 1);
    }

    #[test]
    fn limiter_admits_once_per_gap_and_counts_the_rest() {
        let l = Limiter {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        assert_eq!(l.admit(3), Some(0));
        assert_eq!(l.admit(5), None);
        assert_eq!(l.admit(7), None);
        assert_eq!(l.suppressed.load(Relaxed), 12);
        // Open the gate again, as a second later.
        l.next_ms.store(0, Relaxed);
        assert_eq!(l.admit(1), Some(12));
    }
}
