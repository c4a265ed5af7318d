//! Counters and latency histograms, kept per shard and summed by `Engine::stats()`.

mod histogram;
pub mod prometheus;
mod stats;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use histogram::AtomicHistogram;
pub use histogram::LatencyHistogram;
pub use stats::{BackendKind, Stats, ValuePoolStats};

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
    "janitor_overflow",
    "host_down",
    "tls",
];

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

thread_local! {
    /// The shard this thread runs (`usize::MAX` for any other thread): which stripe
    /// of the counters it records into.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the calling thread as shard `id`'s: from now on it records into that shard's
/// stripe, which no other thread writes.
pub(crate) fn set_current_shard(id: usize) {
    SHARD.with(|s| s.set(id));
}

/// One writer's share of the counters. Aligned to two cache lines so that shards
/// never write to a line another shard writes (adjacent-line prefetch included).
#[repr(align(128))]
struct Stripe {
    ops: [AtomicU64; 4],
    keys: [AtomicU64; 4],
    latency: [AtomicHistogram; 4],
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    kernel_late_releases: AtomicU64,
    kernel_drained: AtomicU64,
    kernel_leaks: AtomicU64,
    efault_ops: AtomicU64,
    zombie_conns: AtomicU64,
    leaked_buffers: AtomicU64,
    recv_direct_bytes: AtomicU64,
    recv_staged_bytes: AtomicU64,
    sent_by_reference_bytes: AtomicU64,
    sent_copied_bytes: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_handshake_failures: AtomicU64,
    sent_fixed_bytes: AtomicU64,
    recv_fixed_bytes: AtomicU64,
}

impl Stripe {
    fn new() -> Stripe {
        Stripe {
            ops: Default::default(),
            keys: Default::default(),
            latency: std::array::from_fn(|_| AtomicHistogram::new()),
            frames_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            kernel_late_releases: AtomicU64::new(0),
            kernel_drained: AtomicU64::new(0),
            kernel_leaks: AtomicU64::new(0),
            efault_ops: AtomicU64::new(0),
            zombie_conns: AtomicU64::new(0),
            leaked_buffers: AtomicU64::new(0),
            recv_direct_bytes: AtomicU64::new(0),
            recv_staged_bytes: AtomicU64::new(0),
            sent_by_reference_bytes: AtomicU64::new(0),
            sent_copied_bytes: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            sent_fixed_bytes: AtomicU64::new(0),
            recv_fixed_bytes: AtomicU64::new(0),
        }
    }

    /// This stripe's I/O counters.
    fn io(&self) -> ShardIoStats {
        ShardIoStats {
            frames_sent: self.frames_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            recv_direct_bytes: self.recv_direct_bytes.load(Relaxed),
            recv_staged_bytes: self.recv_staged_bytes.load(Relaxed),
            sent_by_reference_bytes: self.sent_by_reference_bytes.load(Relaxed),
            sent_copied_bytes: self.sent_copied_bytes.load(Relaxed),
        }
    }
}

/// Live counters, one [`Stripe`] per shard plus one for every other thread (callers),
/// summed only when read. Recording is a few relaxed atomic adds on the recording
/// thread's own stripe: no lock, and no cache line shared between shards.
pub(crate) struct Metrics {
    /// `shards` stripes, then the callers' stripe.
    stripes: Box<[Stripe]>,
    /// Every shard's and every lane's syscall counters, summed by `snapshot` (the
    /// lock is taken at shard start and when reading, never on the hot path).
    syscall_sources: Mutex<Vec<std::sync::Arc<SyscallCounters>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Zeroed counters with only the callers' stripe (for tests and helpers that run
    /// no shards).
    pub fn new() -> Metrics {
        Metrics::with_shards(0)
    }

    /// Zeroed counters for an engine of `shards` shards.
    pub fn with_shards(shards: usize) -> Metrics {
        Metrics {
            stripes: (0..=shards).map(|_| Stripe::new()).collect(),
            syscall_sources: Mutex::new(Vec::new()),
        }
    }

    /// The calling thread's stripe: its shard's, or the callers' one.
    fn stripe(&self) -> &Stripe {
        let callers = self.stripes.len() - 1;
        let i = SHARD.with(Cell::get);
        &self.stripes[if i < callers { i } else { callers }]
    }

    /// One completed operation of `keys` chunks in `class`, taking `latency`.
    pub fn op_done(&self, class: Priority, keys: usize, latency: Duration) {
        let s = self.stripe();
        let c = class.index();
        s.ops[c].fetch_add(1, Relaxed);
        s.keys[c].fetch_add(keys as u64, Relaxed);
        s.latency[c].record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// A frame (one write of one or more commands) went out.
    pub fn frame_sent(&self, bytes: usize) {
        let s = self.stripe();
        s.frames_sent.fetch_add(1, Relaxed);
        s.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    /// Bytes arrived from a server.
    pub fn received(&self, bytes: usize) {
        self.stripe()
            .bytes_received
            .fetch_add(bytes as u64, Relaxed);
    }

    /// Read outcomes.
    pub fn hits_misses(&self, hits: usize, misses: usize) {
        let s = self.stripe();
        s.hits.fetch_add(hits as u64, Relaxed);
        s.misses.fetch_add(misses as u64, Relaxed);
    }

    /// Counts an error (or read-rule event) by kind name.
    pub fn error(&self, kind: &str) {
        let i = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.stripe().errors[i].fetch_add(1, Relaxed);
    }

    /// Value bytes received straight into their destination (no copy).
    pub fn recv_direct(&self, bytes: usize) {
        self.stripe()
            .recv_direct_bytes
            .fetch_add(bytes as u64, Relaxed);
    }

    /// Value bytes copied out of a connection's receive buffer into their destination.
    pub fn recv_staged(&self, bytes: usize) {
        if bytes > 0 {
            self.stripe()
                .recv_staged_bytes
                .fetch_add(bytes as u64, Relaxed);
        }
    }

    /// Payload bytes queued for sending: `by_reference` from the caller's buffer
    /// itself, `copied` into the frame's header block (small payloads).
    pub fn payload_queued(&self, by_reference: usize, copied: usize) {
        let s = self.stripe();
        s.sent_by_reference_bytes
            .fetch_add(by_reference as u64, Relaxed);
        s.sent_copied_bytes.fetch_add(copied as u64, Relaxed);
    }

    /// A TLS handshake completed (`ok`) or failed.
    pub fn tls_handshake(&self, ok: bool) {
        if ok {
            self.stripe().tls_handshakes.fetch_add(1, Relaxed);
        } else {
            self.stripe().tls_handshake_failures.fetch_add(1, Relaxed);
        }
    }

    /// Payload bytes sent from a registered region's fixed buffer (io_uring).
    pub fn sent_fixed(&self, bytes: usize) {
        self.stripe()
            .sent_fixed_bytes
            .fetch_add(bytes as u64, Relaxed);
    }

    /// Value bytes received into a registered region's fixed buffer (io_uring).
    pub fn recv_fixed(&self, bytes: usize) {
        self.stripe()
            .recv_fixed_bytes
            .fetch_add(bytes as u64, Relaxed);
    }

    /// A payload destination came back from a receive the kernel completed after its
    /// connection had been closed (it was held, not freed, until then).
    pub fn kernel_late_release(&self) {
        self.stripe().kernel_late_releases.fetch_add(1, Relaxed);
    }

    /// A shard's ring was torn down: `drained` operations came back after being
    /// cancelled, `leaked` never did (their memory is leaked on purpose).
    pub fn kernel_teardown(&self, drained: usize, leaked: usize) {
        let s = self.stripe();
        s.kernel_drained.fetch_add(drained as u64, Relaxed);
        s.kernel_leaks.fetch_add(leaked as u64, Relaxed);
    }

    /// `n` sends or receives failed with EFAULT: the kernel found their memory no
    /// longer valid (a caller buffer handed back too early would show here).
    pub fn efaults(&self, n: u64) {
        self.stripe().efault_ops.fetch_add(n, Relaxed);
    }

    /// The calling shard now has `n` closed connections waiting for the kernel to
    /// return their operations (a gauge: each shard sets its own stripe).
    pub fn zombies(&self, n: usize) {
        self.stripe().zombie_conns.store(n as u64, Relaxed);
    }

    /// `n` caller buffers were given up: a wait for them ended at its bound while the
    /// engine (a torn-down ring) still held them; they are leaked, never freed.
    pub fn leaked_buffers(&self, n: usize) {
        self.stripe().leaked_buffers.fetch_add(n as u64, Relaxed);
    }

    /// Adds a set of syscall counters (a shard's, or its lanes') to the snapshot's sum.
    pub fn add_syscall_source(&self, c: std::sync::Arc<SyscallCounters>) {
        self.syscall_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    /// The per-class latency histograms (microseconds) merged over every stripe,
    /// indexed by `Priority::index`.
    pub fn latency_histograms(&self) -> Vec<LatencyHistogram> {
        (0..4)
            .map(|c| {
                let mut h = LatencyHistogram::default();
                for s in self.stripes.iter() {
                    s.latency[c].add_to(&mut h);
                }
                h
            })
            .collect()
    }

    /// A copy of everything, for reporting: the stripes summed.
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
        let sum = |f: fn(&Stripe) -> &AtomicU64| -> u64 {
            self.stripes
                .iter()
                .map(|s| f(s).load(Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        let lat = self.latency_histograms();
        let classes = Priority::ALL
            .iter()
            .map(|&p| {
                let i = p.index();
                let h = &lat[i];
                let q = |x: f64| Duration::from_micros(h.quantile_us(x));
                ClassStats {
                    class: p,
                    ops: self.stripes.iter().map(|s| s.ops[i].load(Relaxed)).sum(),
                    keys: self.stripes.iter().map(|s| s.keys[i].load(Relaxed)).sum(),
                    p50: q(0.50),
                    p95: q(0.95),
                    p99: q(0.99),
                    max: Duration::from_micros(h.max_us()),
                }
            })
            .collect();
        let errors = ERROR_KINDS
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let v: u64 = self.stripes.iter().map(|s| s.errors[i].load(Relaxed)).sum();
                (v > 0).then(|| (k.to_string(), v))
            })
            .collect();
        let shards = self.stripes.len() - 1;
        MetricsSnapshot {
            classes,
            frames_sent: sum(|s| &s.frames_sent),
            bytes_sent: sum(|s| &s.bytes_sent),
            bytes_received: sum(|s| &s.bytes_received),
            hits: sum(|s| &s.hits),
            misses: sum(|s| &s.misses),
            errors,
            kernel_late_releases: sum(|s| &s.kernel_late_releases),
            kernel_drained: sum(|s| &s.kernel_drained),
            kernel_leaks: sum(|s| &s.kernel_leaks),
            efault_ops: sum(|s| &s.efault_ops),
            zombie_conns: sum(|s| &s.zombie_conns),
            leaked_buffers: sum(|s| &s.leaked_buffers),
            recv_direct_bytes: sum(|s| &s.recv_direct_bytes),
            recv_staged_bytes: sum(|s| &s.recv_staged_bytes),
            sent_by_reference_bytes: sum(|s| &s.sent_by_reference_bytes),
            sent_copied_bytes: sum(|s| &s.sent_copied_bytes),
            tls_handshakes: sum(|s| &s.tls_handshakes),
            tls_handshake_failures: sum(|s| &s.tls_handshake_failures),
            syscalls,
            per_shard: self.stripes[..shards].iter().map(Stripe::io).collect(),
            sent_fixed_bytes: sum(|s| &s.sent_fixed_bytes),
            recv_fixed_bytes: sum(|s| &s.recv_fixed_bytes),
            regions: 0,
            regions_registered: 0,
            region_fallbacks: 0,
        }
    }

    /// Bytes received per read hit so far (0 before the first): what a read is
    /// expected to move per key, for its size-scaled deadline.
    pub fn mean_hit_bytes(&self) -> u64 {
        // A few relaxed loads per stripe: cheap enough per read submission.
        let (mut hits, mut bytes) = (0u64, 0u64);
        for s in self.stripes.iter() {
            hits += s.hits.load(Relaxed);
            bytes += s.bytes_received.load(Relaxed);
        }
        bytes.checked_div(hits).unwrap_or(0)
    }
}

/// One shard's I/O counters (the same meanings as [`MetricsSnapshot`]'s fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardIoStats {
    /// Frames written.
    pub frames_sent: u64,
    /// Request bytes written.
    pub bytes_sent: u64,
    /// Reply bytes read.
    pub bytes_received: u64,
    /// Value bytes received straight into their destination.
    pub recv_direct_bytes: u64,
    /// Value bytes copied out of a connection's receive buffer.
    pub recv_staged_bytes: u64,
    /// Payload bytes sent from the caller's buffer itself.
    pub sent_by_reference_bytes: u64,
    /// Payload bytes copied into a frame's header block.
    pub sent_copied_bytes: u64,
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
    /// Sends and receives that failed with EFAULT: the kernel found their memory no
    /// longer valid. A caller buffer touched after it was handed back would count
    /// here (0 in a correct engine; the canary tests assert it).
    pub efault_ops: u64,
    /// io_uring: closed connections whose socket or zero-copy pages the kernel still
    /// holds (a gauge; back to 0 once their last completions arrived).
    pub zombie_conns: u64,
    /// Caller buffers given up on: a wait for them ended at its bound while a
    /// torn-down ring still held them, so they were leaked, never freed (0 in a
    /// healthy run).
    pub leaked_buffers: u64,
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
    /// The I/O counters above, shard by shard (index = shard id). What other threads
    /// recorded (none of these today: sockets belong to shards) is in the totals only.
    pub per_shard: Vec<ShardIoStats>,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (bad certificate, refused client certificate,
    /// timeout).
    pub tls_handshake_failures: u64,
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
