//! The command layer: one module per command family, each owning its frame encoding
//! (`encode`) — MGET reads ([`get`]), SET/MSET writes ([`put`]), EXISTS/DEL ([`keys`]),
//! raw commands ([`raw`]) — and the frame builder and reply reader that drive them.

mod get;
mod keys;
mod put;
mod raw;
mod reply;

pub(in crate::shard) use get::recv_cap;

use std::time::Instant;

use crate::batch::{Op, Slot};
use crate::resp::{self, ArrayOutcome};

use super::conn::{ConnState, PartRef, PendKind, Pending};
use super::Shard;

/// What an encoder wrote: the units of one command (or pipelined run of commands),
/// the bytes it is expected to keep in flight, and how its reply is read.
pub(in crate::shard) struct Encoded {
    pub units: Vec<u32>,
    pub weight: usize,
    pub kind: PendKind,
}

impl Shard {
    /// Writes one frame (one round trip) to `cid`: commands for the units of group
    /// `gi` and of the part's other groups on the same node, within the key and byte
    /// budgets. Each command gets its own pending reply.
    pub(super) fn build_frame(&mut self, pidx: usize, gi: usize, cid: usize) {
        let chunk_size = self.cfg.chunk_size;
        let inflight_limit = self.cfg.max_inflight_bytes;
        let guess = get::expected_value(self.avg_value, self.probed, inflight_limit);
        let Some(part) = self.parts[pidx].as_mut() else {
            return;
        };
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        let batch = part.batch.clone();
        let node = part.groups[gi].node;
        let asking = part.groups[gi].asking;
        // An ASK group (one unit, or a chunk's payload and metadata) goes out whole on
        // this connection, one key per command, each after its own ASKING (it applies
        // to the next command only; and an importing node answers a multi-key command
        // with TRYAGAIN while any of its keys is missing).
        let order: Vec<usize> = if asking {
            vec![gi; part.groups[gi].queue.len()]
        } else {
            (gi..part.groups.len())
                .filter(|&j| {
                    let g = &part.groups[j];
                    g.node == node && !g.asking && !g.queue.is_empty()
                })
                .collect()
        };
        // A GET's expected reply stays under the in-flight budget (`get::encode`):
        // 256 keys of 32 MiB must not be one 8 GiB reply.
        let key_budget = match &batch.op {
            Op::Put { .. } => 2 * chunk_size,
            _ => chunk_size,
        };
        let before = conn.out_len();
        let mut used_keys = 0usize;
        let mut used_bytes = 0usize;
        let mut tmp = Vec::with_capacity(256);
        for j in order {
            if !asking && (used_keys >= key_budget || used_bytes >= inflight_limit) {
                break;
            }
            let g = &mut part.groups[j];
            if asking {
                tmp.clear();
                resp::write_command(&mut tmp, &[b"ASKING"]);
                conn.hdr().extend_from_slice(&tmp);
                conn.pending.push_back(Pending {
                    part: None,
                    kind: PendKind::Asking,
                    units: Vec::new(),
                    weight: 0,
                    sent_at: Instant::now(),
                    end: conn.queued_end(),
                });
            }
            let room = if asking { 1 } else { key_budget - used_keys };
            let enc = match &batch.op {
                Op::Get(_) => get::encode(
                    conn,
                    &batch,
                    &part.units,
                    &mut g.queue,
                    room,
                    inflight_limit.saturating_sub(used_bytes),
                    guess,
                    &mut tmp,
                ),
                Op::Put { data, metas, .. } => put::encode(
                    conn,
                    &batch,
                    data,
                    metas,
                    &part.units,
                    &mut g.queue,
                    room,
                    // An ASKING is written: a command must follow it.
                    used_keys == 0 || asking,
                    inflight_limit.saturating_sub(used_bytes),
                    asking,
                    &mut tmp,
                    &self.metrics,
                ),
                Op::Exists { .. } => keys::encode(
                    conn,
                    b"EXISTS",
                    &batch,
                    &part.units,
                    &mut g.queue,
                    room,
                    &mut tmp,
                ),
                Op::Delete => keys::encode(
                    conn,
                    b"DEL",
                    &batch,
                    &part.units,
                    &mut g.queue,
                    room,
                    &mut tmp,
                ),
                Op::Command { args } => raw::encode(conn, args, &mut g.queue, &mut tmp),
            };
            let Encoded {
                units,
                weight,
                kind,
            } = enc;
            if units.is_empty() {
                continue;
            }
            if let Op::Put { data, .. } = &batch.op {
                // Writes tell the value size too (fan-out and budgets for large values).
                for &u in &units {
                    let pu = &part.units[u as usize];
                    if pu.role == crate::batch::Role::Payload {
                        let len = data[pu.chunk as usize].len() as f64;
                        let a = &mut self.avg_value;
                        *a = if *a < 1.0 { len } else { *a * 0.9 + len * 0.1 };
                    }
                }
            }
            let weight = weight.max(1);
            used_keys += units.len();
            used_bytes += weight;
            part.unsent -= units.len();
            conn.inflight += weight;
            conn.pending.push_back(Pending {
                part: Some(PartRef {
                    idx: pidx as u32,
                    gen: part.gen,
                }),
                kind,
                units,
                weight,
                sent_at: Instant::now(),
                end: conn.queued_end(),
            });
        }
        if asking && part.groups.get(gi).is_some_and(|g| g.queue.is_empty()) {
            part.groups.remove(gi);
        }
        conn.end_frame();
        let sent = conn.out_len() - before;
        self.metrics.frame_sent(sent);
        self.dirty.push(cid);
    }

    /// Reads every complete reply the connection holds.
    pub(super) fn process(&mut self, cid: usize) {
        loop {
            let Some(conn) = self.conns[cid].as_mut() else {
                return;
            };
            if conn.state == ConnState::Dead {
                return;
            }
            let Some(p) = conn.pending.pop_front() else {
                if !conn.unread().is_empty() {
                    let n = conn.unread().len();
                    self.protocol_error(cid, format!("{n} bytes arrived with no request waiting"));
                }
                return;
            };
            match p.kind {
                PendKind::Mget => {
                    let max_value = self.cfg.max_value_size;
                    let part = p.part.and_then(|pr| {
                        self.parts
                            .get_mut(pr.idx as usize)
                            .and_then(|x| x.as_mut())
                            .filter(|x| x.gen == pr.gen)
                    });
                    let mut sink = get::UnitSink {
                        part,
                        units: &p.units,
                        max_value,
                        avg_value: &mut self.avg_value,
                        values: &self.values,
                    };
                    let (reader, data) = conn.reader_and_unread();
                    let r = reader.feed(data, &mut sink);
                    self.metrics.recv_staged(reader.take_staged());
                    match r {
                        Err(e) => {
                            conn.pending.push_front(p);
                            return self.protocol_error(cid, e.0);
                        }
                        Ok((used, None)) => {
                            conn.consume(used);
                            conn.pending.push_front(p);
                            return;
                        }
                        Ok((used, Some(outcome))) => {
                            conn.consume(used);
                            self.probed = true;
                            conn.inflight = conn.inflight.saturating_sub(p.weight);
                            match outcome {
                                ArrayOutcome::Done(n) if n == p.units.len() => {}
                                ArrayOutcome::Done(n) => {
                                    let msg = format!(
                                        "MGET of {} keys answered with {n} values",
                                        p.units.len()
                                    );
                                    conn.pending.push_front(p);
                                    return self.protocol_error(cid, msg);
                                }
                                ArrayOutcome::Nil => {
                                    for &u in &p.units {
                                        if let Some(part) = p.part.and_then(|pr| self.part_mut(pr))
                                        {
                                            part.resolve(u, Slot::Nil);
                                        }
                                    }
                                }
                                ArrayOutcome::Error(msg) => {
                                    for &u in &p.units {
                                        self.unit_error(cid, p.part, u, &msg);
                                    }
                                }
                            }
                            if let Some(pr) = p.part {
                                self.maybe_complete(pr.idx as usize);
                            }
                        }
                    }
                }
                _ => {
                    let lim = self.reply_limits(&p);
                    let Some(conn) = self.conns[cid].as_mut() else {
                        return;
                    };
                    let (replies, data) = conn.replies_and_unread();
                    let (v, used) = match replies.feed(data, lim) {
                        Err(e) => {
                            conn.pending.push_front(p);
                            return self.protocol_error(cid, e.0);
                        }
                        Ok((used, None)) => {
                            // Partial reply: its bytes are in the reader now.
                            conn.consume(used);
                            conn.pending.push_front(p);
                            return;
                        }
                        Ok((used, Some(v))) => (v, used),
                    };
                    conn.consume(used);
                    if !self.on_reply(cid, p, v) {
                        return;
                    }
                }
            }
        }
    }
}
