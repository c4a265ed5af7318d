//! A latency histogram any thread can record into with one atomic add (no lock), and
//! the plain copy a reader merges stripes into.
//!
//! Buckets are log-linear over microseconds: values below [`SUB`] have a bucket each;
//! above, every power-of-two octave is split into [`SUB`] equal buckets, so a bucket's
//! width is at most 1/[`SUB`] (1.6 %) of its values. Values are clamped to
//! 1 us ..= [`MAX_US`] (10 minutes), which needs [`BUCKETS`] buckets (12.5 KiB).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Log2 of the buckets per octave.
const SUB_BITS: u32 = 6;
/// Buckets per octave (and the values below it, one bucket each).
pub(crate) const SUB: usize = 1 << SUB_BITS;
/// Largest value recorded, microseconds (larger ones are clamped to it).
pub(crate) const MAX_US: u64 = 600_000_000;
/// Octaves above the linear range: `MAX_US` < 2^30.
const OCTAVES: usize = 30 - SUB_BITS as usize;
/// Number of buckets.
pub(crate) const BUCKETS: usize = SUB + OCTAVES * SUB;

/// The bucket of `us` (already clamped to 1..=MAX_US).
fn index(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // floor(log2), >= SUB_BITS
    let shift = e - SUB_BITS;
    let sub = (us >> shift) as usize - SUB; // 0..SUB
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// Lowest value of bucket `i` and its width.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, 1);
    }
    let octave = (i - SUB) / SUB;
    let sub = ((i - SUB) % SUB + SUB) as u64;
    (sub << octave, 1 << octave)
}

/// The live histogram: bucket counts, an exact sum and maximum.
pub(crate) struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl AtomicHistogram {
    /// Empty.
    pub fn new() -> AtomicHistogram {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Records one value in microseconds (clamped to 1..=MAX_US).
    pub fn record(&self, us: u64) {
        let us = us.clamp(1, MAX_US);
        self.counts[index(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// Adds this histogram's counts to `into`. Concurrent records may be seen in part
    /// (a count without its sum): a scrape is a moment, not a transaction.
    pub fn add_to(&self, into: &mut LatencyHistogram) {
        for (a, c) in into.counts.iter_mut().zip(self.counts.iter()) {
            *a += c.load(Relaxed);
        }
        into.sum_us += self.sum_us.load(Relaxed);
        into.max_us = into.max_us.max(self.max_us.load(Relaxed));
    }
}

/// A merged copy of one class's latency histograms, microseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    sum_us: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS],
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl LatencyHistogram {
    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `true` if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the recorded values (exact, after clamping), microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Largest recorded value, microseconds (0 if none).
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket holding that
    /// rank, at most the maximum; 0 if empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let n = self.len();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bounds(i);
                return (low + width - 1).min(self.max_us).max(low);
            }
        }
        self.max_us
    }

    /// Non-empty buckets in ascending order: (lowest value, count).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (bounds(i).0, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        let mut prev = (0, 1);
        for i in 1..BUCKETS {
            let (low, w) = bounds(i);
            assert_eq!(low, prev.0 + prev.1, "bucket {i} follows {prev:?}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + w - 1), i);
            prev = (low, w);
        }
        assert!(index(MAX_US) < BUCKETS);
        // Relative width at most 1/SUB above the linear range.
        for us in [64u64, 100, 1_000, 50_000, 1_000_000, MAX_US] {
            let (low, w) = bounds(index(us));
            assert!(low <= us && us < low + w);
            assert!(w as f64 / low as f64 <= 1.0 / SUB as f64 + 1e-9, "{us}");
        }
    }

    #[test]
    fn quantiles_sum_max() {
        let h = AtomicHistogram::new();
        for ms in 1..=100u64 {
            h.record(ms * 1000);
        }
        h.record(0); // clamped to 1 us
        let mut m = LatencyHistogram::default();
        h.add_to(&mut m);
        assert_eq!(m.len(), 101);
        assert_eq!(m.max_us(), 100_000);
        assert_eq!(m.sum_us(), 5_050_000 + 1);
        let p50 = m.quantile_us(0.5);
        assert!((49_000..=51_000).contains(&p50), "{p50}");
        assert_eq!(m.quantile_us(1.0), 100_000);
        assert_eq!(m.quantile_us(0.0), 1);
        assert_eq!(LatencyHistogram::default().quantile_us(0.99), 0);
        // Merging two stripes adds up.
        h.add_to(&mut m);
        assert_eq!(m.len(), 202);
    }
}
