//! What the engine hands a shard: [`SubmitPart`], the units of one batch routed to it
//! ([`UnitSpec`]), and [`clone_err`], the one error given to every unit failing together.

use std::io;
use std::sync::Arc;

use super::{Batch, Role};
use crate::cluster::NodeId;
use crate::error::Error;
use crate::mem::Mem;

/// One unit as the engine routed it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnitSpec {
    pub chunk: u32,
    pub role: Role,
    /// The server to send it to (from the routing snapshot, or a command's target).
    pub node: NodeId,
    /// Its cluster slot (0 in standalone mode).
    pub slot: u16,
    /// Send after ASKING (a unit forwarded on an ASK redirect).
    pub asking: bool,
    /// Redirects and retries already spent (a forwarded unit keeps its count).
    pub attempts: u8,
}

/// A piece of a batch for one shard: the units it must resolve.
pub(crate) struct SubmitPart {
    pub batch: Arc<Batch>,
    pub units: Vec<UnitSpec>,
    /// Caller buffers (get_into), by chunk.
    pub bufs: Vec<(u32, Mem)>,
}

/// Errors are not `Clone` (io::Error); units failing together each get an equal copy.
pub(crate) fn clone_err(e: &Error) -> Error {
    match e {
        Error::Io { node, source } => Error::Io {
            node: node.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        Error::Auth { node, message } => Error::Auth {
            node: node.clone(),
            message: message.clone(),
        },
        Error::Server { node, message } => Error::Server {
            node: node.clone(),
            message: message.clone(),
        },
        Error::Protocol { node, reason } => Error::Protocol {
            node: node.clone(),
            reason: reason.clone(),
        },
        Error::Timeout { after, what } => Error::Timeout {
            after: *after,
            what: what.clone(),
        },
        Error::OutcomeUnknown { node, reason } => Error::OutcomeUnknown {
            node: node.clone(),
            reason: reason.clone(),
        },
        Error::Closed => Error::Closed,
        Error::Busy { class } => Error::Busy { class },
        Error::Tls {
            node,
            stage,
            reason,
        } => Error::Tls {
            node: node.clone(),
            stage,
            reason: reason.clone(),
        },
        other => Error::Cluster(other.to_string()),
    }
}
