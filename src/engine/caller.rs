//! Requests on the caller's memory: puts sent straight from the caller's buffers and
//! reads received straight into them, with no copy of the payload in between.
//!
//! Two forms each. The blocking ones borrow (`&[u8]`, `&mut [u8]`) and return only
//! when the engine (and the kernel) no longer hold the memory — on a time-out or a lost
//! connection too: they then wait for the in-flight receive or send to complete or be
//! cancelled, never copy. The async ones take owned buffers ([`CallerBuf`],
//! [`CallerBufMut`]) and hand them back with the completion ([`CallerTicket`]), which
//! is delivered only once every buffer is back. See `crate::mem`.

use crate::batch::{ChunkInfo, GetMode, Op, Output, PutChunk, Ticket};
use crate::error::{Error, Result};
use crate::layout::{KeyLayout, KeyScheme, RemoteMetadata};
use crate::mem::{CallerBuf, CallerBufMut, Mem, Tracked, TrackedRead};
use crate::priority::Priority;
use crate::region::{OwnedRegion, Region};

use super::submit::{Req, Submit};
use super::ticket::{self, CallerTicket};
use super::Engine;

/// One chunk to write from borrowed memory ([`Engine::put`]).
#[derive(Debug, Clone, Copy)]
pub struct PutRef<'a> {
    /// LMCache's key string.
    pub key: &'a [u8],
    /// The payload, sent from this memory without a copy.
    pub data: &'a [u8],
    /// Metadata to store beside it (see [`PutChunk::meta`]).
    pub meta: Option<&'a RemoteMetadata>,
}

/// One chunk to write from a buffer the engine holds until completion
/// ([`Engine::put`]).
pub struct PutOwned {
    /// LMCache's key string.
    pub key: Vec<u8>,
    /// The payload, sent from this buffer without a copy and handed back with the
    /// completion.
    pub data: Box<dyn CallerBuf>,
    /// Metadata to store beside it (see [`PutChunk::meta`]).
    pub meta: Option<RemoteMetadata>,
}

impl std::fmt::Debug for PutOwned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PutOwned({}, {} bytes)",
            String::from_utf8_lossy(&self.key),
            self.data.as_slice().len()
        )
    }
}

/// A put on caller buffers; completes with them.
pub type PutTicket = CallerTicket<(), dyn CallerBuf>;
/// A read into caller buffers; completes with them and, per key, what landed.
pub type GetIntoTicket = CallerTicket<Vec<Option<ChunkInfo>>, dyn CallerBufMut>;

impl Engine {
    /// Registers a caller buffer as a region (e.g. LMCache's pinned CPU pool), once
    /// with every shard's io_uring: payloads sent from or read into slices of it
    /// ([`Engine::put`] of [`PutRef`]s, [`Get::into_slices`](super::request::Get::into_slices),
    /// the lent-buffer requests with owners pointing into it) then go through the ring's
    /// fixed buffers (stats: `sent_fixed_bytes`, `recv_fixed_bytes`). The region owns
    /// the buffer until [`OwnedRegion::into_inner`] or its drop, which wait until no
    /// operation in flight uses it.
    ///
    /// Where the kernel refuses to pin the memory (RLIMIT_MEMLOCK) the region works
    /// as plain memory (counted in `region_fallbacks`); on the epoll backend it is a
    /// marker only. Fails only on an empty buffer or one overlapping another region.
    pub fn register_region<B: CallerBufMut>(&self, buf: B) -> Result<OwnedRegion<B>> {
        crate::region::register_owned(&self.inner.regions, buf)
    }

    /// Registers `len` bytes at `ptr` as a region, like
    /// [`register_region`](Self::register_region) for memory the caller manages
    /// itself (a pool allocated outside Rust).
    ///
    /// # Safety
    ///
    /// The memory must stay allocated, mapped to the same pages and not be moved
    /// (`mremap`, `munmap`, `madvise(MADV_DONTNEED)`, freeing) until the returned
    /// [`Region`] is dropped; the drop returns once no ring holds the region. Reads and
    /// writes of the memory through the engine still go through slices or
    /// [`CallerBuf`]/[`CallerBufMut`] owners, under their own rules.
    pub unsafe fn register_region_raw(&self, ptr: *mut u8, len: usize) -> Result<Region> {
        crate::region::register_raw(&self.inner.regions, ptr as usize, len)
    }

    /// Writes chunks from lent buffers; the ticket completes once the writes are
    /// acknowledged (or failed) and every buffer is back.
    pub(super) fn start_put_from(
        &self,
        chunks: Vec<PutOwned>,
        class: Priority,
        mode: Submit,
    ) -> PutTicket {
        let mut keys = Vec::with_capacity(chunks.len());
        let mut metas = Vec::with_capacity(chunks.len());
        let mut bufs = Vec::with_capacity(chunks.len());
        for c in chunks {
            keys.push(c.key);
            metas.push(c.meta);
            bufs.push(c.data);
        }
        let (home, data) = TrackedRead::wrap(bufs);
        let puts = keys
            .into_iter()
            .zip(data)
            .zip(metas)
            .map(|((key, data), meta)| PutChunk { key, data, meta })
            .collect();
        let ticket = match self
            .put_op(puts, class)
            .and_then(|plan| self.start_put(plan, mode))
        {
            Ok(t) => t,
            Err(e) => Ticket::ready(Err(e)),
        };
        CallerTicket::new(ticket, home).bounded(self.lend_bound(), self.inner.metrics.clone())
    }

    /// Reads each key's payload straight into its lent buffer; the ticket completes
    /// once the answer is in and every buffer is back.
    pub(super) fn start_get_into_bufs<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        bufs: Vec<Box<dyn CallerBufMut>>,
        class: Priority,
        mode: Submit,
    ) -> GetIntoTicket {
        let n = bufs.len();
        let (home, tracked) = Tracked::wrap(bufs);
        if keys.len() != n {
            drop(tracked);
            return CallerTicket::new(Ticket::ready(Err(mismatch(keys.len(), n))), home);
        }
        let mem: Vec<Mem> = tracked.into_iter().map(Mem::Caller).collect();
        // `submit_parts` keeps `Submit::Defer` (never waits); `submit_keys` would
        // turn it into a wait.
        let ticket =
            match self.submit_parts(self.req(Op::Get(GetMode::Into), class, mode), keys, mem) {
                Ok((b, unpushed)) => Ticket::new(b, ticket::infos).with_unpushed(unpushed),
                Err(e) => Ticket::ready(Err(e)),
            };
        CallerTicket::new(ticket, home).bounded(self.lend_bound(), self.inner.metrics.clone())
    }
}

impl Engine {
    /// Reads only the stored metadata of each chunk (its metadata key, not the
    /// payload), at `class`: what a caller needs to allocate the destination before
    /// reading the payload into it with [`Get::into_bufs`](super::request::Get::into_bufs).
    /// A missing or undecodable metadata value is `None`. The `raw` layout stores no
    /// metadata: [`Error::Invalid`].
    pub(super) fn start_metadata<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        class: Priority,
        mode: Submit,
    ) -> Ticket<Vec<Option<RemoteMetadata>>> {
        let layout = &self.inner.keys;
        let meta_keys: Option<Vec<Vec<u8>>> = keys
            .iter()
            .map(|k| layout.metadata_key(k.as_ref()))
            .collect();
        let Some(meta_keys) = meta_keys else {
            let e = "the raw layout stores no metadata".to_string();
            return Ticket::ready(Err(Error::Invalid(e)));
        };
        // The metadata keys as plain keys: routed by their own slot, which is the
        // chunk's (same key string, or the same hash tag).
        match self.submit_keys(
            Req {
                op: Op::Get(GetMode::All),
                class,
                layout: KeyScheme::plain(KeyLayout::Raw),
                mode,
                target: None,
            },
            &meta_keys,
            Vec::new(),
        ) {
            Ok(b) => Ticket::new(b, decoded_metas),
            Err(e) => Ticket::ready(Err(e)),
        }
    }
}

fn decoded_metas(o: Output) -> Result<Vec<Option<RemoteMetadata>>> {
    match o {
        Output::Chunks(c) => Ok(c
            .into_iter()
            .map(|c| c.and_then(|c| RemoteMetadata::decode(&c.data).ok()))
            .collect()),
        _ => Err(Error::Closed),
    }
}

impl Engine {
    /// How long a [`CallerTicket`] waits for its buffers once its answer is in (see
    /// [`CallerTicket::wait`]).
    fn lend_bound(&self) -> std::time::Duration {
        self.inner.cfg.request_timeout + ticket::KERNEL_GRACE
    }
}

pub(super) fn mismatch(keys: usize, bufs: usize) -> Error {
    Error::Invalid(format!("{keys} keys but {bufs} buffers"))
}
