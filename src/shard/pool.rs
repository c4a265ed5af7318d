//! The connection pool of a shard: per server, a few pipelined connections, opened and
//! handshaken on demand, picked by load, failed (their units retried or failed) and
//! freed once the kernel holds nothing of them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::ServerAddr;
use crate::cluster::NodeId;
use crate::error::Error;
use crate::resolver::{self, Lookup};
use crate::resp::{self, Dest};

use super::conn::{Conn, ConnState, HandshakeStep, PendKind, Pending, Stream};
use super::{clone_err, uring, Backend, Shard, HUGE_VALUE, LARGE_VALUE, MAX_FRAMES_PER_CONN};

/// Longest wait between probes of a server known to be down.
const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How soon a shard asks again for a name being resolved.
const RESOLVE_POLL: Duration = Duration::from_millis(2);

/// A connection with at most this many bytes in flight takes a small frame at once;
/// beyond, a small frame goes to the express connection rather than wait behind them.
const SMALL_INFLIGHT: usize = 256 * 1024;

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

impl Shard {
    /// The connection of `node` with the most room for a frame, opening one if all
    /// are full. `bulk` frames (PUT payloads) never use the node's express connection;
    /// other frames may, and open it (one beyond the pool size) when every connection
    /// has more than `SMALL_INFLIGHT` bytes in flight.
    pub(super) fn pick_conn(&mut self, node: usize, bulk: bool) -> Option<usize> {
        let limit = self.cfg.max_inflight_bytes;
        let express = self.nodes[node].express;
        let mut best: Option<(usize, usize)> = None;
        for &cid in &self.nodes[node].conns {
            let Some(c) = self.conns[cid].as_ref() else {
                continue;
            };
            if c.state == ConnState::Dead
                || c.pending.len() >= MAX_FRAMES_PER_CONN
                || c.inflight >= limit
                || (bulk && express == Some(cid))
            {
                continue;
            }
            if best.is_none_or(|(_, w)| c.inflight < w) {
                best = Some((cid, c.inflight));
            }
        }
        // An idle connection is best; otherwise grow the pool while allowed, so large
        // values spread over several sockets. The express connection does not count.
        // Large values: fewer connections per server, measured faster on small hosts.
        let target = if self.avg_value >= HUGE_VALUE {
            self.huge_conns
        } else if self.avg_value >= LARGE_VALUE {
            self.large_conns
        } else {
            self.conns_per_node
        };
        let pool = self.nodes[node].conns.len() - usize::from(express.is_some());
        let pick = match best {
            Some((cid, w)) if w == 0 || pool >= target => Some((cid, w)),
            _ if pool < target => match self.open_conn(node) {
                Ok(cid) => Some((cid, 0)),
                Err(e) => {
                    self.open_failed(node, e);
                    best
                }
            },
            _ => best,
        };
        // Every connection is busy with bulk: a small frame gets the express one.
        if !bulk && express.is_none() && pick.is_none_or(|(_, w)| w > SMALL_INFLIGHT) {
            match self.open_conn(node) {
                Ok(cid) => {
                    self.nodes[node].express = Some(cid);
                    if let Some(c) = self.conns[cid].as_mut() {
                        c.express = true;
                    }
                    return Some(cid);
                }
                Err(e) => self.open_failed(node, e),
            }
        }
        pick.map(|p| p.0)
    }

    /// A connection could not even be started: a name still being resolved is
    /// asked for again shortly; anything else is a failed connect.
    fn open_failed(&mut self, node: usize, e: io::Error) {
        if e.kind() == io::ErrorKind::WouldBlock {
            self.nodes[node].retry_at = Some(Instant::now() + RESOLVE_POLL);
        } else {
            self.nodes[node].down = true;
            self.node_failed(node, &e);
        }
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
    fn next_address(&mut self, node: usize) -> bool {
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

    /// The shard's timer: a node known down whose probe time has come gets a connect
    /// attempt (once connected, calls flow again; see `on_connected`).
    pub(super) fn probe_down_nodes(&mut self, now: Instant) {
        for node in 0..self.nodes.len() {
            let n = &self.nodes[node];
            if !n.down || n.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let connecting = n.conns.iter().any(|&c| {
                self.conns[c]
                    .as_ref()
                    .is_some_and(|c| c.state == ConnState::Connecting)
            });
            if connecting {
                continue;
            }
            tracing::debug!(shard = self.id, node = %n.addr, "probing a server known down");
            if let Err(e) = self.open_conn(node) {
                self.open_failed(node, e);
            }
        }
    }

    /// Bytes in flight to `node` over this shard's connections.
    pub(super) fn node_inflight(&self, node: usize) -> usize {
        self.nodes[node]
            .conns
            .iter()
            .filter_map(|&cid| self.conns[cid].as_ref())
            .map(|c| c.inflight)
            .sum()
    }

    /// `true` while an MGET reply is owed by `node` on any of this shard's connections.
    pub(super) fn mget_outstanding(&self, node: usize) -> bool {
        self.nodes[node]
            .conns
            .iter()
            .filter_map(|&cid| self.conns[cid].as_ref())
            .any(|c| c.pending.iter().any(|p| p.kind == PendKind::Mget))
    }

    pub(super) fn open_conn(&mut self, node: usize) -> io::Result<usize> {
        let addr = self.nodes[node].addr.clone();
        let stream = match &addr {
            ServerAddr::Tcp { .. } => self.connect_tcp(node)?,
            ServerAddr::Unix { path } => Stream::Unix(mio::net::UnixStream::connect(path)?),
        };
        let fixed = match &mut self.backend {
            Backend::Uring(u) => u.take_fixed(),
            Backend::Epoll(_) => None,
        };
        let mut conn = Conn::new(node, stream, fixed);
        self.attach_tls(&mut conn, &addr)?;
        let readonly = self.router.is_cluster() && self.router.is_readonly(self.nodes[node].id);
        self.queue_handshake(&mut conn, readonly);
        let cid = match self.free_conns.pop() {
            Some(c) => c,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        match &mut self.backend {
            Backend::Uring(u) => u.poll_connect(cid, &conn)?,
            Backend::Epoll(e) => e.register(cid, &mut conn)?,
        }
        self.conns[cid] = Some(conn);
        self.nodes[node].conns.push(cid);
        tracing::debug!(shard = self.id, node = %addr, cid, "connecting");
        Ok(cid)
    }

    pub(super) fn queue_handshake(&self, conn: &mut Conn, readonly: bool) {
        let mut tmp = Vec::new();
        let mut steps = Vec::new();
        if let Some(pass) = &self.cfg.password {
            match &self.cfg.username {
                Some(user) => {
                    resp::write_command(&mut tmp, &[b"AUTH", user.as_bytes(), pass.as_bytes()])
                }
                None => resp::write_command(&mut tmp, &[b"AUTH", pass.as_bytes()]),
            }
            steps.push(HandshakeStep::Auth);
        }
        if self.cfg.database != 0 {
            let db = self.cfg.database.to_string();
            resp::write_command(&mut tmp, &[b"SELECT", db.as_bytes()]);
            steps.push(HandshakeStep::Select);
        }
        if !self.cfg.client_name.is_empty() {
            resp::write_command(
                &mut tmp,
                &[b"CLIENT", b"SETNAME", self.cfg.client_name.as_bytes()],
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
            conn.pending.push_back(Pending {
                part: None,
                kind: PendKind::Handshake { step },
                units: Vec::new(),
                weight: 0,
                sent_at: Instant::now(),
                end,
            });
        }
    }

    pub(super) fn on_connected(&mut self, cid: usize) {
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        conn.state = if conn.tls_handshaking()
            || conn
                .pending
                .iter()
                .any(|p| matches!(p.kind, PendKind::Handshake { .. }))
        {
            ConnState::Handshaking
        } else {
            ConnState::Ready
        };
        let node = conn.node;
        let n = &mut self.nodes[node];
        if n.down {
            tracing::info!(shard = self.id, node = %n.addr, "server is reachable again");
        }
        n.failures = 0;
        n.retry_at = None;
        n.down = false;
        self.dirty.push(cid);
    }

    pub(super) fn node_failed(&mut self, node: usize, e: &dyn std::fmt::Display) {
        let n = &mut self.nodes[node];
        n.failures += 1;
        // Short, capped backoff: a restarted server is picked up within ~100 ms; a
        // server known down is probed at most `MAX_PROBE_INTERVAL` apart.
        let cap = if n.down {
            MAX_PROBE_INTERVAL
        } else {
            Duration::from_millis(100)
        };
        let backoff = Duration::from_millis(10u64 << n.failures.min(6)).min(cap);
        n.retry_at = Some(Instant::now() + backoff);
        n.last_error = Some(e.to_string());
        self.metrics.error("reconnect");
        tracing::warn!(shard = self.id, node = %n.addr, error = %e, failures = n.failures, "connection to server failed");
        // In a cluster a dead node may mean a failover: look at the topology again.
        self.router.request_refresh();
    }

    /// Closes a connection; its unanswered units are retried elsewhere or failed.
    ///
    /// A reply whose payload destination is lent to an in-flight receive stays on the
    /// closed connection with its units until the kernel returns the receive
    /// ([`Self::settle_zombie`]): only then may the destination (a caller's buffer) go
    /// back to its unit and the unit be retried or failed.
    pub(super) fn fail_conn(&mut self, cid: usize, err: Error, count_node_failure: bool) {
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        if conn.state == ConnState::Dead {
            return;
        }
        let was_connecting = conn.state == ConnState::Connecting;
        conn.state = ConnState::Dead;
        // The kernel must finish every operation on the socket: a send to a peer
        // that stopped reading, or a zero-copy send's notification, would otherwise
        // never complete (see `Stream::reset`).
        conn.stream.reset();
        let node = conn.node;
        let held = if conn.rx.reader.window_lent() {
            conn.pending.pop_front()
        } else {
            None
        };
        let pending: Vec<Pending> = conn.pending.drain(..).collect();
        let written = conn.written();
        let returned = match held {
            Some(p) => {
                conn.pending.push_back(p);
                conn.failure = Some(clone_err(&err));
                None
            }
            None => conn.rx.reader.reset(),
        };
        conn.inflight = 0;
        self.nodes[node].conns.retain(|&c| c != cid);
        if self.nodes[node].express == Some(cid) {
            self.nodes[node].express = None;
        }
        if was_connecting && self.next_address(node) {
            // Another address of the server is left: the next connect tries it at
            // once (e.g. `localhost` as ::1 then 127.0.0.1).
        } else if count_node_failure || was_connecting {
            // A connect that failed (refused, or no answer within connect_timeout):
            // the server is down until a probe connects.
            self.nodes[node].down |= was_connecting;
            self.node_failed(node, &err);
        }
        if let (Some((i, dest)), Some(p)) = (returned, pending.first()) {
            self.return_dest(p, i, dest);
        }
        self.fail_pending(pending, &err, written);
        // Release the socket: now for epoll, after the kernel returns buffers for io_uring.
        match &mut self.backend {
            Backend::Epoll(e) => {
                if let Some(mut c) = self.conns[cid].take() {
                    e.deregister(&mut c);
                }
                self.free_conns.push(cid);
            }
            Backend::Uring(u) => {
                if u.io_busy(cid) {
                    u.cancel(cid);
                }
                self.zombies.push(cid);
                self.reap(cid);
            }
        }
    }

    /// Gives a reply's payload destination back to its unit when it is the caller's
    /// buffer (get_into), so the caller gets it back whatever happens to the unit.
    pub(super) fn return_dest(&mut self, p: &Pending, i: usize, dest: Dest) {
        let (Some(pr), Some(&u)) = (p.part, p.units.get(i)) else {
            return;
        };
        if let Some(unit) = self
            .part_mut(pr)
            .and_then(|part| part.units.get_mut(u as usize))
        {
            if unit.lent && dest.keep {
                unit.lent = false;
                unit.buf = Some(dest.buf);
            }
        }
    }

    /// Retries or fails the unanswered units of replies a failed connection owed;
    /// `written` is how far the connection's output reached the kernel, which tells the
    /// commands the server may have run (sent) from those it cannot have (unsent).
    pub(super) fn fail_pending(&mut self, pending: Vec<Pending>, err: &Error, written: u64) {
        let retryable = matches!(err, Error::Io { .. } | Error::Protocol { .. });
        for p in pending {
            let Some(pr) = p.part else { continue };
            let done = match p.kind {
                PendKind::PerUnit { next } => next,
                _ => 0,
            };
            let sent = p.end <= written;
            for &u in &p.units[done.min(p.units.len())..] {
                self.retry_or_fail(pr, u, err, retryable, sent);
            }
            self.maybe_complete(pr.idx as usize);
        }
    }

    /// The kernel returned a receive of a closed connection: the reply it held back
    /// (see [`Self::fail_conn`]) gives its destination back and its units are retried or
    /// failed now; the connection is freed once nothing else is outstanding.
    pub(super) fn settle_zombie(&mut self, cid: usize, direct: bool) {
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        let returned = conn.rx.reader.reset();
        let held: Vec<Pending> = conn.pending.drain(..).collect();
        let err = conn.failure.take();
        let written = conn.written();
        if direct {
            self.metrics.kernel_late_release();
        }
        if let (Some((i, dest)), Some(p)) = (returned, held.first()) {
            self.return_dest(p, i, dest);
        }
        if let Some(err) = err {
            self.fail_pending(held, &err, written);
        }
        self.reap(cid);
    }

    /// `true` when connection `cid` exists and is not closed; a closed one is freed
    /// here once the kernel holds nothing of it.
    pub(super) fn live_or_reap(&mut self, cid: usize) -> bool {
        match self.conns[cid].as_ref() {
            None => false,
            Some(c) if c.state == ConnState::Dead => {
                self.reap(cid);
                false
            }
            Some(_) => true,
        }
    }

    /// Returns a freed connection's registered buffer to the pool.
    pub(super) fn release_conn(u: &mut uring::Uring, conn: Option<Conn>) {
        if let Some((i, b)) = conn.and_then(|mut c| c.rx.take_fixed()) {
            u.give_back(i, b);
        }
    }

    /// Frees what a closed connection no longer needs. io_uring: its socket is
    /// closed once no operation names its descriptor (the reset close drops unsent
    /// data, which releases zero-copy pages); the connection id, and the zombie entry,
    /// once the kernel holds nothing of it, zero-copy notifications included.
    pub(super) fn reap(&mut self, cid: usize) {
        let u = match &mut self.backend {
            Backend::Uring(u) => u,
            Backend::Epoll(_) => {
                if self.conns[cid].take().is_some() {
                    self.free_conns.push(cid);
                }
                return;
            }
        };
        if u.io_busy(cid) {
            return;
        }
        let had = self.conns[cid].is_some();
        if had {
            Self::release_conn(u, self.conns[cid].take());
        }
        let zombie = self.zombies.contains(&cid);
        if u.busy(cid) {
            // Only zero-copy notifications are owed: `Cqe::Notified` comes back here.
            if !zombie {
                self.zombies.push(cid);
            }
        } else if zombie || had {
            self.zombies.retain(|&z| z != cid);
            self.free_conns.push(cid);
        }
        self.metrics.zombies(self.zombies.len());
    }

    /// A zero-copy notification of connection `cid` arrived: a closed connection
    /// waiting only for those is freed with the last one.
    pub(super) fn on_notified(&mut self, cid: usize) {
        if self.conns[cid].is_none() && self.zombies.contains(&cid) {
            self.reap(cid);
        }
    }

    /// Counts an epoll-side syscall that failed with EFAULT: a kernel read or write
    /// into memory that is no longer valid (io_uring counts its completions itself).
    pub(super) fn count_efault(&self, e: &io::Error) {
        if matches!(self.backend, Backend::Epoll(_)) && e.raw_os_error() == Some(libc::EFAULT) {
            self.metrics.efaults(1);
        }
    }

    pub(super) fn io_failed(&mut self, cid: usize, e: io::Error) {
        self.count_efault(&e);
        let node = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.to_string())
            .unwrap_or_default();
        self.fail_conn(cid, Error::Io { node, source: e }, false);
    }

    pub(super) fn protocol_error(&mut self, cid: usize, reason: String) {
        let node = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.to_string())
            .unwrap_or_default();
        tracing::error!(shard = self.id, node = %node, reason = %reason, "protocol error; closing connection");
        self.metrics.error("protocol");
        self.fail_conn(cid, Error::Protocol { node, reason }, false);
    }
}
