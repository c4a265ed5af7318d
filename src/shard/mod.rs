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
//! The shard's state is split by owner: [`pool::Pool`] (servers, connections, zombies,
//! free ids, connections to flush), [`parts::Parts`] (the parts in flight, their
//! per-class queues, the delayed retries) and the backend (`handle::Backend`: the
//! io_uring ring or the epoll poller). `impl Shard` itself, the code that needs
//! several of them at once, lives in three files: this one (the event loop, intake,
//! dispatch, opening connections, the periodic tick), `events` (backend events,
//! replies, and `fail_conn`, the one way a connection fails) and `part` (what
//! becomes of a unit: retries, redirects, completion).
//!
//! The rest: `cmd` encodes each command family and reads its replies, `pairs` keeps a
//! chunk's two keys together through redirects, `conn` is one connection (sans-I/O,
//! its fields private), `rx` its receive side, `tls` its TLS layer, `uring` / `epoll` are the two backends
//! (`uring/ring.rs` holds every `unsafe` call of the shard), `fixed` the ring's
//! registered-region slots, `values` the pool of value buffers, `handle` starts and
//! stops the thread.

mod cmd;
pub(crate) mod conn;
mod epoll;
mod events;
mod fixed;
mod handle;
mod pairs;
mod part;
mod parts;
mod pool;
mod rx;
mod tls;
mod uring;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::batch::{clone_err, Op, SubmitPart};
use crate::cluster::Router;
use crate::config::Config;
use crate::error::Error;
use crate::lanes::Lanes;
use crate::mem::ValuePool;
use crate::metrics::Metrics;
use crate::priority::{Picker, Priority};
use crate::syscalls::SyscallCounters;

use conn::ConnState;
use events::Cause;
use handle::Backend;
pub(crate) use handle::{start, ShardHandle, Shared};
use parts::Parts;
use pool::{Pool, RESOLVE_POLL, SMALL_INFLIGHT};

/// Most connections one shard opens to one server.
const MAX_CONNS_PER_NODE: usize = 4;
/// Running average value size from which values count as large (connection fan-out
/// `large_value_connections`, GETs under the per-server byte budget).
const LARGE_VALUE: f64 = (1 << 20) as f64;
/// Values this large on average get the wider fan-out (`huge_conns`).
const HUGE_VALUE: f64 = (16 << 20) as f64;
/// Most frames queued on one connection before another connection is used.
const MAX_FRAMES_PER_CONN: usize = 16;
/// Most parts a shard works on at once; beyond that, parts wait in the lanes.
const MAX_ACTIVE_PARTS: usize = 512;
/// How often deadlines and stalled connections are checked while work is in flight.
const TICK: Duration = Duration::from_millis(5);

struct Shard {
    id: usize,
    cfg: Arc<Config>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    lanes: Arc<Lanes<SubmitPart>>,
    /// Every shard's lanes, to hand a redirected unit to the shard owning its node.
    all_lanes: Arc<[Arc<Lanes<SubmitPart>>]>,
    stop: Arc<AtomicBool>,
    /// The event loop: the io_uring ring (and the memory lent to the kernel) or epoll.
    backend: Backend,
    /// Servers and their connections.
    pool: Pool,
    /// The parts in flight.
    parts: Parts,
    lane_picker: Picker,
    dispatch_picker: Picker,
    /// Running average value size (fan-out, budgets for large values).
    avg_value: f64,
    /// An MGET reply came back (value sizes are known, or were absent).
    probed: bool,
    /// Bytes in flight per server from this shard (`max_node_inflight_bytes`).
    node_limit: usize,
    last_tick: Instant,
    /// This shard's syscall counters (the backend's).
    calls: Arc<SyscallCounters>,
    /// TLS client configuration, when the engine connects with TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Buffers of `get()` values, back from dropped chunks.
    values: Arc<ValuePool>,
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
        values: Arc<ValuePool>,
    ) -> Shard {
        let lanes = all_lanes[id % all_lanes.len()].clone();
        // LMCache's max_connections (150 by default) sizes a pool of blocking callers;
        // here a few pipelined connections per server and shard carry everything, and
        // more connections with large replies in flight slow Redis down.
        let conns_per_node = (cfg.max_connections / nshards.max(1)).clamp(1, MAX_CONNS_PER_NODE);
        let n = nshards.max(1);
        // Measured on 2 cores: at 4 MiB, 4 connections per server beat 2 by 5-15% and
        // 8 did about as well as 4; at 32 MiB, 8 beat 4 (PUT 1.01x the 8-connection
        // peer against 0.73x, RESULTS.md): each value is a long transfer, and the
        // server overlaps more of them. Set explicitly, one count serves both.
        let large = cfg.large_value_connections.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(4, |c| (2 * c.get()).clamp(2, 8))
        });
        let huge = cfg.large_value_connections.unwrap_or(large.max(8));
        let large_conns = large.div_ceil(n).clamp(1, MAX_CONNS_PER_NODE);
        let huge_conns = huge.div_ceil(n).clamp(1, MAX_CONNS_PER_NODE);
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
            pool: Pool::new(conns_per_node, large_conns, huge_conns),
            parts: Parts::new(),
            lane_picker: Picker::new(weights),
            dispatch_picker: Picker::new(weights),
            avg_value: 0.0,
            probed: false,
            node_limit,
            last_tick: Instant::now(),
            calls,
            tls,
            values,
        }
    }

    /// After the loop panicked: every batch with an active part here fails with `err`
    /// (the parts themselves are dropped with the shard).
    pub(super) fn abandon(&mut self, err: &Error) {
        for p in self.parts.iter() {
            p.batch.fail(clone_err(err));
        }
    }

    fn active_parts(&self) -> usize {
        self.parts.count()
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
            let busy = self.active_parts() > 0 || self.pool.has_zombies() || self.pool.any_down();
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
            if let Backend::Uring(u) = &mut self.backend {
                let n = u.take_efaults();
                if n > 0 {
                    self.metrics.efaults(n);
                }
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
        for cid in 0..self.pool.conn_slots() {
            if self.pool.conn(cid).is_some() {
                self.fail_conn(cid, Cause::Closed);
            }
        }
        // Nothing may free memory the kernel still holds: cancel every operation and
        // wait (bounded) for the kernel to return it. The sockets (reset by
        // `fail_conn`) are closed first, once every queued entry has reached the
        // kernel: their unsent data goes, so zero-copy sends' notifications come back
        // even from a peer that stopped reading.
        if let Backend::Uring(u) = &mut self.backend {
            if u.submit_queued() {
                self.pool.release_all(u);
            }
            let t = u.shutdown(uring::DRAIN_LIMIT);
            self.metrics.kernel_teardown(t.drained, t.leaked);
            self.metrics.efaults(u.take_efaults());
            self.pool.forget_zombies();
            self.metrics.zombies(0);
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
        let (pool, router) = (&mut self.pool, &self.router);
        let (idx, empty) = self
            .parts
            .admit(class, sp, |id| pool.local_node(id, router));
        if empty {
            self.maybe_complete(idx);
        }
    }

    // ----- dispatch -----

    fn dispatch(&mut self) {
        // Parts of one class looked at when the first one cannot be sent (its node is
        // full or backing off) before the class counts as blocked for this round.
        const LOOKAHEAD: usize = 8;
        let mut blocked = [false; 4];
        loop {
            let nonempty = self.parts.sendable(blocked);
            let Some(class) = self.dispatch_picker.pick(nonempty) else {
                break;
            };
            let c = class.index();
            let mut sent = false;
            let mut i = 0;
            while let Some(pidx) = self.parts.waiting(c, i, LOOKAHEAD) {
                match self.emit(pidx as usize) {
                    Emit::Sent => {
                        sent = true;
                        break;
                    }
                    Emit::Exhausted => {
                        self.parts.unqueue(c, i);
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
        let Some(part) = self.parts.at(pidx) else {
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
            let Some(part) = self.parts.at(pidx) else {
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
            if self.pool.node(node).down && !self.router.is_cluster() {
                let err = self.pool.node(node).down_error(now);
                if self.parts.fail_group(pidx, gi, &err) {
                    self.metrics.error("host_down");
                }
                continue;
            }
            if let Some(at) = self.pool.node(node).retry_at {
                if at > now {
                    any_blocked = true;
                    continue;
                }
            }
            // Before any value size is known one MGET (of one value) goes first.
            let probing = matches!(part.batch.op, Op::Get(_)) && !self.probed;
            if (heavy && self.pool.node_inflight(node) >= self.node_limit)
                || (probing && self.pool.mget_outstanding(node))
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
            if let Some(p) = self.parts.at_mut(pidx) {
                p.unsent = 0;
            }
            Emit::Exhausted
        }
    }

    /// The connection of `node` with the most room for a frame, opening one if all
    /// are full. `bulk` frames (PUT payloads) never use the node's express connection;
    /// other frames may, and open it (one beyond the pool size) when every connection
    /// has more than `SMALL_INFLIGHT` bytes in flight.
    fn pick_conn(&mut self, node: usize, bulk: bool) -> Option<usize> {
        let limit = self.cfg.max_inflight_bytes;
        let express = self.pool.node(node).express;
        let (best, grow) = self.pool.choose(node, bulk, limit, self.avg_value);
        // An idle connection is best; otherwise grow the pool while allowed, so large
        // values spread over several sockets.
        let pick = match best {
            Some((cid, w)) if w == 0 || !grow => Some((cid, w)),
            _ if grow => match self.open_conn(node) {
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
                    self.pool.set_express(node, cid);
                    return Some(cid);
                }
                Err(e) => self.open_failed(node, e),
            }
        }
        pick.map(|p| p.0)
    }

    /// Opens a connection to `node` (TLS and the handshake queued first).
    fn open_conn(&mut self, node: usize) -> io::Result<usize> {
        let readonly = self.router.is_cluster() && self.router.is_readonly(self.pool.node(node).id);
        let (cfg, tls) = (&self.cfg, &self.tls);
        let cid = self.pool.open(node, &mut self.backend, |conn, addr| {
            tls::attach(tls.as_ref(), conn, addr)?;
            pool::queue_handshake(cfg, conn, readonly);
            Ok(())
        })?;
        let addr = &self.pool.node(node).addr;
        tracing::debug!(shard = self.id, node = %addr, cid, "connecting");
        Ok(cid)
    }

    /// A connection could not even be started: a name still being resolved is
    /// asked for again shortly; anything else is a failed connect.
    fn open_failed(&mut self, node: usize, e: io::Error) {
        if e.kind() == io::ErrorKind::WouldBlock {
            self.pool.node_mut(node).retry_at = Some(Instant::now() + RESOLVE_POLL);
        } else {
            self.pool.node_mut(node).down = true;
            self.node_failed(node, &e);
        }
    }

    /// Writes one frame of group `gi` of part `pidx` to connection `cid`.
    fn build_frame(&mut self, pidx: usize, gi: usize, cid: usize) {
        let (Some(part), Some(conn)) = (self.parts.at_mut(pidx), self.pool.conn_mut(cid)) else {
            return;
        };
        let cx = cmd::FrameCx {
            chunk_size: self.cfg.chunk_size,
            inflight_limit: self.cfg.max_inflight_bytes,
            avg_value: &mut self.avg_value,
            probed: self.probed,
            metrics: &self.metrics,
        };
        cmd::build_frame(part, pidx, gi, conn, cx);
        self.pool.mark_dirty(cid);
    }

    // ----- the timer -----

    /// On every tick (`TICK` while work is in flight) due cluster retries are routed
    /// again, parts past their deadline expire, connections that stopped answering (or
    /// never connected, or never finished their TLS handshake) fail, servers known
    /// down are probed, and expired backoffs are lifted.
    fn tick(&mut self, now: Instant) {
        // Delayed cluster retries that are due go back to their queues, routed afresh.
        for (pr, u) in self.parts.take_due(now) {
            self.reroute(pr, u);
        }
        // Parts past their deadline: unresolved units time out.
        for idx in self.parts.overdue(now) {
            self.expire(idx, now);
        }
        // Connections that stopped answering or never connected.
        let request_timeout = self.cfg.request_timeout;
        let connect_timeout = self.cfg.connect_timeout;
        for cid in 0..self.pool.conn_slots() {
            let Some(c) = self.pool.conn(cid) else {
                continue;
            };
            let stalled = match c.state() {
                ConnState::Connecting => now.duration_since(c.since()) > connect_timeout,
                // TCP connect and TLS handshake together get the connect timeout.
                _ if c.tls_handshaking() => now.duration_since(c.since()) > connect_timeout,
                ConnState::Dead => false,
                _ => c
                    .pending()
                    .front()
                    .is_some_and(|p| now.duration_since(p.sent_at) > request_timeout),
            };
            if stalled {
                // A slow handshake is a timeout like a slow connect (retried), not a
                // certificate problem; it still counts as a failed handshake.
                let what = if c.state() == ConnState::Connecting {
                    "connect"
                } else if c.tls_handshaking() {
                    self.metrics.tls_handshake(false);
                    "tls handshake"
                } else {
                    "reply"
                };
                self.fail_conn(cid, Cause::Stalled(what));
            }
        }
        // A node known down whose probe time has come gets a connect attempt (once
        // connected, calls flow again; see `on_connected`).
        for node in self.pool.due_probes(now) {
            let addr = &self.pool.node(node).addr;
            tracing::debug!(shard = self.id, node = %addr, "probing a server known down");
            if let Err(e) = self.open_conn(node) {
                self.open_failed(node, e);
            }
        }
        // Nodes whose backoff expired: their waiting parts can go again.
        self.pool.lift_backoffs(now);
    }
}

enum Emit {
    Sent,
    Exhausted,
    Blocked,
}
