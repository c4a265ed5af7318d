//! Submission: a call becomes a batch, its units are routed (the one routing
//! function, [`crate::cluster::SlotTable::route`]) and split into one part per owning
//! shard, and the parts are queued on the shards' lanes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::batch::{clone_err, SubmitPart, UnitSpec};
use crate::batch::{
    Batch, BatchInit, FollowUp, GetMode, KeyArena, Op, Output, Role, Ticket, Unpushed,
};
use crate::cluster::NodeId;
use crate::error::{Error, Result};
use crate::layout::KeyScheme;
use crate::mem::Mem;
use crate::priority::Priority;

use super::Engine;

/// Caller buffers of a part, by chunk.
pub(super) type CallerBufs = Vec<(u32, Mem)>;

/// What to submit and how.
pub(super) struct Req {
    pub(super) op: Op,
    pub(super) class: Priority,
    pub(super) layout: KeyScheme,
    pub(super) mode: Submit,
    /// A chosen server (commands); `None` routes by key.
    pub(super) target: Option<NodeId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Submit {
    Wait,
    Try,
    /// Never wait: parts that find their lane full go back to the caller, for the
    /// ticket to push when space frees (`*_async` calls).
    Defer,
}

impl Engine {
    /// A request routed by key with the engine's key layout.
    pub(super) fn req(&self, op: Op, class: Priority, mode: Submit) -> Req {
        Req {
            op,
            class,
            layout: self.inner.keys.clone(),
            mode,
            target: None,
        }
    }

    pub(super) fn ticket<K: AsRef<[u8]>, T>(
        &self,
        op: Op,
        class: Priority,
        keys: &[K],
        bufs: Vec<Mem>,
        convert: fn(Output) -> Result<T>,
    ) -> Ticket<T> {
        match self.submit_parts(self.req(op, class, Submit::Defer), keys, bufs) {
            Ok((b, unpushed)) => Ticket::new(b, convert).with_unpushed(unpushed),
            Err(e) => Ticket::ready(Err(e)),
        }
    }

    /// The deadline of a request: its class's budget for the payload it sends (puts),
    /// fills (caller buffers) or is expected to read (keys times the bytes per hit
    /// seen so far), at most `request_timeout`. A raw command gets `request_timeout`.
    pub(super) fn budget(
        &self,
        op: &Op,
        class: Priority,
        nkeys: usize,
        bufs: &[Mem],
    ) -> std::time::Duration {
        let cfg = &self.inner.cfg;
        let bytes: u64 = match op {
            // The metadata phase of a two-phase put sends no payload.
            Op::Put {
                only: Some(Role::Meta),
                ..
            } => 0,
            Op::Put { data, .. } => data.iter().map(|d| d.len() as u64).sum(),
            Op::Get(GetMode::Into) => bufs.iter().map(|b| b.len() as u64).sum(),
            Op::Get(_) => (nkeys as u64).saturating_mul(self.inner.metrics.mean_hit_bytes()),
            Op::Exists { .. } | Op::Delete => 0,
            Op::Command { .. } => return cfg.request_timeout,
        };
        cfg.deadline(class, bytes)
    }

    /// Builds the batch, splits its units over the owning shards and queues the parts
    /// (`Submit::Defer` is for [`Self::submit_parts`]; here it waits like `Wait`).
    pub(super) fn submit_keys<K: AsRef<[u8]>>(
        &self,
        mut req: Req,
        keys: &[K],
        bufs: Vec<Mem>,
    ) -> Result<Arc<Batch>> {
        if matches!(req.mode, Submit::Defer) {
            req.mode = Submit::Wait;
        }
        self.submit_parts(req, keys, bufs).map(|(b, _)| b)
    }

    /// [`Self::submit_keys`], also returning the parts that found their lane full
    /// under `Submit::Defer` (none under the other modes).
    pub(super) fn submit_parts<K: AsRef<[u8]>>(
        &self,
        req: Req,
        keys: &[K],
        bufs: Vec<Mem>,
    ) -> Result<(Arc<Batch>, Vec<Unpushed>)> {
        let Req {
            op,
            class,
            layout,
            mode,
            target,
        } = req;
        let inner = &self.inner;
        let into = matches!(op, Op::Get(GetMode::Into));
        let timeout = self.budget(&op, class, keys.len(), &bufs);
        let follow_up: Weak<dyn FollowUp> = inner.me.clone();
        let batch = Arc::new(Batch::new(BatchInit {
            op,
            class,
            layout,
            keys: KeyArena::from_keys(keys),
            ttl: inner.cfg.ttl,
            timeout,
            metrics: inner.metrics.clone(),
            follow_up: Some(follow_up),
        }));
        let units = batch.units();
        let n = inner.shards.len();
        let mut parts: Vec<(Vec<UnitSpec>, CallerBufs)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        let mut bufs: Vec<Option<Mem>> = bufs.into_iter().map(Some).collect();
        let spread = inner.rr.fetch_add(1, Ordering::Relaxed);
        if let Some(node) = target {
            // A command for one chosen server: its owning shard sends it.
            let snap = inner.router.snapshot();
            let owner = snap.owner(node).unwrap_or(spread) % n;
            parts[owner].0 = units
                .into_iter()
                .map(|(chunk, role)| UnitSpec {
                    chunk,
                    role,
                    node,
                    slot: 0,
                    asking: false,
                    attempts: 0,
                })
                .collect();
        } else if inner.router.is_cluster() {
            // One snapshot routes the whole batch: slot -> master (or a replica for
            // PEEK/PREFETCH when allowed) -> the shard that owns it.
            let snap = inner.router.snapshot();
            let replicas = inner.cfg.read_from_replicas && class <= Priority::Prefetch;
            for (chunk, role) in units {
                let pick = replicas.then_some(spread + chunk as usize);
                let route = snap.route(batch.key(chunk, role), pick);
                let (slot, node) = (route.slot, route.node);
                let owner = route.owner.unwrap_or(node as usize) % n;
                if into && role == Role::Payload {
                    if let Some(b) = bufs.get_mut(chunk as usize).and_then(|b| b.take()) {
                        parts[owner].1.push((chunk, b));
                    }
                }
                parts[owner].0.push(UnitSpec {
                    chunk,
                    role,
                    node,
                    slot,
                    asking: false,
                    attempts: 0,
                });
            }
        } else {
            // Standalone: every shard talks to the one server; spread whole batches
            // over the live shards.
            let owner = self.live_shard(spread);
            let master = inner.router.master();
            if into {
                for (chunk, b) in bufs.iter_mut().enumerate() {
                    if let Some(b) = b.take() {
                        parts[owner].1.push((chunk as u32, b));
                    }
                }
            }
            parts[owner].0 = units
                .into_iter()
                .map(|(chunk, role)| UnitSpec {
                    chunk,
                    role,
                    node: master,
                    slot: 0,
                    asking: false,
                    attempts: 0,
                })
                .collect();
        }
        let live: Vec<usize> = (0..n).filter(|&i| !parts[i].0.is_empty()).collect();
        if live.is_empty() {
            batch.set_parts(1);
            batch.part_done(Vec::new(), Vec::new());
            return Ok((batch, Vec::new()));
        }
        batch.set_parts(live.len());
        let mut unpushed = Vec::new();
        let deadline = batch.deadline;
        for i in live {
            let (u, b) = std::mem::take(&mut parts[i]);
            let mut sp = SubmitPart {
                batch: batch.clone(),
                units: u,
                bufs: b,
            };
            // A shard that died refuses the part (its lanes are closed): the next live
            // shard takes it. Parts it accepted before closing fail with its panic.
            let mut target = i;
            let pushed = loop {
                let lanes = &inner.shards[target].lanes;
                let r = match mode {
                    Submit::Try => lanes.try_push(class, sp),
                    Submit::Wait => lanes.push_wait(class, sp, deadline),
                    Submit::Defer => match lanes.try_push(class, sp) {
                        Err(part) if !lanes.is_closed() => {
                            unpushed.push(Unpushed {
                                lanes: lanes.clone(),
                                class,
                                part,
                            });
                            Ok(())
                        }
                        r => r,
                    },
                };
                match r {
                    Err(back) if lanes.is_closed() => match self.next_live(target) {
                        Some(t) => {
                            target = t;
                            sp = back;
                        }
                        None => {
                            let err = lanes.gone_error();
                            batch.fail(clone_err(&err));
                            // The part's buffers go home with it.
                            drop(back);
                            return Err(err);
                        }
                    },
                    r => break r.is_ok(),
                }
            };
            if !pushed {
                let err = match mode {
                    Submit::Try => Error::Busy {
                        class: class.name(),
                    },
                    Submit::Wait | Submit::Defer => Error::Timeout {
                        after: timeout,
                        what: format!("waiting for space in the {class} lane"),
                    },
                };
                // Failing the batch counts the error (once) and releases parts already
                // queued on other shards: they see a finished batch and skip it.
                batch.fail(clone_err(&err));
                return Err(err);
            }
        }
        Ok((batch, unpushed))
    }

    /// The shard for a standalone batch: `spread`'s turn among the live shards (shard
    /// `spread % n` while every shard lives; any shard when none does, to be refused).
    fn live_shard(&self, spread: usize) -> usize {
        let shards = &self.inner.shards;
        let n = shards.len();
        let first = spread % n;
        if !shards[first].lanes.is_closed() {
            return first;
        }
        let alive = |i: &usize| !shards[*i].lanes.is_closed();
        let live = (0..n).filter(alive).count();
        if live == 0 {
            return first;
        }
        (0..n).filter(alive).nth(spread % live).unwrap_or(first)
    }

    /// The next shard after `from` that still takes work, if any.
    fn next_live(&self, from: usize) -> Option<usize> {
        let shards = &self.inner.shards;
        let n = shards.len();
        (1..n)
            .map(|k| (from + k) % n)
            .find(|&i| !shards[i].lanes.is_closed())
    }
}
