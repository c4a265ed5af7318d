//! Key commands: EXISTS (PEEK) and DEL, pipelined one per key.

use std::collections::VecDeque;

use crate::batch::Batch;
use crate::resp;

use super::super::conn::{Conn, PendKind};
use super::super::parts::PUnit;
use super::Encoded;

/// Writes `cmd key` for up to `room` queued units.
pub(in crate::shard) fn encode(
    conn: &mut Conn,
    cmd: &[u8],
    batch: &Batch,
    units: &[PUnit],
    queue: &mut VecDeque<u32>,
    room: usize,
    tmp: &mut Vec<u8>,
) -> Encoded {
    let picked: Vec<u32> = queue.drain(..room.min(queue.len())).collect();
    tmp.clear();
    for &u in &picked {
        let pu = &units[u as usize];
        resp::write_command(tmp, &[cmd, batch.key(pu.chunk, pu.role)]);
    }
    conn.hdr().extend_from_slice(tmp);
    Encoded {
        weight: tmp.len() + 8 * picked.len(),
        units: picked,
        kind: PendKind::PerUnit { next: 0 },
    }
}
