//! slotline: a thread-per-core engine that stores and fetches LMCache KV-cache chunks
//! in Redis and Redis Cluster.
//!
//! Callers on any thread submit batches through per-shard priority lanes; each shard is
//! a pinned thread running its own io_uring (or epoll) event loop and owning its
//! connections. See [`Engine`] for the API.

pub(crate) mod addr;
pub(crate) mod batch;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod engine;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod lanes;
pub(crate) mod layout;
pub(crate) mod mem;
pub(crate) mod metrics;
pub(crate) mod numa;
pub(crate) mod priority;
pub(crate) mod region;
pub(crate) mod resolver;
pub(crate) mod resp;
pub(crate) mod sentinel;
pub(crate) mod shard;
pub(crate) mod sys;
pub(crate) mod syscalls;
#[cfg(test)]
mod tests;
pub(crate) mod tls;

// The public surface, named deliberately: every module above is `pub(crate)` (fuzz is
// test support behind a feature); what callers need is re-exported here.
pub use batch::{Chunk, ChunkInfo, GetInto, PutChunk, Ticket};
pub use cluster::slot::{hash_slot, hash_tag};
pub use config::{
    keys_markdown, mask_url, parse_url, Config, Deadlines, IoBackend, Mode, ServerAddr,
};
pub use engine::request;
pub use engine::{
    CallerTicket, DeathHold, DeathStage, Engine, GetIntoTicket, MasterView, PutOwned, PutRef,
    PutTicket, Returned,
};
pub use error::{Error, Result};
pub use layout::{dtype_code, fmt_code, KeyLayout, MetaGroup, RemoteMetadata};
// Named by its doc example only (the Redis keys of a layout and prefix).
#[doc(hidden)]
pub use layout::KeyScheme;
pub use mem::{CallerBuf, CallerBufMut};
pub use metrics::prometheus::CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE;
pub use metrics::{
    BackendKind, ClassStats, LatencyHistogram, MetricsHandle, MetricsSnapshot, ShardIoStats, Stats,
    SyscallStats, ValuePoolStats,
};
pub use priority::{Priority, PriorityWeights};
pub use region::{OwnedRegion, Region};
pub use resp::Value;

/// The host's CPU and NUMA layout as the engine reads it (what `slotline host` prints).
pub mod host {
    pub use crate::numa::{node_cpus, nodes, parse_cpu_list};
}
