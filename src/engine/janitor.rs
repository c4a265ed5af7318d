//! The janitor: deletes metadata whose payload was evicted (LMCache's read rule), on a
//! thread of its own so a shard never waits for it.

use std::sync::Weak;

use crate::batch::{FollowUp, Op, Ticket};
use crate::error::show_key;
use crate::layout::KeyLayout;
use crate::priority::Priority;

use super::submit::{Req, Submit};
use super::{bools, count, Engine, Inner};

impl FollowUp for Inner {
    fn delete_stale(&self, layout: KeyLayout, keys: Vec<Vec<u8>>) {
        // Runs on a shard thread: hand over to the janitor, never wait here.
        let sent = self
            .janitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send((layout, keys.clone())).is_ok());
        if !sent {
            for k in &keys {
                tracing::warn!(key = %show_key(k), "stale metadata not deleted: engine shutting down");
            }
        }
    }
}

/// Chunk keys whose metadata was found without its payload, and their layout.
pub(super) type StaleJob = (KeyLayout, Vec<Vec<u8>>);

/// Deletes metadata whose payload is gone, LMCache's rule for evicted chunks, after
/// looking at the payload once more. The first look can be stale: in a cluster a chunk's
/// two keys live on different masters and are read in parallel, so the reader may have
/// seen the payload key before a writer set it and the metadata key after. Writers set
/// the payload first, so a payload still missing on a second look, taken after the
/// metadata was seen, really is evicted.
pub(super) fn run_janitor(engine: Weak<Inner>, rx: std::sync::mpsc::Receiver<StaleJob>) {
    while let Ok((layout, keys)) = rx.recv() {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine { inner };
        let raw = |op, keys: &[Vec<u8>]| {
            engine
                .submit_keys(
                    Req {
                        op,
                        class: Priority::Put,
                        layout: KeyLayout::Raw,
                        mode: Submit::Wait,
                        target: None,
                    },
                    keys,
                    Vec::new(),
                )
                .map(|b| Ticket::new(b, bools))
        };
        let payloads: Vec<Vec<u8>> = keys.iter().map(|k| layout.payload_key(k)).collect();
        let stale: Vec<Vec<u8>> = match raw(Op::Exists { prefix: false }, &payloads)
            .and_then(|t| t.wait())
        {
            Ok(found) => keys
                .iter()
                .zip(found)
                .filter(|(_, f)| !f)
                .filter_map(|(k, _)| layout.metadata_key(k))
                .collect(),
            Err(e) => {
                for k in &keys {
                    tracing::warn!(key = %show_key(k), error = %e, "stale metadata not deleted");
                }
                continue;
            }
        };
        if stale.is_empty() {
            continue;
        }
        let deleted = engine
            .submit_keys(
                Req {
                    op: Op::Delete,
                    class: Priority::Put,
                    layout: KeyLayout::Raw,
                    mode: Submit::Wait,
                    target: None,
                },
                &stale,
                Vec::new(),
            )
            .map(|b| Ticket::new(b, count))
            .and_then(|t| t.wait());
        match deleted {
            Ok(n) => tracing::debug!(count = n, "deleted stale metadata"),
            Err(e) => {
                for k in &stale {
                    tracing::warn!(key = %show_key(k), error = %e, "stale metadata not deleted");
                }
            }
        }
    }
}
