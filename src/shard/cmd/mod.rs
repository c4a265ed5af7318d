//! The command layer: one module per command family, each owning its frame encoding
//! (`encode`) — MGET reads ([`get`]), SET/MSET writes ([`put`]), EXISTS/DEL ([`keys`]),
//! raw commands ([`raw`]) — and the frame builder ([`build_frame`]) and reply reader
//! ([`read_reply`]) that drive them. What a reply means for its units is the shard's
//! (`events`, `part`).

mod get;
mod keys;
mod put;
mod raw;
mod reply;

pub(in crate::shard) use get::recv_cap;
pub(in crate::shard) use reply::{reply_kind_ok, reply_limits};

use std::sync::Arc;
use std::time::Instant;

use crate::batch::Op;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::resp::{self, ArrayOutcome, Value};

use super::conn::{Conn, PartRef, PendKind, Pending};
use super::parts::{ActivePart, Parts};
use crate::mem::ValuePool;

/// What an encoder wrote: the units of one command (or pipelined run of commands),
/// the bytes it is expected to keep in flight, and how its reply is read.
pub(in crate::shard) struct Encoded {
    pub units: Vec<u32>,
    pub weight: usize,
    pub kind: PendKind,
}

/// What the frame builder works with besides the part and the connection.
pub(in crate::shard) struct FrameCx<'a> {
    /// Keys per MGET (twice that per write frame: a chunk's two keys).
    pub chunk_size: usize,
    /// Bytes in flight per connection (`max_inflight_bytes`).
    pub inflight_limit: usize,
    /// The running average value size, updated by writes.
    pub avg_value: &'a mut f64,
    /// An MGET reply came back (value sizes are known, or were absent).
    pub probed: bool,
    pub metrics: &'a Metrics,
}

/// Writes one frame (one round trip) of part `part` (at index `pidx`) to `conn`:
/// commands for the units of group `gi` and of the part's other groups on the same
/// node, within the key and byte budgets. Each command gets its own pending reply.
pub(in crate::shard) fn build_frame(
    part: &mut ActivePart,
    pidx: usize,
    gi: usize,
    conn: &mut Conn,
    cx: FrameCx<'_>,
) {
    let FrameCx {
        chunk_size,
        inflight_limit,
        avg_value,
        probed,
        metrics,
    } = cx;
    let guess = get::expected_value(*avg_value, probed, inflight_limit);
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
            conn.expect(Pending {
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
                metrics,
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
                    let a = &mut *avg_value;
                    *a = if *a < 1.0 { len } else { *a * 0.9 + len * 0.1 };
                }
            }
        }
        let weight = weight.max(1);
        used_keys += units.len();
        used_bytes += weight;
        part.unsent -= units.len();
        conn.add_inflight(weight);
        conn.expect(Pending {
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
    metrics.frame_sent(sent);
}

/// What [`read_reply`] found on a connection.
pub(in crate::shard) enum Read {
    /// No complete reply (a partial one's bytes are in the reader), or nothing owed.
    More,
    /// The bytes cannot be replies: the connection must fail (the reply being read,
    /// if any, is back in its queue).
    Protocol(String),
    /// An MGET reply, read whole: its values landed in their units already.
    Mget(Pending, ArrayOutcome),
    /// Any other reply.
    Reply(Pending, Value),
}

/// What the reply reader works with besides the connection and the parts.
pub(in crate::shard) struct ReadCx<'a> {
    pub cfg: &'a Config,
    pub avg_value: &'a mut f64,
    pub probed: &'a mut bool,
    pub values: &'a Arc<ValuePool>,
    pub metrics: &'a Metrics,
}

/// Reads the next complete reply `conn` holds (MGET values straight into their units).
pub(in crate::shard) fn read_reply(conn: &mut Conn, parts: &mut Parts, cx: ReadCx<'_>) -> Read {
    let Some(p) = conn.next_reply() else {
        if !conn.unread().is_empty() {
            let n = conn.unread().len();
            return Read::Protocol(format!("{n} bytes arrived with no request waiting"));
        }
        return Read::More;
    };
    if p.kind != PendKind::Mget {
        let lim = reply_limits(&p, parts, cx.cfg);
        let (replies, data) = conn.replies_and_unread();
        return match replies.feed(data, lim) {
            Err(e) => {
                conn.put_back(p);
                Read::Protocol(e.0)
            }
            Ok((used, None)) => {
                // Partial reply: its bytes are in the reader now.
                conn.consume(used);
                conn.put_back(p);
                Read::More
            }
            Ok((used, Some(v))) => {
                conn.consume(used);
                Read::Reply(p, v)
            }
        };
    }
    let mut sink = get::UnitSink {
        part: p.part.and_then(|pr| parts.get_mut(pr)),
        units: &p.units,
        max_value: cx.cfg.max_value_size,
        avg_value: cx.avg_value,
        values: cx.values,
    };
    let (reader, data) = conn.reader_and_unread();
    let r = reader.feed(data, &mut sink);
    cx.metrics.recv_staged(reader.take_staged());
    match r {
        Err(e) => {
            conn.put_back(p);
            Read::Protocol(e.0)
        }
        Ok((used, None)) => {
            conn.consume(used);
            conn.put_back(p);
            Read::More
        }
        Ok((used, Some(outcome))) => {
            conn.consume(used);
            *cx.probed = true;
            conn.release(p.weight);
            if let ArrayOutcome::Done(n) = outcome {
                if n != p.units.len() {
                    let msg = format!("MGET of {} keys answered with {n} values", p.units.len());
                    conn.put_back(p);
                    return Read::Protocol(msg);
                }
            }
            Read::Mget(p, outcome)
        }
    }
}
