//! The janitor: deletes metadata whose payload was evicted (LMCache's read rule), on a
//! thread of its own so a shard never waits for it.
//!
//! Its queue is bounded (`janitor_queue`) and holds each key once: a key found stale by
//! many reads is checked once, and a flood of stale reads cannot grow memory. A key
//! that finds the queue full is counted (`janitor_overflow`) and skipped, with one
//! warning per overflow episode; the next read that finds it stale queues it again.
//!
//! The delete is "delete the metadata if the payload is absent", atomic where a chunk's
//! two keys share a slot (standalone, and the `hashtag` layout): one EVAL checks and
//! deletes, so a put writing payload and metadata concurrently can never lose its
//! metadata (its payload is written first: either the script sees it and keeps the
//! metadata, or it ran before the put and deleted only the old metadata). In a cluster
//! with the `lmcache` layout the two keys live on different masters and no script can
//! see both: there the janitor checks the payload again (EXISTS), then deletes the
//! metadata (DEL). The race left: a put rewriting the chunk between that EXISTS and
//! that DEL loses its metadata (a later read misses and the chunk is written again);
//! checking after the metadata was seen is the safest order available without a
//! cross-slot transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::batch::{FollowUp, Op, Ticket};
use crate::error::{show_key, Error, Result};
use crate::layout::{KeyLayout, KeyScheme};
use crate::metrics::Metrics;
use crate::priority::Priority;
use crate::resp::Value;

use super::submit::{Req, Submit};
use super::{bools, count, Engine, Inner, Output};

/// Deletes the metadata key (KEYS[2]) only while the payload key (KEYS[1]) is absent.
const DELETE_IF_ABSENT: &[u8] =
    b"if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end return 0";

/// Keys the janitor takes from its queue at a time.
const BATCH: usize = 256;

/// A chunk key whose metadata was found without its payload, and its layout.
type StaleKey = (KeyScheme, Vec<u8>);

/// The janitor's bounded, de-duplicated queue.
pub(super) struct JanitorQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
    cap: usize,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<StaleKey>,
    queued: HashSet<StaleKey>,
    /// In an overflow episode (warned once; ends when the queue has room again).
    overflowing: bool,
    closed: bool,
}

impl JanitorQueue {
    pub(super) fn new(cap: usize) -> JanitorQueue {
        JanitorQueue {
            state: Mutex::default(),
            cv: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues keys (never blocks); returns how many were skipped for lack of room.
    pub(super) fn push(&self, layout: KeyScheme, keys: Vec<Vec<u8>>, metrics: &Metrics) -> usize {
        let mut s = self.lock();
        let mut skipped = 0;
        for k in keys {
            let item = (layout.clone(), k);
            if s.closed || s.queued.contains(&item) {
                continue;
            }
            if s.queue.len() >= self.cap {
                skipped += 1;
                metrics.error("janitor_overflow");
                if !s.overflowing {
                    s.overflowing = true;
                    tracing::warn!(
                        capacity = self.cap,
                        key = %show_key(&item.1),
                        "stale-metadata queue full: keys are skipped (counted as janitor_overflow) until it drains; a later read queues them again"
                    );
                }
                continue;
            }
            s.queued.insert(item.clone());
            s.queue.push_back(item);
        }
        if s.queue.len() < self.cap {
            s.overflowing = false;
        }
        drop(s);
        self.cv.notify_one();
        skipped
    }

    /// Up to `BATCH` keys, waiting at most `wait` for the first; empty when closed
    /// or nothing came.
    fn pop(&self, wait: Duration) -> Vec<StaleKey> {
        let mut s = self.lock();
        if s.queue.is_empty() && !s.closed {
            s = self
                .cv
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let n = s.queue.len().min(BATCH);
        let out: Vec<StaleKey> = s.queue.drain(..n).collect();
        for k in &out {
            s.queued.remove(k);
        }
        if s.queue.len() < self.cap {
            s.overflowing = false;
        }
        out
    }

    /// Stops taking keys (the engine is going away) and wakes the janitor.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

impl FollowUp for Inner {
    fn delete_stale(&self, layout: KeyScheme, keys: Vec<Vec<u8>>) {
        // Runs on a shard thread: queue for the janitor, never wait here.
        self.janitor.push(layout, keys, &self.metrics);
    }
}

/// Runs the janitor until the engine is gone.
pub(super) fn run_janitor(engine: Weak<Inner>, queue: Arc<JanitorQueue>) {
    loop {
        let keys = queue.pop(Duration::from_millis(200));
        if keys.is_empty() {
            if queue.is_closed() || engine.strong_count() == 0 {
                return;
            }
            continue;
        }
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine { inner };
        let atomic = !engine.inner.router.is_cluster();
        let mut by_layout: Vec<(KeyScheme, Vec<Vec<u8>>)> = Vec::new();
        for (layout, k) in keys {
            match by_layout.iter_mut().find(|(l, _)| *l == layout) {
                Some((_, v)) => v.push(k),
                None => by_layout.push((layout, vec![k])),
            }
        }
        for (layout, keys) in by_layout {
            if atomic || layout.layout() == KeyLayout::Hashtag {
                delete_atomically(&engine, layout, &keys);
            } else {
                check_then_delete(&engine, layout, &keys);
            }
        }
    }
}

/// One EVAL per chunk, all in flight together: deletes its metadata only if its
/// payload is absent, atomically on the server.
fn delete_atomically(engine: &Engine, layout: KeyScheme, keys: &[Vec<u8>]) {
    let mut tickets = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(meta) = layout.metadata_key(k) else {
            continue;
        };
        let payload = layout.payload_key(k);
        let args: Vec<Vec<u8>> = vec![
            b"EVAL".to_vec(),
            DELETE_IF_ABSENT.to_vec(),
            b"2".to_vec(),
            payload.clone(),
            meta,
        ];
        let t = engine
            .submit_keys(
                Req {
                    op: Op::Command { args },
                    class: Priority::Put,
                    layout: KeyScheme::plain(KeyLayout::Raw),
                    mode: Submit::Wait,
                    target: None,
                },
                // Routed by the payload key: both keys share its slot here.
                &[payload],
                Vec::new(),
            )
            .map(|b| {
                Ticket::new(b, |o| match o {
                    Output::Value(v) => Ok(v),
                    _ => Err(Error::Closed),
                })
            });
        tickets.push((k, t));
    }
    let mut deleted = 0;
    for (k, t) in tickets {
        match t.and_then(|t| t.wait()) {
            Ok(Value::Int(n)) => deleted += n,
            Ok(other) => {
                tracing::warn!(key = %show_key(k), reply = ?other, "stale metadata: unexpected reply to the delete script")
            }
            Err(e) => {
                tracing::warn!(key = %show_key(k), error = %e, "stale metadata not deleted")
            }
        }
    }
    tracing::debug!(count = deleted, "deleted stale metadata");
}

/// Cluster with the `lmcache` layout (keys on different masters): EXISTS on the
/// payloads, then DEL of the metadata whose payload is still missing (see the module
/// doc for the race this leaves).
fn check_then_delete(engine: &Engine, layout: KeyScheme, keys: &[Vec<u8>]) {
    let raw = |op, keys: &[Vec<u8>]| -> Result<Arc<crate::batch::Batch>> {
        engine.submit_keys(
            Req {
                op,
                class: Priority::Put,
                layout: KeyScheme::plain(KeyLayout::Raw),
                mode: Submit::Wait,
                target: None,
            },
            keys,
            Vec::new(),
        )
    };
    let payloads: Vec<Vec<u8>> = keys.iter().map(|k| layout.payload_key(k)).collect();
    let found = raw(Op::Exists { prefix: false }, &payloads)
        .map(|b| Ticket::new(b, bools))
        .and_then(|t| t.wait());
    let stale: Vec<Vec<u8>> = match found {
        Ok(found) => keys
            .iter()
            .zip(found)
            .filter(|(_, f)| !f)
            .filter_map(|(k, _)| layout.metadata_key(k))
            .collect(),
        Err(e) => {
            tracing::warn!(keys = keys.len(), first = %show_key(&keys[0]), error = %e, "stale metadata not deleted");
            return;
        }
    };
    if stale.is_empty() {
        return;
    }
    match raw(Op::Delete, &stale)
        .map(|b| Ticket::new(b, count))
        .and_then(|t| t.wait())
    {
        Ok(n) => tracing::debug!(count = n, "deleted stale metadata"),
        Err(e) => {
            tracing::warn!(keys = stale.len(), first = %show_key(&stale[0]), error = %e, "stale metadata not deleted")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_dedups_and_is_bounded() {
        let m = Metrics::new();
        let q = JanitorQueue::new(3);
        let k = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            q.push(KeyLayout::Lmcache.into(), vec![k("a"), k("a"), k("b")], &m),
            0
        );
        assert_eq!(
            q.push(KeyLayout::Lmcache.into(), vec![k("b"), k("a")], &m),
            0
        );
        assert_eq!(q.len(), 2);
        // The same key in another layout is another key.
        assert_eq!(q.push(KeyLayout::Hashtag.into(), vec![k("a")], &m), 0);
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.push(KeyLayout::Lmcache.into(), vec![k("c"), k("d")], &m),
            2
        );
        assert_eq!(m.snapshot().error_count("janitor_overflow"), 2);
        let got = q.pop(Duration::ZERO);
        assert_eq!(got.len(), 3);
        assert_eq!(q.len(), 0);
        // Taken keys may be queued again.
        assert_eq!(q.push(KeyLayout::Lmcache.into(), vec![k("a")], &m), 0);
        assert_eq!(q.len(), 1);
        q.close();
        assert_eq!(q.push(KeyLayout::Lmcache.into(), vec![k("z")], &m), 0);
        assert_eq!(q.len(), 1);
    }
}
