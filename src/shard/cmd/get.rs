//! Reads: MGET. Encodes one MGET per group of keys and lands the reply's values
//! straight in each unit's destination (the caller's buffer for get_into).

use std::collections::VecDeque;

use crate::batch::{Batch, Slot};
use crate::error::{show_key, Error};
use crate::resp::{self, BulkSink, Dest};

use super::super::conn::{Conn, PendKind};
use super::super::part::{ActivePart, PUnit};
use super::Encoded;

/// Writes `MGET k1 .. kn` for up to `room` queued units.
pub(in crate::shard) fn encode(
    conn: &mut Conn,
    batch: &Batch,
    units: &[PUnit],
    queue: &mut VecDeque<u32>,
    room: usize,
    avg_value: f64,
    tmp: &mut Vec<u8>,
) -> Encoded {
    let picked: Vec<u32> = queue.drain(..room.min(queue.len())).collect();
    tmp.clear();
    resp::write_array_header(tmp, picked.len() + 1);
    tmp.extend_from_slice(b"$4\r\nMGET\r\n");
    for &u in &picked {
        let pu = &units[u as usize];
        resp::write_bulk(tmp, batch.key(pu.chunk, pu.role));
    }
    conn.hdr().extend_from_slice(tmp);
    // Expect values of the running average size (at least 64 bytes each).
    let weight = tmp.len() + (avg_value as usize).max(64) * picked.len();
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
}

impl BulkSink for UnitSink<'_> {
    fn begin(&mut self, i: usize, len: usize) -> Dest {
        *self.avg_value = *self.avg_value * 0.9 + len as f64 * 0.1;
        let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) else {
            return Dest::discard(len);
        };
        let unit = &mut part.units[u as usize];
        if let Some(buf) = unit.buf.take() {
            if len <= buf.len() {
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
        Dest::alloc(len)
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
}
