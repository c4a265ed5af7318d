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
//! This module keeps the event loop, intake and dispatch. The rest: `events` hands
//! connections to the backend and acts on its completions / readiness, `timers` runs
//! the periodic tick (deadlines, stalls, retries, probes), `cmd` encodes each command
//! family and reads its replies, `pool` opens, picks, fails and frees connections,
//! `part` tracks the units of a part and carries out retry decisions
//! (`crate::cluster::retry`), `pairs` keeps a chunk's two keys together through
//! redirects, `conn` is one connection (sans-I/O), `uring` / `epoll`
//! are the two backends, `handle` starts and stops the thread.

mod cmd;
pub(crate) mod conn;
mod epoll;
mod events;
mod fixed;
mod handle;
mod pairs;
mod part;
mod pool;
mod timers;
mod tls;
mod uring;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::batch::{clone_err, Op, Role, Slot, SubmitPart, UnitSpec};
use crate::cluster::{NodeId, Router};
use crate::config::Config;
use crate::error::Error;
use crate::lanes::Lanes;
use crate::mem::ValuePool;
use crate::metrics::Metrics;
use crate::priority::{Picker, Priority};
use crate::syscalls::SyscallCounters;

use conn::{Conn, PartRef};
use handle::Backend;
pub(crate) use handle::{start, ShardHandle, Shared};
use part::{ActivePart, Group, PUnit};
use pool::Node;

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
    /// Connections per server and shard once values average 16 MiB or more.
    huge_conns: usize,
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
            huge_conns,
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
        for cid in 0..self.conns.len() {
            if self.conns[cid].is_some() {
                self.fail_conn(cid, Error::Closed, false);
            }
        }
        // Nothing may free memory the kernel still holds: cancel every operation and
        // wait (bounded) for the kernel to return it. The sockets (reset by
        // `fail_conn`) are closed first, once every queued entry has reached the
        // kernel: their unsent data goes, so zero-copy sends' notifications come back
        // even from a peer that stopped reading.
        if let Backend::Uring(u) = &mut self.backend {
            if u.submit_queued() {
                for c in self.conns.iter_mut() {
                    if c.is_some() {
                        Self::release_conn(u, c.take());
                    }
                }
            }
            let t = u.shutdown(uring::DRAIN_LIMIT);
            self.metrics.kernel_teardown(t.drained, t.leaked);
            self.metrics.efaults(u.take_efaults());
            self.zombies.clear();
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
            // last group first. An ASK group takes only a chunk's metadata right after
            // its payload (forwarded together, see `pairs`).
            let existing = if spec.asking {
                groups.last_mut().filter(|g| {
                    g.asking
                        && g.node == node
                        && g.slot == spec.slot
                        && part::pairs_with(&units, g.queue.back().copied(), spec.chunk, spec.role)
                })
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
            held: Default::default(),
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
}

enum Emit {
    Sent,
    Exhausted,
    Blocked,
}
