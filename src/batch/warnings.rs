//! Per-key warnings of one batch, aggregated: one WARN line per batch and kind of
//! failure (a count and the first two keys), at most one line per second per kind.
//!
//! A batch of 256 keys on a dead server used to log 256 lines, and every batch after it
//! as many; a log that floods hides the first line that matters. The counters in
//! `metrics` still count every key.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Keys named in one line.
const KEYS_SHOWN: usize = 2;
/// Least time between two lines of the same kind.
const GAP_MS: u64 = 1000;

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
            let Some(suppressed) = admit(e.what, e.count, now_ms()) else {
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

/// Per kind: no line before this time (ms since `epoch`), and the keys of lines not
/// logged since the last one. Touched only when a batch has failed keys.
static LIMITS: Mutex<Vec<(&'static str, u64, u64)>> = Mutex::new(Vec::new());

/// `Some(keys suppressed since the last line)` when a line of kind `what` may be
/// logged at `now` (ms); otherwise counts `count` keys as suppressed.
fn admit(what: &'static str, count: usize, now: u64) -> Option<u64> {
    let mut l = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let i = match l.iter().position(|(w, ..)| *w == what) {
        Some(i) => i,
        None => {
            l.push((what, 0, 0));
            l.len() - 1
        }
    };
    let (_, next, suppressed) = &mut l[i];
    if now < *next {
        *suppressed += count as u64;
        return None;
    }
    *next = now + GAP_MS;
    Some(std::mem::take(suppressed))
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
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
        // Kinds of this test only: the limiter is shared by the process.
        assert_eq!(admit("test-gap", 3, 10_000), Some(0));
        assert_eq!(admit("test-gap", 5, 10_500), None);
        assert_eq!(admit("test-other", 1, 10_500), Some(0), "kinds are apart");
        assert_eq!(admit("test-gap", 7, 10_999), None);
        assert_eq!(admit("test-gap", 1, 11_000), Some(12));
        assert_eq!(admit("test-gap", 1, 11_001), None);
    }

    /// Counts events: the lines `emit` logs.
    struct Lines(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl tracing::Subscriber for Lines {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_batch_of_failures_is_one_line_per_kind() {
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batch = || {
            let mut w = KeyWarnings::default();
            for i in 0..256 {
                w.add("test-emit-timeout", || format!("k{i}"), || "slow".into());
            }
            w.add("test-emit-corrupt", || "c".into(), || "bad".into());
            w
        };
        tracing::subscriber::with_default(Lines(n.clone()), || {
            batch().emit("get");
            assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
            // The next batch within the second: nothing logged, counted for later.
            batch().emit("get");
            assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
        });
    }
}
