//! Redis Cluster: slot hashing, the slot table, and redirects.
//!
//! The [`Router`] answers "which server owns this key" for every shard without locks:
//! servers are interned once as [`NodeId`]s, and the slot table is 16384 atomics, each
//! the id of the master that owns the slot.

pub mod slot;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::RwLock;

use crate::config::ServerAddr;

/// Redirects one unit may follow before its error reaches the caller.
pub const MAX_REDIRECTS: u8 = 5;

/// Index of a server in the router's registry; stable for the engine's lifetime.
pub type NodeId = u32;

/// Maps keys to servers.
pub struct Router {
    cluster: bool,
    nodes: RwLock<Vec<ServerAddr>>,
    table: Box<[AtomicU32]>,
    epoch: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Router(cluster={}, epoch={})",
            self.cluster,
            self.epoch()
        )
    }
}

impl Router {
    /// One server owns every key.
    pub fn standalone(addr: ServerAddr) -> Router {
        Router {
            cluster: false,
            nodes: RwLock::new(vec![addr]),
            table: Box::new([]),
            epoch: AtomicU64::new(1),
        }
    }

    /// A cluster router whose slots all point at `seed` until the topology is loaded.
    pub fn cluster(seed: ServerAddr) -> Router {
        Router {
            cluster: true,
            nodes: RwLock::new(vec![seed]),
            table: (0..slot::SLOT_COUNT).map(|_| AtomicU32::new(0)).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    /// `true` in cluster mode.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Bumped on every change of the table.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The server owning `key`.
    pub fn node_for(&self, key: &[u8]) -> NodeId {
        if !self.cluster {
            return 0;
        }
        self.table[slot::hash_slot(key) as usize].load(Ordering::Relaxed)
    }

    /// The server owning a slot.
    pub fn node_for_slot(&self, slot: u16) -> NodeId {
        if !self.cluster {
            return 0;
        }
        self.table[slot as usize % slot::SLOT_COUNT].load(Ordering::Relaxed)
    }

    /// The address of a node id.
    pub fn addr(&self, id: NodeId) -> ServerAddr {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| nodes[0].clone())
    }

    /// The id of an address, registering it on first sight.
    pub fn intern(&self, addr: &ServerAddr) -> NodeId {
        {
            let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = nodes.iter().position(|n| n == addr) {
                return i as NodeId;
            }
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = nodes.iter().position(|n| n == addr) {
            return i as NodeId;
        }
        nodes.push(addr.clone());
        (nodes.len() - 1) as NodeId
    }

    /// A MOVED reply said `slot` lives at `addr` now.
    pub fn note_moved(&self, slot: u16, addr: &ServerAddr) {
        if !self.cluster {
            return;
        }
        let id = self.intern(addr);
        self.table[slot as usize % slot::SLOT_COUNT].store(id, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// A cluster redirect or retry reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot moved for good: update the table.
    Moved { slot: u16, addr: ServerAddr },
    /// The slot is migrating: ask the target once, after ASKING.
    Ask { slot: u16, addr: ServerAddr },
    /// Multi-key command during resharding: try again shortly.
    TryAgain,
}

/// Parses `MOVED 3999 127.0.0.1:6381`, `ASK ...` and `TRYAGAIN ...` error replies.
pub fn parse_redirect(msg: &str) -> Option<Redirect> {
    let mut it = msg.split_ascii_whitespace();
    let kind = it.next()?;
    if kind == "TRYAGAIN" {
        return Some(Redirect::TryAgain);
    }
    if kind != "MOVED" && kind != "ASK" {
        return None;
    }
    let slot: u16 = it.next()?.parse().ok()?;
    let target = it.next()?;
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = ServerAddr::Tcp { host, port };
    Some(if kind == "MOVED" {
        Redirect::Moved { slot, addr }
    } else {
        Redirect::Ask { slot, addr }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, p: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn parses_redirects() {
        assert_eq!(
            parse_redirect("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: tcp("127.0.0.1", 6381)
            })
        );
        assert_eq!(
            parse_redirect("ASK 1 [::1]:7000"),
            Some(Redirect::Ask {
                slot: 1,
                addr: tcp("::1", 7000)
            })
        );
        assert_eq!(
            parse_redirect("TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(parse_redirect("ERR wrong"), None);
        assert_eq!(parse_redirect("MOVED x y"), None);
    }

    #[test]
    fn router_interns_and_moves() {
        let r = Router::cluster(tcp("a", 1));
        assert_eq!(r.node_for(b"foo"), 0);
        let e = r.epoch();
        r.note_moved(12182, &tcp("b", 2));
        assert!(r.epoch() > e);
        assert_eq!(r.node_for(b"foo"), 1);
        assert_eq!(r.addr(1), tcp("b", 2));
        assert_eq!(r.intern(&tcp("b", 2)), 1);
        let s = Router::standalone(tcp("x", 9));
        assert_eq!(s.node_for(b"anything"), 0);
    }
}
