//! The connection pool of a shard, [`Pool`]: per server ([`Node`]) a few pipelined
//! connections, opened on demand, picked by load, and freed once the kernel holds
//! nothing of them. The pool owns the nodes, the connections, the free connection ids,
//! the zombies (closed connections whose memory the kernel still holds) and the
//! connections waiting to be flushed. What a failed connection's units become is the
//! shard's (`Shard::fail_conn` in `events`, the one way a connection fails).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::ServerAddr;
use crate::cluster::{NodeId, Router};
use crate::config::Config;
use crate::error::Error;
use crate::resolver::{self, Lookup};
use crate::resp;

use super::conn::{Conn, ConnState, HandshakeStep, PartRef, PendKind, Pending, Stream};
use super::handle::Backend;
use super::{HUGE_VALUE, LARGE_VALUE, MAX_FRAMES_PER_CONN};

/// Longest wait between probes of a server known to be down.
const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How soon a shard asks again for a name being resolved.
pub(super) const RESOLVE_POLL: Duration = Duration::from_millis(2);

/// A connection with at most this many bytes in flight takes a small frame at once;
/// beyond, a small frame goes to the express connection rather than wait behind them.
pub(super) const SMALL_INFLIGHT: usize = 256 * 1024;

/// Per-server state inside a shard.
pub(super) struct Node {
    pub(super) id: NodeId,
    pub(super) addr: ServerAddr,
    pub(super) conns: Vec<usize>,
    /// The connection kept free of bulk writes (PUT), for small frames of every class:
    /// a PEEK must not queue behind megabytes of PUT on the wire. One of `conns`.
    pub(super) express: Option<usize>,
    /// No new connection attempt before this instant (after failures).
    pub(super) retry_at: Option<Instant>,
    pub(super) failures: u32,
    pub(super) last_error: Option<String>,
    /// A connect to it failed: new calls fail at once (standalone) until a probe, a
    /// connect attempt the shard's timer makes at `retry_at`, succeeds.
    pub(super) down: bool,
    /// Its addresses as last resolved (off this thread, see `crate::resolver`), and
    /// the one the next connect tries: a failed connect moves on to the next one
    /// before the node counts as failed.
    pub(super) addrs: Option<Arc<[SocketAddr]>>,
    pub(super) addr_idx: usize,
    /// Optional handshake steps this server refused, each logged once.
    pub(super) refused_steps: Vec<HandshakeStep>,
}

impl Node {
    /// Fresh state for server `addr` (router id `id`).
    pub(super) fn new(id: NodeId, addr: ServerAddr) -> Node {
        Node {
            id,
            addr,
            conns: Vec::new(),
            express: None,
            retry_at: None,
            failures: 0,
            last_error: None,
            down: false,
            addrs: None,
            addr_idx: 0,
            refused_steps: Vec::new(),
        }
    }

    /// The error new calls get while the node is down.
    pub(super) fn down_error(&self, now: Instant) -> Error {
        let next = self
            .retry_at
            .map_or(0, |t| t.saturating_duration_since(now).as_millis());
        let why = self.last_error.as_deref().unwrap_or("connect failed");
        Error::Io {
            node: self.addr.to_string(),
            source: io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "server {} is down ({why}), next probe in {next} ms",
                    self.addr
                ),
            ),
        }
    }
}

/// The connections of one shard, by server.
pub(super) struct Pool {
    nodes: Vec<Node>,
    /// Router node id to index in `nodes` (`usize::MAX`: not seen yet).
    node_ids: Vec<usize>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections closed while the kernel still holds their buffers (io_uring).
    zombies: Vec<usize>,
    /// Connections with something to send or a receive to arm.
    dirty: Vec<usize>,
    conns_per_node: usize,
    /// Connections per server and shard once values are large.
    large_conns: usize,
    /// Connections per server and shard once values average 16 MiB or more.
    huge_conns: usize,
}

impl Pool {
    pub(super) fn new(conns_per_node: usize, large_conns: usize, huge_conns: usize) -> Pool {
        Pool {
            nodes: Vec::new(),
            node_ids: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            zombies: Vec::new(),
            dirty: Vec::new(),
            conns_per_node,
            large_conns,
            huge_conns,
        }
    }

    pub(super) fn conn(&self, cid: usize) -> Option<&Conn> {
        self.conns.get(cid).and_then(|c| c.as_ref())
    }

    pub(super) fn conn_mut(&mut self, cid: usize) -> Option<&mut Conn> {
        self.conns.get_mut(cid).and_then(|c| c.as_mut())
    }

    /// Upper bound of the connection ids.
    pub(super) fn conn_slots(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn node(&self, node: usize) -> &Node {
        &self.nodes[node]
    }

    pub(super) fn node_mut(&mut self, node: usize) -> &mut Node {
        &mut self.nodes[node]
    }

    /// The server connection `cid` goes to, by name (empty when it is gone).
    pub(super) fn addr_of(&self, cid: usize) -> String {
        self.conn(cid)
            .map(|c| self.nodes[c.node()].addr.to_string())
            .unwrap_or_default()
    }

    /// A server is known down (the timer probes it).
    pub(super) fn any_down(&self) -> bool {
        self.nodes.iter().any(|n| n.down)
    }

    pub(super) fn has_zombies(&self) -> bool {
        !self.zombies.is_empty()
    }

    /// Connection `cid` has bytes to send or a receive to arm.
    pub(super) fn mark_dirty(&mut self, cid: usize) {
        self.dirty.push(cid);
    }

    /// The dirty connections, each once, express ones (small frames, see
    /// `Shard::pick_conn`) first: a send copies its bytes into the socket before the
    /// call returns, and a PEEK must not wait for megabytes of PUT copied ahead of it.
    /// Give the list back with [`Pool::restore_dirty`] (it keeps its allocation).
    pub(super) fn take_dirty(&mut self) -> Vec<usize> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let conns = &self.conns;
        dirty.sort_by_key(|&cid| !conns[cid].as_ref().is_some_and(|c| c.is_express()));
        dirty
    }

    pub(super) fn restore_dirty(&mut self, mut dirty: Vec<usize>) {
        dirty.clear();
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    /// This shard's node state for a router node id, created on first use.
    pub(super) fn local_node(&mut self, id: NodeId, router: &Router) -> usize {
        let id = id as usize;
        if let Some(&i) = self.node_ids.get(id) {
            if i != usize::MAX {
                return i;
            }
        }
        if self.node_ids.len() <= id {
            self.node_ids.resize(id + 1, usize::MAX);
        }
        self.node_ids[id] = self.nodes.len();
        self.nodes
            .push(Node::new(id as NodeId, router.addr(id as NodeId)));
        self.nodes.len() - 1
    }

    /// The live connection of `node` with the fewest bytes in flight that can take a
    /// frame (`bulk` frames never take the express connection), with that count; and
    /// whether the pool may grow (fewer connections than the target for values of
    /// `avg_value` bytes; the express connection does not count).
    pub(super) fn choose(
        &self,
        node: usize,
        bulk: bool,
        limit: usize,
        avg_value: f64,
    ) -> (Option<(usize, usize)>, bool) {
        let express = self.nodes[node].express;
        let mut best: Option<(usize, usize)> = None;
        for &cid in &self.nodes[node].conns {
            let Some(c) = self.conns[cid].as_ref() else {
                continue;
            };
            if c.state() == ConnState::Dead
                || c.pending().len() >= MAX_FRAMES_PER_CONN
                || c.inflight() >= limit
                || (bulk && express == Some(cid))
            {
                continue;
            }
            if best.is_none_or(|(_, w)| c.inflight() < w) {
                best = Some((cid, c.inflight()));
            }
        }
        // Large values: fewer connections per server, measured faster on small hosts.
        let target = if avg_value >= HUGE_VALUE {
            self.huge_conns
        } else if avg_value >= LARGE_VALUE {
            self.large_conns
        } else {
            self.conns_per_node
        };
        let pool = self.nodes[node].conns.len() - usize::from(express.is_some());
        (best, pool < target)
    }

    /// Makes `cid` the express connection of `node`.
    pub(super) fn set_express(&mut self, node: usize, cid: usize) {
        self.nodes[node].express = Some(cid);
        if let Some(c) = self.conn_mut(cid) {
            c.set_express();
        }
    }

    /// Opens a connection to `node`: starts the connect, lets `setup` queue what goes
    /// first (TLS, the handshake), and hands the socket to the backend.
    pub(super) fn open(
        &mut self,
        node: usize,
        backend: &mut Backend,
        setup: impl FnOnce(&mut Conn, &ServerAddr) -> io::Result<()>,
    ) -> io::Result<usize> {
        let addr = self.nodes[node].addr.clone();
        let stream = match &addr {
            ServerAddr::Tcp { .. } => self.connect_tcp(node)?,
            ServerAddr::Unix { path } => Stream::Unix(mio::net::UnixStream::connect(path)?),
        };
        let mut conn = Conn::new(node, stream, backend.take_fixed());
        setup(&mut conn, &addr)?;
        let cid = match self.free.pop() {
            Some(c) => c,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        backend.watch_connect(cid, &mut conn)?;
        self.conns[cid] = Some(conn);
        self.nodes[node].conns.push(cid);
        Ok(cid)
    }

    /// The TCP addresses of `node` (from the resolver's cache), or `WouldBlock`
    /// while its name is still being resolved.
    fn node_addrs(&mut self, node: usize) -> io::Result<Arc<[SocketAddr]>> {
        let ServerAddr::Tcp { host, port } = &self.nodes[node].addr else {
            return Err(io::Error::other("not a TCP address"));
        };
        match resolver::lookup(host, *port) {
            Lookup::Ready(a) => {
                let n = &mut self.nodes[node];
                if n.addrs.as_ref() != Some(&a) {
                    n.addr_idx = 0;
                    n.addrs = Some(a.clone());
                }
                Ok(a)
            }
            // A failed refresh keeps the last good answer.
            Lookup::Failed(_) | Lookup::Pending if self.nodes[node].addrs.is_some() => Ok(self
                .nodes[node]
                .addrs
                .clone()
                .unwrap_or_else(|| Arc::from(Vec::new()))),
            Lookup::Pending => Err(io::Error::new(io::ErrorKind::WouldBlock, "resolving")),
            Lookup::Failed(why) => Err(io::Error::new(io::ErrorKind::NotFound, why)),
        }
    }

    /// Starts a TCP connect to `node`, trying its addresses in order from the current
    /// one until one starts (an immediate failure, such as an unreachable network,
    /// moves on at once).
    fn connect_tcp(&mut self, node: usize) -> io::Result<Stream> {
        let addrs = self.node_addrs(node)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let start = self.nodes[node].addr_idx;
        for i in start..addrs.len() {
            self.nodes[node].addr_idx = i;
            match mio::net::TcpStream::connect(addrs[i]) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(Stream::Tcp(s));
                }
                Err(e) => last = e,
            }
        }
        self.nodes[node].addr_idx = 0;
        Err(last)
    }

    /// A connect in progress to `node` failed: `true` when another of its addresses
    /// is left to try (the node does not count as failed yet).
    pub(super) fn next_address(&mut self, node: usize) -> bool {
        let n = &mut self.nodes[node];
        let count = n.addrs.as_ref().map_or(0, |a| a.len());
        if n.addr_idx + 1 < count {
            n.addr_idx += 1;
            true
        } else {
            n.addr_idx = 0;
            false
        }
    }

    /// The nodes known down whose probe time has come and that have no connect in
    /// progress.
    pub(super) fn due_probes(&self, now: Instant) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&node| {
                let n = &self.nodes[node];
                if !n.down || n.retry_at.is_some_and(|t| t > now) {
                    return false;
                }
                !n.conns.iter().any(|&c| {
                    self.conns[c]
                        .as_ref()
                        .is_some_and(|c| c.state() == ConnState::Connecting)
                })
            })
            .collect()
    }

    /// Lifts the backoffs that expired at `now` (not a down node's: its probe does).
    pub(super) fn lift_backoffs(&mut self, now: Instant) {
        for n in &mut self.nodes {
            if n.retry_at.is_some_and(|t| t <= now) && !n.down {
                n.retry_at = None;
            }
        }
    }

    /// Bytes in flight to `node` over this shard's connections.
    pub(super) fn node_inflight(&self, node: usize) -> usize {
        self.nodes[node]
            .conns
            .iter()
            .filter_map(|&cid| self.conns[cid].as_ref())
            .map(|c| c.inflight())
            .sum()
    }

    /// `true` while an MGET reply is owed by `node` on any of this shard's connections.
    pub(super) fn mget_outstanding(&self, node: usize) -> bool {
        self.nodes[node]
            .conns
            .iter()
            .filter_map(|&cid| self.conns[cid].as_ref())
            .any(|c| c.pending().iter().any(|p| p.kind == PendKind::Mget))
    }

    /// The units of part `pr` whose command reached the kernel whole (the server may
    /// have run it) and whose reply is still owed.
    pub(super) fn sent_units(&self, pr: PartRef) -> Vec<u32> {
        let mut sent = Vec::new();
        for c in self.conns.iter().flatten() {
            let written = c.written();
            for p in c.pending() {
                if p.part == Some(pr) && p.end <= written {
                    let done = match p.kind {
                        PendKind::PerUnit { next } => next,
                        _ => 0,
                    };
                    sent.extend_from_slice(&p.units[done.min(p.units.len())..]);
                }
            }
        }
        sent
    }

    /// Connection `cid` connected: its node is reachable (its backoff cleared). Returns
    /// the node and whether it was known down.
    pub(super) fn connected(&mut self, cid: usize) -> Option<(usize, bool)> {
        let conn = self.conns.get_mut(cid)?.as_mut()?;
        conn.on_connected();
        let node = conn.node();
        let n = &mut self.nodes[node];
        let was_down = n.down;
        n.failures = 0;
        n.retry_at = None;
        n.down = false;
        self.dirty.push(cid);
        Some((node, was_down))
    }

    /// A connection to `node` failed: the next attempt waits a short, capped backoff
    /// (a restarted server is picked up within ~100 ms; a server known down is probed
    /// at most `MAX_PROBE_INTERVAL` apart).
    pub(super) fn backoff(&mut self, node: usize, e: &dyn std::fmt::Display) {
        let n = &mut self.nodes[node];
        n.failures += 1;
        let cap = if n.down {
            MAX_PROBE_INTERVAL
        } else {
            Duration::from_millis(100)
        };
        let backoff = Duration::from_millis(10u64 << n.failures.min(6)).min(cap);
        n.retry_at = Some(Instant::now() + backoff);
        n.last_error = Some(e.to_string());
    }

    /// Takes closed connection `cid` off its node (it is picked no more).
    pub(super) fn detach(&mut self, node: usize, cid: usize) {
        self.nodes[node].conns.retain(|&c| c != cid);
        if self.nodes[node].express == Some(cid) {
            self.nodes[node].express = None;
        }
    }

    /// Frees what a closed connection no longer needs. epoll: everything, now.
    /// io_uring: its socket is closed once no operation names its descriptor (the
    /// reset close drops unsent data, which releases zero-copy pages); the connection
    /// id, and the zombie entry, once the kernel holds nothing of it, zero-copy
    /// notifications included. `zombie`: record it as a zombie first (it just closed).
    /// Returns the number of zombies left when the io_uring side was settled.
    pub(super) fn reap(
        &mut self,
        cid: usize,
        backend: &mut Backend,
        zombie: bool,
    ) -> Option<usize> {
        let u = match backend {
            Backend::Uring(u) => u,
            Backend::Epoll(e) => {
                if let Some(mut c) = self.conns[cid].take() {
                    if zombie {
                        e.deregister(&mut c);
                    }
                    self.free.push(cid);
                }
                return None;
            }
        };
        if zombie {
            if u.io_busy(cid) {
                u.cancel(cid);
            }
            self.zombies.push(cid);
        }
        if u.io_busy(cid) {
            return None;
        }
        let had = self.conns[cid].is_some();
        if had {
            release_conn(u, self.conns[cid].take());
        }
        let zombie = self.zombies.contains(&cid);
        if u.busy(cid) {
            // Only zero-copy notifications are owed: `Cqe::Notified` comes back here.
            if !zombie {
                self.zombies.push(cid);
            }
        } else if zombie || had {
            self.zombies.retain(|&z| z != cid);
            self.free.push(cid);
        }
        Some(self.zombies.len())
    }

    /// A closed connection waiting only for zero-copy notifications (`cid` is a
    /// zombie with no connection left).
    pub(super) fn is_bare_zombie(&self, cid: usize) -> bool {
        self.conns[cid].is_none() && self.zombies.contains(&cid)
    }

    /// Shutting down (io_uring), once every queued entry reached the kernel: the
    /// connections' registered buffers go back to the ring.
    pub(super) fn release_all(&mut self, u: &mut super::uring::Uring) {
        for c in self.conns.iter_mut() {
            if c.is_some() {
                release_conn(u, c.take());
            }
        }
    }

    /// The ring is gone: nothing is a zombie any more.
    pub(super) fn forget_zombies(&mut self) {
        self.zombies.clear();
    }
}

/// Queues the commands a new connection sends before serving requests (AUTH, SELECT,
/// CLIENT SETNAME, READONLY on a replica), each with its pending reply.
pub(super) fn queue_handshake(cfg: &Config, conn: &mut Conn, readonly: bool) {
    let mut tmp = Vec::new();
    let mut steps = Vec::new();
    if let Some(pass) = &cfg.password {
        match &cfg.username {
            Some(user) => {
                resp::write_command(&mut tmp, &[b"AUTH", user.as_bytes(), pass.as_bytes()])
            }
            None => resp::write_command(&mut tmp, &[b"AUTH", pass.as_bytes()]),
        }
        steps.push(HandshakeStep::Auth);
    }
    if cfg.database != 0 {
        let db = cfg.database.to_string();
        resp::write_command(&mut tmp, &[b"SELECT", db.as_bytes()]);
        steps.push(HandshakeStep::Select);
    }
    if !cfg.client_name.is_empty() {
        resp::write_command(
            &mut tmp,
            &[b"CLIENT", b"SETNAME", cfg.client_name.as_bytes()],
        );
        steps.push(HandshakeStep::SetName);
    }
    if readonly {
        // A replica serves reads of its master's slots only after READONLY.
        resp::write_command(&mut tmp, &[b"READONLY"]);
        steps.push(HandshakeStep::ReadOnly);
    }
    conn.hdr().extend_from_slice(&tmp);
    conn.end_frame();
    let end = conn.queued_end();
    for step in steps {
        conn.expect(Pending {
            part: None,
            kind: PendKind::Handshake { step },
            units: Vec::new(),
            weight: 0,
            sent_at: Instant::now(),
            end,
        });
    }
}

/// Returns a freed connection's registered buffer to the ring's pool.
fn release_conn(u: &mut super::uring::Uring, conn: Option<Conn>) {
    if let Some((i, b)) = conn.and_then(|mut c| c.rx_mut().take_fixed()) {
        u.give_back(i, b);
    }
}
