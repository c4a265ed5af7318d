//! A chunk read back with `get()`: its metadata and payload, and the payload buffer's
//! way back to the shard's pool when it drops (see `crate::mem::pool`).

use std::sync::Arc;

use crate::layout::RemoteMetadata;
use crate::mem::{Mem, ValuePool};

/// One chunk read back from Redis.
///
/// A large payload's buffer goes back to the engine's pool when the chunk drops, for
/// the next `get()` to receive into (see `Stats::value_pool`); take the bytes out with
/// [`Chunk::into_data`] (or `std::mem::take(&mut chunk.data)`) to keep them instead.
pub struct Chunk {
    /// The decoded metadata (`None` in the `raw` layout).
    pub meta: Option<RemoteMetadata>,
    /// The payload bytes.
    pub data: Vec<u8>,
    /// Where `data` goes back to on drop.
    pool: Option<Arc<ValuePool>>,
}

impl Chunk {
    /// A chunk of these bytes (for callers that build results of their own).
    pub fn new(meta: Option<RemoteMetadata>, data: Vec<u8>) -> Chunk {
        Chunk {
            meta,
            data,
            pool: None,
        }
    }

    /// The payload, kept by the caller (its buffer does not go back to the pool).
    pub fn into_data(mut self) -> Vec<u8> {
        self.pool = None;
        std::mem::take(&mut self.data)
    }

    pub(super) fn from_hit(meta: Option<RemoteMetadata>, data: Mem) -> Chunk {
        let (data, pool) = data.into_parts();
        Chunk { meta, data, pool }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(p) = self.pool.take() {
            p.give(std::mem::take(&mut self.data));
        }
    }
}

impl Clone for Chunk {
    /// A copy of the bytes, in memory of its own (not pooled).
    fn clone(&self) -> Chunk {
        Chunk::new(self.meta.clone(), self.data.clone())
    }
}

impl PartialEq for Chunk {
    fn eq(&self, o: &Chunk) -> bool {
        self.meta == o.meta && self.data == o.data
    }
}

impl Eq for Chunk {}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("meta", &self.meta)
            .field("data", &self.data)
            .finish()
    }
}
