//! Raw commands (`Engine::command`): the caller's arguments as one command, its reply
//! handed back as a value.

use std::collections::VecDeque;

use crate::resp;

use super::super::conn::{Conn, PendKind};
use super::Encoded;

/// Writes the command for the one queued unit.
pub(in crate::shard) fn encode(
    conn: &mut Conn,
    args: &[Vec<u8>],
    queue: &mut VecDeque<u32>,
    tmp: &mut Vec<u8>,
) -> Encoded {
    let picked: Vec<u32> = queue.pop_front().into_iter().collect();
    let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    tmp.clear();
    resp::write_command(tmp, &refs);
    conn.hdr().extend_from_slice(tmp);
    Encoded {
        units: picked,
        weight: tmp.len() + 1024,
        kind: PendKind::Command,
    }
}
