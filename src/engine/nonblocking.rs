//! The `try_*` forms of the checks and reads: like their async forms, but a full lane
//! fails the call at once with [`Error::Busy`] instead of waiting for space (what a
//! caller that must never block, such as LMCache's native plug-in, needs).

use crate::batch::{Chunk, GetMode, Op, Output, Ticket};
use crate::error::{Error, Result};
use crate::priority::Priority;

use super::submit::{Req, Submit};
use super::{bools, chunks, count, Engine};

impl Engine {
    fn try_submit<K: AsRef<[u8]>, T>(
        &self,
        op: Op,
        class: Priority,
        keys: &[K],
        convert: fn(Output) -> Result<T>,
    ) -> Result<Ticket<T>> {
        let b = self.submit_keys(
            Req {
                op,
                class,
                layout: self.inner.keys.clone(),
                mode: Submit::Try,
                target: None,
            },
            keys,
            Vec::new(),
        )?;
        Ok(Ticket::new(b, convert))
    }

    /// Like [`get_async`](Self::get_async), but fails at once with [`Error::Busy`]
    /// instead of waiting when the GET lane of a shard is full.
    pub fn try_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Ticket<Vec<Option<Chunk>>>> {
        self.try_submit(Op::Get(GetMode::All), Priority::Get, keys, chunks)
    }

    /// [`exists_async`](Self::exists_async), or [`Error::Busy`] at once when the PEEK
    /// lane of a shard is full.
    pub fn try_exists<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Ticket<Vec<bool>>> {
        self.try_submit(Op::Exists { prefix: false }, Priority::Peek, keys, bools)
    }

    /// [`delete_async`](Self::delete_async), or [`Error::Busy`] at once when the PUT
    /// lane of a shard is full.
    pub fn try_delete<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Ticket<usize>> {
        self.try_submit(Op::Delete, Priority::Put, keys, count)
    }

    /// [`contains_prefix_async`](Self::contains_prefix_async), or [`Error::Busy`] at
    /// once when the PEEK lane of a shard is full.
    pub fn try_contains_prefix<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Ticket<usize>> {
        self.try_submit(Op::Exists { prefix: true }, Priority::Peek, keys, count)
    }

    /// [`prefetch_async`](Self::prefetch_async), or [`Error::Busy`] at once when the
    /// PREFETCH lane of a shard is full.
    pub fn try_prefetch<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Ticket<Vec<Chunk>>> {
        self.try_submit(
            Op::Get(GetMode::Prefix),
            Priority::Prefetch,
            keys,
            prefix_chunks,
        )
    }
}

fn prefix_chunks(o: Output) -> Result<Vec<Chunk>> {
    match o {
        Output::Chunks(c) => Ok(c.into_iter().flatten().collect()),
        _ => Err(Error::Closed),
    }
}
