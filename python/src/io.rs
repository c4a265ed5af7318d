//! How requests reach the engine: the one place that turns Python's keys and buffers
//! into engine calls, and engine results into completions.
//!
//! Zero copy: reads land straight in the caller's memoryviews and writes go out from
//! them (the engine's caller-memory API, `get(..).into_bufs(..).try_submit()` / `put(..).try_submit()`). Each
//! [`View`] is handed to the engine as the owner of its memory and comes back with the
//! engine's completion, which the engine delivers only once no connection and no
//! kernel operation references it any more; the view then travels inside its request's
//! [`Outcome`] and is released only when Python drains the completion.
//!
//! Nothing here waits for lane space: a full lane is a failed completion (`try_*`).
//! Only `contains_prefix` and `fetch` (the remote connector's paths, which await their
//! completion anyway) use the waiting forms, which wait without blocking (`*_async`).

use std::future::Future;
use std::pin::Pin;

use slotline::{CallerBuf, CallerBufMut, Chunk, Engine, Error, Priority, PutOwned, RemoteMetadata};

use crate::views::View;

/// A request on its way: polled to completion by the threads that wake it
/// (`completion.rs`); every poll must return without blocking.
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
    pub views: Held,
}

/// The caller buffers of a finished request, held until Python drains it. One
/// allocation per request, not per buffer: the engine's boxes are kept as they came.
pub enum Held {
    /// Buffers rejected before reaching the engine.
    Views(Vec<View>),
    /// Buffers a write sent from.
    Read(Vec<Box<dyn CallerBuf>>),
    /// Buffers a read filled.
    Write(Vec<Box<dyn CallerBufMut>>),
    /// No buffers.
    None,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = match self {
            Held::Views(v) => v.len(),
            Held::Read(v) => v.len(),
            Held::Write(v) => v.len(),
            Held::None => 0,
        };
        write!(f, "Held({n} buffers)")
    }
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
    /// Stored `RemoteMetadata` bytes per key (`None`: missing or undecodable).
    Metas(Vec<Option<Vec<u8>>>),
}

impl Outcome {
    /// A success.
    pub fn ok(payload: Payload, views: Held) -> Outcome {
        Outcome {
            ok: true,
            error: String::new(),
            payload,
            views,
        }
    }

    /// A failure; the buffers are still held until drained.
    pub fn failed(error: impl std::fmt::Display, views: Held) -> Outcome {
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

/// Reads `keys` straight into `views` (class GET). A stored value whose length
/// differs from its view is a miss (flag false) and leaves the view untouched, as
/// LMCache expects. Does not wait for lane space: a full lane is a failed completion.
pub fn get_into_views(engine: &Engine, keys: &[Vec<u8>], views: Vec<View>) -> Job {
    if keys.len() != views.len() {
        let e = format!("{} keys but {} buffers", keys.len(), views.len());
        return ready(Outcome::failed(e, Held::Views(views)));
    }
    let ticket = engine.get(keys).into_bufs(caller_bufs(views)).try_submit();
    get_into_job(ticket)
}

/// Like [`get_into_views`], but waits for lane space (without blocking: the ticket
/// keeps what found its lane full and pushes it when polled): the
/// remote connector's reads, which await their completion anyway.
pub fn get_into_views_wait(engine: &Engine, keys: Vec<Vec<u8>>, views: Vec<View>) -> Job {
    if keys.len() != views.len() {
        let e = format!("{} keys but {} buffers", keys.len(), views.len());
        return ready(Outcome::failed(e, Held::Views(views)));
    }
    let engine = engine.clone();
    Box::pin(async move {
        let ticket = engine.get(&keys).into_bufs(caller_bufs(views)).submit();
        get_into_job(ticket).await
    })
}

fn caller_bufs(views: Vec<View>) -> Vec<Box<dyn CallerBufMut>> {
    views
        .into_iter()
        .map(|v| Box::new(v) as Box<dyn CallerBufMut>)
        .collect()
}

fn get_into_job(ticket: slotline::GetIntoTicket) -> Job {
    Box::pin(async move {
        let r = ticket.await;
        let views = Held::Write(r.bufs);
        match r.result {
            Ok(infos) => Outcome::ok(
                Payload::Flags(infos.iter().map(Option::is_some).collect()),
                views,
            ),
            Err(e) => Outcome::failed(e, views),
        }
    })
}

/// Writes each view under its key (class PUT), straight from the view's memory, with
/// the metadata given for two-key layouts (`None`: BINARY metadata of the payload's
/// length). Does not wait for lane space: a full lane is a failed completion.
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
        return ready(Outcome::failed(e, Held::Views(views)));
    }
    let chunks = keys
        .into_iter()
        .zip(views)
        .zip(metas)
        .map(|((key, v), meta)| PutOwned {
            key,
            data: Box::new(v) as Box<dyn CallerBuf>,
            meta,
        })
        .collect::<Vec<_>>();
    let ticket = engine.put(chunks).try_submit();
    Box::pin(async move {
        let r = ticket.await;
        let views = Held::Read(r.bufs);
        match r.result {
            Ok(()) => Outcome::ok(Payload::None, views),
            Err(e) => Outcome::failed(e, views),
        }
    })
}

/// Per key: does the chunk exist (class PEEK).
pub fn exists(engine: &Engine, keys: Vec<Vec<u8>>) -> Job {
    let ticket = match engine.exists(&keys).try_submit() {
        Ok(t) => t,
        Err(e) => return ready(Outcome::failed(e, Held::None)),
    };
    Box::pin(async move {
        match ticket.await {
            Ok(found) => Outcome::ok(Payload::Flags(found), Held::None),
            Err(e) => Outcome::failed(e, Held::None),
        }
    })
}

/// The count of consecutive existing chunks from the first key (class PEEK).
pub fn contains_prefix(engine: &Engine, keys: Vec<Vec<u8>>) -> Job {
    let engine = engine.clone();
    Box::pin(async move {
        match engine.contains_prefix(&keys).submit().await {
            Ok(n) => Outcome::ok(Payload::Count(n), Held::None),
            Err(e) => Outcome::failed(e, Held::None),
        }
    })
}

/// Per key: was it deleted. The engine's delete reports a total, so each key is its
/// own request (eviction deletes are few and off the hot path). A key whose lane is
/// full fails at once (flag false).
pub fn delete(engine: &Engine, keys: Vec<Vec<u8>>) -> Job {
    let tickets: Vec<_> = keys
        .iter()
        .map(|k| engine.delete(&[k]).try_submit())
        .collect();
    Box::pin(async move {
        let mut flags = Vec::with_capacity(tickets.len());
        let mut first_err: Option<Error> = None;
        for t in tickets {
            let r = match t {
                Ok(t) => t.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(n) => flags.push(n > 0),
                Err(e) => {
                    flags.push(false);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Outcome::ok(Payload::Flags(flags), Held::None),
            Some(e) => Outcome {
                ok: false,
                error: e.to_string(),
                payload: Payload::Flags(flags),
                views: Held::None,
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
                .prefetch(&keys)
                .submit()
                .await
                .map(|c| c.into_iter().map(Some).collect())
        } else {
            engine.get(&keys).submit().await
        };
        match r {
            Ok(chunks) => Outcome::ok(Payload::Chunks(chunks), Held::None),
            Err(e) => Outcome::failed(e, Held::None),
        }
    })
}

/// Reads only the stored metadata of each chunk (class PREFETCH for `prefix`, else
/// GET), so that Python can allocate the destinations and read the payloads straight
/// into them.
pub fn fetch_meta(engine: &Engine, keys: Vec<Vec<u8>>, prefix: bool) -> Job {
    let engine = engine.clone();
    let class = if prefix {
        Priority::Prefetch
    } else {
        Priority::Get
    };
    Box::pin(async move {
        match engine.metadata(&keys).priority(class).submit().await {
            Ok(metas) => Outcome::ok(
                Payload::Metas(metas.into_iter().map(|m| m.map(|m| m.encode())).collect()),
                Held::None,
            ),
            Err(e) => Outcome::failed(e, Held::None),
        }
    })
}
