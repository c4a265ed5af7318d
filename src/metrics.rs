//! Counters and latency histograms, shared by all shards and read by `Engine::stats()`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::priority::Priority;
use crate::syscalls::SyscallCounters;
pub use crate::syscalls::SyscallStats;

/// Error kinds counted separately (see [`crate::Error::kind`]), plus read-rule outcomes.
pub(crate) const ERROR_KINDS: &[&str] = &[
    "config",
    "url",
    "io",
    "outcome_unknown",
    "auth",
    "server",
    "protocol",
    "timeout",
    "busy",
    "closed",
    "too_large",
    "invalid",
    "put_failed",
    "cluster",
    "corrupt",
    "stale_metadata",
    "redirect",
    "reconnect",
];

#[derive(Default)]
struct ClassCounters {
    ops: AtomicU64,
    keys: AtomicU64,
}

/// A shared handle to an engine's counters (see `Engine::metrics_handle`).
#[derive(Clone)]
pub struct MetricsHandle(pub(crate) std::sync::Arc<Metrics>);

impl MetricsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.0.snapshot()
    }
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MetricsHandle").finish_non_exhaustive()
    }
}

/// Live counters. Cheap to update from any thread.
pub(crate) struct Metrics {
    classes: [ClassCounters; 4],
    latency: [Mutex<Histogram<u64>>; 4],
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: Vec<AtomicU64>,
    kernel_late_releases: AtomicU64,
    kernel_drained: AtomicU64,
    kernel_leaks: AtomicU64,
    recv_direct_bytes: AtomicU64,
    recv_staged_bytes: AtomicU64,
    sent_by_reference_bytes: AtomicU64,
    sent_copied_bytes: AtomicU64,
    sent_fixed_bytes: AtomicU64,
    recv_fixed_bytes: AtomicU64,
    /// Every shard's and every lane's syscall counters, summed by `snapshot`.
    syscall_sources: Mutex<Vec<std::sync::Arc<SyscallCounters>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 us .. 10 min at 3 significant digits; construction cannot fail with these bounds,
    // but fall back to an auto-resizing histogram rather than panic.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| Histogram::new(2).expect("sigfig 2"));
        h.auto(true);
        h
    })
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Metrics {
        Metrics {
            classes: Default::default(),
            latency: std::array::from_fn(|_| Mutex::new(new_histogram())),
            frames_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: ERROR_KINDS.iter().map(|_| AtomicU64::new(0)).collect(),
            kernel_late_releases: AtomicU64::new(0),
            kernel_drained: AtomicU64::new(0),
            kernel_leaks: AtomicU64::new(0),
            recv_direct_bytes: AtomicU64::new(0),
            recv_staged_bytes: AtomicU64::new(0),
            sent_by_reference_bytes: AtomicU64::new(0),
            sent_copied_bytes: AtomicU64::new(0),
            sent_fixed_bytes: AtomicU64::new(0),
            recv_fixed_bytes: AtomicU64::new(0),
            syscall_sources: Mutex::new(Vec::new()),
        }
    }

    /// One completed operation of `keys` chunks in `class`, taking `latency`.
    pub fn op_done(&self, class: Priority, keys: usize, latency: Duration) {
        let c = &self.classes[class.index()];
        c.ops.fetch_add(1, Relaxed);
        c.keys.fetch_add(keys as u64, Relaxed);
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let mut h = self.latency[class.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = h.record(us);
    }

    /// A frame (one write of one or more commands) went out.
    pub fn frame_sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    /// Bytes arrived from a server.
    pub fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    /// Read outcomes.
    pub fn hits_misses(&self, hits: usize, misses: usize) {
        self.hits.fetch_add(hits as u64, Relaxed);
        self.misses.fetch_add(misses as u64, Relaxed);
    }

    /// Counts an error (or read-rule event) by kind name.
    pub fn error(&self, kind: &str) {
        let i = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[i].fetch_add(1, Relaxed);
    }

    /// Value bytes received straight into their destination (no copy).
    pub fn recv_direct(&self, bytes: usize) {
        self.recv_direct_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Value bytes copied out of a connection's receive buffer into their destination.
    pub fn recv_staged(&self, bytes: usize) {
        if bytes > 0 {
            self.recv_staged_bytes.fetch_add(bytes as u64, Relaxed);
        }
    }

    /// Payload bytes queued for sending: `by_reference` from the caller's buffer
    /// itself, `copied` into the frame's header block (small payloads).
    pub fn payload_queued(&self, by_reference: usize, copied: usize) {
        self.sent_by_reference_bytes
            .fetch_add(by_reference as u64, Relaxed);
        self.sent_copied_bytes.fetch_add(copied as u64, Relaxed);
    }

    /// Payload bytes sent from a registered region's fixed buffer (io_uring).
    pub fn sent_fixed(&self, bytes: usize) {
        self.sent_fixed_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Value bytes received into a registered region's fixed buffer (io_uring).
    pub fn recv_fixed(&self, bytes: usize) {
        self.recv_fixed_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// A payload destination came back from a receive the kernel completed after its
    /// connection had been closed (it was held, not freed, until then).
    pub fn kernel_late_release(&self) {
        self.kernel_late_releases.fetch_add(1, Relaxed);
    }

    /// A shard's ring was torn down: `drained` operations came back after being
    /// cancelled, `leaked` never did (their memory is leaked on purpose).
    pub fn kernel_teardown(&self, drained: usize, leaked: usize) {
        self.kernel_drained.fetch_add(drained as u64, Relaxed);
        self.kernel_leaks.fetch_add(leaked as u64, Relaxed);
    }

    /// Adds a set of syscall counters (a shard's, or its lanes') to the snapshot's sum.
    pub fn add_syscall_source(&self, c: std::sync::Arc<SyscallCounters>) {
        self.syscall_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    /// Copies of the per-class latency histograms (microseconds), indexed by
    /// `Priority::index`, for the Prometheus exposition.
    pub fn latency_histograms(&self) -> Vec<Histogram<u64>> {
        self.latency
            .iter()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// A copy of everything, for reporting.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut syscalls = SyscallStats::default();
        for c in self
            .syscall_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            c.add_to(&mut syscalls);
        }
        let classes = Priority::ALL
            .iter()
            .map(|&p| {
                let h = self.latency[p.index()]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let q = |x: f64| Duration::from_micros(h.value_at_quantile(x));
                ClassStats {
                    class: p,
                    ops: self.classes[p.index()].ops.load(Relaxed),
                    keys: self.classes[p.index()].keys.load(Relaxed),
                    p50: q(0.50),
                    p95: q(0.95),
                    p99: q(0.99),
                    max: Duration::from_micros(h.max()),
                }
            })
            .collect();
        let errors = ERROR_KINDS
            .iter()
            .zip(&self.errors)
            .filter_map(|(k, v)| {
                let v = v.load(Relaxed);
                (v > 0).then(|| (k.to_string(), v))
            })
            .collect();
        MetricsSnapshot {
            classes,
            frames_sent: self.frames_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            errors,
            kernel_late_releases: self.kernel_late_releases.load(Relaxed),
            kernel_drained: self.kernel_drained.load(Relaxed),
            kernel_leaks: self.kernel_leaks.load(Relaxed),
            recv_direct_bytes: self.recv_direct_bytes.load(Relaxed),
            recv_staged_bytes: self.recv_staged_bytes.load(Relaxed),
            sent_by_reference_bytes: self.sent_by_reference_bytes.load(Relaxed),
            sent_copied_bytes: self.sent_copied_bytes.load(Relaxed),
            syscalls,
            sent_fixed_bytes: self.sent_fixed_bytes.load(Relaxed),
            recv_fixed_bytes: self.recv_fixed_bytes.load(Relaxed),
            regions: 0,
            regions_registered: 0,
            region_fallbacks: 0,
        }
    }
}

/// Per-class numbers.
#[derive(Debug, Clone)]
pub struct ClassStats {
    /// The class.
    pub class: Priority,
    /// Completed operations (batches).
    pub ops: u64,
    /// Chunks those operations carried.
    pub keys: u64,
    /// Latency quantiles of whole operations, submission to completion.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    /// One entry per priority class, most urgent first.
    pub classes: Vec<ClassStats>,
    /// Frames written (each is one round trip's worth of pipelined commands).
    pub frames_sent: u64,
    /// Request bytes written.
    pub bytes_sent: u64,
    /// Reply bytes read.
    pub bytes_received: u64,
    /// Chunks found.
    pub hits: u64,
    /// Chunks not found (including corrupt and evicted ones).
    pub misses: u64,
    /// Errors and read-rule events by kind, only those that happened.
    pub errors: BTreeMap<String, u64>,
    /// io_uring: payload destinations held past their connection's close until the
    /// kernel returned the receive writing into them.
    pub kernel_late_releases: u64,
    /// io_uring: operations cancelled and returned by the kernel when shards stopped.
    pub kernel_drained: u64,
    /// io_uring: operations the kernel did not return when shards stopped; their
    /// memory was leaked rather than freed (0 in a healthy run).
    pub kernel_leaks: u64,
    /// Value bytes received straight into their destination (a caller's buffer or the
    /// value's own allocation): the zero-copy read path.
    pub recv_direct_bytes: u64,
    /// Value bytes received into a connection's buffer and copied to their
    /// destination from there (small values, and the first bytes of a large one whose
    /// length was not known in advance).
    pub recv_staged_bytes: u64,
    /// Payload bytes sent from the caller's buffer itself, without a copy.
    pub sent_by_reference_bytes: u64,
    /// Payload bytes copied into a frame's header block before sending (values of
    /// 512 bytes or less, cheaper copied than given an iovec of their own).
    pub sent_copied_bytes: u64,
    /// Syscalls the engine made on its hot path (shard event loops, socket I/O,
    /// doorbells), by kind; connection setup is not counted.
    pub syscalls: SyscallStats,
    /// Of `sent_by_reference_bytes`, those sent from a registered region's fixed
    /// buffer (io_uring WRITE_FIXED or SEND_ZC; see `Engine::register_region`).
    pub sent_fixed_bytes: u64,
    /// Of `recv_direct_bytes`, those received through a registered region's fixed
    /// buffer (io_uring READ_FIXED).
    pub recv_fixed_bytes: u64,
    /// Registered regions alive (handles; on epoll they are markers only).
    pub regions: u64,
    /// Region registrations active on shard rings (one per region and io_uring shard).
    pub regions_registered: u64,
    /// Region registrations a ring refused (locked-memory limit, full table, old
    /// kernel); those regions' payloads take the unregistered path on that shard.
    pub region_fallbacks: u64,
}

impl MetricsSnapshot {
    /// Count for one error kind (0 if it never happened).
    pub fn error_count(&self, kind: &str) -> u64 {
        self.errors.get(kind).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let m = Metrics::new();
        for ms in 1..=100 {
            m.op_done(Priority::Get, 2, Duration::from_millis(ms));
        }
        m.error("timeout");
        m.error("corrupt");
        m.frame_sent(10);
        let s = m.snapshot();
        let get = &s.classes[Priority::Get.index()];
        assert_eq!(get.ops, 100);
        assert_eq!(get.keys, 200);
        assert!(get.p50 >= Duration::from_millis(49) && get.p50 <= Duration::from_millis(51));
        assert_eq!(s.error_count("timeout"), 1);
        assert_eq!(s.error_count("corrupt"), 1);
        assert_eq!(s.error_count("io"), 0);
        assert_eq!(s.frames_sent, 1);
    }
}
