//! One request per operation. [`Engine::get`], [`Engine::put`], [`Engine::exists`],
//! [`Engine::contains_prefix`], [`Engine::delete`], [`Engine::prefetch`] and
//! [`Engine::metadata`] each return a request; the memory form, the priority class and
//! how to wait are choices on it, and a terminal sends it:
//!
//! | terminal | returns | on a full lane |
//! |---|---|---|
//! | `.wait()` | the answer | waits for space (blocks the caller's thread) |
//! | `.submit()` (or `.await` the request) | a ticket (`Ticket`, `CallerTicket`) | never blocks: the parts that find no space stay with the ticket, which pushes them when polled or waited on |
//! | `.try_submit()` | a ticket | fails at once with [`Error::Busy`] |
//!
//! Memory forms: a get returns owned [`Chunk`]s, or reads into the caller's memory:
//! owned `Vec<u8>`s ([`Get::into_vecs`]), borrowed slices ([`Get::into_slices`],
//! blocking only) or lent buffers that come back with the ticket ([`Get::into_bufs`]).
//! A put takes owned [`PutChunk`]s, borrowed [`PutRef`]s (blocking only) or lent
//! [`PutOwned`]s (their buffers come back with the ticket).
//!
//! ```no_run
//! use slotline::{Engine, Priority, PutChunk};
//! # fn f(engine: &Engine) -> slotline::Result<()> {
//! engine.put(vec![PutChunk::new("k", vec![1u8, 2, 3], None)]).wait()?;
//! let got = engine.get(&["k"]).wait()?;
//! let ticket = engine.get(&["k"]).priority(Priority::Prefetch).submit();
//! let later = ticket.wait()?;
//! # Ok(()) }
//! ```

use std::future::IntoFuture;

use crate::batch::{Chunk, ChunkInfo, GetInto, GetMode, Op, Output, PutChunk, Ticket};
use crate::error::{Error, Result};
use crate::layout::RemoteMetadata;
use crate::mem::{with_lent_mut, with_lent_ref, CallerBuf, CallerBufMut, Mem};
use crate::priority::Priority;

use super::caller::{GetIntoTicket, PutOwned, PutRef, PutTicket};
use super::submit::Submit;
use super::ticket::Returned;
use super::{bools, chunks, count, Engine};

impl Engine {
    /// Reads chunks, in the caller's order; misses (including evicted and corrupt
    /// chunks) are `None`. Class GET unless [`Get::priority`] says otherwise; read into
    /// caller memory with [`Get::into_vecs`], [`Get::into_slices`], [`Get::into_bufs`].
    pub fn get<'e, 'k, K: AsRef<[u8]>>(&'e self, keys: &'k [K]) -> Get<'e, 'k, K> {
        Get {
            engine: self,
            keys,
            class: Priority::Get,
        }
    }

    /// Writes chunks as pipelined SETs, payload first, then metadata, with the
    /// configured TTL; done once every write is acknowledged. Takes owned
    /// [`PutChunk`]s, borrowed [`PutRef`]s or lent [`PutOwned`]s. Class PUT.
    pub fn put<P: IntoPut>(&self, chunks: P) -> Put<'_, P::Body> {
        Put {
            engine: self,
            body: chunks.into_body(),
            class: Priority::Put,
        }
    }

    /// Whether each chunk exists (its metadata key, or the key itself in `raw`).
    /// Class PEEK.
    pub fn exists<'e, 'k, K: AsRef<[u8]>>(&'e self, keys: &'k [K]) -> Keys<'e, 'k, K, Vec<bool>> {
        self.keys_request(keys, Op::Exists { prefix: false }, Priority::Peek, bools)
    }

    /// How many chunks exist consecutively from the first key (LMCache's
    /// `batched_async_contains`). Class PEEK.
    pub fn contains_prefix<'e, 'k, K: AsRef<[u8]>>(
        &'e self,
        keys: &'k [K],
    ) -> Keys<'e, 'k, K, usize> {
        self.keys_request(keys, Op::Exists { prefix: true }, Priority::Peek, count)
    }

    /// Deletes chunks (both keys in the two-key layouts); answers how many existed.
    /// Class PUT.
    pub fn delete<'e, 'k, K: AsRef<[u8]>>(&'e self, keys: &'k [K]) -> Keys<'e, 'k, K, usize> {
        self.keys_request(keys, Op::Delete, Priority::Put, count)
    }

    /// The chunks of the hit prefix: stops at the first miss (LMCache's
    /// `batched_get_non_blocking`). Class PREFETCH.
    pub fn prefetch<'e, 'k, K: AsRef<[u8]>>(
        &'e self,
        keys: &'k [K],
    ) -> Keys<'e, 'k, K, Vec<Chunk>> {
        self.keys_request(keys, Op::Get(GetMode::Prefix), Priority::Prefetch, prefix)
    }

    /// Reads only the stored metadata of each chunk (its metadata key, not the
    /// payload): what a caller needs to allocate the destination before reading the
    /// payload into it with [`Get::into_bufs`]. A missing or undecodable metadata value
    /// is `None`; the `raw` layout stores no metadata: [`Error::Invalid`]. Class GET.
    pub fn metadata<'e, 'k, K: AsRef<[u8]>>(&'e self, keys: &'k [K]) -> Metadata<'e, 'k, K> {
        Metadata {
            engine: self,
            keys,
            class: Priority::Get,
        }
    }

    fn keys_request<'e, 'k, K: AsRef<[u8]>, T>(
        &'e self,
        keys: &'k [K],
        op: Op,
        class: Priority,
        convert: fn(Output) -> Result<T>,
    ) -> Keys<'e, 'k, K, T> {
        Keys {
            engine: self,
            keys,
            op,
            class,
            convert,
        }
    }

    /// Submits `keys` with `Submit::Try`: a full lane is [`Error::Busy`] at once.
    fn try_ticket<K: AsRef<[u8]>, T>(
        &self,
        op: Op,
        class: Priority,
        keys: &[K],
        bufs: Vec<Mem>,
        convert: fn(Output) -> Result<T>,
    ) -> Result<Ticket<T>> {
        let b = self.submit_keys(self.req(op, class, Submit::Try), keys, bufs)?;
        Ok(Ticket::new(b, convert))
    }
}

fn prefix(o: Output) -> Result<Vec<Chunk>> {
    match o {
        Output::Chunks(c) => Ok(c.into_iter().flatten().collect()),
        _ => Err(Error::Closed),
    }
}

fn into_vecs(o: Output) -> Result<GetInto> {
    match o {
        Output::Into(b, i) => Ok((b.into_iter().map(Mem::into_vec).collect(), i)),
        _ => Err(Error::Closed),
    }
}

/// Implements `IntoFuture` (`.await` the request) as [`submit`](Get::submit).
macro_rules! await_as_submit {
    ($ty:ty, $out:ty, [$($gen:tt)*]) => {
        impl<$($gen)*> IntoFuture for $ty {
            type Output = Result<$out>;
            type IntoFuture = Ticket<$out>;
            fn into_future(self) -> Ticket<$out> {
                // `submit` answers a ticket; the ticket is the future.
                self.submit()
            }
        }
    };
}

// ----- get -----

/// A read of whole chunks ([`Engine::get`]); choose a memory form with
/// [`into_vecs`](Self::into_vecs), [`into_slices`](Self::into_slices),
/// [`into_bufs`](Self::into_bufs).
#[must_use = "a request does nothing until .wait(), .submit() or .try_submit()"]
pub struct Get<'e, 'k, K> {
    engine: &'e Engine,
    keys: &'k [K],
    class: Priority,
}

impl<'e, 'k, K: AsRef<[u8]>> Get<'e, 'k, K> {
    /// The priority class (lane and deadline budget) to send at; default GET.
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }

    /// Sends the request and blocks until the answer.
    pub fn wait(self) -> Result<Vec<Option<Chunk>>> {
        self.submit().wait()
    }

    /// Sends the request without ever blocking; the ticket is a future (or call
    /// `.wait()` on it).
    pub fn submit(self) -> Ticket<Vec<Option<Chunk>>> {
        let op = Op::Get(GetMode::All);
        self.engine
            .ticket(op, self.class, self.keys, Vec::new(), chunks)
    }

    /// Like [`submit`](Self::submit), but fails at once with [`Error::Busy`] when the
    /// lane of a shard is full.
    pub fn try_submit(self) -> Result<Ticket<Vec<Option<Chunk>>>> {
        let op = Op::Get(GetMode::All);
        self.engine
            .try_ticket(op, self.class, self.keys, Vec::new(), chunks)
    }

    /// Reads each payload into the caller's `Vec` (its length is the space offered;
    /// a larger value is a miss). Answers the buffers and, per key, the bytes written
    /// and the metadata. If the request times out, buffers still being written by a
    /// connection are not returned (they are freed once the connection lets go).
    pub fn into_vecs(self, bufs: Vec<Vec<u8>>) -> GetVecs<'e, 'k, K> {
        GetVecs {
            engine: self.engine,
            keys: self.keys,
            bufs,
            class: self.class,
        }
    }

    /// Reads each key's payload straight into its slice. A stored value whose length
    /// differs from its slice is a miss (`None`) and leaves the slice untouched; a hit
    /// fills the slice whole. Blocking only: [`GetSlices::wait`] returns when no part of
    /// the engine or the kernel may write into `bufs` any more (after a time-out or a
    /// lost connection too: it then waits for the in-flight receive to complete or be
    /// cancelled).
    pub fn into_slices<'b, 's>(self, bufs: &'b mut [&'s mut [u8]]) -> GetSlices<'e, 'k, 'b, 's, K> {
        GetSlices {
            engine: self.engine,
            keys: self.keys,
            bufs,
            class: self.class,
        }
    }

    /// Reads each key's payload straight into a buffer lent to the engine, under the
    /// rules of [`into_slices`](Self::into_slices); the ticket completes once the
    /// answer is in and every buffer is back.
    pub fn into_bufs(self, bufs: Vec<Box<dyn CallerBufMut>>) -> GetBufs<'e, 'k, K> {
        GetBufs {
            engine: self.engine,
            keys: self.keys,
            bufs,
            class: self.class,
        }
    }
}

await_as_submit!(Get<'_, '_, K>, Vec<Option<Chunk>>, [K: AsRef<[u8]>]);

/// A read into owned `Vec<u8>`s ([`Get::into_vecs`]).
#[must_use = "a request does nothing until .wait(), .submit() or .try_submit()"]
pub struct GetVecs<'e, 'k, K> {
    engine: &'e Engine,
    keys: &'k [K],
    bufs: Vec<Vec<u8>>,
    class: Priority,
}

impl<'e, 'k, K: AsRef<[u8]>> GetVecs<'e, 'k, K> {
    /// The priority class to send at; default GET.
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }

    /// Sends the request and blocks until the answer.
    pub fn wait(self) -> Result<GetInto> {
        self.submit().wait()
    }

    /// Sends the request without ever blocking.
    pub fn submit(self) -> Ticket<GetInto> {
        match self.checked() {
            Ok((e, keys, bufs, class)) => {
                e.ticket(Op::Get(GetMode::Into), class, keys, bufs, into_vecs)
            }
            Err(err) => Ticket::ready(Err(err)),
        }
    }

    /// Like [`submit`](Self::submit), but fails at once with [`Error::Busy`] when the
    /// lane of a shard is full.
    pub fn try_submit(self) -> Result<Ticket<GetInto>> {
        let (e, keys, bufs, class) = self.checked()?;
        e.try_ticket(Op::Get(GetMode::Into), class, keys, bufs, into_vecs)
    }

    #[allow(clippy::type_complexity)]
    fn checked(self) -> Result<(&'e Engine, &'k [K], Vec<Mem>, Priority)> {
        if self.bufs.len() != self.keys.len() {
            return Err(Error::Invalid(format!(
                "get_into: {} keys but {} buffers",
                self.keys.len(),
                self.bufs.len()
            )));
        }
        let bufs = self.bufs.into_iter().map(Mem::Own).collect();
        Ok((self.engine, self.keys, bufs, self.class))
    }
}

await_as_submit!(GetVecs<'_, '_, K>, GetInto, [K: AsRef<[u8]>]);

/// A read into borrowed slices ([`Get::into_slices`]); blocking only.
#[must_use = "a request does nothing until .wait()"]
pub struct GetSlices<'e, 'k, 'b, 's, K> {
    engine: &'e Engine,
    keys: &'k [K],
    bufs: &'b mut [&'s mut [u8]],
    class: Priority,
}

impl<K: AsRef<[u8]>> GetSlices<'_, '_, '_, '_, K> {
    /// The priority class to send at; default GET.
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }

    /// Sends the request and blocks until the answer is in and nothing holds the
    /// slices any more; per key, what landed.
    pub fn wait(self) -> Result<Vec<Option<ChunkInfo>>> {
        let GetSlices {
            engine,
            keys,
            bufs,
            class,
        } = self;
        if keys.len() != bufs.len() {
            return Err(super::caller::mismatch(keys.len(), bufs.len()));
        }
        with_lent_mut(bufs, |owners| {
            engine.start_get_into_bufs(keys, owners, class, Submit::Wait)
        })
    }
}

/// A read into lent buffers ([`Get::into_bufs`]); its ticket completes with them.
#[must_use = "a request does nothing until .wait(), .submit() or .try_submit()"]
pub struct GetBufs<'e, 'k, K> {
    engine: &'e Engine,
    keys: &'k [K],
    bufs: Vec<Box<dyn CallerBufMut>>,
    class: Priority,
}

impl<K: AsRef<[u8]>> GetBufs<'_, '_, K> {
    /// The priority class to send at; default GET.
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }

    /// Sends the request and blocks until the answer is in and every buffer is back.
    pub fn wait(self) -> Returned<Vec<Option<ChunkInfo>>, dyn CallerBufMut> {
        self.submit().wait()
    }

    /// Sends the request without ever blocking.
    pub fn submit(self) -> GetIntoTicket {
        self.engine
            .start_get_into_bufs(self.keys, self.bufs, self.class, Submit::Defer)
    }

    /// Like [`submit`](Self::submit), but a full lane fails the request at once with
    /// [`Error::Busy`], through the ticket (which hands the buffers back).
    pub fn try_submit(self) -> GetIntoTicket {
        self.engine
            .start_get_into_bufs(self.keys, self.bufs, self.class, Submit::Try)
    }
}

impl<K: AsRef<[u8]>> IntoFuture for GetBufs<'_, '_, K> {
    type Output = Returned<Vec<Option<ChunkInfo>>, dyn CallerBufMut>;
    type IntoFuture = GetIntoTicket;
    fn into_future(self) -> GetIntoTicket {
        self.submit()
    }
}

// ----- checks, deletes, prefetch -----

/// A request on keys alone: [`Engine::exists`], [`Engine::contains_prefix`],
/// [`Engine::delete`], [`Engine::prefetch`]; answers `T`.
#[must_use = "a request does nothing until .wait(), .submit() or .try_submit()"]
pub struct Keys<'e, 'k, K, T> {
    engine: &'e Engine,
    keys: &'k [K],
    op: Op,
    class: Priority,
    convert: fn(Output) -> Result<T>,
}

impl<K: AsRef<[u8]>, T> Keys<'_, '_, K, T> {
    /// The priority class to send at (default: the operation's own class).
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }

    /// Sends the request and blocks until the answer.
    pub fn wait(self) -> Result<T> {
        self.submit().wait()
    }

    /// Sends the request without ever blocking.
    pub fn submit(self) -> Ticket<T> {
        self.engine
            .ticket(self.op, self.class, self.keys, Vec::new(), self.convert)
    }

    /// Like [`submit`](Self::submit), but fails at once with [`Error::Busy`] when the
    /// lane of a shard is full.
    pub fn try_submit(self) -> Result<Ticket<T>> {
        self.engine
            .try_ticket(self.op, self.class, self.keys, Vec::new(), self.convert)
    }
}

await_as_submit!(Keys<'_, '_, K, T>, T, [K: AsRef<[u8]>, T]);

/// A read of chunks' metadata ([`Engine::metadata`]).
#[must_use = "a request does nothing until .wait(), .submit() or .try_submit()"]
pub struct Metadata<'e, 'k, K> {
    engine: &'e Engine,
    keys: &'k [K],
    class: Priority,
}

impl<K: AsRef<[u8]>> Metadata<'_, '_, K> {
    /// The priority class to send at; default GET.
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }

    /// Sends the request and blocks until the answer.
    pub fn wait(self) -> Result<Vec<Option<RemoteMetadata>>> {
        self.submit().wait()
    }

    /// Sends the request. Unlike the other requests' `submit`, this one waits for lane
    /// space (as `get_metadata_async` did); use [`try_submit`](Self::try_submit) where
    /// the caller must never block.
    pub fn submit(self) -> Ticket<Vec<Option<RemoteMetadata>>> {
        self.engine
            .start_metadata(self.keys, self.class, Submit::Wait)
    }

    /// Like [`submit`](Self::submit), but fails at once with [`Error::Busy`] (through
    /// the ticket) when the lane of a shard is full.
    pub fn try_submit(self) -> Ticket<Vec<Option<RemoteMetadata>>> {
        self.engine
            .start_metadata(self.keys, self.class, Submit::Try)
    }
}

await_as_submit!(Metadata<'_, '_, K>, Vec<Option<RemoteMetadata>>, [K: AsRef<[u8]>]);

// ----- put -----

/// What [`Engine::put`] takes: owned [`PutChunk`]s, borrowed [`PutRef`]s (a slice,
/// array or `Vec` of them, by reference) or lent [`PutOwned`]s.
pub trait IntoPut: sealed::Sealed {
    /// The memory form the request carries.
    type Body;
    #[doc(hidden)]
    fn into_body(self) -> Self::Body;
}

mod sealed {
    pub trait Sealed {}
}

impl sealed::Sealed for Vec<PutChunk> {}
impl IntoPut for Vec<PutChunk> {
    type Body = Vec<PutChunk>;
    fn into_body(self) -> Self::Body {
        self
    }
}

impl sealed::Sealed for Vec<PutOwned> {}
impl IntoPut for Vec<PutOwned> {
    type Body = Vec<PutOwned>;
    fn into_body(self) -> Self::Body {
        self
    }
}

impl<'a, 'b> sealed::Sealed for &'a [PutRef<'b>] {}
impl<'a, 'b> IntoPut for &'a [PutRef<'b>] {
    type Body = &'a [PutRef<'b>];
    fn into_body(self) -> Self::Body {
        self
    }
}

impl<'a, 'b> sealed::Sealed for &'a Vec<PutRef<'b>> {}
impl<'a, 'b> IntoPut for &'a Vec<PutRef<'b>> {
    type Body = &'a [PutRef<'b>];
    fn into_body(self) -> Self::Body {
        self
    }
}

impl<'a, 'b, const N: usize> sealed::Sealed for &'a [PutRef<'b>; N] {}
impl<'a, 'b, const N: usize> IntoPut for &'a [PutRef<'b>; N] {
    type Body = &'a [PutRef<'b>];
    fn into_body(self) -> Self::Body {
        self
    }
}

/// A write ([`Engine::put`]); its terminals depend on the memory form `B`.
#[must_use = "a request does nothing until .wait(), .submit() or .try_submit()"]
pub struct Put<'e, B> {
    engine: &'e Engine,
    body: B,
    class: Priority,
}

impl<B> Put<'_, B> {
    /// The priority class to send at; default PUT.
    pub fn priority(mut self, class: Priority) -> Self {
        self.class = class;
        self
    }
}

impl Put<'_, Vec<PutChunk>> {
    /// Sends the request and blocks until every write is acknowledged.
    pub fn wait(self) -> Result<()> {
        self.submit().wait()
    }

    /// Sends the request without ever blocking.
    pub fn submit(self) -> Ticket<()> {
        match self
            .engine
            .put_op(self.body, self.class)
            .and_then(|plan| self.engine.start_put(plan, Submit::Defer))
        {
            Ok(t) => t,
            Err(e) => Ticket::ready(Err(e)),
        }
    }

    /// Like [`submit`](Self::submit), but fails at once with [`Error::Busy`] when the
    /// PUT lane of a shard is full.
    pub fn try_submit(self) -> Result<Ticket<()>> {
        let plan = self.engine.put_op(self.body, self.class)?;
        self.engine.start_put(plan, Submit::Try)
    }
}

impl IntoFuture for Put<'_, Vec<PutChunk>> {
    type Output = Result<()>;
    type IntoFuture = Ticket<()>;
    fn into_future(self) -> Ticket<()> {
        self.submit()
    }
}

impl Put<'_, &[PutRef<'_>]> {
    /// Sends the request straight from the borrowed memory and blocks until every
    /// write is acknowledged and no part of the engine or the kernel references the
    /// chunks any more (after a failure too: it then waits for the in-flight send to
    /// complete or be cancelled). Blocking only.
    pub fn wait(self) -> Result<()> {
        let Put {
            engine,
            body,
            class,
        } = self;
        let data: Vec<&[u8]> = body.iter().map(|c| c.data).collect();
        with_lent_ref(&data, |owners| {
            let owned = body
                .iter()
                .zip(owners)
                .map(|(c, o)| PutOwned {
                    key: c.key.to_vec(),
                    data: o,
                    meta: c.meta.cloned(),
                })
                .collect();
            engine.start_put_from(owned, class, Submit::Wait)
        })
    }
}

impl Put<'_, Vec<PutOwned>> {
    /// Sends the request and blocks until the writes are acknowledged (or failed) and
    /// every buffer is back.
    pub fn wait(self) -> Returned<(), dyn CallerBuf> {
        self.submit().wait()
    }

    /// Sends the request without ever blocking; the ticket completes once the writes
    /// are acknowledged (or failed) and every buffer is back.
    pub fn submit(self) -> PutTicket {
        self.engine
            .start_put_from(self.body, self.class, Submit::Defer)
    }

    /// Like [`submit`](Self::submit), but a full PUT lane fails the request at once
    /// with [`Error::Busy`], through the ticket (which hands the buffers back).
    pub fn try_submit(self) -> PutTicket {
        self.engine
            .start_put_from(self.body, self.class, Submit::Try)
    }
}

impl IntoFuture for Put<'_, Vec<PutOwned>> {
    type Output = Returned<(), dyn CallerBuf>;
    type IntoFuture = PutTicket;
    fn into_future(self) -> PutTicket {
        self.submit()
    }
}

impl<B> std::fmt::Debug for Put<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Put({:?})", self.class)
    }
}
