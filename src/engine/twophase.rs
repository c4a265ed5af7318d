//! Two-phase puts (cluster, `lmcache` layout): every payload first, the metadata once
//! every payload is acknowledged, so a reader that finds metadata can expect the
//! payload. The engine drives the second phase itself: a ticket dropped right after
//! `put(..).submit()` still gets its metadata written.
//!
//! Phase 1's completion runs on a shard thread, which must neither block (a full lane
//! would wait) nor hold the engine (dropping the last handle there would join the shard
//! from itself). So it only hands the job to the `slotline-put-meta` thread, which
//! submits phase 2; phase 2's completion settles the caller's ticket.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};

use crate::batch::{Batch, BatchInit, KeyArena, Op, Output, Role, Ticket};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

use super::submit::Submit;
use super::{unit, Engine, Inner, PutPlan};

/// A put whose payloads are being written; its metadata goes next.
pub(super) struct MetaPhase {
    plan: PutPlan,
    relay: Relay,
}

/// What the caller's ticket waits on, settled once by whoever ends the put. Dropped
/// unsettled (a job lost with the engine, a batch dropped without completing) it ends
/// the caller's wait with `Error::Closed` instead of leaving it to time out.
struct Relay(Option<Arc<Batch>>);

impl Relay {
    fn settle(mut self, r: Result<()>) {
        if let Some(b) = self.0.take() {
            b.settle(r.map(|()| Output::Unit));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.settle(Err(Error::Closed));
        }
    }
}

impl MetaPhase {
    fn run(self, engine: &Engine) {
        let MetaPhase { plan, relay } = self;
        match engine.submit_put(&plan, Some(Role::Meta), Submit::Wait) {
            // `Wait` leaves nothing unpushed.
            Ok((b, _)) => b.on_done(Box::new(move |r| relay.settle(r))),
            Err(e) => relay.settle(Err(e)),
        }
    }
}

/// Runs the metadata phase of two-phase puts, off the shard threads.
pub(super) fn run_meta_phases(engine: Weak<Inner>, rx: Receiver<MetaPhase>) {
    while let Ok(job) = rx.recv() {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        job.run(&Engine { inner });
    }
}

impl Engine {
    /// Submits the payloads of `plan` and arranges for its metadata to follow.
    pub(super) fn start_two_phase_put(
        &self,
        plan: PutPlan,
        tx: &Sender<MetaPhase>,
        mode: Submit,
    ) -> Result<Ticket<()>> {
        let (first, unpushed) = self.submit_put(&plan, Some(Role::Payload), mode)?;
        let cfg = &self.inner.cfg;
        let relay = Arc::new(Batch::new(BatchInit {
            op: Op::Put {
                data: Vec::new(),
                metas: Vec::new(),
                only: None,
            },
            class: plan.class,
            layout: self.inner.keys.clone(),
            keys: KeyArena::default(),
            ttl: None,
            // Both phases, each with its own deadline (the metadata phase moves no
            // payload).
            timeout: (first.deadline - first.started) + cfg.deadline(plan.class, 0),
            // The phases' own batches count the work; the relay counts nothing.
            metrics: Arc::new(Metrics::new()),
            follow_up: None,
        }));
        let job = MetaPhase {
            plan,
            relay: Relay(Some(relay.clone())),
        };
        let tx = tx.clone();
        first.on_done(Box::new(move |r| match r {
            // A job that could not be sent is dropped: its relay settles as closed.
            Ok(()) => drop(tx.send(job)),
            Err(e) => job.relay.settle(Err(e)),
        }));
        // Phase-1 parts that found a full lane are pushed by the caller's ticket.
        Ok(Ticket::new(relay, unit).with_unpushed(unpushed))
    }
}
