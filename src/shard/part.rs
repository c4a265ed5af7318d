//! Parts: the units of one batch a shard works on, grouped by node and slot, and
//! what happens to a unit after a failure (retried where routing says now, forwarded
//! to the shard owning a redirect's target, delayed, or resolved with an error). The
//! decision itself is [`crate::cluster::retry::classify`]; this module carries it out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::{clone_err, Batch, Op, Role, Slot};
use crate::cluster::retry::{classify, Failure, RetryMethod};
use crate::cluster::NodeId;
use crate::error::{show_key, Error};
use crate::mem::Mem;
use crate::priority::Priority;

use super::conn::{PartRef, PendKind};
use super::pairs::{HeldRedirects, Redirect};
use super::{Shard, SubmitPart, UnitSpec};

/// One unit of a part inside the shard.
pub(super) struct PUnit {
    pub(super) chunk: u32,
    pub(super) role: Role,
    /// The caller's buffer (get_into), until the payload lands in it.
    pub(super) buf: Option<Mem>,
    pub(super) attempts: u8,
    pub(super) slot: Slot,
    /// Its cluster slot, for grouping and error messages.
    pub(super) hslot: u16,
    /// The node (shard-local index) it was last queued for.
    pub(super) node: usize,
    /// Its caller buffer is out, as a reply's payload destination (`buf` is `None`).
    pub(super) lent: bool,
}

/// Units of a part still to be sent to one node and one slot (Redis rejects MGET
/// across slots; in standalone mode every unit has slot 0).
pub(super) struct Group {
    pub(super) node: usize,
    pub(super) slot: u16,
    pub(super) queue: VecDeque<u32>,
    /// An ASK redirect: one unit, or a chunk's payload and metadata, each sent after
    /// its own ASKING, on one connection.
    pub(super) asking: bool,
}

pub(super) struct ActivePart {
    pub(super) gen: u32,
    pub(super) class: Priority,
    pub(super) batch: Arc<Batch>,
    pub(super) units: Vec<PUnit>,
    pub(super) groups: Vec<Group>,
    pub(super) unsent: usize,
    pub(super) unresolved: usize,
    pub(super) queued: bool,
    /// Payload redirects waiting for their metadata's reply (`super::pairs`).
    pub(super) held: HeldRedirects,
}

/// What a retry decision needs to know of a unit and its request.
struct RetryContext<'a> {
    unit: &'a mut PUnit,
    /// The request's deadline is still ahead.
    in_time: bool,
    /// A raw `Engine::command`.
    is_command: bool,
    /// Safe to run twice (MGET, EXISTS).
    idempotent: bool,
}

impl ActivePart {
    /// What a retry decision about unit `u` needs: the unit, whether the batch is
    /// still within its deadline, and whether it is a raw command.
    fn for_retry(&mut self, u: u32) -> Option<RetryContext<'_>> {
        let in_time = Instant::now() < self.batch.deadline;
        let is_command = matches!(self.batch.op, Op::Command { .. });
        let idempotent = matches!(self.batch.op, Op::Get(_) | Op::Exists { .. });
        let unit = self.units.get_mut(u as usize)?;
        Some(RetryContext {
            unit,
            in_time,
            is_command,
            idempotent,
        })
    }

    pub(super) fn resolve(&mut self, u: u32, slot: Slot) {
        if let Some(unit) = self.units.get_mut(u as usize) {
            if matches!(unit.slot, Slot::Pending) {
                self.unresolved -= 1;
                self.held.on_resolved(u);
            }
            unit.slot = slot;
        }
    }
}

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
        }) = self.part_mut(pr).and_then(|p| p.for_retry(u))
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
                node: self.nodes[node].addr.to_string(),
                reason: err.to_string(),
            }
        } else if cluster {
            located(
                is_command,
                hslot,
                &self.nodes[node].addr.to_string(),
                &err.to_string(),
            )
        } else {
            clone_err(err)
        };
        if let Some(part) = self.part_mut(pr) {
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
        let Some(part) = self.part_mut(pr) else {
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
        let Some(part) = self.part_mut(pr) else {
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
            self.local_node(id)
        };
        // A payload held for this metadata follows its redirect first.
        self.release_held(pr, u);
        self.requeue(pr, u, node, false);
    }

    /// Puts a unit back in its part's queue for `node` (after ASKING if `asking`). A
    /// chunk's metadata asked for right after its payload joins the payload's ASK group,
    /// so both go out on one connection, payload first.
    pub(super) fn requeue(&mut self, pr: PartRef, u: u32, node: usize, asking: bool) {
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        let Some(unit) = part.units.get_mut(u as usize) else {
            return;
        };
        unit.node = node;
        let (hslot, chunk, role) = (unit.hslot, unit.chunk, unit.role);
        let units = &part.units;
        let existing = if asking {
            part.groups.iter_mut().find(|g| {
                g.asking
                    && g.node == node
                    && g.slot == hslot
                    && pairs_with(units, g.queue.back().copied(), chunk, role)
            })
        } else {
            part.groups
                .iter_mut()
                .find(|g| g.node == node && g.slot == hslot && !g.asking)
        };
        match existing {
            Some(g) => g.queue.push_back(u),
            None => part.groups.push(Group {
                node,
                slot: hslot,
                queue: VecDeque::from([u]),
                asking,
            }),
        }
        part.unsent += 1;
        let class = part.class;
        if !part.queued {
            part.queued = true;
            self.active[class.index()].push_back(pr.idx);
        }
    }

    pub(super) fn part_mut(&mut self, pr: PartRef) -> Option<&mut ActivePart> {
        self.parts
            .get_mut(pr.idx as usize)
            .and_then(|p| p.as_mut())
            .filter(|p| p.gen == pr.gen)
    }

    /// Fails every unit still queued in group `gi` of part `pidx` with `err`, unsent
    /// (the caller completes the part, see `dispatch`).
    pub(super) fn fail_group(&mut self, pidx: usize, gi: usize, err: &Error) {
        let Some(part) = self.parts[pidx].as_mut() else {
            return;
        };
        let Some(g) = part.groups.get_mut(gi) else {
            return;
        };
        let queued: Vec<u32> = g.queue.drain(..).collect();
        part.unsent = part.unsent.saturating_sub(queued.len());
        for u in queued {
            part.resolve(u, Slot::Err(clone_err(err)));
        }
        self.metrics.error("host_down");
    }

    /// Part `idx` is past its deadline: its unresolved units fail, with
    /// [`Error::Timeout`], or [`Error::OutcomeUnknown`] for a write (or raw command)
    /// whose command reached the socket (the server may have run it), and the part
    /// goes back to its batch.
    pub(super) fn expire(&mut self, idx: usize, now: Instant) {
        let Some(part) = self.parts[idx].as_ref() else {
            return;
        };
        let idempotent = matches!(part.batch.op, Op::Get(_) | Op::Exists { .. });
        let gen = part.gen;
        // Units of this part whose command is wholly in the kernel: only these may have
        // been applied. Looked up only for writes, and only when a deadline passes.
        let mut sent: Vec<u32> = Vec::new();
        if !idempotent {
            for c in self.conns.iter().flatten() {
                let written = c.written();
                for p in &c.pending {
                    let mine = p
                        .part
                        .is_some_and(|pr| pr.idx as usize == idx && pr.gen == gen);
                    if mine && p.end <= written {
                        let done = match p.kind {
                            PendKind::PerUnit { next } => next,
                            _ => 0,
                        };
                        sent.extend_from_slice(&p.units[done.min(p.units.len())..]);
                    }
                }
            }
        }
        let Some(part) = self.parts[idx].as_mut() else {
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
                    node: self.nodes[unit.node].addr.to_string(),
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
        let Some(part) = self.parts[idx].as_ref() else {
            return;
        };
        if part.unresolved > 0 {
            return;
        }
        let Some(part) = self.parts[idx].take() else {
            return;
        };
        self.free_parts.push(idx);
        if part.queued {
            self.active[part.class.index()].retain(|&p| p as usize != idx);
        }
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
        let from = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.clone());
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
        }) = self.part_mut(pr).and_then(|p| p.for_retry(u))
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
                self.delayed.push((Instant::now() + after, pr, u));
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
        if let Some(part) = self.part_mut(pr) {
            part.resolve(u, Slot::Err(err));
        }
    }
}

/// Unit `last` (the last one of an ASK group) is the payload of the chunk whose `role`
/// unit is the metadata: the two keys of one chunk.
pub(super) fn pairs_with(units: &[PUnit], last: Option<u32>, chunk: u32, role: Role) -> bool {
    role == Role::Meta
        && last
            .and_then(|l| units.get(l as usize))
            .is_some_and(|lu| lu.chunk == chunk && lu.role == Role::Payload)
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
