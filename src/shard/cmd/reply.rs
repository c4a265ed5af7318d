//! Every reply but MGET's: how large each kind may be, what a success looks like for
//! each command, and what becomes of the units it answers.

use crate::batch::{Op, Slot};
use crate::error::Error;
use crate::resp::{ReplyLimits, Value, MAX_DEPTH};

use super::super::conn::{ConnState, HandshakeStep, PartRef, PendKind, Pending};
use super::super::Shard;

/// Largest reply to a handshake step, ASKING, SET / MSET / EXISTS / DEL: `+OK`, an
/// integer or an error line (a MOVED, a WRONGTYPE) in every real case.
pub(in crate::shard) const SMALL_REPLY_MAX: usize = 4096;

/// What a success reply to a unit's command must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `+OK` (SET, MSET).
    Ok,
    /// An integer (EXISTS, DEL).
    Int,
    /// Whatever the server says (`Engine::command`).
    Any,
}

fn expect_for(op: &Op) -> (Expect, &'static str) {
    match op {
        Op::Put { .. } => (Expect::Ok, "SET/MSET"),
        Op::Exists { .. } => (Expect::Int, "EXISTS"),
        Op::Delete => (Expect::Int, "DEL"),
        Op::Command { .. } => (Expect::Any, "command"),
        Op::Get(_) => (Expect::Any, "MGET"),
    }
}

/// Shows the start of an unexpected reply in an error message.
fn preview(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 100 {
        let mut cut = 100;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

impl Shard {
    /// The caps for the reply `p` waits for.
    pub(super) fn reply_limits(&self, p: &Pending) -> ReplyLimits {
        let small = |what| ReplyLimits {
            max_bytes: SMALL_REPLY_MAX,
            max_depth: MAX_DEPTH,
            what,
        };
        match p.kind {
            PendKind::Handshake { step } => small(step.name()),
            PendKind::Asking => small("ASKING"),
            // Topology reads (CLUSTER SHARDS / SLOTS) are commands too.
            PendKind::Command => ReplyLimits {
                max_bytes: self.cfg.max_reply_size,
                max_depth: MAX_DEPTH,
                what: "command (extra_config.max_reply_size)",
            },
            PendKind::AllUnits | PendKind::PerUnit { .. } | PendKind::Mget => {
                let what = p
                    .part
                    .and_then(|pr| {
                        self.parts
                            .get(pr.idx as usize)?
                            .as_ref()
                            .filter(|x| x.gen == pr.gen)
                    })
                    .map_or("write", |part| expect_for(&part.batch.op).1);
                small(what)
            }
        }
    }

    /// Applies one complete reply to what waited for it. Returns `false` when the
    /// connection is gone (failed by a handshake error).
    pub(super) fn on_reply(&mut self, cid: usize, mut p: Pending, v: Value) -> bool {
        match p.kind {
            PendKind::Handshake { step } => return self.handshake_reply(cid, step, v),
            PendKind::Asking => {}
            PendKind::Command => {
                self.release(cid, p.weight);
                if let (Some(pr), Some(&u)) = (p.part, p.units.first()) {
                    self.settle(cid, pr, u, v, Slot::Value);
                    self.maybe_complete(pr.idx as usize);
                }
            }
            PendKind::AllUnits => {
                self.release(cid, p.weight);
                if let Some(pr) = p.part {
                    for &u in &p.units {
                        self.settle(cid, pr, u, v.clone(), |_| Slot::Ok);
                    }
                    self.maybe_complete(pr.idx as usize);
                }
            }
            PendKind::PerUnit { next } => {
                let u = p.units.get(next).copied();
                if let (Some(pr), Some(u)) = (p.part, u) {
                    self.settle(cid, pr, u, v, |v| match v {
                        Value::Int(i) => Slot::Int(i),
                        Value::Simple(_) => Slot::Ok,
                        other => Slot::Value(other),
                    });
                }
                let Some(conn) = self.conns[cid].as_mut() else {
                    return false;
                };
                if next + 1 < p.units.len() {
                    p.kind = PendKind::PerUnit { next: next + 1 };
                    conn.pending.push_front(p);
                } else {
                    conn.inflight = conn.inflight.saturating_sub(p.weight);
                    if let Some(pr) = p.part {
                        self.maybe_complete(pr.idx as usize);
                    }
                }
            }
            PendKind::Mget => {
                // MGET replies are read by the array reader and never reach here; if
                // one did, the stream is out of step.
                self.protocol_error(cid, "MGET reply in the per-reply path".into());
                return false;
            }
        }
        true
    }

    fn release(&mut self, cid: usize, weight: usize) {
        if let Some(conn) = self.conns[cid].as_mut() {
            conn.inflight = conn.inflight.saturating_sub(weight);
        }
    }

    /// The reply to a handshake step. An error fails the connection when the step is
    /// required (AUTH, SELECT) or the server asks for authentication; an optional
    /// step's error (CLIENT SETNAME refused by a proxy) is logged once per server and
    /// shard, and ignored. Returns `false` when the connection failed.
    fn handshake_reply(&mut self, cid: usize, step: HandshakeStep, v: Value) -> bool {
        let Some(conn) = self.conns[cid].as_ref() else {
            return false;
        };
        let node = conn.node;
        if let Value::Error(msg) = &v {
            let message = String::from_utf8_lossy(msg).into_owned();
            let auth = message.starts_with("WRONGPASS") || message.starts_with("NOAUTH");
            let addr = self.nodes[node].addr.to_string();
            if step.required() || auth {
                let message = format!("{} refused: {message}", step.name());
                let err = if step == HandshakeStep::Auth || auth {
                    Error::Auth {
                        node: addr,
                        message,
                    }
                } else {
                    Error::Server {
                        node: addr,
                        message,
                    }
                };
                tracing::error!(shard = self.id, error = %err, "connection handshake failed");
                self.fail_conn(cid, err, true);
                return false;
            }
            if self.nodes[node].refused_steps.contains(&step) {
                tracing::debug!(shard = self.id, node = %addr, step = step.name(), reply = %message, "optional handshake step refused again");
            } else {
                self.nodes[node].refused_steps.push(step);
                tracing::warn!(shard = self.id, node = %addr, step = step.name(), reply = %message, "server refused an optional handshake step; continuing without it (logged once per server and shard)");
            }
        }
        let Some(conn) = self.conns[cid].as_mut() else {
            return false;
        };
        if !conn
            .pending
            .iter()
            .any(|q| matches!(q.kind, PendKind::Handshake { .. }))
        {
            conn.state = ConnState::Ready;
        }
        true
    }

    /// Resolves a unit with its reply: an error reply goes through [`Self::unit_error`]
    /// (redirects, retries), a reply of the wrong shape for the command (`+OK` for a
    /// write, an integer for EXISTS / DEL) fails the unit as a counted protocol error,
    /// anything else becomes the slot `ok` makes of it.
    fn settle(
        &mut self,
        cid: usize,
        pr: PartRef,
        u: u32,
        v: Value,
        ok: impl FnOnce(Value) -> Slot,
    ) {
        if let Value::Error(msg) = &v {
            return self.unit_error(cid, Some(pr), u, msg);
        }
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        let (expect, what) = expect_for(&part.batch.op);
        let fits = match expect {
            Expect::Ok => matches!(&v, Value::Simple(s) if s == b"OK"),
            Expect::Int => matches!(v, Value::Int(_)),
            Expect::Any => true,
        };
        if fits {
            return part.resolve(u, ok(v));
        }
        // The failure path only: the node's name is formatted here, not per reply.
        let unknown = expect == Expect::Ok || matches!(part.batch.op, Op::Delete);
        let node = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.to_string())
            .unwrap_or_default();
        self.metrics.error("protocol");
        let reason = format!("unexpected reply to {what}: {}", preview(&v));
        // A write that reached the server and got a nonsense answer may or may not
        // have been applied; a read is simply failed.
        let err = if unknown {
            Error::OutcomeUnknown { node, reason }
        } else {
            Error::Protocol { node, reason }
        };
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        part.resolve(u, Slot::Err(err));
    }
}
