//! Reads: MGET. Encodes one MGET per group of keys and lands the reply's values
//! straight in each unit's destination (the caller's buffer for get_into).

use std::collections::VecDeque;

use crate::batch::{Batch, Role, Slot};
use crate::error::{show_key, Error};
use crate::mem::Mem;
use crate::resp::{self, BulkSink, Dest, ProtoError};

use super::super::conn::{Conn, PendKind, DIRECT_MIN};
use super::super::part::{ActivePart, PUnit};
use super::Encoded;

/// The size a payload of unknown length is expected to have: the running average;
/// before any value was seen, the whole budget (so the shard's first MGET asks for one
/// value: no multi-GiB reply before the size is known), or a quarter of the budget
/// (`max_inflight_bytes`) once an MGET reply came back without a value, so that
/// misses still go four keys to an MGET.
pub(in crate::shard) fn expected_value(avg_value: f64, probed: bool, budget: usize) -> usize {
    if avg_value >= 1.0 {
        (avg_value as usize).max(64)
    } else if probed {
        (budget / 4).max(64)
    } else {
        usize::MAX / 4
    }
}

/// Writes `MGET k1 .. kn` for up to `room` queued units whose expected reply fits in
/// `bytes_left` (at least one unit). A payload's expected size is its caller buffer's
/// length (get_into), else `guess` ([`expected_value`]); metadata counts 64 bytes.
#[allow(clippy::too_many_arguments)]
pub(in crate::shard) fn encode(
    conn: &mut Conn,
    batch: &Batch,
    units: &[PUnit],
    queue: &mut VecDeque<u32>,
    room: usize,
    bytes_left: usize,
    guess: usize,
    tmp: &mut Vec<u8>,
) -> Encoded {
    let size = |pu: &PUnit| match (&pu.buf, pu.role) {
        (Some(b), _) => b.len().max(64),
        // LMCache's metadata: a few dozen bytes.
        (None, Role::Meta) => 64,
        (None, Role::Payload) => guess,
    };
    let mut expect = 0usize;
    let mut n = 0usize;
    let room = room.min(queue.len());
    while n < room {
        let pu = &units[queue[n] as usize];
        // A chunk's metadata and payload stay in one reply: a reply ending in a small
        // value of unknown length would let the next reply's large value be staged.
        let pair = pu.role == Role::Meta
            && n + 1 < room
            && units[queue[n + 1] as usize].chunk == pu.chunk
            && units[queue[n + 1] as usize].role == Role::Payload;
        let (take, len) = if pair {
            (2, size(pu) + size(&units[queue[n + 1] as usize]))
        } else {
            (1, size(pu))
        };
        if n > 0 && expect.saturating_add(len) > bytes_left {
            break;
        }
        expect = expect.saturating_add(len);
        n += take;
    }
    let picked: Vec<u32> = queue.drain(..n).collect();
    tmp.clear();
    resp::write_array_header(tmp, picked.len() + 1);
    tmp.extend_from_slice(b"$4\r\nMGET\r\n");
    for &u in &picked {
        let pu = &units[u as usize];
        resp::write_bulk(tmp, batch.key(pu.chunk, pu.role));
    }
    conn.hdr().extend_from_slice(tmp);
    let weight = tmp.len() + expect.min(bytes_left);
    Encoded {
        units: picked,
        weight,
        kind: PendKind::Mget,
    }
}

/// Lands MGET elements in their units.
pub(in crate::shard) struct UnitSink<'a> {
    pub part: Option<&'a mut ActivePart>,
    pub units: &'a [u32],
    pub max_value: usize,
    pub avg_value: &'a mut f64,
    /// The shard's pool of value buffers.
    pub values: &'a std::sync::Arc<crate::mem::ValuePool>,
}

impl BulkSink for UnitSink<'_> {
    fn begin(&mut self, i: usize, len: usize) -> Dest {
        let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) else {
            return Dest::discard(len);
        };
        let unit = &mut part.units[u as usize];
        // The running average of payload sizes (metadata would halve it in the
        // lmcache layout), starting at the first one seen.
        if unit.role == Role::Payload {
            let avg = &mut *self.avg_value;
            *avg = if *avg < 1.0 {
                len as f64
            } else {
                *avg * 0.9 + len as f64 * 0.1
            };
        }
        if let Some(buf) = unit.buf.take() {
            // A caller's buffer (the slice API) takes a value of exactly its length
            // (LMCache's rule) and is left untouched otherwise; an engine buffer
            // (`get_into`) is the space offered.
            let fits = if buf.is_caller() {
                len == buf.len()
            } else {
                len <= buf.len()
            };
            if fits {
                unit.lent = true;
                return Dest {
                    buf,
                    len,
                    keep: true,
                };
            }
            unit.buf = Some(buf);
            part.resolve(u, Slot::TooLarge(len));
            return Dest::discard(len);
        }
        if len > self.max_value {
            let key = show_key(part.batch.key(unit.chunk, unit.role));
            part.resolve(
                u,
                Slot::Err(Error::TooLarge {
                    key,
                    len,
                    limit: self.max_value,
                }),
            );
            return Dest::discard(len);
        }
        match self.values.take(len) {
            Some(buf) => Dest {
                buf: Mem::Pooled(buf, self.values.clone()),
                len,
                keep: true,
            },
            None => Dest::alloc(len),
        }
    }

    fn finish(&mut self, i: usize, dest: Dest) {
        if !dest.keep {
            return;
        }
        if let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) {
            if let Some(unit) = part.units.get_mut(u as usize) {
                unit.lent = false;
            }
            part.resolve(
                u,
                Slot::Data {
                    buf: dest.buf,
                    len: dest.len,
                },
            );
        }
    }

    fn nil(&mut self, i: usize) {
        if let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) {
            part.resolve(u, Slot::Nil);
        }
    }

    /// A reply of another length than the request cannot be matched to its keys:
    /// refused before any value lands in a unit.
    fn array_len(&mut self, n: usize) -> Result<(), ProtoError> {
        if n == self.units.len() {
            return Ok(());
        }
        Err(ProtoError(format!(
            "MGET of {} keys answered with {n} values",
            self.units.len()
        )))
    }
}

/// The size of a small element of unknown length standing before a large value, as
/// LMCache's one-group metadata is sent: `$28\r\n`, 28 bytes, `\r\n`. Longer
/// metadata is read in two receives; never past the large value's header.
const META_GUESS: usize = 35;

/// `+OK\r\n`, a handshake step's or ASKING's reply.
const OK_LEN: usize = 5;

/// `$<len>\r\n` or `*<len>\r\n`: its length in bytes.
fn header_len(n: usize) -> usize {
    let mut digits = 1;
    let mut x = n;
    while x >= 10 {
        x /= 10;
        digits += 1;
    }
    digits + 3
}

/// How many bytes the next receive into the connection's buffer may take so that it
/// stops at the end of the next large value's header: the value then lands straight
/// in its destination (a caller's buffer, whose length is the value's) instead of
/// being copied out of the receive buffer. `None`: no limit (no large value of known
/// length comes next).
pub(in crate::shard) fn recv_cap(conn: &Conn, parts: &[Option<ActivePart>]) -> Option<usize> {
    let front = conn.pending.front()?;
    if matches!(front.kind, PendKind::Handshake { .. } | PendKind::Asking)
        && conn.pending.iter().any(|p| p.kind == PendKind::Mget)
    {
        // A new connection's `+OK`s stand before an MGET reply: read them alone, so
        // the receive does not run into the first large value (its bytes would be
        // staged); the next receive is capped for the MGET.
        return OK_LEN.checked_sub(conn.unread().len()).filter(|&n| n > 0);
    }
    let mut p = Some(front).filter(|p| p.kind == PendKind::Mget)?;
    let (mut i, framing, mut array_header) = conn.rx.reader.upcoming(DIRECT_MIN)?;
    if i >= p.units.len() && !array_header {
        // The reply ends with the last value's CRLF: the next MGET reply on this
        // connection (pipelined) follows, and its first value may be large.
        p = conn.pending.get(1).filter(|p| p.kind == PendKind::Mget)?;
        (i, array_header) = (0, true);
    }
    let pr = p.part?;
    let part = parts
        .get(pr.idx as usize)?
        .as_ref()
        .filter(|x| x.gen == pr.gen)?;
    let mut need = framing;
    if array_header {
        need += header_len(p.units.len());
    }
    let dest_len = |j: usize| {
        let u = *p.units.get(j)?;
        part.units.get(u as usize)?.buf.as_ref().map(|b| b.len())
    };
    let need = match (dest_len(i), dest_len(i + 1)) {
        (Some(len), _) if len >= DIRECT_MIN => need + header_len(len),
        // A small element first (metadata before its payload): read up to the large
        // value's header assuming one-group metadata; decide again after parsing.
        (None, Some(next)) if next >= DIRECT_MIN => need + META_GUESS + header_len(next),
        _ => return None,
    };
    // Unread bytes are the start of that stretch (a header line not complete yet).
    need.checked_sub(conn.unread().len()).filter(|&n| n > 0)
}
