//! slotline: a thread-per-core engine that stores and fetches LMCache KV-cache chunks
//! in Redis and Redis Cluster.
//!
//! Callers on any thread submit batches through per-shard priority lanes; each shard is
//! a pinned thread running its own io_uring (or epoll) event loop and owning its
//! connections. See [`Engine`] for the API.

pub(crate) mod addr;
pub(crate) mod batch;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod lanes;
pub mod layout;
pub(crate) mod mem;
pub mod metrics;
pub mod numa;
pub(crate) mod priority;
pub mod region;
pub(crate) mod resolver;
pub(crate) mod resp;
pub(crate) mod sentinel;
pub(crate) mod shard;
pub(crate) mod sys;
pub(crate) mod syscalls;
#[cfg(test)]
mod tests;
pub(crate) mod tls;

pub use batch::{Chunk, ChunkInfo, GetInto, PutChunk, Ticket};
pub use config::Config;
pub use engine::{CallerTicket, Engine, GetIntoTicket, PutOwned, PutRef, PutTicket, Returned};
pub use error::{Error, Result};
pub use layout::{KeyLayout, RemoteMetadata};
pub use mem::{CallerBuf, CallerBufMut};
pub use metrics::{BackendKind, Stats, ValuePoolStats};
pub use priority::{Priority, PriorityWeights};
pub use region::{OwnedRegion, Region};
pub use resp::Value;
