//! Redis Cluster: slot hashing, the slot table, and redirects.
//!
//! The `Router` answers "which server owns this key" for every shard without locks:
//! servers are interned once as `NodeId`s, and the slot table (16384 entries, each the
//! id of the master that owns the slot) is an immutable snapshot behind an `ArcSwap`,
//! replaced whole when the topology changes.

pub(crate) mod retry;
pub mod slot;
pub mod topology;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::addr::ServerAddr;
pub use topology::Topology;
#[cfg(test)]
use topology::{NodeInfo, ShardInfo};

/// Redirects one unit may follow before its error reaches the caller.
pub(crate) const MAX_REDIRECTS: u8 = 5;

/// Index of a server in the router's registry; stable for the engine's lifetime.
pub(crate) type NodeId = u32;

/// Shard value for "no owner yet".
const NO_OWNER: u16 = u16::MAX;

/// Where a key goes, from [`SlotTable::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The key's hash slot.
    pub slot: u16,
    /// The server to send it to.
    pub node: NodeId,
    /// The shard owning that server's connections, if assigned yet.
    pub owner: Option<usize>,
}

/// An immutable routing snapshot: slot -> master, master -> owning shard.
///
/// Callers load the current snapshot once per batch (lock-free) and route every key of
/// the batch with it; updates build a new snapshot and swap it in atomically.
#[derive(Debug, Clone)]
pub(crate) struct SlotTable {
    /// Bumped on every change.
    pub epoch: u64,
    slots: Box<[NodeId]>,
    owner: Vec<u16>,
    replicas: Vec<Vec<NodeId>>,
}

impl SlotTable {
    /// The master serving `slot` (node 0 in standalone mode).
    pub fn node_for_slot(&self, slot: u16) -> NodeId {
        self.slots.get(slot as usize).copied().unwrap_or(0)
    }

    /// The shard that owns a node's connections, if assigned.
    pub fn owner(&self, node: NodeId) -> Option<usize> {
        match self.owner.get(node as usize) {
            Some(&o) if o != NO_OWNER => Some(o as usize),
            _ => None,
        }
    }

    /// The one routing function: key -> slot -> node (the master, or one of its
    /// replicas picked round-robin by `replica_pick` when given) -> owning shard.
    pub fn route(&self, key: &[u8], replica_pick: Option<usize>) -> Route {
        let slot = slot::hash_slot(key);
        let mut node = self.node_for_slot(slot);
        if let Some(pick) = replica_pick {
            if let Some(r) = self.replica_of(node, pick) {
                node = r;
            }
        }
        Route {
            slot,
            node,
            owner: self.owner(node),
        }
    }

    /// A replica of `master` to read from (round-robin by `pick`), if it has any.
    pub fn replica_of(&self, master: NodeId, pick: usize) -> Option<NodeId> {
        let r = self.replicas.get(master as usize)?;
        (!r.is_empty()).then(|| r[pick % r.len()])
    }

    fn set_owner(&mut self, node: NodeId, shard: u16) {
        let i = node as usize;
        if self.owner.len() <= i {
            self.owner.resize(i + 1, NO_OWNER);
        }
        self.owner[i] = shard;
    }

    /// Masters per shard, to place a new master on the least loaded live one.
    fn least_loaded(&self, nshards: usize, dead: &[bool]) -> u16 {
        let mut load = vec![0usize; nshards.max(1)];
        let masters: std::collections::BTreeSet<NodeId> = self.slots.iter().copied().collect();
        for m in masters {
            if let Some(o) = self.owner(m) {
                if o < load.len() {
                    load[o] += 1;
                }
            }
        }
        load.iter()
            .enumerate()
            .filter(|(i, _)| !dead.get(*i).copied().unwrap_or(false))
            .min_by_key(|(_, l)| **l)
            .map_or(0, |(i, _)| i as u16)
    }
}

/// Node registry entry.
#[derive(Debug, Clone)]
struct NodeEntry {
    addr: ServerAddr,
    readonly: bool,
    /// Given by the caller's URL: always worth asking for the topology again.
    seed: bool,
    /// Named by the topology last applied (master or healthy replica). A node that a
    /// reshard or failover removed is forgotten: refreshes stop asking it. Its id stays
    /// allocated (shards may still hold connections keyed by it), so the registry is
    /// bounded by the distinct addresses ever seen, not by churn of live ones.
    in_topology: bool,
}

/// Maps keys to servers and servers to shards.
pub(crate) struct Router {
    cluster: bool,
    nshards: usize,
    nodes: RwLock<Vec<NodeEntry>>,
    table: ArcSwap<SlotTable>,
    write: Mutex<()>,
    topology: Mutex<Topology>,
    refresh_wanted: AtomicBool,
    /// Standalone: the node serving every key (node 0 unless a sentinel moved it).
    master: AtomicU32,
    /// Standalone behind sentinels: failures ask the sentinel thread to look again.
    sentinel: AtomicBool,
    refresh_lock: Mutex<bool>,
    refresh_cv: Condvar,
    /// Shards whose thread died: they own no node (changed under `write`).
    dead: Mutex<Vec<bool>>,
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
    pub fn standalone(addr: ServerAddr, nshards: usize) -> Router {
        Router::build(false, addr, nshards, Box::new([]))
    }

    /// A cluster router whose slots all point at the first seed until the topology is
    /// loaded. Every seed is registered, so a refresh can ask the others when the first
    /// one is down.
    pub fn cluster(seeds: &[ServerAddr], nshards: usize) -> Router {
        let first = seeds.first().cloned().unwrap_or(ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 6379,
        });
        let r = Router::build(
            true,
            first,
            nshards,
            vec![0; slot::SLOT_COUNT].into_boxed_slice(),
        );
        for s in seeds.iter().skip(1) {
            r.intern(s);
        }
        for n in r
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            n.seed = true;
        }
        r
    }

    fn build(cluster: bool, seed: ServerAddr, nshards: usize, slots: Box<[NodeId]>) -> Router {
        Router {
            cluster,
            nshards: nshards.max(1),
            nodes: RwLock::new(vec![NodeEntry {
                addr: seed,
                readonly: false,
                seed: true,
                in_topology: false,
            }]),
            table: ArcSwap::from_pointee(SlotTable {
                epoch: 1,
                slots,
                owner: vec![0],
                replicas: Vec::new(),
            }),
            write: Mutex::new(()),
            topology: Mutex::new(Topology::default()),
            refresh_wanted: AtomicBool::new(false),
            master: AtomicU32::new(0),
            sentinel: AtomicBool::new(false),
            refresh_lock: Mutex::new(false),
            refresh_cv: Condvar::new(),
            dead: Mutex::new(vec![false; nshards.max(1)]),
        }
    }

    fn dead_shards(&self) -> Vec<bool> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Shard `shard` died: it owns no node from now on. Its masters (with their
    /// replicas) go to the least loaded live shards; later topologies skip it. Nothing
    /// changes when no shard is left alive.
    pub fn retire_shard(&self, shard: usize) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let dead = {
            let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            match d.get_mut(shard) {
                Some(x) => *x = true,
                None => return,
            }
            d.clone()
        };
        if dead.iter().all(|&d| d) {
            return;
        }
        let cur = self.table.load();
        let mut next = SlotTable::clone(&cur);
        next.epoch += 1;
        let masters: std::collections::BTreeSet<NodeId> = next.slots.iter().copied().collect();
        for m in masters {
            if next.owner(m) != Some(shard) {
                continue;
            }
            let o = next.least_loaded(self.nshards, &dead);
            next.set_owner(m, o);
            let reps = next.replicas.get(m as usize).cloned().unwrap_or_default();
            for r in reps {
                next.set_owner(r, o);
            }
        }
        // Nodes outside the slot map (a standalone server, stale replicas).
        for i in 0..next.owner.len() {
            if next.owner[i] as usize == shard {
                next.owner[i] = next.least_loaded(self.nshards, &dead);
            }
        }
        self.table.store(Arc::new(next));
    }

    /// Standalone behind sentinels: connection failures and READONLY replies request
    /// a refresh, which the sentinel thread serves.
    pub fn follow_sentinels(&self) {
        self.sentinel.store(true, Ordering::SeqCst);
    }

    /// Standalone: the node serving every key.
    pub fn master(&self) -> NodeId {
        self.master.load(Ordering::SeqCst)
    }

    /// Standalone: `addr` serves every key from now on (a failover). New requests go
    /// there; requests already routed finish (or fail) where they were sent. Returns
    /// whether the master changed.
    pub fn set_master(&self, addr: &ServerAddr) -> bool {
        let id = self.intern(addr);
        self.master.swap(id, Ordering::SeqCst) != id
    }

    /// `true` in cluster mode.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The current routing snapshot.
    pub fn snapshot(&self) -> Arc<SlotTable> {
        self.table.load_full()
    }

    /// Epoch of the current snapshot.
    pub fn epoch(&self) -> u64 {
        self.table.load().epoch
    }

    /// Routes `key` with the current snapshot ([`SlotTable::route`]); in standalone
    /// mode everything goes to node 0, slot 0.
    pub fn route(&self, key: &[u8]) -> Route {
        if !self.cluster {
            return Route {
                slot: 0,
                node: self.master(),
                owner: None,
            };
        }
        self.table.load().route(key, None)
    }

    /// The address of a node id.
    pub fn addr(&self, id: NodeId) -> ServerAddr {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(id as usize).unwrap_or(&nodes[0]).addr.clone()
    }

    /// Whether connections to this node must send READONLY (it was seen as a replica).
    pub fn is_readonly(&self, id: NodeId) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(id as usize).is_some_and(|n| n.readonly)
    }

    /// The id of an address, registering it on first sight.
    pub fn intern(&self, addr: &ServerAddr) -> NodeId {
        {
            let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = nodes.iter().position(|n| &n.addr == addr) {
                return i as NodeId;
            }
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = nodes.iter().position(|n| &n.addr == addr) {
            return i as NodeId;
        }
        nodes.push(NodeEntry {
            addr: addr.clone(),
            readonly: false,
            seed: false,
            in_topology: false,
        });
        (nodes.len() - 1) as NodeId
    }

    fn mark_readonly(&self, id: NodeId, readonly: bool) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(id as usize) {
            n.readonly = readonly;
        }
    }

    /// A MOVED reply said `slot` lives at `addr` now: update that slot and ask for a
    /// full refresh. Returns the node id of `addr`.
    pub fn note_moved(&self, slot: u16, addr: &ServerAddr) -> NodeId {
        let id = self.intern(addr);
        if !self.cluster {
            return id;
        }
        {
            let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
            let cur = self.table.load();
            if cur.node_for_slot(slot) != id {
                let mut next = SlotTable::clone(&cur);
                next.epoch += 1;
                if let Some(s) = next.slots.get_mut(slot as usize) {
                    *s = id;
                }
                if next.owner(id).is_none() {
                    let shard = next.least_loaded(self.nshards, &self.dead_shards());
                    next.set_owner(id, shard);
                }
                self.table.store(Arc::new(next));
            }
        }
        self.request_refresh();
        id
    }

    /// Installs a freshly read topology. Masters keep their shard when they had one;
    /// new masters go to the least loaded shard. Returns (master, shard) pairs.
    pub fn apply(&self, topo: &Topology) -> Vec<(ServerAddr, usize)> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.table.load();
        let mut next = SlotTable {
            epoch: cur.epoch + 1,
            slots: cur.slots.clone(),
            owner: Vec::new(),
            replicas: Vec::new(),
        };
        let nshards = self.nshards;
        // Dead shards take no master (all dead: the spread stays as it was).
        let mut dead = self.dead_shards();
        if dead.iter().all(|&d| d) {
            dead.iter_mut().for_each(|d| *d = false);
        }
        let live = dead.iter().filter(|&&d| !d).count().max(1);
        let per_shard_cap = topo.shards.len().div_ceil(live).max(1);
        let mut load = vec![0usize; nshards];
        let masters: Vec<NodeId> = topo
            .shards
            .iter()
            .map(|s| self.intern(&s.master.addr))
            .collect();
        // Keep previous owners where that keeps the spread even.
        let mut owner_of = vec![None; masters.len()];
        for (i, &m) in masters.iter().enumerate() {
            if let Some(o) = cur.owner(m) {
                if o < nshards && !dead[o] && load[o] < per_shard_cap {
                    load[o] += 1;
                    owner_of[i] = Some(o);
                }
            }
        }
        for o in owner_of.iter_mut() {
            if o.is_none() {
                let (best, _) = load
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !dead[*i])
                    .min_by_key(|(_, l)| **l)
                    .unwrap_or((0, &0));
                load[best] += 1;
                *o = Some(best);
            }
        }
        let mut mapping = Vec::new();
        for (i, shard) in topo.shards.iter().enumerate() {
            let m = masters[i];
            let o = owner_of[i].unwrap_or(0) as u16;
            next.set_owner(m, o);
            self.mark_readonly(m, false);
            for &(a, b) in &shard.slots {
                for s in a..=b.min(16383) {
                    next.slots[s as usize] = m;
                }
            }
            let mut reps = Vec::new();
            for r in shard.replicas.iter().filter(|r| r.healthy) {
                let id = self.intern(&r.addr);
                self.mark_readonly(id, true);
                next.set_owner(id, o);
                reps.push(id);
            }
            if next.replicas.len() <= m as usize {
                next.replicas.resize(m as usize + 1, Vec::new());
            }
            next.replicas[m as usize] = reps;
            mapping.push((shard.master.addr.clone(), o as usize));
        }
        self.mark_members(&next);
        self.table.store(Arc::new(next));
        *self.topology.lock().unwrap_or_else(|e| e.into_inner()) = topo.clone();
        mapping
    }

    /// The topology last installed by [`apply`](Self::apply).
    pub fn topology(&self) -> Topology {
        self.topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records which nodes `table` names (slot owners and their replicas); the others
    /// are forgotten by [`refresh_candidates`](Self::refresh_candidates).
    fn mark_members(&self, table: &SlotTable) {
        let mut member = vec![false; self.nodes.read().unwrap_or_else(|e| e.into_inner()).len()];
        let mut mark = |id: NodeId| {
            if let Some(m) = member.get_mut(id as usize) {
                *m = true;
            }
        };
        for &n in table.slots.iter() {
            mark(n);
        }
        for reps in &table.replicas {
            for &r in reps {
                mark(r);
            }
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        for (n, m) in nodes.iter_mut().zip(member) {
            n.in_topology = m;
        }
    }

    /// Where a refresh should ask: every master currently in the table, then the
    /// other nodes the last topology named, then the seeds. Nodes that a reshard or
    /// failover removed are not asked again (each would cost a connect timeout).
    pub fn refresh_candidates(&self) -> Vec<ServerAddr> {
        let table = self.table.load();
        let mut ids: Vec<NodeId> = Vec::new();
        for &n in table.slots.iter() {
            if !ids.contains(&n) {
                ids.push(n);
            }
        }
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        for pass_seeds in [false, true] {
            for (i, n) in nodes.iter().enumerate() {
                let i = i as NodeId;
                let wanted = if pass_seeds { n.seed } else { n.in_topology };
                if wanted && !ids.contains(&i) {
                    ids.push(i);
                }
            }
        }
        ids.into_iter()
            .filter_map(|i| nodes.get(i as usize).map(|n| n.addr.clone()))
            .collect()
    }

    /// Asks the refresh thread for a topology refresh soon.
    pub fn request_refresh(&self) {
        if !self.cluster && !self.sentinel.load(Ordering::Relaxed) {
            return;
        }
        self.refresh_wanted.store(true, Ordering::SeqCst);
        let _g = self.refresh_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_cv.notify_all();
    }

    /// Refresh thread side: waits until a refresh is requested or `period` passes.
    /// Returns `false` when the router is being shut down.
    pub fn wait_refresh(&self, period: Duration) -> bool {
        let deadline = Instant::now() + period;
        let mut stop = self.refresh_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stop {
                return false;
            }
            if self.refresh_wanted.swap(false, Ordering::SeqCst) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            stop = self
                .refresh_cv
                .wait_timeout(stop, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the refresh thread.
    pub fn shutdown(&self) {
        let mut stop = self.refresh_lock.lock().unwrap_or_else(|e| e.into_inner());
        *stop = true;
        self.refresh_cv.notify_all();
    }
}

/// A cluster redirect or retry reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// The slot moved for good: update the table.
    Moved { slot: u16, addr: ServerAddr },
    /// The slot is migrating: ask the target once, after ASKING.
    Ask { slot: u16, addr: ServerAddr },
    /// Multi-key command during resharding: try again shortly.
    TryAgain,
}

/// Parses `MOVED 3999 127.0.0.1:6381`, `ASK ...` and `TRYAGAIN ...` error replies.
/// An empty host (`MOVED 3999 :6381`, a node whose endpoint is unknown) means the
/// host of `from`, the node that sent the reply (Redis Cluster specification); with
/// no such host (unknown sender, unix socket) the redirect cannot be followed.
pub(crate) fn parse_redirect(msg: &str, from: Option<&ServerAddr>) -> Option<Redirect> {
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
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match (host.is_empty(), from) {
        (false, _) => host.to_string(),
        (true, Some(ServerAddr::Tcp { host, .. })) => host.clone(),
        (true, _) => return None,
    };
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
            parse_redirect("MOVED 3999 127.0.0.1:6381", None),
            Some(Redirect::Moved {
                slot: 3999,
                addr: tcp("127.0.0.1", 6381)
            })
        );
        assert_eq!(
            parse_redirect("ASK 1 [::1]:7000", None),
            Some(Redirect::Ask {
                slot: 1,
                addr: tcp("::1", 7000)
            })
        );
        assert_eq!(
            parse_redirect(
                "TRYAGAIN Multiple keys request during rehashing of slot",
                None
            ),
            Some(Redirect::TryAgain)
        );
        assert_eq!(parse_redirect("ERR wrong", None), None);
        assert_eq!(parse_redirect("MOVED x y", None), None);
    }

    #[test]
    fn empty_redirect_host_means_the_sender() {
        let from = tcp("10.1.2.3", 7000);
        assert_eq!(
            parse_redirect("MOVED 3999 :6381", Some(&from)),
            Some(Redirect::Moved {
                slot: 3999,
                addr: tcp("10.1.2.3", 6381)
            })
        );
        assert_eq!(
            parse_redirect("ASK 12 :7002", Some(&from)),
            Some(Redirect::Ask {
                slot: 12,
                addr: tcp("10.1.2.3", 7002)
            })
        );
        // A named host is kept; no sender or a unix socket: nowhere to go.
        assert_eq!(
            parse_redirect("MOVED 1 h:1", Some(&from)),
            Some(Redirect::Moved {
                slot: 1,
                addr: tcp("h", 1)
            })
        );
        assert_eq!(parse_redirect("MOVED 3999 :6381", None), None);
        let unix = ServerAddr::Unix {
            path: "/tmp/r.sock".into(),
        };
        assert_eq!(parse_redirect("MOVED 3999 :6381", Some(&unix)), None);
    }

    #[test]
    fn router_interns_and_moves() {
        let r = Router::cluster(&[tcp("a", 1)], 2);
        assert_eq!(r.route(b"foo").node, 0);
        let e = r.epoch();
        let id = r.note_moved(12182, &tcp("b", 2));
        assert_eq!(id, 1);
        assert!(r.epoch() > e);
        assert_eq!(r.route(b"foo").node, 1);
        assert_eq!(r.addr(1), tcp("b", 2));
        assert_eq!(r.intern(&tcp("b", 2)), 1);
        assert!(r.snapshot().owner(1).is_some());
        let s = Router::standalone(tcp("x", 9), 2);
        assert_eq!(s.route(b"anything").node, 0);
    }

    #[test]
    fn apply_spreads_masters_evenly() {
        let r = Router::cluster(&[tcp("seed", 1), tcp("seed", 2)], 2);
        let node = |p| NodeInfo {
            addr: tcp("h", p),
            id: String::new(),
            healthy: true,
        };
        let topo = Topology {
            shards: (0..3u16)
                .map(|i| ShardInfo {
                    master: node(7000 + i),
                    slots: vec![(i * 5462, ((i + 1) * 5462 - 1).min(16383))],
                    replicas: vec![node(7100 + i)],
                })
                .collect(),
        };
        assert_eq!(r.refresh_candidates(), vec![tcp("seed", 1), tcp("seed", 2)]);
        let map = r.apply(&topo);
        let mut per = [0; 2];
        for (_, s) in &map {
            per[*s] += 1;
        }
        assert_eq!(per.iter().max(), Some(&2));
        assert_eq!(per.iter().min(), Some(&1));
        let snap = r.snapshot();
        let m = snap.node_for_slot(0);
        assert_eq!(r.addr(m), tcp("h", 7000));
        let rep = snap.replica_of(m, 0).unwrap();
        assert!(r.is_readonly(rep));
        assert_eq!(snap.owner(rep), snap.owner(m));
        assert_eq!(r.addr(snap.node_for_slot(16383)), tcp("h", 7002));
        // A refresh keeps owners.
        let again = r.apply(&topo);
        assert_eq!(map, again);
    }

    #[test]
    fn a_retired_shard_owns_nothing() {
        let r = Router::cluster(&[tcp("seed", 1)], 3);
        let node = |p| NodeInfo {
            addr: tcp("h", p),
            id: String::new(),
            healthy: true,
        };
        let topo = Topology {
            shards: (0..4u16)
                .map(|i| ShardInfo {
                    master: node(7000 + i),
                    slots: vec![(i * 4096, i * 4096 + 4095)],
                    replicas: vec![node(7100 + i)],
                })
                .collect(),
        };
        r.apply(&topo);
        assert!(r.snapshot().owner(r.intern(&tcp("h", 7000))) == Some(0));
        r.retire_shard(0);
        let owners = |r: &Router| -> Vec<usize> {
            let snap = r.snapshot();
            (0..4u16)
                .flat_map(|i| {
                    let m = r.intern(&tcp("h", 7000 + i));
                    let rep = r.intern(&tcp("h", 7100 + i));
                    assert_eq!(snap.owner(rep), snap.owner(m), "a replica left its master");
                    snap.owner(m)
                })
                .collect()
        };
        let after = owners(&r);
        assert!(!after.contains(&0), "{after:?}");
        assert_eq!(after.iter().filter(|&&o| o == 1).count(), 2, "{after:?}");
        // Refreshes, new masters and MOVED keep it out.
        r.apply(&topo);
        assert!(!owners(&r).contains(&0));
        let id = r.note_moved(5, &tcp("h", 7999));
        assert_ne!(r.snapshot().owner(id), Some(0));
        // The last live shards die: nothing to hand over, nothing changes.
        r.retire_shard(1);
        r.retire_shard(2);
        assert_eq!(owners(&r), vec![2; 4]);
    }

    #[test]
    fn forgotten_nodes_are_not_asked() {
        let r = Router::cluster(&[tcp("seed", 1)], 2);
        let node = |p| NodeInfo {
            addr: tcp("h", p),
            id: String::new(),
            healthy: true,
        };
        let topo = |ports: &[u16]| Topology {
            shards: ports
                .iter()
                .enumerate()
                .map(|(i, &p)| ShardInfo {
                    master: node(p),
                    slots: vec![(i as u16 * 8192, i as u16 * 8192 + 8191)],
                    replicas: vec![node(p + 100)],
                })
                .collect(),
        };
        r.apply(&topo(&[7000, 7001]));
        let c = r.refresh_candidates();
        assert_eq!(c[..2], [tcp("h", 7000), tcp("h", 7001)]);
        assert!(c.contains(&tcp("h", 7100)) && c.contains(&tcp("seed", 1)));
        // 7001 and its replica leave; 7002 takes over. The seed stays, as it came
        // from the caller.
        r.apply(&topo(&[7000, 7002]));
        let c = r.refresh_candidates();
        assert!(!c.contains(&tcp("h", 7001)), "{c:?}");
        assert!(!c.contains(&tcp("h", 7101)), "{c:?}");
        assert_eq!(c[..2], [tcp("h", 7000), tcp("h", 7002)]);
        assert_eq!(c.last(), Some(&tcp("seed", 1)));
    }
}
