//! A shard: one pinned thread, its own event loop, the connections it owns.
//!
//! Work arrives as parts of batches through the shard's priority lanes
//! (`crate::lanes`). The loop pulls parts, cuts them into frames (MGET of up to
//! `chunk_size` keys, or pipelined SET / EXISTS / DEL), writes the frames to the least
//! loaded connection of the target server and reads the replies straight into each
//! unit's destination. Frames wait inside the shard only while no connection has
//! capacity (a bound on in-flight bytes and frames per connection), and while they wait
//! they are served by the classes' weighted shares (`crate::priority`).
//!
//! This module keeps the event loop, intake, dispatch and timers. The rest:
//! `cmd` encodes each command family and reads its replies, `pool` opens, picks,
//! fails and frees connections, `part` tracks the units of a part and carries out
//! retry decisions (`crate::cluster::retry`), `conn` is one connection (sans-I/O),
//! `uring` / `epoll` are the two backends, `handle` starts and stops the thread.

mod cmd;
pub(crate) mod conn;
mod epoll;
mod fixed;
mod handle;
mod part;
mod pool;
mod tls;
mod uring;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::batch::{Batch, Op, Role, Slot};
use crate::cluster::{NodeId, Router};
use crate::config::Config;
use crate::error::Error;
use crate::lanes::Lanes;
use crate::metrics::Metrics;
use crate::priority::{Picker, Priority};
use crate::syscalls::SyscallCounters;

use cmd::recv_cap;
use conn::{Conn, ConnState, PartRef};
use handle::Backend;
pub(crate) use handle::{start, ShardHandle, Shared};
pub(crate) use part::clone_err;
use part::{ActivePart, Group, PUnit};
use pool::Node;

/// Most connections one shard opens to one server.
const MAX_CONNS_PER_NODE: usize = 4;
/// Running average value size from which values count as large (connection fan-out
/// `large_value_connections`, GETs under the per-server byte budget).
const LARGE_VALUE: f64 = (1 << 20) as f64;
/// Most frames queued on one connection before another connection is used.
const MAX_FRAMES_PER_CONN: usize = 16;
/// Most parts a shard works on at once; beyond that, parts wait in the lanes.
const MAX_ACTIVE_PARTS: usize = 512;
/// How often deadlines and stalled connections are checked while work is in flight.
const TICK: Duration = Duration::from_millis(5);

/// Which event loop a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Completion-based, io_uring.
    IoUring,
    /// Readiness-based, epoll through mio.
    Epoll,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

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
    pub bufs: Vec<(u32, crate::cmem::Mem)>,
}

struct Shard {
    id: usize,
    cfg: Arc<Config>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    lanes: Arc<Lanes<SubmitPart>>,
    /// Every shard's lanes, to hand a redirected unit to the shard owning its node.
    all_lanes: Arc<[Arc<Lanes<SubmitPart>>]>,
    stop: Arc<AtomicBool>,
    backend: Backend,
    nodes: Vec<Node>,
    node_ids: Vec<usize>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    /// Connections closed while the kernel still holds their buffers (io_uring).
    zombies: Vec<usize>,
    parts: Vec<Option<ActivePart>>,
    free_parts: Vec<usize>,
    next_gen: u32,
    active: [VecDeque<u32>; 4],
    lane_picker: Picker,
    dispatch_picker: Picker,
    dirty: Vec<usize>,
    /// Units waiting to be retried (TRYAGAIN, CLUSTERDOWN, LOADING): when, which.
    delayed: Vec<(Instant, PartRef, u32)>,
    avg_value: f64,
    conns_per_node: usize,
    /// Connections per server and shard once values are large.
    large_conns: usize,
    /// An MGET reply came back (value sizes are known, or were absent).
    probed: bool,
    /// Bytes in flight per server from this shard (`max_node_inflight_bytes`).
    node_limit: usize,
    last_tick: Instant,
    /// This shard's syscall counters (the backend's).
    calls: Arc<SyscallCounters>,
    /// TLS client configuration, when the engine connects with TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: usize,
        cfg: Arc<Config>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        all_lanes: Arc<[Arc<Lanes<SubmitPart>>]>,
        stop: Arc<AtomicBool>,
        backend: Backend,
        nshards: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Shard {
        let lanes = all_lanes[id % all_lanes.len()].clone();
        // LMCache's max_connections (150 by default) sizes a pool of blocking callers;
        // here a few pipelined connections per server and shard carry everything, and
        // more connections with large replies in flight slow Redis down.
        let conns_per_node = (cfg.max_connections / nshards.max(1)).clamp(1, MAX_CONNS_PER_NODE);
        let n = nshards.max(1);
        // Measured on 2 cores at 4 and 32 MiB: 4 connections per server beat 2 by
        // 5-15% and 8 did about as well as 4.
        let large = cfg.large_value_connections.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(4, |c| (2 * c.get()).clamp(2, 8))
        });
        let large_conns = large.div_ceil(n).clamp(1, MAX_CONNS_PER_NODE);
        let node_limit = cfg.max_node_inflight_bytes;
        let weights = cfg.priority_weights;
        let calls = backend.calls();
        Shard {
            id,
            cfg,
            router,
            metrics,
            lanes,
            all_lanes,
            stop,
            backend,
            nodes: Vec::new(),
            node_ids: Vec::new(),
            conns: Vec::new(),
            free_conns: Vec::new(),
            zombies: Vec::new(),
            parts: Vec::new(),
            free_parts: Vec::new(),
            next_gen: 1,
            active: Default::default(),
            lane_picker: Picker::new(weights),
            dispatch_picker: Picker::new(weights),
            dirty: Vec::new(),
            delayed: Vec::new(),
            avg_value: 0.0,
            conns_per_node,
            large_conns,
            probed: false,
            node_limit,
            last_tick: Instant::now(),
            calls,
            tls,
        }
    }

    /// After the loop panicked: every batch with an active part here fails with `err`
    /// (the parts themselves are dropped with the shard).
    pub(super) fn abandon(&mut self, err: &Error) {
        for p in self.parts.iter().flatten() {
            p.batch.fail(clone_err(err));
        }
    }

    fn active_parts(&self) -> usize {
        self.parts.len() - self.free_parts.len()
    }

    fn run(&mut self) {
        tracing::debug!(shard = self.id, backend = %self.backend.kind(), "shard running");
        let mut uring_events = Vec::new();
        let mut epoll_events = Vec::new();
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if self.lanes.crash_requested() {
                // Test hook (Engine::debug_crash_shard): what a bug in the shard does.
                panic!("shard {} crashed on request (test hook)", self.id);
            }
            if stopping && self.lanes.is_empty() && self.active_parts() == 0 {
                break;
            }
            let pulled = self.pull_lanes();
            self.dispatch();
            self.flush_dirty();

            // A server known down is probed on the timer, so it keeps the loop ticking.
            let busy = self.active_parts() > 0
                || !self.zombies.is_empty()
                || self.nodes.iter().any(|n| n.down);
            let mut timeout = if busy {
                Some(TICK)
            } else {
                Some(Duration::from_secs(1))
            };
            if pulled && self.active_parts() < MAX_ACTIVE_PARTS && !self.lanes.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            let room = self.active_parts() < MAX_ACTIVE_PARTS;
            let parked = timeout != Some(Duration::ZERO) && room && !stopping && self.lanes.park();
            if room && !parked {
                timeout = Some(Duration::ZERO);
            }
            let r = match &mut self.backend {
                Backend::Uring(u) => u.wait(timeout, &mut uring_events),
                Backend::Epoll(e) => e.wait(timeout, &mut epoll_events),
            };
            self.lanes.unpark();
            if let Err(e) = r {
                tracing::error!(shard = self.id, error = %e, "event loop wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            for ev in uring_events.drain(..) {
                self.on_cqe(ev);
            }
            for ev in epoll_events.drain(..) {
                match ev {
                    epoll::Ev::Doorbell => self.lanes.drain_doorbell(),
                    ev => self.on_ready(ev),
                }
            }
            let now = Instant::now();
            if now.duration_since(self.last_tick) >= TICK {
                self.last_tick = now;
                self.tick(now);
            }
        }
        // Shutting down: fail whatever is still connected-but-waiting.
        for cid in 0..self.conns.len() {
            if self.conns[cid].is_some() {
                self.fail_conn(cid, Error::Closed, false);
            }
        }
        // Nothing may free memory the kernel still holds: cancel every operation and
        // wait (bounded) for the kernel to return it before the connections are dropped.
        if let Backend::Uring(u) = &mut self.backend {
            let t = u.shutdown(uring::DRAIN_LIMIT);
            self.metrics.kernel_teardown(t.drained, t.leaked);
        }
        tracing::debug!(shard = self.id, "shard stopped");
    }

    // ----- intake -----

    fn pull_lanes(&mut self) -> bool {
        let mut pulled = false;
        while self.active_parts() < MAX_ACTIVE_PARTS {
            let Some((class, part)) = self.lanes.pop(&mut self.lane_picker) else {
                break;
            };
            pulled = true;
            self.accept(class, part);
        }
        if pulled {
            self.lanes.notify_space();
        }
        pulled
    }

    fn accept(&mut self, class: Priority, sp: SubmitPart) {
        if sp.batch.is_finished() {
            // Timed out or failed while queued: nothing to do.
            sp.batch.part_done(Vec::new(), sp.bufs);
            return;
        }
        let mut bufs = sp.bufs.into_iter().peekable();
        let mut units = Vec::with_capacity(sp.units.len());
        let mut groups: Vec<Group> = Vec::new();
        for (i, spec) in sp.units.into_iter().enumerate() {
            let buf = if spec.role == Role::Payload
                && bufs.peek().is_some_and(|(c, _)| *c == spec.chunk)
            {
                bufs.next().map(|(_, b)| b)
            } else {
                None
            };
            let node = self.local_node(spec.node);
            // Units of one slot are usually adjacent (hash tags, standalone): check the
            // last group first.
            let existing = if spec.asking {
                None
            } else {
                groups
                    .iter_mut()
                    .rev()
                    .find(|g| g.node == node && g.slot == spec.slot && !g.asking)
            };
            match existing {
                Some(g) => g.queue.push_back(i as u32),
                None => groups.push(Group {
                    node,
                    slot: spec.slot,
                    queue: VecDeque::from([i as u32]),
                    asking: spec.asking,
                }),
            }
            units.push(PUnit {
                chunk: spec.chunk,
                role: spec.role,
                buf,
                attempts: spec.attempts,
                slot: Slot::Pending,
                hslot: spec.slot,
                node,
                lent: false,
            });
        }
        let n = units.len();
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let part = ActivePart {
            gen,
            class,
            batch: sp.batch,
            units,
            groups,
            unsent: n,
            unresolved: n,
            queued: true,
        };
        let idx = match self.free_parts.pop() {
            Some(i) => {
                self.parts[i] = Some(part);
                i
            }
            None => {
                self.parts.push(Some(part));
                self.parts.len() - 1
            }
        };
        self.active[class.index()].push_back(idx as u32);
        if n == 0 {
            self.maybe_complete(idx);
        }
    }

    /// This shard's node state for a router node id, created on first use.
    fn local_node(&mut self, id: NodeId) -> usize {
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
            .push(Node::new(id as NodeId, self.router.addr(id as NodeId)));
        self.nodes.len() - 1
    }

    // ----- dispatch -----

    fn dispatch(&mut self) {
        // Parts of one class looked at when the first one cannot be sent (its node is
        // full or backing off) before the class counts as blocked for this round.
        const LOOKAHEAD: usize = 8;
        let mut blocked = [false; 4];
        loop {
            let mut nonempty = [false; 4];
            for c in 0..4 {
                nonempty[c] = !blocked[c] && !self.active[c].is_empty();
            }
            let Some(class) = self.dispatch_picker.pick(nonempty) else {
                break;
            };
            let c = class.index();
            let mut sent = false;
            let mut i = 0;
            while i < self.active[c].len().min(LOOKAHEAD) {
                let pidx = self.active[c][i];
                match self.emit(pidx as usize) {
                    Emit::Sent => {
                        sent = true;
                        break;
                    }
                    Emit::Exhausted => {
                        self.active[c].remove(i);
                        if let Some(p) = self.parts[pidx as usize].as_mut() {
                            p.queued = false;
                        }
                        // Units failed without a send (a server known down).
                        self.maybe_complete(pidx as usize);
                        // Progress was made; look again from the front.
                        sent = true;
                        break;
                    }
                    Emit::Blocked => i += 1,
                }
            }
            if !sent {
                blocked[c] = true;
                self.dispatch_picker.unpick(class);
            }
        }
    }

    /// Sends one frame of part `pidx` if some connection can take it.
    fn emit(&mut self, pidx: usize) -> Emit {
        let Some(part) = self.parts[pidx].as_ref() else {
            return Emit::Exhausted;
        };
        if part.unsent == 0 {
            return Emit::Exhausted;
        }
        let bulk = matches!(part.batch.op, Op::Put { .. });
        // Frames of large values wait while their server has `max_node_inflight_bytes`
        // in flight from this shard; small ones (PEEK, EXISTS) never do.
        let heavy = bulk || (matches!(part.batch.op, Op::Get(_)) && self.avg_value >= LARGE_VALUE);
        let now = Instant::now();
        let mut any_blocked = false;
        for gi in 0..part.groups.len() {
            let Some(part) = self.parts[pidx].as_ref() else {
                break;
            };
            let g = &part.groups[gi];
            if g.queue.is_empty() {
                continue;
            }
            let node = g.node;
            // A server known down fails new calls at once (standalone; in a cluster a
            // down master's slots are expected to move, so units wait for the
            // topology within their deadline).
            if self.nodes[node].down && !self.router.is_cluster() {
                let err = self.nodes[node].down_error(now);
                self.fail_group(pidx, gi, &err);
                continue;
            }
            if let Some(at) = self.nodes[node].retry_at {
                if at > now {
                    any_blocked = true;
                    continue;
                }
            }
            // Before any value size is known one MGET (of one value) goes first.
            let probing = matches!(part.batch.op, Op::Get(_)) && !self.probed;
            if (heavy && self.node_inflight(node) >= self.node_limit)
                || (probing && self.mget_outstanding(node))
            {
                any_blocked = true;
                continue;
            }
            match self.pick_conn(node, bulk) {
                Some(cid) => {
                    self.build_frame(pidx, gi, cid);
                    return Emit::Sent;
                }
                None => any_blocked = true,
            }
        }
        if any_blocked {
            Emit::Blocked
        } else {
            // Every group empty but `unsent` says otherwise: resync.
            if let Some(p) = self.parts[pidx].as_mut() {
                p.unsent = 0;
            }
            Emit::Exhausted
        }
    }

    // ----- connections -----

    // ----- I/O events -----

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        // Express connections (small frames, see `pick_conn`) go first: a send copies
        // its bytes into the socket before the call returns, and a PEEK must not wait
        // for megabytes of PUT copied ahead of it.
        let conns = &self.conns;
        dirty.sort_by_key(|&cid| !conns[cid].as_ref().is_some_and(|c| c.express));
        for cid in dirty.drain(..) {
            let Some(conn) = self.conns[cid].as_mut() else {
                continue;
            };
            if matches!(conn.state, ConnState::Dead | ConnState::Connecting) {
                continue;
            }
            conn.rx.cap = recv_cap(conn, &self.parts);
            // A receive is armed only while a reply is owed: one armed on an idle
            // connection would take the next reply's first bytes whatever their size,
            // before the cap above can keep a large value's bytes out of the receive
            // buffer. A server closing an idle connection shows at its next use.
            let owed = !conn.pending.is_empty() || conn.tls_handshaking();
            let r = conn.seal().and_then(|_| match &mut self.backend {
                Backend::Uring(u) => {
                    u.send(cid, conn)
                        .and_then(|_| if owed { u.recv(cid, conn) } else { Ok(()) })
                }
                Backend::Epoll(_) => epoll::flush(conn, &self.calls).map(|_| ()),
            });
            if let Err(e) = r {
                let node = self.nodes[conn.node].addr.to_string();
                self.fail_conn(cid, Error::Io { node, source: e }, true);
            }
        }
        self.dirty = dirty;
    }

    fn on_cqe(&mut self, ev: uring::Cqe) {
        match ev {
            uring::Cqe::Doorbell => {}
            uring::Cqe::Connect { cid, res } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                let Some(conn) = self.conns[cid].as_mut() else {
                    return;
                };
                let r = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    conn.stream.connect_result()
                };
                match r {
                    Ok(true) => self.on_connected(cid),
                    Ok(false) => {
                        if let Backend::Uring(u) = &mut self.backend {
                            if let Err(e) = u.poll_connect(cid, conn) {
                                self.io_failed(cid, e);
                            }
                        }
                    }
                    Err(e) => self.io_failed(cid, e),
                }
            }
            uring::Cqe::Sent { cid, res, fixed } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                if res < 0 {
                    return self.io_failed(cid, io::Error::from_raw_os_error(-res));
                }
                if fixed {
                    self.metrics.sent_fixed(res as usize);
                }
                if let Some(conn) = self.conns[cid].as_mut() {
                    conn.on_sent(res as usize);
                }
                self.dirty.push(cid);
            }
            uring::Cqe::Recv { cid, res, buf } => {
                // The kernel is done with `buf`: it goes back to the connection (or is
                // freed here if the connection is gone).
                let Some(conn) = self.conns[cid].as_mut() else {
                    return;
                };
                let (direct, region) = (buf.direct, buf.region);
                let n = usize::try_from(res).unwrap_or(0);
                let _orphan = conn.rx.restore(buf, n);
                if conn.state == ConnState::Dead {
                    return self.settle_zombie(cid, direct);
                }
                if res <= 0 {
                    let e = if res == 0 {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
                    } else {
                        io::Error::from_raw_os_error(-res)
                    };
                    return self.io_failed(cid, e);
                }
                self.metrics.received(n);
                if direct {
                    self.metrics.recv_direct(n);
                }
                if region {
                    self.metrics.recv_fixed(n);
                }
                if !self.tls_received(cid) {
                    return;
                }
                self.process(cid);
                if let Some(conn) = self.conns[cid].as_mut() {
                    if conn.state != ConnState::Dead {
                        conn.trim();
                        self.dirty.push(cid);
                    }
                }
            }
        }
    }

    fn on_ready(&mut self, ev: epoll::Ev) {
        let epoll::Ev::Ready {
            cid,
            readable,
            writable,
            closed,
        } = ev
        else {
            return;
        };
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        if conn.state == ConnState::Connecting && (writable || readable) {
            match conn.stream.connect_result() {
                Ok(true) => self.on_connected(cid),
                Ok(false) => return,
                Err(e) => return self.io_failed(cid, e),
            }
        }
        if readable {
            loop {
                let Some(conn) = self.conns[cid].as_mut() else {
                    return;
                };
                if conn.state == ConnState::Dead {
                    return;
                }
                conn.rx.cap = recv_cap(conn, &self.parts);
                match epoll::read_once(conn, &self.calls) {
                    Ok(Some((0, _, _))) => {
                        return self.io_failed(
                            cid,
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "server closed the connection",
                            ),
                        )
                    }
                    Ok(Some((n, direct, more))) => {
                        self.metrics.received(n);
                        if direct {
                            self.metrics.recv_direct(n);
                        }
                        if !self.tls_received(cid) {
                            return;
                        }
                        self.process(cid);
                        if !more && !closed {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.io_failed(cid, e),
                }
            }
            if let Some(c) = self.conns[cid].as_mut() {
                c.trim();
            }
        }
        if writable {
            self.dirty.push(cid);
        }
    }

    // ----- replies -----

    // ----- timers -----

    fn tick(&mut self, now: Instant) {
        // Delayed cluster retries that are due go back to their queues, routed afresh.
        if !self.delayed.is_empty() {
            let due: Vec<(Instant, PartRef, u32)>;
            (due, self.delayed) = std::mem::take(&mut self.delayed)
                .into_iter()
                .partition(|(t, _, _)| *t <= now);
            for (_, pr, u) in due {
                self.reroute(pr, u);
            }
        }
        // Parts past their deadline: unresolved units time out.
        for idx in 0..self.parts.len() {
            if self.parts[idx]
                .as_ref()
                .is_some_and(|p| now >= p.batch.deadline)
            {
                self.expire(idx, now);
            }
        }
        // Connections that stopped answering or never connected.
        let request_timeout = self.cfg.request_timeout;
        let connect_timeout = self.cfg.connect_timeout;
        for cid in 0..self.conns.len() {
            let Some(c) = self.conns[cid].as_ref() else {
                continue;
            };
            let stalled = match c.state {
                ConnState::Connecting => now.duration_since(c.since) > connect_timeout,
                // TCP connect and TLS handshake together get the connect timeout.
                _ if c.tls_handshaking() => now.duration_since(c.since) > connect_timeout,
                ConnState::Dead => false,
                _ => c
                    .pending
                    .front()
                    .is_some_and(|p| now.duration_since(p.sent_at) > request_timeout),
            };
            if stalled {
                let node = self.nodes[c.node].addr.to_string();
                // A slow handshake is a timeout like a slow connect (retried), not a
                // certificate problem; it still counts as a failed handshake.
                let what = if c.state == ConnState::Connecting {
                    "connect"
                } else if c.tls_handshaking() {
                    self.metrics.tls_handshake(false);
                    "tls handshake"
                } else {
                    "reply"
                };
                let err = Error::Io {
                    node,
                    source: io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out")),
                };
                self.fail_conn(cid, err, true);
            }
        }
        self.probe_down_nodes(now);
        // Nodes whose backoff expired: their waiting parts can go again.
        if self
            .nodes
            .iter()
            .any(|n| n.retry_at.is_some_and(|t| t <= now))
        {
            for n in &mut self.nodes {
                if n.retry_at.is_some_and(|t| t <= now) && !n.down {
                    n.retry_at = None;
                }
            }
        }
    }
}

enum Emit {
    Sent,
    Exhausted,
    Blocked,
}
