//! Writes: SET (with a TTL, one per key) and MSET (without, one per group). Payloads
//! go out from the caller's buffers without a copy.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::batch::{Batch, Role};
use crate::metrics::Metrics;
use crate::resp;

use super::super::conn::{Conn, PendKind};
use super::super::parts::PUnit;
use super::Encoded;

/// Writes the queued units that fit: at least one, at most `room`, within `bytes_left`
/// of request bytes (a chunk's metadata always joins its payload).
#[allow(clippy::too_many_arguments)]
pub(in crate::shard) fn encode(
    conn: &mut Conn,
    batch: &Batch,
    data: &[Bytes],
    metas: &[Vec<u8>],
    units: &[PUnit],
    queue: &mut VecDeque<u32>,
    room: usize,
    first: bool,
    bytes_left: usize,
    asking: bool,
    tmp: &mut Vec<u8>,
    metrics: &Metrics,
) -> Encoded {
    let value_of = |pu: &PUnit| match pu.role {
        Role::Payload => &data[pu.chunk as usize][..],
        Role::Meta => &metas[pu.chunk as usize][..],
    };
    let mut picked: Vec<u32> = Vec::new();
    let mut weight = 0usize;
    // Choose the units first: MSET states its argument count up front.
    for &u in queue.iter() {
        let pu = &units[u as usize];
        let value_len = value_of(pu).len();
        let first = picked.is_empty() && first;
        // A chunk's metadata always follows its payload in the same command or on the
        // same connection: a reader that finds the metadata can then expect the
        // payload (LMCache's write order).
        let pair_tail = pu.role == Role::Meta
            && picked.last().map(|&l| units[l as usize].chunk) == Some(pu.chunk);
        if !first && !pair_tail && (picked.len() >= room || weight + value_len > bytes_left) {
            break;
        }
        picked.push(u);
        weight += value_len + 64;
        if asking {
            break;
        }
    }
    queue.drain(..picked.len());
    // Without a TTL one MSET carries the whole group: the server parses and dispatches
    // one command instead of one per key, and a chunk's two keys appear together. With
    // a TTL each key needs SET .. EX.
    let mset = batch.ttl.is_none() && picked.len() > 1;
    let (mut by_ref, mut copied) = (0usize, 0usize);
    tmp.clear();
    if mset {
        resp::write_array_header(tmp, 2 * picked.len() + 1);
        tmp.extend_from_slice(b"$4\r\nMSET\r\n");
        conn.hdr().extend_from_slice(tmp);
    }
    for &u in &picked {
        let pu = &units[u as usize];
        let value = value_of(pu);
        let key = batch.key(pu.chunk, pu.role);
        tmp.clear();
        if mset {
            resp::write_bulk(tmp, key);
            resp::write_bulk_header(tmp, value.len());
        } else {
            resp::write_set_prefix(tmp, key, value.len(), batch.ttl);
        }
        conn.hdr().extend_from_slice(tmp);
        match pu.role {
            Role::Payload => {
                let d = &data[pu.chunk as usize];
                if conn.push_payload(d) {
                    by_ref += d.len();
                } else {
                    copied += d.len();
                }
            }
            Role::Meta => conn.hdr().extend_from_slice(value),
        }
        tmp.clear();
        if mset {
            tmp.extend_from_slice(b"\r\n");
        } else {
            resp::write_set_suffix(tmp, batch.ttl);
        }
        conn.hdr().extend_from_slice(tmp);
    }
    metrics.payload_queued(by_ref, copied);
    Encoded {
        units: picked,
        weight,
        kind: if mset {
            PendKind::AllUnits
        } else {
            PendKind::PerUnit { next: 0 }
        },
    }
}
