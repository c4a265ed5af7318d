//! A batch is one caller request (get, put, exists, ...) on its way through the shards.
//!
//! The engine splits a batch into parts, one per shard that owns some of its keys. Each
//! part resolves "units" (one Redis key each: a chunk's metadata key or payload key) and
//! reports them back here. When the last part reports, the batch applies LMCache's read
//! rules (`Batch::finish`) and wakes the caller, who waits either blocking
//! ([`Ticket::wait`]) or as a future under any executor.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{show_key, Error, Result};
use crate::layout::{KeyScheme, RemoteMetadata};
use crate::mem::Mem;
use crate::metrics::Metrics;
use crate::priority::Priority;
use crate::resp::Value;

mod chunk;
mod request;
mod ticket;
mod warnings;
pub use chunk::Chunk;
pub(crate) use request::{clone_err, SubmitPart, UnitSpec};
pub use ticket::Ticket;
pub(crate) use ticket::Unpushed;
use warnings::KeyWarnings;

/// What `get_into` found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Payload bytes written at the start of the caller's buffer.
    pub len: usize,
    /// The decoded metadata (`None` in the `raw` layout).
    pub meta: Option<RemoteMetadata>,
}

/// What `get_into` returns: the caller's buffers, and per key what landed in it.
pub type GetInto = (Vec<Vec<u8>>, Vec<Option<ChunkInfo>>);

/// A hit after the read rules: metadata, the buffer holding the payload, its length.
type Hit = (Option<RemoteMetadata>, Mem, usize);

/// One chunk to write.
#[derive(Debug, Clone)]
pub struct PutChunk {
    /// LMCache's key string `K` (the layout derives the Redis keys from it).
    pub key: Vec<u8>,
    /// The payload; sent from this buffer without a copy.
    pub data: Bytes,
    /// Metadata to store beside the payload. `None` in the `raw` layout; in the other
    /// layouts `None` stores BINARY metadata of the payload's length.
    pub meta: Option<RemoteMetadata>,
}

impl PutChunk {
    /// A chunk with metadata.
    pub fn new(
        key: impl Into<Vec<u8>>,
        data: impl Into<Bytes>,
        meta: Option<RemoteMetadata>,
    ) -> Self {
        PutChunk {
            key: key.into(),
            data: data.into(),
            meta,
        }
    }
}

/// All keys of a batch in one allocation.
#[derive(Debug, Default)]
pub(crate) struct KeyArena {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyArena {
    pub fn from_keys<K: AsRef<[u8]>>(keys: &[K]) -> KeyArena {
        let total = keys.iter().map(|k| k.as_ref().len()).sum();
        let mut a = KeyArena {
            bytes: Vec::with_capacity(total),
            ends: Vec::with_capacity(keys.len()),
        };
        for k in keys {
            a.bytes.extend_from_slice(k.as_ref());
            a.ends.push(a.bytes.len());
        }
        a
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Appends an entry written by `f` into the arena's bytes.
    fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    /// Entry `i`, or empty when there is none.
    fn get_or_empty(&self, i: usize) -> &[u8] {
        if i < self.ends.len() {
            self.get(i)
        } else {
            &[]
        }
    }
}

/// Which of a chunk's Redis keys a unit stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Meta = 0,
    Payload = 1,
}

/// How a read batch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GetMode {
    /// Every chunk, misses as None.
    All,
    /// Only the hit prefix (LMCache's batched_get_non_blocking).
    Prefix,
    /// Into caller buffers.
    Into,
}

/// What a batch does.
#[derive(Debug)]
pub(crate) enum Op {
    Get(GetMode),
    Exists {
        prefix: bool,
    },
    Delete,
    /// `only`: write just the payloads or just the metadata (a cluster put in two
    /// phases), or both when `None`.
    Put {
        data: Vec<Bytes>,
        metas: Vec<Vec<u8>>,
        only: Option<Role>,
    },
    Command {
        args: Vec<Vec<u8>>,
    },
}

/// The state of one unit once resolved.
#[derive(Debug, Default)]
pub(crate) enum Slot {
    #[default]
    Pending,
    Nil,
    /// `len` bytes at the start of `buf`.
    Data {
        buf: Mem,
        len: usize,
    },
    Int(i64),
    Ok,
    Value(Value),
    TooLarge(usize),
    Err(Error),
    /// Handed to another shard, which reports it in a part of its own.
    Forwarded,
}

/// What the caller gets.
#[derive(Debug)]
pub(crate) enum Output {
    Chunks(Vec<Option<Chunk>>),
    Into(Vec<Mem>, Vec<Option<ChunkInfo>>),
    Bools(Vec<bool>),
    Count(usize),
    Unit,
    Value(Value),
}

struct State {
    slots: Vec<Slot>,
    bufs: Vec<Option<Mem>>,
    parts_left: usize,
    output: Option<Result<Output>>,
    waker: Option<Waker>,
    /// Runs once when the batch completes, on the completing thread, without the lock.
    on_done: Option<OnDone>,
}

/// A completion hook: told whether the batch succeeded (the output stays for the ticket).
pub(crate) type OnDone = Box<dyn FnOnce(Result<()>) + Send>;

/// Something the batch asks the engine to do after it finished (never blocking).
pub(crate) trait FollowUp: Send + Sync {
    /// Deletes stale metadata keys (metadata present, payload evicted).
    fn delete_stale(&self, layout: KeyScheme, keys: Vec<Vec<u8>>);
}

/// A request in flight. Shared by the caller and the shards working on it.
pub(crate) struct Batch {
    pub op: Op,
    pub class: Priority,
    pub layout: KeyScheme,
    pub keys: KeyArena,
    /// The Redis keys of every chunk, derived once at submission: entry
    /// `chunk * 2 + role` (empty for a role the layout does not use).
    redis_keys: KeyArena,
    pub ttl: Option<u64>,
    pub started: Instant,
    pub deadline: Instant,
    pub metrics: Arc<Metrics>,
    /// Weak: a batch finishing on a shard thread must never be what drops the engine.
    follow_up: Option<Weak<dyn FollowUp>>,
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Batch({:?}, {} keys, {})",
            self.op_name(),
            self.keys.len(),
            self.class
        )
    }
}

pub(crate) struct BatchInit {
    pub op: Op,
    pub class: Priority,
    pub layout: KeyScheme,
    pub keys: KeyArena,
    pub ttl: Option<u64>,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub follow_up: Option<Weak<dyn FollowUp>>,
}

impl Batch {
    pub fn new(init: BatchInit) -> Batch {
        let n = init.keys.len();
        let started = Instant::now();
        // Caller buffers (get_into) come back here by chunk, hit or miss.
        let bufs = if matches!(init.op, Op::Get(GetMode::Into)) {
            (0..n).map(|_| None).collect()
        } else {
            Vec::new()
        };
        let mut redis_keys = KeyArena::default();
        let two = init.layout.keys_per_chunk() == 2;
        for i in 0..n {
            let k = init.keys.get(i);
            redis_keys.push_with(|out| {
                if two {
                    init.layout.write_metadata_key(k, out);
                }
            });
            redis_keys.push_with(|out| init.layout.write_payload_key(k, out));
        }
        Batch {
            op: init.op,
            class: init.class,
            layout: init.layout,
            keys: init.keys,
            redis_keys,
            ttl: init.ttl,
            started,
            deadline: started + init.timeout,
            metrics: init.metrics,
            follow_up: init.follow_up,
            state: Mutex::new(State {
                slots: (0..n * 2).map(|_| Slot::Pending).collect(),
                bufs,
                parts_left: 0,
                output: None,
                waker: None,
                on_done: None,
            }),
            cv: Condvar::new(),
        }
    }

    fn op_name(&self) -> &'static str {
        match self.op {
            Op::Get(GetMode::All) => "get",
            Op::Get(GetMode::Prefix) => "prefetch",
            Op::Get(GetMode::Into) => "get_into",
            Op::Exists { prefix: false } => "exists",
            Op::Exists { prefix: true } => "contains_prefix",
            Op::Delete => "delete",
            Op::Put { .. } => "put",
            Op::Command { .. } => "command",
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The units this batch touches, in caller order: (chunk, role).
    pub fn units(&self) -> Vec<(u32, Role)> {
        let n = self.keys.len() as u32;
        let two = self.layout.keys_per_chunk() == 2;
        match &self.op {
            Op::Command { .. } => vec![(0, Role::Payload)],
            Op::Exists { .. } => (0..n)
                .map(|i| (i, if two { Role::Meta } else { Role::Payload }))
                .collect(),
            Op::Put {
                only: Some(role), ..
            } if two => (0..n).map(|i| (i, *role)).collect(),
            // Payload before metadata: a reader that sees metadata can expect the payload.
            Op::Put { .. } if two => (0..n)
                .flat_map(|i| [(i, Role::Payload), (i, Role::Meta)])
                .collect(),
            Op::Get(_) | Op::Delete if two => (0..n)
                .flat_map(|i| [(i, Role::Meta), (i, Role::Payload)])
                .collect(),
            _ => (0..n).map(|i| (i, Role::Payload)).collect(),
        }
    }

    /// The Redis key of a unit, derived at submission (a raw command's routing key).
    pub fn key(&self, chunk: u32, role: Role) -> &[u8] {
        self.redis_keys
            .get_or_empty(chunk as usize * 2 + role as usize)
    }

    /// Called once per part before submission.
    pub fn set_parts(&self, n: usize) {
        self.lock().parts_left = n;
    }

    /// One more part will report (a unit forwarded to another shard).
    pub fn add_part(&self) {
        self.lock().parts_left += 1;
    }

    /// Takes back [`add_part`](Self::add_part) when the forward did not happen.
    pub fn remove_part(&self) {
        let mut st = self.lock();
        st.parts_left = st.parts_left.saturating_sub(1);
    }

    /// `true` once the caller has its answer (late replies are dropped).
    pub fn is_finished(&self) -> bool {
        self.lock().output.is_some()
    }

    /// A shard reports a finished part: resolved units and returned buffers.
    pub fn part_done(&self, slots: Vec<(u32, Role, Slot)>, bufs: Vec<(u32, Mem)>) {
        let mut st = self.lock();
        for (chunk, role, slot) in slots {
            if matches!(slot, Slot::Forwarded) {
                continue;
            }
            if let Some(s) = st.slots.get_mut(chunk as usize * 2 + role as usize) {
                *s = slot;
            }
        }
        for (chunk, buf) in bufs {
            if let Some(b) = st.bufs.get_mut(chunk as usize) {
                *b = Some(buf);
            }
        }
        st.parts_left = st.parts_left.saturating_sub(1);
        if st.parts_left == 0 && st.output.is_none() {
            let out = self.finish(&mut st);
            self.complete_locked(st, out);
        }
    }

    /// Ends the batch with an error (submission failed, shard gone, time-out).
    pub fn fail(&self, err: Error) {
        let st = self.lock();
        if st.output.is_none() {
            self.complete_locked(st, Err(err));
        }
    }

    fn complete_locked(&self, st: std::sync::MutexGuard<'_, State>, out: Result<Output>) {
        match &out {
            Ok(_) => self
                .metrics
                .op_done(self.class, self.keys.len(), self.started.elapsed()),
            Err(e) => self.metrics.error(e.kind()),
        }
        self.publish(st, out);
    }

    /// Stores the batch's answer, then (outside the lock) wakes waiters and pollers and
    /// runs the completion hook.
    fn publish(&self, mut st: std::sync::MutexGuard<'_, State>, out: Result<Output>) {
        let hook = st.on_done.take().map(|h| (h, outcome(&out)));
        st.output = Some(out);
        let waker = st.waker.take();
        drop(st);
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        if let Some((h, r)) = hook {
            h(r);
        }
    }

    /// Runs `hook` when the batch completes (at once, here, if it already has). The
    /// hook runs on whichever thread completes the batch — usually a shard thread — so
    /// it must not block.
    pub fn on_done(&self, hook: OnDone) {
        let mut st = self.lock();
        match st.output.as_ref().map(outcome) {
            Some(r) => {
                drop(st);
                hook(r);
            }
            None => st.on_done = Some(hook),
        }
    }

    /// Completes a batch that has no units of its own (a relay for a request made of
    /// several batches) with `r`. Counts nothing: the batches that did the work did.
    pub fn settle(&self, r: Result<Output>) {
        let st = self.lock();
        if st.output.is_some() {
            return;
        }
        self.publish(st, r);
    }

    /// Applies LMCache's read rules and builds the caller's answer.
    fn finish(&self, st: &mut State) -> Result<Output> {
        let n = self.keys.len();
        let slots = std::mem::take(&mut st.slots);
        let mut slots: Vec<[Slot; 2]> = {
            let mut it = slots.into_iter();
            (0..n)
                .map(|_| [it.next().unwrap_or_default(), it.next().unwrap_or_default()])
                .collect()
        };
        let key = |i: usize| show_key(self.keys.get(i));
        // The first error decides the answer of all-or-nothing calls; failed keys are
        // logged per kind of error (a count and the first keys, one line per batch)
        // so none is lost silently and a flood of them does not flood the log.
        let mut first_err: Option<Error> = None;
        let mut failed = vec![false; n];
        let mut unknown = vec![false; n];
        let mut warns = KeyWarnings::default();
        for (i, pair) in slots.iter_mut().enumerate() {
            for s in pair.iter_mut().filter(|s| matches!(s, Slot::Err(_))) {
                if let Slot::Err(e) = std::mem::take(s) {
                    warns.add(e.kind(), || key(i), || e.to_string());
                    failed[i] = true;
                    unknown[i] |= matches!(e, Error::OutcomeUnknown { .. });
                    first_err.get_or_insert(e);
                }
            }
        }
        warns.emit(self.op_name());
        let nfailed = failed.iter().filter(|&&f| f).count();
        match &self.op {
            Op::Command { .. } => match (first_err, slots.pop()) {
                (Some(e), _) => Err(e),
                (None, Some([_, Slot::Value(v)])) => Ok(Output::Value(v)),
                _ => Ok(Output::Value(Value::Nil)),
            },
            Op::Put { .. } => {
                if let Some(e) = first_err {
                    let first_key = failed.iter().position(|&f| f).map(key).unwrap_or_default();
                    return Err(Error::PutFailed {
                        failed: nfailed,
                        outcome_unknown: unknown.iter().filter(|&&u| u).count(),
                        total: n,
                        first_key,
                        first_error: e.to_string(),
                    });
                }
                Ok(Output::Unit)
            }
            Op::Delete => {
                if let Some(e) = first_err {
                    return Err(e);
                }
                let count = slots
                    .iter()
                    .filter(|p| p.iter().any(|s| matches!(s, Slot::Int(x) if *x > 0)))
                    .count();
                Ok(Output::Count(count))
            }
            Op::Exists { prefix } => {
                if let Some(e) = first_err {
                    if !*prefix {
                        return Err(e);
                    }
                }
                let found: Vec<bool> = slots
                    .iter()
                    .map(|p| p.iter().any(|s| matches!(s, Slot::Int(x) if *x > 0)))
                    .collect();
                if *prefix {
                    // A failed key ends the prefix like a miss: LMCache then simply
                    // recomputes; the failure itself was logged and counted above.
                    let upto = failed.iter().position(|&f| f).unwrap_or(n);
                    let count = found[..upto].iter().take_while(|&&b| b).count();
                    return Ok(Output::Count(count));
                }
                Ok(Output::Bools(found))
            }
            Op::Get(mode) => {
                if let Some(e) = first_err {
                    if *mode != GetMode::Prefix {
                        return Err(e);
                    }
                }
                let mut stale = Vec::new();
                let mut hits = 0;
                let mut results: Vec<Option<Hit>> = Vec::with_capacity(n);
                let mut misses = KeyWarnings::default();
                for (i, pair) in slots.into_iter().enumerate() {
                    let r = if failed[i] {
                        None
                    } else {
                        self.read_rule(i, pair, &mut stale, &mut misses)
                    };
                    hits += r.is_some() as usize;
                    results.push(r);
                }
                misses.emit(self.op_name());
                if !stale.is_empty() {
                    self.metrics.error("stale_metadata");
                    if let Some(f) = self.follow_up.as_ref().and_then(|f| f.upgrade()) {
                        f.delete_stale(self.layout.clone(), stale);
                    }
                }
                match mode {
                    GetMode::All => {
                        self.metrics.hits_misses(hits, n - hits);
                        Ok(Output::Chunks(
                            results
                                .into_iter()
                                .map(|r| r.map(|(meta, data, _)| Chunk::from_hit(meta, data)))
                                .collect(),
                        ))
                    }
                    GetMode::Prefix => {
                        let upto = results.iter().position(|r| r.is_none()).unwrap_or(n);
                        self.metrics.hits_misses(upto, n - upto);
                        Ok(Output::Chunks(
                            results
                                .into_iter()
                                .take(upto)
                                .map(|r| r.map(|(meta, data, _)| Chunk::from_hit(meta, data)))
                                .collect(),
                        ))
                    }
                    GetMode::Into => {
                        self.metrics.hits_misses(hits, n - hits);
                        let mut bufs = Vec::with_capacity(n);
                        let mut infos = Vec::with_capacity(n);
                        for (i, r) in results.into_iter().enumerate() {
                            match r {
                                Some((meta, buf, len)) => {
                                    bufs.push(buf);
                                    infos.push(Some(ChunkInfo { len, meta }));
                                }
                                None => {
                                    bufs.push(
                                        st.bufs
                                            .get_mut(i)
                                            .and_then(|b| b.take())
                                            .unwrap_or_default(),
                                    );
                                    infos.push(None);
                                }
                            }
                        }
                        Ok(Output::Into(bufs, infos))
                    }
                }
            }
        }
    }

    /// LMCache's rules for one chunk: returns (metadata, buffer, payload length) on a hit.
    fn read_rule(
        &self,
        i: usize,
        pair: [Slot; 2],
        stale: &mut Vec<Vec<u8>>,
        warns: &mut KeyWarnings,
    ) -> Option<Hit> {
        let [meta, payload] = pair;
        let into = matches!(self.op, Op::Get(GetMode::Into));
        let k = || show_key(self.keys.get(i));
        let (buf, len) = match payload {
            Slot::Data { buf, len } => (buf, len),
            Slot::TooLarge(len) => {
                self.metrics.error("too_large");
                warns.add("too_large", k, || format!("value of {len} bytes does not fit the destination buffer (larger, or of another length than a caller's exact buffer); treated as a miss"));
                return None;
            }
            _ => {
                if matches!(meta, Slot::Data { .. }) {
                    tracing::debug!(key = %k(), "metadata without payload (evicted); deleting metadata");
                    stale.push(self.keys.get(i).to_vec());
                }
                return None;
            }
        };
        if self.layout.keys_per_chunk() == 1 {
            // LMCache's native client accepts a raw value only at the full chunk size,
            // which get_into's caller states as the buffer size.
            if into && len != buf.len() {
                self.metrics.error("corrupt");
                warns.add("corrupt_length", k, || {
                    format!(
                        "raw value of {len} bytes, buffer of {}; treated as a miss",
                        buf.len()
                    )
                });
                return None;
            }
            return Some((None, buf, len));
        }
        let Slot::Data {
            buf: mbuf,
            len: mlen,
        } = meta
        else {
            return None;
        };
        let md = match RemoteMetadata::decode(&mbuf[..mlen]) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.error("corrupt");
                warns.add("corrupt_metadata", k, || {
                    format!("undecodable metadata ({e}); treated as a miss")
                });
                return None;
            }
        };
        if md.payload_len() != len {
            self.metrics.error("corrupt");
            warns.add("corrupt_length", k, || {
                format!(
                    "payload of {len} bytes, metadata says {}; treated as a miss",
                    md.payload_len()
                )
            });
            return None;
        }
        Some((Some(md), buf, len))
    }

    fn take_output(&self) -> Option<Result<Output>> {
        self.lock().output.take()
    }
}

/// Success or a copy of the error, for a completion hook.
fn outcome(out: &Result<Output>) -> Result<()> {
    match out {
        Ok(_) => Ok(()),
        Err(e) => Err(clone_err(e)),
    }
}
