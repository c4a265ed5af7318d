//! How requests reach the engine: the one place that turns Python's keys and buffers
//! into engine calls, and engine results into completions.
//!
//! FIRST CUT, copying: the engine's caller-memory API (`&[u8]` / `&mut [u8]` per key
//! with an owner type for async) is not in the engine yet, so reads go through
//! `try_get` and are copied into the caller's views when they complete, and writes copy
//! each view into a `Bytes` before `try_put`. The ownership rule already holds: every
//! [`View`] travels inside its request's [`Outcome`] and is released only when Python
//! drains the completion. Switching to zero copy changes [`get_into_views`] and
//! [`put_from_views`] only.
//!
//! Engine calls without a `try_*` form (exists, delete, contains_prefix, prefetch) may
//! wait for lane space; they are submitted from the completion thread when the job is
//! first polled, never on the caller's thread.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use slotline::{Chunk, Engine, Error, PutChunk, RemoteMetadata};

use crate::views::View;

/// A request on its way: polled to completion by the completion thread.
pub type Job = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What a finished request reports to Python.
#[derive(Debug)]
pub struct Outcome {
    /// Whether the request as a whole succeeded.
    pub ok: bool,
    /// The error text when it did not.
    pub error: String,
    /// The per-request result.
    pub payload: Payload,
    /// The caller's buffers, released when the completion is drained (not before).
    pub views: Vec<View>,
}

/// The result of a request, by kind.
#[derive(Debug)]
pub enum Payload {
    /// Nothing beyond ok (SET, failures).
    None,
    /// One flag per key (GET loaded, EXISTS found, DELETE deleted).
    Flags(Vec<bool>),
    /// A count (the hit prefix of `contains_prefix`).
    Count(usize),
    /// Chunks held by the engine side until Python copies them out.
    Chunks(Vec<Option<Chunk>>),
}

impl Outcome {
    /// A success.
    pub fn ok(payload: Payload, views: Vec<View>) -> Outcome {
        Outcome {
            ok: true,
            error: String::new(),
            payload,
            views,
        }
    }

    /// A failure; the buffers are still held until drained.
    pub fn failed(error: impl std::fmt::Display, views: Vec<View>) -> Outcome {
        Outcome {
            ok: false,
            error: error.to_string(),
            payload: Payload::None,
            views,
        }
    }
}

/// A job that is already finished (validation errors, a full lane).
pub fn ready(o: Outcome) -> Job {
    Box::pin(std::future::ready(o))
}

/// Reads `keys` into `views` (class GET). A stored value whose length differs from its
/// view is a miss (flag false), as LMCache expects. Does not wait for lane space: a
/// full lane is a failed completion.
pub fn get_into_views(engine: &Engine, keys: &[Vec<u8>], mut views: Vec<View>) -> Job {
    if keys.len() != views.len() {
        let e = format!("{} keys but {} buffers", keys.len(), views.len());
        return ready(Outcome::failed(e, views));
    }
    let ticket = match engine.try_get(keys) {
        Ok(t) => t,
        Err(e) => return ready(Outcome::failed(e, views)),
    };
    Box::pin(async move {
        match ticket.await {
            Ok(chunks) => {
                let flags = chunks
                    .iter()
                    .zip(views.iter_mut())
                    .map(|(c, v)| match c {
                        Some(c) if c.data.len() == v.len() => v.fill_from(&c.data),
                        _ => false,
                    })
                    .collect();
                Outcome::ok(Payload::Flags(flags), views)
            }
            Err(e) => Outcome::failed(e, views),
        }
    })
}

/// Writes each view under its key (class PUT), with the metadata given for two-key
/// layouts (`None`: BINARY metadata of the payload's length). Does not wait for lane
/// space: a full lane is a failed completion.
pub fn put_from_views(
    engine: &Engine,
    keys: Vec<Vec<u8>>,
    views: Vec<View>,
    metas: Vec<Option<RemoteMetadata>>,
) -> Job {
    if keys.len() != views.len() || metas.len() != keys.len() {
        let e = format!(
            "{} keys, {} buffers, {} metadata entries",
            keys.len(),
            views.len(),
            metas.len()
        );
        return ready(Outcome::failed(e, views));
    }
    // The copy this module exists to remove later.
    let chunks = keys
        .into_iter()
        .zip(views.iter())
        .zip(metas)
        .map(|((k, v), m)| PutChunk::new(k, Bytes::copy_from_slice(v.as_bytes()), m))
        .collect();
    let ticket = match engine.try_put(chunks) {
        Ok(t) => t,
        Err(e) => return ready(Outcome::failed(e, views)),
    };
    Box::pin(async move {
        match ticket.await {
            Ok(()) => Outcome::ok(Payload::None, views),
            Err(e) => Outcome::failed(e, views),
        }
    })
}

/// Per key: does the chunk exist (class PEEK).
pub fn exists(engine: &Engine, keys: Vec<Vec<u8>>) -> Job {
    let engine = engine.clone();
    Box::pin(async move {
        match engine.exists_async(&keys).await {
            Ok(found) => Outcome::ok(Payload::Flags(found), Vec::new()),
            Err(e) => Outcome::failed(e, Vec::new()),
        }
    })
}

/// The count of consecutive existing chunks from the first key (class PEEK).
pub fn contains_prefix(engine: &Engine, keys: Vec<Vec<u8>>) -> Job {
    let engine = engine.clone();
    Box::pin(async move {
        match engine.contains_prefix_async(&keys).await {
            Ok(n) => Outcome::ok(Payload::Count(n), Vec::new()),
            Err(e) => Outcome::failed(e, Vec::new()),
        }
    })
}

/// Per key: was it deleted. The engine's delete reports a total, so each key is its
/// own request (eviction deletes are few and off the hot path).
pub fn delete(engine: &Engine, keys: Vec<Vec<u8>>) -> Job {
    let engine = engine.clone();
    Box::pin(async move {
        let tickets: Vec<_> = keys.iter().map(|k| engine.delete_async(&[k])).collect();
        let mut flags = Vec::with_capacity(tickets.len());
        let mut first_err: Option<Error> = None;
        for t in tickets {
            match t.await {
                Ok(n) => flags.push(n > 0),
                Err(e) => {
                    flags.push(false);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Outcome::ok(Payload::Flags(flags), Vec::new()),
            Some(e) => Outcome {
                ok: false,
                error: e.to_string(),
                payload: Payload::Flags(flags),
                views: Vec::new(),
            },
        }
    })
}

/// Reads chunks into engine memory, for Python to copy out once it has allocated the
/// destination from their metadata. `prefix`: only the hit prefix (class PREFETCH);
/// otherwise every key, misses as `None` (class GET).
pub fn fetch(engine: &Engine, keys: Vec<Vec<u8>>, prefix: bool) -> Job {
    let engine = engine.clone();
    Box::pin(async move {
        let r = if prefix {
            engine
                .prefetch_async(&keys)
                .await
                .map(|c| c.into_iter().map(Some).collect())
        } else {
            engine.get_async(&keys).await
        };
        match r {
            Ok(chunks) => Outcome::ok(Payload::Chunks(chunks), Vec::new()),
            Err(e) => Outcome::failed(e, Vec::new()),
        }
    })
}
