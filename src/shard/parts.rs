//! The parts a shard works on, and their owner [`Parts`]: the table of active parts
//! (by index and generation), the per-class queues of parts with units to send, and
//! the units waiting for a delayed retry. What happens to a unit after a failure (the
//! shard's decisions, which need routing and connections too) is `part`'s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::batch::{clone_err, Batch, Op, Role, Slot, SubmitPart};
use crate::cluster::NodeId;
use crate::error::Error;
use crate::mem::Mem;
use crate::priority::Priority;

use super::conn::PartRef;
use super::pairs::HeldRedirects;

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
pub(super) struct RetryContext<'a> {
    pub(super) unit: &'a mut PUnit,
    /// The request's deadline is still ahead.
    pub(super) in_time: bool,
    /// A raw `Engine::command`.
    pub(super) is_command: bool,
    /// Safe to run twice (MGET, EXISTS).
    pub(super) idempotent: bool,
}

impl ActivePart {
    /// What a retry decision about unit `u` needs: the unit, whether the batch is
    /// still within its deadline, and whether it is a raw command.
    pub(super) fn for_retry(&mut self, u: u32) -> Option<RetryContext<'_>> {
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

/// The parts in flight of one shard.
pub(super) struct Parts {
    /// Active parts by index; a free index is `None` (and listed in `free`).
    slots: Vec<Option<ActivePart>>,
    free: Vec<usize>,
    next_gen: u32,
    /// Per priority class, the parts with units still to send, in arrival order.
    active: [VecDeque<u32>; 4],
    /// Units waiting to be retried (TRYAGAIN, CLUSTERDOWN, LOADING): when, which.
    delayed: Vec<(Instant, PartRef, u32)>,
}

impl Parts {
    pub(super) fn new() -> Parts {
        Parts {
            slots: Vec::new(),
            free: Vec::new(),
            next_gen: 1,
            active: Default::default(),
            delayed: Vec::new(),
        }
    }

    /// How many parts are active.
    pub(super) fn count(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Every active part.
    pub(super) fn iter(&self) -> impl Iterator<Item = &ActivePart> {
        self.slots.iter().flatten()
    }

    /// The table by index (the receive cap looks parts up by reference).
    pub(super) fn slots(&self) -> &[Option<ActivePart>] {
        &self.slots
    }

    pub(super) fn at(&self, idx: usize) -> Option<&ActivePart> {
        self.slots.get(idx).and_then(|p| p.as_ref())
    }

    pub(super) fn at_mut(&mut self, idx: usize) -> Option<&mut ActivePart> {
        self.slots.get_mut(idx).and_then(|p| p.as_mut())
    }

    /// The part `pr` names, if it is still the same part.
    pub(super) fn get(&self, pr: PartRef) -> Option<&ActivePart> {
        self.at(pr.idx as usize).filter(|p| p.gen == pr.gen)
    }

    pub(super) fn get_mut(&mut self, pr: PartRef) -> Option<&mut ActivePart> {
        self.at_mut(pr.idx as usize).filter(|p| p.gen == pr.gen)
    }

    /// Takes in a part of a batch (its units grouped by node and slot, `node` giving
    /// the shard-local node of a router node) and queues it in its class. Returns its
    /// index and whether it has no unit at all.
    pub(super) fn admit(
        &mut self,
        class: Priority,
        sp: SubmitPart,
        mut node_of: impl FnMut(NodeId) -> usize,
    ) -> (usize, bool) {
        let mut bufs = sp.bufs.into_iter().peekable();
        let mut units = Vec::with_capacity(sp.units.len());
        let mut groups: Vec<Group> = Vec::new();
        for (i, spec) in sp.units.into_iter().enumerate() {
            let buf = if spec.role == Role::Payload
                && bufs.peek().is_some_and(|(c, _)| *c == spec.chunk)
            {
                bufs.next().map(|(_, b)| b)
            } else {
                None
            };
            let node = node_of(spec.node);
            // Units of one slot are usually adjacent (hash tags, standalone): check the
            // last group first. An ASK group takes only a chunk's metadata right after
            // its payload (forwarded together, see `pairs`).
            let existing = if spec.asking {
                groups.last_mut().filter(|g| {
                    g.asking
                        && g.node == node
                        && g.slot == spec.slot
                        && pairs_with(&units, g.queue.back().copied(), spec.chunk, spec.role)
                })
            } else {
                groups
                    .iter_mut()
                    .rev()
                    .find(|g| g.node == node && g.slot == spec.slot && !g.asking)
            };
            match existing {
                Some(g) => g.queue.push_back(i as u32),
                None => groups.push(Group {
                    node,
                    slot: spec.slot,
                    queue: VecDeque::from([i as u32]),
                    asking: spec.asking,
                }),
            }
            units.push(PUnit {
                chunk: spec.chunk,
                role: spec.role,
                buf,
                attempts: spec.attempts,
                slot: Slot::Pending,
                hslot: spec.slot,
                node,
                lent: false,
            });
        }
        let n = units.len();
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let part = ActivePart {
            gen,
            class,
            batch: sp.batch,
            units,
            groups,
            unsent: n,
            unresolved: n,
            queued: true,
            held: Default::default(),
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(part);
                i
            }
            None => {
                self.slots.push(Some(part));
                self.slots.len() - 1
            }
        };
        self.active[class.index()].push_back(idx as u32);
        (idx, n == 0)
    }

    /// Classes with parts waiting to send, less the `blocked` ones.
    pub(super) fn sendable(&self, blocked: [bool; 4]) -> [bool; 4] {
        let mut nonempty = [false; 4];
        for c in 0..4 {
            nonempty[c] = !blocked[c] && !self.active[c].is_empty();
        }
        nonempty
    }

    /// The `i`th part waiting in class `c`, among the first `limit`.
    pub(super) fn waiting(&self, c: usize, i: usize, limit: usize) -> Option<u32> {
        if i < self.active[c].len().min(limit) {
            self.active[c].get(i).copied()
        } else {
            None
        }
    }

    /// Takes the `i`th part of class `c` off its queue: it has nothing left to send.
    pub(super) fn unqueue(&mut self, c: usize, i: usize) {
        if let Some(pidx) = self.active[c].remove(i) {
            if let Some(p) = self.at_mut(pidx as usize) {
                p.queued = false;
            }
        }
    }

    /// Puts a unit back in its part's queue for `node` (after ASKING if `asking`). A
    /// chunk's metadata asked for right after its payload joins the payload's ASK group,
    /// so both go out on one connection, payload first.
    pub(super) fn requeue(&mut self, pr: PartRef, u: u32, node: usize, asking: bool) {
        let Some(part) = self.get_mut(pr) else {
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

    /// Fails every unit still queued in group `gi` of part `pidx` with `err`, unsent
    /// (the caller completes the part, see `Shard::dispatch`). `false` when there was
    /// no such group.
    pub(super) fn fail_group(&mut self, pidx: usize, gi: usize, err: &Error) -> bool {
        let Some(part) = self.at_mut(pidx) else {
            return false;
        };
        let Some(g) = part.groups.get_mut(gi) else {
            return false;
        };
        let queued: Vec<u32> = g.queue.drain(..).collect();
        part.unsent = part.unsent.saturating_sub(queued.len());
        for u in queued {
            part.resolve(u, Slot::Err(clone_err(err)));
        }
        true
    }

    /// Takes part `idx` out once every unit is resolved, to hand back to its batch.
    pub(super) fn take_done(&mut self, idx: usize) -> Option<ActivePart> {
        if self.at(idx)?.unresolved > 0 {
            return None;
        }
        let part = self.slots[idx].take()?;
        self.free.push(idx);
        if part.queued {
            self.active[part.class.index()].retain(|&p| p as usize != idx);
        }
        Some(part)
    }

    /// The indices of parts whose deadline is `now` or earlier.
    pub(super) fn overdue(&self, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.at(i).is_some_and(|p| now >= p.batch.deadline))
            .collect()
    }

    /// Unit `u` of `pr` is retried at `at`.
    pub(super) fn delay(&mut self, at: Instant, pr: PartRef, u: u32) {
        self.delayed.push((at, pr, u));
    }

    /// `true` while unit `u` of `pr` waits for a delayed retry.
    pub(super) fn is_delayed(&self, pr: PartRef, u: u32) -> bool {
        self.delayed.iter().any(|&(_, p, x)| p == pr && x == u)
    }

    /// The delayed retries due at `now`, taken.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(PartRef, u32)> {
        if self.delayed.is_empty() {
            return Vec::new();
        }
        let due: Vec<(Instant, PartRef, u32)>;
        (due, self.delayed) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(t, _, _)| *t <= now);
        due.into_iter().map(|(_, pr, u)| (pr, u)).collect()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::batch::{BatchInit, KeyArena, UnitSpec};
    use crate::layout::{KeyLayout, KeyScheme};
    use crate::metrics::Metrics;

    /// A DEL part of one unit per `(node, slot)`.
    fn part(units: &[(NodeId, u16)]) -> SubmitPart {
        let keys: Vec<Vec<u8>> = (0..units.len())
            .map(|i| format!("k{i}").into_bytes())
            .collect();
        let batch = Arc::new(Batch::new(BatchInit {
            op: Op::Delete,
            class: Priority::Put,
            layout: KeyScheme::plain(KeyLayout::Raw),
            keys: KeyArena::from_keys(&keys),
            ttl: None,
            timeout: Duration::from_secs(10),
            metrics: Arc::new(Metrics::new()),
            follow_up: None,
        }));
        let units = units
            .iter()
            .enumerate()
            .map(|(i, &(node, slot))| UnitSpec {
                chunk: i as u32,
                role: Role::Payload,
                node,
                slot,
                asking: false,
                attempts: 0,
            })
            .collect();
        SubmitPart {
            batch,
            units,
            bufs: Vec::new(),
        }
    }

    #[test]
    fn a_part_is_queued_while_it_has_units_to_send_and_handed_back_once_resolved() {
        let mut parts = Parts::new();
        let c = Priority::Put.index();
        let (idx, empty) = parts.admit(Priority::Put, part(&[(0, 1), (1, 2), (0, 1)]), |id| {
            id as usize
        });
        assert!(!empty);
        assert_eq!(parts.count(), 1);
        let p = parts.at(idx).expect("admitted");
        // Units of one node and slot share a group.
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[0].queue, VecDeque::from([0, 2]));
        let pr = PartRef {
            idx: idx as u32,
            gen: p.gen,
        };
        assert_eq!(parts.waiting(c, 0, 8), Some(pr.idx));
        // Nothing left to send: off its class queue; a requeued unit puts it back.
        parts.unqueue(c, 0);
        assert_eq!(parts.sendable([false; 4]), [false; 4]);
        parts.requeue(pr, 1, 0, false);
        assert_eq!(parts.waiting(c, 0, 8), Some(pr.idx));
        // It joins the group of its new node and its own slot (a new one here).
        let g = parts.at(idx).unwrap().groups.last().unwrap();
        assert_eq!((g.node, g.slot, g.queue.back()), (0, 2, Some(&1)));
        // Handed back only once every unit is resolved, and then off every queue.
        assert!(parts.take_done(idx).is_none());
        for u in 0..3 {
            parts.get_mut(pr).unwrap().resolve(u, Slot::Ok);
        }
        assert!(parts.take_done(idx).is_some());
        assert_eq!(parts.count(), 0);
        assert_eq!(parts.sendable([false; 4]), [false; 4]);
        assert!(parts.get(pr).is_none());
        // The index is reused with a new generation: the old reference finds nothing.
        let (again, _) = parts.admit(Priority::Put, part(&[(0, 1)]), |id| id as usize);
        assert_eq!(again, idx);
        assert!(parts.get(pr).is_none());
    }
}
