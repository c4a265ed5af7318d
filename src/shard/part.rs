//! What happens to a unit after its command: resolved, retried where routing says now
//! (after a connection failure, [`Shard::retry_or_fail`]), forwarded to the shard owning
//! a redirect's target, delayed, or failed; a put's chunk pair kept together through
//! redirects (`pairs`); a part handed back to its batch once every unit is resolved.
//! The decision itself is [`crate::cluster::retry::classify`]; this module carries it
//! out. The parts themselves are owned by [`super::parts::Parts`].

use std::time::Instant;

use crate::batch::{clone_err, Op, Slot, SubmitPart, UnitSpec};
use crate::cluster::retry::{classify, Failure, RetryMethod};
use crate::cluster::NodeId;
use crate::error::{show_key, Error};
use crate::mem::Mem;
use crate::resp::Dest;

use super::conn::{PartRef, PendKind, Pending};
use super::pairs::{meta_in_flight, Held, Redirect};
use super::parts::RetryContext;
use super::Shard;

impl Shard {
    /// A unit's connection failed before its reply; `sent`: its command reached the
    /// kernel whole, so the server may have run it.
    pub(super) fn retry_or_fail(
        &mut self,
        pr: PartRef,
        u: u32,
        err: &Error,
        retryable: bool,
        sent: bool,
    ) {
        let cluster = self.router.is_cluster();
        let Some(RetryContext {
            unit,
            in_time,
            is_command,
            idempotent,
        }) = self.parts.get_mut(pr).and_then(|p| p.for_retry(u))
        else {
            return;
        };
        if !matches!(unit.slot, Slot::Pending) {
            return;
        }
        unit.attempts += 1;
        let (hslot, node) = (unit.hslot, unit.node);
        let failure = Failure::Conn {
            retryable,
            sent,
            idempotent,
        };
        let method = classify(failure, unit.attempts, in_time);
        if method == RetryMethod::Reconnect {
            self.reroute(pr, u);
            return;
        }
        let e = if method == RetryMethod::OutcomeUnknown {
            Error::OutcomeUnknown {
                node: self.pool.node(node).addr.to_string(),
                reason: err.to_string(),
            }
        } else if cluster {
            located(
                is_command,
                hslot,
                &self.pool.node(node).addr.to_string(),
                &err.to_string(),
            )
        } else {
            clone_err(err)
        };
        if let Some(part) = self.parts.get_mut(pr) {
            part.resolve(u, Slot::Err(e));
        }
    }

    /// Hands redirected units (one, or a chunk's payload and metadata) to the shard that
    /// owns `node`, as one part, so each master's connections stay with one shard.
    /// `false` when this shard owns the node itself, nobody does yet, or the owner's
    /// lane is full (then the caller sends them from here).
    pub(super) fn forward(&mut self, pr: PartRef, us: &[u32], node: NodeId, asking: bool) -> bool {
        let Some(owner) = self.router.snapshot().owner(node) else {
            return false;
        };
        if owner == self.id || owner >= self.all_lanes.len() {
            return false;
        }
        let lanes = self.all_lanes[owner].clone();
        let Some(part) = self.parts.get_mut(pr) else {
            return false;
        };
        if us.iter().any(|&u| u as usize >= part.units.len()) {
            return false;
        }
        let mut units = Vec::with_capacity(us.len());
        let mut bufs: Vec<(u32, Mem)> = Vec::new();
        let mut lent_by: Vec<u32> = Vec::new();
        for &u in us {
            let unit = &mut part.units[u as usize];
            units.push(UnitSpec {
                chunk: unit.chunk,
                role: unit.role,
                node,
                slot: unit.hslot,
                asking,
                attempts: unit.attempts,
            });
            if let Some(b) = unit.buf.take() {
                bufs.push((unit.chunk, b));
                lent_by.push(u);
            }
        }
        let batch = part.batch.clone();
        // Counted before the push, so the batch cannot finish before the new part reports.
        batch.add_part();
        let sp = SubmitPart {
            batch: batch.clone(),
            units,
            bufs,
        };
        match lanes.try_push(part.class, sp) {
            Ok(()) => {
                for &u in us {
                    part.resolve(u, Slot::Forwarded);
                }
                true
            }
            Err(sp) => {
                batch.remove_part();
                for (u, (_, b)) in lent_by.into_iter().zip(sp.bufs) {
                    part.units[u as usize].buf = Some(b);
                }
                false
            }
        }
    }

    /// Queues a unit again where the current routing sends it: a refreshed topology may
    /// name another node by now. A command sent to a chosen node stays with that node.
    pub(super) fn reroute(&mut self, pr: PartRef, u: u32) {
        let Some(part) = self.parts.get_mut(pr) else {
            return;
        };
        let Some(unit) = part.units.get(u as usize) else {
            return;
        };
        let (chunk, role, node) = (unit.chunk, unit.role, unit.node);
        let batch = part.batch.clone();
        let node = if matches!(batch.op, Op::Command { .. }) {
            node
        } else {
            // The same routing function the engine used at submission.
            let id = self.router.route(batch.key(chunk, role)).node;
            self.pool.local_node(id, &self.router)
        };
        // A payload held for this metadata follows its redirect first.
        self.release_held(pr, u);
        self.parts.requeue(pr, u, node, false);
    }

    /// Part `idx` is past its deadline: its unresolved units fail, with
    /// [`Error::Timeout`], or [`Error::OutcomeUnknown`] for a write (or raw command)
    /// whose command reached the socket (the server may have run it), and the part
    /// goes back to its batch.
    pub(super) fn expire(&mut self, idx: usize, now: Instant) {
        let Some(part) = self.parts.at(idx) else {
            return;
        };
        let idempotent = matches!(part.batch.op, Op::Get(_) | Op::Exists { .. });
        let pr = PartRef {
            idx: idx as u32,
            gen: part.gen,
        };
        // Units of this part whose command is wholly in the kernel: only these may have
        // been applied. Looked up only for writes, and only when a deadline passes.
        let sent = if idempotent {
            Vec::new()
        } else {
            self.pool.sent_units(pr)
        };
        let Some(part) = self.parts.at_mut(idx) else {
            return;
        };
        let after = now - part.batch.started;
        for u in 0..part.units.len() as u32 {
            let unit = &part.units[u as usize];
            if !matches!(unit.slot, Slot::Pending) {
                continue;
            }
            let key = show_key(part.batch.key(unit.chunk, unit.role));
            let err = if sent.contains(&u) {
                Error::OutcomeUnknown {
                    node: self.pool.node(unit.node).addr.to_string(),
                    reason: format!(
                        "key {key}: sent, no reply within the deadline ({} ms)",
                        after.as_millis()
                    ),
                }
            } else {
                Error::Timeout {
                    after,
                    what: format!("key {key}"),
                }
            };
            part.resolve(u, Slot::Err(err));
        }
        for g in part.groups.iter_mut() {
            g.queue.clear();
        }
        part.unsent = 0;
        self.maybe_complete(idx);
    }

    /// Hands a part back to its batch once every unit is resolved.
    pub(super) fn maybe_complete(&mut self, idx: usize) {
        // Payload redirects released by their metadata's reply go first.
        self.follow_released(idx);
        let Some(part) = self.parts.take_done(idx) else {
            return;
        };
        let mut slots = Vec::with_capacity(part.units.len());
        let mut bufs = Vec::new();
        for u in part.units {
            if let Some(b) = u.buf {
                bufs.push((u.chunk, b));
            }
            slots.push((u.chunk, u.role, u.slot));
        }
        part.batch.part_done(slots, bufs);
    }

    /// A server error for one unit: redirects and cluster retries are followed, the
    /// rest reach the caller.
    pub(super) fn unit_error(&mut self, cid: usize, pr: Option<PartRef>, u: u32, msg: &[u8]) {
        let Some(pr) = pr else { return };
        let from = self
            .pool
            .conn(cid)
            .map(|c| self.pool.node(c.node()).addr.clone());
        let node_name = from.as_ref().map(|a| a.to_string()).unwrap_or_default();
        let message = String::from_utf8_lossy(msg).into_owned();
        // A master demoted under us (a sentinel failover): look for the new one.
        if message.starts_with("READONLY") {
            self.router.request_refresh();
        }
        let Some(RetryContext {
            unit,
            in_time,
            is_command,
            ..
        }) = self.parts.get_mut(pr).and_then(|p| p.for_retry(u))
        else {
            return;
        };
        let hslot = unit.hslot;
        let method = classify(
            Failure::Reply(&message, from.as_ref()),
            unit.attempts + 1,
            in_time,
        );
        if !matches!(method, RetryMethod::Fail { .. }) {
            unit.attempts += 1;
            self.metrics.error("redirect");
        }
        let err = match method {
            RetryMethod::Moved { slot, addr } => {
                let to = self.router.note_moved(slot, &addr);
                let r = Redirect { to, asking: false };
                self.follow_redirect(pr, u, r, is_command);
                return;
            }
            RetryMethod::Ask { addr } => {
                let to = self.router.intern(&addr);
                let r = Redirect { to, asking: true };
                self.follow_redirect(pr, u, r, is_command);
                return;
            }
            RetryMethod::WaitAndRetry { after, refresh } => {
                if refresh {
                    self.router.request_refresh();
                }
                // A payload held for this metadata follows its redirect first.
                self.release_held(pr, u);
                self.parts.delay(Instant::now() + after, pr, u);
                return;
            }
            // Only connection failures reconnect; a reply never does.
            RetryMethod::Fail { auth: true } | RetryMethod::Reconnect => Error::Auth {
                node: node_name,
                message,
            },
            RetryMethod::Fail { auth: false } if self.router.is_cluster() => {
                located(is_command, hslot, &node_name, &message)
            }
            // A reply is an answer: its outcome is known.
            RetryMethod::Fail { auth: false } | RetryMethod::OutcomeUnknown => Error::Server {
                node: node_name,
                message,
            },
        };
        if let Some(part) = self.parts.get_mut(pr) {
            part.resolve(u, Slot::Err(err));
        }
    }

    /// Gives a reply's payload destination back to its unit when it is the caller's
    /// buffer (get_into), so the caller gets it back whatever happens to the unit.
    pub(super) fn return_dest(&mut self, p: &Pending, i: usize, dest: Dest) {
        let (Some(pr), Some(&u)) = (p.part, p.units.get(i)) else {
            return;
        };
        if let Some(unit) = self
            .parts
            .get_mut(pr)
            .and_then(|part| part.units.get_mut(u as usize))
        {
            if unit.lent && dest.keep {
                unit.lent = false;
                unit.buf = Some(dest.buf);
            }
        }
    }

    /// Retries or fails the unanswered units of replies a failed connection owed;
    /// `written` is how far the connection's output reached the kernel, which tells the
    /// commands the server may have run (sent) from those it cannot have (unsent).
    pub(super) fn fail_pending(&mut self, pending: Vec<Pending>, err: &Error, written: u64) {
        let retryable = matches!(err, Error::Io { .. } | Error::Protocol { .. });
        for p in pending {
            let Some(pr) = p.part else { continue };
            let done = match p.kind {
                PendKind::PerUnit { next } => next,
                _ => 0,
            };
            let sent = p.end <= written;
            for &u in &p.units[done.min(p.units.len())..] {
                self.retry_or_fail(pr, u, err, retryable, sent);
            }
            self.maybe_complete(pr.idx as usize);
        }
    }

    /// Follows a redirect of unit `u`. Units of a put keep their chunk's pair together
    /// (see `pairs`); a raw command stays with this shard.
    pub(super) fn follow_redirect(&mut self, pr: PartRef, u: u32, r: Redirect, is_command: bool) {
        let Some(part) = self.parts.get(pr) else {
            return;
        };
        if matches!(part.batch.op, Op::Put { .. }) {
            let parts = &self.parts;
            let meta = meta_in_flight(&part.units, &part.groups, u, |m| parts.is_delayed(pr, m));
            let Some(part) = self.parts.get_mut(pr) else {
                return;
            };
            if let Some(meta) = meta {
                part.held.hold(Held {
                    payload: u,
                    meta,
                    redirect: r,
                });
                return;
            }
            if let Some(h) = part.held.take_for_meta(u) {
                if h.redirect == r {
                    self.send_redirected(pr, &[h.payload, u], r, is_command);
                    return;
                }
                // Sent elsewhere (the topology changed in between): payload first.
                self.send_redirected(pr, &[h.payload], h.redirect, is_command);
            }
        }
        self.send_redirected(pr, &[u], r, is_command);
    }

    /// Metadata unit `meta` goes back to a queue or waits for a retry instead of being
    /// redirected: the payload held for it follows its own redirect now, first.
    pub(super) fn release_held(&mut self, pr: PartRef, meta: u32) {
        let Some(h) = self
            .parts
            .get_mut(pr)
            .and_then(|p| p.held.take_for_meta(meta))
        else {
            return;
        };
        self.send_redirected(pr, &[h.payload], h.redirect, false);
    }

    /// Follows the redirects released by their metadata resolving (part `idx`).
    pub(super) fn follow_released(&mut self, idx: usize) {
        let Some(part) = self.parts.at_mut(idx) else {
            return;
        };
        let released = part.held.take_released();
        if released.is_empty() {
            return;
        }
        let pr = PartRef {
            idx: idx as u32,
            gen: part.gen,
        };
        for h in released {
            let pending = self.parts.at(idx).is_some_and(|p| {
                p.units
                    .get(h.payload as usize)
                    .is_some_and(|pu| matches!(pu.slot, Slot::Pending))
            });
            if pending {
                self.send_redirected(pr, &[h.payload], h.redirect, false);
            }
        }
    }

    /// Sends `units` (one, or a chunk's payload and metadata, in that order) where `r`
    /// says: forwarded together to the shard owning the node, or queued here together.
    fn send_redirected(&mut self, pr: PartRef, units: &[u32], r: Redirect, is_command: bool) {
        if !is_command && self.forward(pr, units, r.to, r.asking) {
            return;
        }
        let node = self.pool.local_node(r.to, &self.router);
        for &u in units {
            self.parts.requeue(pr, u, node, r.asking);
        }
    }
}

/// A cluster error naming slot and node. A command sent to a chosen node has no slot
/// worth naming.
fn located(is_command: bool, hslot: u16, node: &str, msg: &str) -> Error {
    Error::Cluster(if is_command {
        format!("{node}: {msg}")
    } else {
        format!("slot {hslot} at {node}: {msg}")
    })
}
