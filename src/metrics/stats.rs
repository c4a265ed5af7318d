//! The engine's snapshot, [`Stats`] (from `Engine::stats`), and what it is made of
//! beside the counters: the shards' [`BackendKind`] and the value pools' totals.

use super::MetricsSnapshot;
pub use crate::mem::ValuePoolStats;

/// Which event loop a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Completion-based, io_uring.
    IoUring,
    /// Readiness-based, epoll through mio.
    Epoll,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

/// A snapshot of what the engine did, from [`Engine::stats`].
#[derive(Debug, Clone)]
pub struct Stats {
    /// Event loop in use.
    pub backend: BackendKind,
    /// Number of shard threads.
    pub shards: usize,
    /// Core each shard is pinned to.
    pub cores: Vec<Option<usize>>,
    /// Counters and latency histograms.
    pub metrics: MetricsSnapshot,
    /// Submissions queued in each shard's lanes (by shard, then `Priority::index`) at
    /// the moment of the snapshot.
    pub lane_depth: Vec<[usize; 4]>,
    /// The shards' pools of `get()` value buffers, summed.
    pub value_pool: ValuePoolStats,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.metrics;
        writeln!(
            f,
            "backend {}  shards {}  cores {:?}",
            self.backend, self.shards, self.cores
        )?;
        writeln!(
            f,
            "frames sent {}  bytes out {}  bytes in {}  hits {}  misses {}",
            m.frames_sent, m.bytes_sent, m.bytes_received, m.hits, m.misses
        )?;
        for c in &m.classes {
            if c.ops > 0 {
                writeln!(
                    f,
                    "{:<9} ops {:>8}  keys {:>10}  p50 {:?}  p95 {:?}  p99 {:?}  max {:?}",
                    c.class.name(),
                    c.ops,
                    c.keys,
                    c.p50,
                    c.p95,
                    c.p99,
                    c.max
                )?;
            }
        }
        if !m.errors.is_empty() {
            writeln!(f, "errors {:?}", m.errors)?;
        }
        let v = &self.value_pool;
        if v.reused + v.allocated > 0 {
            writeln!(
                f,
                "get() value buffers: reused {}  allocated {}  returned {}  evicted {}  \
                 held {} of {} bytes",
                v.reused, v.allocated, v.returned, v.evicted, v.held_bytes, v.bound_bytes
            )?;
        }
        Ok(())
    }
}
