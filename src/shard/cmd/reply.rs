//! Every reply but MGET's: how large each kind may be and what a success looks like
//! for each command (what becomes of the units it answers is the shard's, `events`).

use crate::batch::Op;
use crate::config::Config;
use crate::resp::{ReplyLimits, Value, MAX_DEPTH};

use super::super::conn::{PendKind, Pending};
use super::super::parts::Parts;

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

/// The caps for the reply `p` waits for.
pub(in crate::shard) fn reply_limits(p: &Pending, parts: &Parts, cfg: &Config) -> ReplyLimits {
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
            max_bytes: cfg.max_reply_size,
            max_depth: MAX_DEPTH,
            what: "command (extra_config.max_reply_size)",
        },
        PendKind::AllUnits | PendKind::PerUnit { .. } | PendKind::Mget => {
            let what = p
                .part
                .and_then(|pr| parts.get(pr))
                .map_or("write", |part| expect_for(&part.batch.op).1);
            small(what)
        }
    }
}

/// Whether `v`, a reply that is not an error, is what a unit's command of `op` must
/// get: `Ok` if so, else whether the command's outcome is unknown (a write that got a
/// nonsense answer may or may not have been applied; a read simply failed) and why.
pub(in crate::shard) fn reply_kind_ok(op: &Op, v: &Value) -> Result<(), (bool, String)> {
    let (expect, what) = expect_for(op);
    let fits = match expect {
        Expect::Ok => matches!(v, Value::Simple(s) if s == b"OK"),
        Expect::Int => matches!(v, Value::Int(_)),
        Expect::Any => true,
    };
    if fits {
        return Ok(());
    }
    let unknown = expect == Expect::Ok || matches!(op, Op::Delete);
    Err((
        unknown,
        format!("unexpected reply to {what}: {}", preview(v)),
    ))
}
