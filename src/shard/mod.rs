//! A shard: one pinned thread, its own event loop, the connections it owns.
//!
//! Work arrives as parts of batches through the shard's priority lanes
//! ([`crate::ring`]). The loop pulls parts, cuts them into frames (MGET of up to
//! `chunk_size` keys, or pipelined SET / EXISTS / DEL), writes the frames to the least
//! loaded connection of the target server and reads the replies straight into each
//! unit's destination. Frames wait inside the shard only while no connection has
//! capacity (a bound on in-flight bytes and frames per connection), and while they wait
//! they are served in priority order.

pub(crate) mod conn;
mod epoll;
mod uring;

use std::collections::VecDeque;
use std::io;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{Batch, Op, Role, Slot};
use crate::cluster::{NodeId, Router};
use crate::config::{Config, IoBackend, ServerAddr};
use crate::error::{show_key, Error, Result};
use crate::metrics::Metrics;
use crate::resp::{self, ArrayOutcome, BulkSink, Dest, Value};
use crate::ring::{Lanes, Picker, Priority};

use conn::{Conn, ConnState, PartRef, PendKind, Pending, Stream};

/// Most connections one shard opens to one server.
const MAX_CONNS_PER_NODE: usize = 4;
/// Most frames queued on one connection before another connection is used.
const MAX_FRAMES_PER_CONN: usize = 16;
/// Most parts a shard works on at once; beyond that, parts wait in the lanes.
const MAX_ACTIVE_PARTS: usize = 512;
/// Tries per unit across connection failures before the error reaches the caller.
const MAX_ATTEMPTS: u8 = 3;
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
    pub bufs: Vec<(u32, Vec<u8>)>,
}

/// The engine's handle on a running shard.
pub(crate) struct ShardHandle {
    pub lanes: Arc<Lanes<SubmitPart>>,
    pub backend: BackendKind,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Logs a shard thread that ends by panicking: its callers then get errors from
/// `Engine` (via `ShardHandle::is_alive`) instead of waiting for their deadlines.
struct PanicReport(usize);

impl Drop for PanicReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                shard = self.0,
                "shard thread panicked; requests routed to it now fail"
            );
        }
    }
}

impl ShardHandle {
    /// `false` once the shard thread has ended (a panic, or shutdown).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the shard to finish and waits for it.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.lanes.ring();
        if let Some(t) = self.thread.take() {
            // The last engine handle can be released on a shard thread (a follow-up
            // request): that shard sees the stop flag when it returns to its loop.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts shard `id`, pinned to `core` if given. Returns once its event loop is set up.
pub(crate) fn start(
    id: usize,
    cfg: Arc<Config>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    core: Option<usize>,
    all_lanes: Arc<[Arc<Lanes<SubmitPart>>]>,
) -> Result<ShardHandle> {
    let nshards = all_lanes.len();
    let lanes = all_lanes[id].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (l2, s2) = (lanes.clone(), stop.clone());
    let all_lanes = all_lanes.clone();
    let thread = std::thread::Builder::new()
        .name(format!("slotline-shard-{id}"))
        .spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    tracing::warn!(shard = id, core, "could not pin shard thread to core");
                }
            }
            let backend = match Backend::new(cfg.io_backend, &l2) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(backend.kind()));
            let _report = PanicReport(id);
            let mut shard = Shard::new(id, cfg, router, metrics, all_lanes, s2, backend, nshards);
            shard.run();
        })
        .map_err(|e| Error::Io {
            node: "local".into(),
            source: e,
        })?;
    let backend = rx.recv().map_err(|_| Error::Closed)??;
    Ok(ShardHandle {
        lanes,
        backend,
        stop,
        thread: Some(thread),
    })
}

enum Backend {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
}

impl Backend {
    fn new(want: IoBackend, lanes: &Lanes<SubmitPart>) -> Result<Backend> {
        let io_err = |e| Error::Io {
            node: "local".into(),
            source: e,
        };
        match want {
            IoBackend::Epoll => Ok(Backend::Epoll(
                epoll::Epoll::new(lanes.doorbell()).map_err(io_err)?,
            )),
            IoBackend::IoUring => match uring::Uring::new(lanes.doorbell()) {
                Ok(u) => Ok(Backend::Uring(Box::new(u))),
                Err(e) => Err(Error::config(
                    "io_backend",
                    "io_uring",
                    format!("io_uring is not available here ({e}); use io_backend: auto or epoll"),
                )),
            },
            IoBackend::Auto => match uring::Uring::new(lanes.doorbell()) {
                Ok(u) => Ok(Backend::Uring(Box::new(u))),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable (blocked by seccomp or an old kernel?); using the epoll fallback");
                    Ok(Backend::Epoll(
                        epoll::Epoll::new(lanes.doorbell()).map_err(io_err)?,
                    ))
                }
            },
        }
    }

    fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::IoUring,
            Backend::Epoll(_) => BackendKind::Epoll,
        }
    }
}

/// One unit of a part inside the shard.
struct PUnit {
    chunk: u32,
    role: Role,
    /// The caller's buffer (get_into), until the payload lands in it.
    buf: Option<Vec<u8>>,
    attempts: u8,
    slot: Slot,
    /// Its cluster slot, for grouping and error messages.
    hslot: u16,
    /// The node (shard-local index) it was last queued for.
    node: usize,
    /// Its caller buffer is out, as a reply's payload destination (`buf` is `None`).
    lent: bool,
}

/// Units of a part still to be sent to one node and one slot (Redis rejects MGET
/// across slots; in standalone mode every unit has slot 0).
struct Group {
    node: usize,
    slot: u16,
    queue: VecDeque<u32>,
    /// An ASK redirect: one unit, sent after ASKING.
    asking: bool,
}

struct ActivePart {
    gen: u32,
    class: Priority,
    batch: Arc<Batch>,
    units: Vec<PUnit>,
    groups: Vec<Group>,
    unsent: usize,
    unresolved: usize,
    queued: bool,
}

impl ActivePart {
    fn resolve(&mut self, u: u32, slot: Slot) {
        if let Some(unit) = self.units.get_mut(u as usize) {
            if matches!(unit.slot, Slot::Pending) {
                self.unresolved -= 1;
            }
            unit.slot = slot;
        }
    }
}

/// Lands MGET elements in their units.
struct UnitSink<'a> {
    part: Option<&'a mut ActivePart>,
    units: &'a [u32],
    max_value: usize,
    avg_value: &'a mut f64,
}

impl BulkSink for UnitSink<'_> {
    fn begin(&mut self, i: usize, len: usize) -> Dest {
        *self.avg_value = *self.avg_value * 0.9 + len as f64 * 0.1;
        let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) else {
            return Dest::discard(len);
        };
        let unit = &mut part.units[u as usize];
        if let Some(buf) = unit.buf.take() {
            if len <= buf.len() {
                unit.lent = true;
                return Dest {
                    buf,
                    len,
                    keep: true,
                };
            }
            unit.buf = Some(buf);
            part.resolve(u, Slot::TooLarge(len));
            return Dest::discard(len);
        }
        if len > self.max_value {
            let key = show_key(&part.batch.key_of(unit.chunk, unit.role));
            part.resolve(
                u,
                Slot::Err(Error::TooLarge {
                    key,
                    len,
                    limit: self.max_value,
                }),
            );
            return Dest::discard(len);
        }
        Dest::alloc(len)
    }

    fn finish(&mut self, i: usize, dest: Dest) {
        if !dest.keep {
            return;
        }
        if let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) {
            if let Some(unit) = part.units.get_mut(u as usize) {
                unit.lent = false;
            }
            part.resolve(
                u,
                Slot::Data {
                    buf: dest.buf,
                    len: dest.len,
                },
            );
        }
    }

    fn nil(&mut self, i: usize) {
        if let (Some(part), Some(&u)) = (self.part.as_deref_mut(), self.units.get(i)) {
            part.resolve(u, Slot::Nil);
        }
    }
}

/// Per-server state inside a shard.
struct Node {
    id: NodeId,
    addr: ServerAddr,
    conns: Vec<usize>,
    /// No new connection attempt before this instant (after failures).
    retry_at: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
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
    last_tick: Instant,
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
    ) -> Shard {
        let lanes = all_lanes[id % all_lanes.len()].clone();
        // LMCache's max_connections (150 by default) sizes a pool of blocking callers;
        // here a few pipelined connections per server and shard carry everything, and
        // more connections with large replies in flight slow Redis down.
        let conns_per_node = (cfg.max_connections / nshards.max(1)).clamp(1, MAX_CONNS_PER_NODE);
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
            lane_picker: Picker::default(),
            dispatch_picker: Picker::default(),
            dirty: Vec::new(),
            delayed: Vec::new(),
            avg_value: 0.0,
            conns_per_node,
            last_tick: Instant::now(),
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
            if stopping && self.lanes.is_empty() && self.active_parts() == 0 {
                break;
            }
            let pulled = self.pull_lanes();
            self.dispatch();
            self.flush_dirty();

            let busy = self.active_parts() > 0 || !self.zombies.is_empty();
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
                self.on_ready(ev);
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

    /// The node index (in this shard) serving `key` now.
    fn route(&mut self, key: &[u8]) -> usize {
        let id = self.router.node_for(key);
        self.local_node(id)
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
        self.nodes.push(Node {
            id: id as NodeId,
            addr: self.router.addr(id as NodeId),
            conns: Vec::new(),
            retry_at: None,
            failures: 0,
            last_error: None,
        });
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
                        // Progress was made; look again from the front.
                        sent = true;
                        break;
                    }
                    Emit::Blocked => i += 1,
                }
            }
            if !sent {
                blocked[c] = true;
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
        let now = Instant::now();
        let mut any_blocked = false;
        for gi in 0..part.groups.len() {
            let part = self.parts[pidx].as_ref().expect("checked above");
            let g = &part.groups[gi];
            if g.queue.is_empty() {
                continue;
            }
            let node = g.node;
            if let Some(at) = self.nodes[node].retry_at {
                if at > now {
                    any_blocked = true;
                    continue;
                }
            }
            match self.pick_conn(node) {
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

    /// The connection of `node` with the most room, opening one if all are full.
    fn pick_conn(&mut self, node: usize) -> Option<usize> {
        let limit = self.cfg.max_inflight_bytes;
        let mut best: Option<(usize, usize)> = None;
        for &cid in &self.nodes[node].conns {
            let Some(c) = self.conns[cid].as_ref() else {
                continue;
            };
            if c.state == ConnState::Dead
                || c.pending.len() >= MAX_FRAMES_PER_CONN
                || c.inflight >= limit
            {
                continue;
            }
            if best.is_none_or(|(_, w)| c.inflight < w) {
                best = Some((cid, c.inflight));
            }
        }
        // An idle connection is best; otherwise grow the pool while allowed, so large
        // values spread over several sockets.
        if let Some((cid, w)) = best {
            if w == 0 || self.nodes[node].conns.len() >= self.conns_per_node {
                return Some(cid);
            }
        }
        if self.nodes[node].conns.len() < self.conns_per_node {
            match self.open_conn(node) {
                Ok(cid) => return Some(cid),
                Err(e) => {
                    self.node_failed(node, &e);
                    return best.map(|b| b.0);
                }
            }
        }
        best.map(|b| b.0)
    }

    /// Writes one frame (one round trip) to `cid`: commands for the units of group
    /// `gi` and of the part's other groups on the same node, within the key and byte
    /// budgets. Each command gets its own pending reply.
    fn build_frame(&mut self, pidx: usize, gi: usize, cid: usize) {
        let chunk_size = self.cfg.chunk_size;
        let inflight_limit = self.cfg.max_inflight_bytes;
        let avg = self.avg_value;
        let Some(part) = self.parts[pidx].as_mut() else {
            return;
        };
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        let batch = part.batch.clone();
        let node = part.groups[gi].node;
        let asking = part.groups[gi].asking;
        let order: Vec<usize> = if asking {
            vec![gi]
        } else {
            (gi..part.groups.len())
                .filter(|&j| {
                    let g = &part.groups[j];
                    g.node == node && !g.asking && !g.queue.is_empty()
                })
                .collect()
        };
        // Keep the expected reply under the in-flight budget once value sizes are known:
        // 256 keys of 32 MiB must not be one 8 GiB reply.
        let key_budget = match &batch.op {
            Op::Get(_) if avg >= 1.0 => {
                chunk_size.min(((inflight_limit as f64 / avg) as usize).max(1))
            }
            Op::Put { .. } => 2 * chunk_size,
            _ => chunk_size,
        };
        let before = conn.out_len();
        let mut used_keys = 0usize;
        let mut used_bytes = 0usize;
        let mut tmp = Vec::with_capacity(256);
        let mut key = Vec::with_capacity(128);
        for j in order {
            if used_keys >= key_budget || used_bytes >= inflight_limit {
                break;
            }
            let g = &mut part.groups[j];
            if asking {
                tmp.clear();
                resp::write_command(&mut tmp, &[b"ASKING"]);
                conn.hdr().extend_from_slice(&tmp);
                conn.pending.push_back(Pending {
                    part: None,
                    kind: PendKind::Asking,
                    units: Vec::new(),
                    weight: 0,
                    sent_at: Instant::now(),
                });
            }
            let room = if asking { 1 } else { key_budget - used_keys };
            let mut units: Vec<u32> = Vec::new();
            let mut weight = 0usize;
            let kind = match &batch.op {
                Op::Get(_) => {
                    units.extend(g.queue.drain(..room.min(g.queue.len())));
                    tmp.clear();
                    resp::write_array_header(&mut tmp, units.len() + 1);
                    tmp.extend_from_slice(b"$4\r\nMGET\r\n");
                    for &u in &units {
                        let pu = &part.units[u as usize];
                        key.clear();
                        batch.write_key(pu.chunk, pu.role, &mut key);
                        resp::write_bulk(&mut tmp, &key);
                    }
                    conn.hdr().extend_from_slice(&tmp);
                    weight = tmp.len() + (avg as usize).max(64) * units.len();
                    PendKind::Mget
                }
                Op::Put { data, metas, .. } => {
                    let value_of = |pu: &PUnit| match pu.role {
                        Role::Payload => &data[pu.chunk as usize][..],
                        Role::Meta => &metas[pu.chunk as usize][..],
                    };
                    // Choose the units first: MSET states its argument count up front.
                    for &u in g.queue.iter() {
                        let pu = &part.units[u as usize];
                        let value_len = value_of(pu).len();
                        let first = units.is_empty() && used_keys == 0;
                        // A chunk's metadata always follows its payload in the same
                        // command or on the same connection: a reader that finds the
                        // metadata can then expect the payload (LMCache's write order).
                        let pair_tail = pu.role == Role::Meta
                            && units.last().map(|&l| part.units[l as usize].chunk)
                                == Some(pu.chunk);
                        if !first
                            && !pair_tail
                            && (units.len() >= room
                                || used_bytes + weight + value_len > inflight_limit)
                        {
                            break;
                        }
                        units.push(u);
                        weight += value_len + 64;
                        if asking {
                            break;
                        }
                    }
                    g.queue.drain(..units.len());
                    // Without a TTL one MSET carries the whole group: the server parses
                    // and dispatches one command instead of one per key, and a chunk's
                    // two keys appear together. With a TTL each key needs SET .. EX.
                    let mset = batch.ttl.is_none() && units.len() > 1;
                    tmp.clear();
                    if mset {
                        resp::write_array_header(&mut tmp, 2 * units.len() + 1);
                        tmp.extend_from_slice(b"$4\r\nMSET\r\n");
                        conn.hdr().extend_from_slice(&tmp);
                    }
                    for &u in &units {
                        let pu = &part.units[u as usize];
                        let value = value_of(pu);
                        key.clear();
                        batch.write_key(pu.chunk, pu.role, &mut key);
                        tmp.clear();
                        if mset {
                            resp::write_bulk(&mut tmp, &key);
                            resp::write_bulk_header(&mut tmp, value.len());
                        } else {
                            resp::write_set_prefix(&mut tmp, &key, value.len(), batch.ttl);
                        }
                        conn.hdr().extend_from_slice(&tmp);
                        match pu.role {
                            Role::Payload => conn.push_payload(&data[pu.chunk as usize]),
                            Role::Meta => conn.hdr().extend_from_slice(value),
                        }
                        tmp.clear();
                        if mset {
                            tmp.extend_from_slice(b"\r\n");
                        } else {
                            resp::write_set_suffix(&mut tmp, batch.ttl);
                        }
                        conn.hdr().extend_from_slice(&tmp);
                    }
                    if mset {
                        PendKind::AllUnits
                    } else {
                        PendKind::PerUnit { next: 0 }
                    }
                }
                Op::Exists { .. } | Op::Delete => {
                    let cmd: &[u8] = if matches!(batch.op, Op::Delete) {
                        b"DEL"
                    } else {
                        b"EXISTS"
                    };
                    units.extend(g.queue.drain(..room.min(g.queue.len())));
                    tmp.clear();
                    for &u in &units {
                        let pu = &part.units[u as usize];
                        key.clear();
                        batch.write_key(pu.chunk, pu.role, &mut key);
                        resp::write_command(&mut tmp, &[cmd, &key]);
                    }
                    conn.hdr().extend_from_slice(&tmp);
                    weight = tmp.len() + 8 * units.len();
                    PendKind::PerUnit { next: 0 }
                }
                Op::Command { args } => {
                    units.extend(g.queue.pop_front());
                    let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
                    tmp.clear();
                    resp::write_command(&mut tmp, &refs);
                    conn.hdr().extend_from_slice(&tmp);
                    weight = tmp.len() + 1024;
                    PendKind::Command
                }
            };
            if units.is_empty() {
                continue;
            }
            let weight = weight.max(1);
            used_keys += units.len();
            used_bytes += weight;
            part.unsent -= units.len();
            conn.inflight += weight;
            conn.pending.push_back(Pending {
                part: Some(PartRef {
                    idx: pidx as u32,
                    gen: part.gen,
                }),
                kind,
                units,
                weight,
                sent_at: Instant::now(),
            });
        }
        if asking && part.groups.get(gi).is_some_and(|g| g.queue.is_empty()) {
            part.groups.remove(gi);
        }
        conn.end_frame();
        let sent = conn.out_len() - before;
        self.metrics.frame_sent(sent);
        self.dirty.push(cid);
    }

    // ----- connections -----

    fn open_conn(&mut self, node: usize) -> io::Result<usize> {
        let addr = self.nodes[node].addr.clone();
        let stream = match &addr {
            ServerAddr::Tcp { host, port } => {
                let sa = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{host} did not resolve"))
                    })?;
                let s = mio::net::TcpStream::connect(sa)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            ServerAddr::Unix { path } => Stream::Unix(mio::net::UnixStream::connect(path)?),
        };
        let fixed = match &mut self.backend {
            Backend::Uring(u) => u.take_fixed(),
            Backend::Epoll(_) => None,
        };
        let mut conn = Conn::new(node, stream, fixed);
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

    fn queue_handshake(&self, conn: &mut Conn, readonly: bool) {
        let mut tmp = Vec::new();
        let mut steps = Vec::new();
        if let Some(pass) = &self.cfg.password {
            match &self.cfg.username {
                Some(user) => {
                    resp::write_command(&mut tmp, &[b"AUTH", user.as_bytes(), pass.as_bytes()])
                }
                None => resp::write_command(&mut tmp, &[b"AUTH", pass.as_bytes()]),
            }
            steps.push(true);
        }
        if self.cfg.database != 0 {
            let db = self.cfg.database.to_string();
            resp::write_command(&mut tmp, &[b"SELECT", db.as_bytes()]);
            steps.push(false);
        }
        if !self.cfg.client_name.is_empty() {
            resp::write_command(
                &mut tmp,
                &[b"CLIENT", b"SETNAME", self.cfg.client_name.as_bytes()],
            );
            steps.push(false);
        }
        if readonly {
            // A replica serves reads of its master's slots only after READONLY.
            resp::write_command(&mut tmp, &[b"READONLY"]);
            steps.push(false);
        }
        conn.hdr().extend_from_slice(&tmp);
        conn.end_frame();
        for auth in steps {
            conn.pending.push_back(Pending {
                part: None,
                kind: PendKind::Handshake { auth },
                units: Vec::new(),
                weight: 0,
                sent_at: Instant::now(),
            });
        }
    }

    fn on_connected(&mut self, cid: usize) {
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        conn.state = if conn
            .pending
            .iter()
            .any(|p| matches!(p.kind, PendKind::Handshake { .. }))
        {
            ConnState::Handshaking
        } else {
            ConnState::Ready
        };
        let node = conn.node;
        self.nodes[node].failures = 0;
        self.nodes[node].retry_at = None;
        self.dirty.push(cid);
    }

    fn node_failed(&mut self, node: usize, e: &dyn std::fmt::Display) {
        let n = &mut self.nodes[node];
        n.failures += 1;
        // Short, capped backoff: a restarted server is picked up within ~100 ms.
        let backoff = Duration::from_millis((10u64 << n.failures.min(4)).min(100));
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
    fn fail_conn(&mut self, cid: usize, err: Error, count_node_failure: bool) {
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        if conn.state == ConnState::Dead {
            return;
        }
        let was_connecting = conn.state == ConnState::Connecting;
        conn.state = ConnState::Dead;
        let node = conn.node;
        let held = if conn.rx.reader.window_lent() {
            conn.pending.pop_front()
        } else {
            None
        };
        let pending: Vec<Pending> = conn.pending.drain(..).collect();
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
        if count_node_failure || was_connecting {
            self.node_failed(node, &err);
        }
        if let (Some((i, dest)), Some(p)) = (returned, pending.first()) {
            self.return_dest(p, i, dest);
        }
        self.fail_pending(pending, &err);
        // Release the socket: now for epoll, after the kernel returns buffers for io_uring.
        match &mut self.backend {
            Backend::Epoll(e) => {
                if let Some(mut c) = self.conns[cid].take() {
                    e.deregister(&mut c);
                }
                self.free_conns.push(cid);
            }
            Backend::Uring(u) => {
                if u.busy(cid) {
                    u.cancel(cid);
                    self.zombies.push(cid);
                } else {
                    let c = self.conns[cid].take();
                    Self::release_conn(u, c);
                    self.free_conns.push(cid);
                }
            }
        }
    }

    /// Gives a reply's payload destination back to its unit when it is the caller's
    /// buffer (get_into), so the caller gets it back whatever happens to the unit.
    fn return_dest(&mut self, p: &Pending, i: usize, dest: Dest) {
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

    /// Retries or fails the unanswered units of replies a failed connection owed.
    fn fail_pending(&mut self, pending: Vec<Pending>, err: &Error) {
        let retryable = matches!(err, Error::Io { .. } | Error::Protocol { .. });
        for p in pending {
            let Some(pr) = p.part else { continue };
            let done = match p.kind {
                PendKind::PerUnit { next } => next,
                _ => 0,
            };
            for &u in &p.units[done.min(p.units.len())..] {
                self.retry_or_fail(pr, u, err, retryable);
            }
            self.maybe_complete(pr.idx as usize);
        }
    }

    /// The kernel returned a receive of a closed connection: the reply it held back
    /// (see [`Self::fail_conn`]) gives its destination back and its units are retried or
    /// failed now; the connection is freed once nothing else is outstanding.
    fn settle_zombie(&mut self, cid: usize, direct: bool) {
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        let returned = conn.rx.reader.reset();
        let held: Vec<Pending> = conn.pending.drain(..).collect();
        let err = conn.failure.take();
        if direct {
            self.metrics.kernel_late_release();
        }
        if let (Some((i, dest)), Some(p)) = (returned, held.first()) {
            self.return_dest(p, i, dest);
        }
        if let Some(err) = err {
            self.fail_pending(held, &err);
        }
        self.reap(cid);
    }

    fn retry_or_fail(&mut self, pr: PartRef, u: u32, err: &Error, retryable: bool) {
        let cluster = self.router.is_cluster();
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        let Some(unit) = part.units.get_mut(u as usize) else {
            return;
        };
        if !matches!(unit.slot, Slot::Pending) {
            return;
        }
        unit.attempts += 1;
        let (hslot, node) = (unit.hslot, unit.node);
        let is_command = matches!(part.batch.op, Op::Command { .. });
        if retryable && unit.attempts < MAX_ATTEMPTS && Instant::now() < part.batch.deadline {
            self.reroute(pr, u);
            return;
        }
        let e = if cluster {
            located(
                is_command,
                hslot,
                &self.nodes[node].addr.to_string(),
                &err.to_string(),
            )
        } else {
            clone_err(err)
        };
        if let Some(part) = self.part_mut(pr) {
            part.resolve(u, Slot::Err(e));
        }
    }

    /// Hands a redirected unit to the shard that owns `node`, so each master's
    /// connections stay with one shard. `false` when this shard owns the node itself,
    /// nobody does yet, or the owner's lane is full (then the caller sends it from here).
    fn forward(&mut self, pr: PartRef, u: u32, node: NodeId, asking: bool) -> bool {
        let Some(owner) = self.router.snapshot().owner(node) else {
            return false;
        };
        if owner == self.id || owner >= self.all_lanes.len() {
            return false;
        }
        let lanes = self.all_lanes[owner].clone();
        let Some(part) = self.part_mut(pr) else {
            return false;
        };
        let Some(unit) = part.units.get_mut(u as usize) else {
            return false;
        };
        let spec = UnitSpec {
            chunk: unit.chunk,
            role: unit.role,
            node,
            slot: unit.hslot,
            asking,
            attempts: unit.attempts,
        };
        let bufs: Vec<(u32, Vec<u8>)> = unit
            .buf
            .take()
            .map(|b| (unit.chunk, b))
            .into_iter()
            .collect();
        let batch = part.batch.clone();
        // Counted before the push, so the batch cannot finish before the new part reports.
        batch.add_part();
        let sp = SubmitPart {
            batch: batch.clone(),
            units: vec![spec],
            bufs,
        };
        match lanes.try_push(part.class, sp) {
            Ok(()) => {
                part.resolve(u, Slot::Forwarded);
                true
            }
            Err(mut sp) => {
                batch.remove_part();
                if let Some((_, b)) = sp.bufs.pop() {
                    part.units[u as usize].buf = Some(b);
                }
                false
            }
        }
    }

    /// Queues a unit again where the current routing sends it: a refreshed topology may
    /// name another node by now. A command sent to a chosen node stays with that node.
    fn reroute(&mut self, pr: PartRef, u: u32) {
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        let Some(unit) = part.units.get(u as usize) else {
            return;
        };
        let node = if matches!(part.batch.op, Op::Command { .. }) {
            unit.node
        } else {
            let key = part.batch.key_of(unit.chunk, unit.role);
            self.route(&key)
        };
        self.requeue(pr, u, node, false);
    }

    /// Puts a unit back in its part's queue for `node` (after ASKING if `asking`).
    fn requeue(&mut self, pr: PartRef, u: u32, node: usize, asking: bool) {
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        let Some(unit) = part.units.get_mut(u as usize) else {
            return;
        };
        unit.node = node;
        let hslot = unit.hslot;
        let existing = if asking {
            None
        } else {
            part.groups
                .iter_mut()
                .find(|g| g.node == node && g.slot == hslot && !g.asking)
        };
        match existing {
            Some(g) => g.queue.push_back(u),
            None => part.groups.push(Group {
                node,
                slot: hslot,
                queue: VecDeque::from([u]),
                asking,
            }),
        }
        part.unsent += 1;
        let class = part.class;
        if !part.queued {
            part.queued = true;
            self.active[class.index()].push_back(pr.idx);
        }
    }

    fn part_mut(&mut self, pr: PartRef) -> Option<&mut ActivePart> {
        self.parts
            .get_mut(pr.idx as usize)
            .and_then(|p| p.as_mut())
            .filter(|p| p.gen == pr.gen)
    }

    /// Hands a part back to its batch once every unit is resolved.
    fn maybe_complete(&mut self, idx: usize) {
        let Some(part) = self.parts[idx].as_ref() else {
            return;
        };
        if part.unresolved > 0 {
            return;
        }
        let Some(part) = self.parts[idx].take() else {
            return;
        };
        self.free_parts.push(idx);
        if part.queued {
            self.active[part.class.index()].retain(|&p| p as usize != idx);
        }
        let mut slots = Vec::with_capacity(part.units.len());
        let mut bufs = Vec::new();
        for u in part.units {
            if let Some(b) = u.buf {
                bufs.push((u.chunk, b));
            }
            slots.push((u.chunk, u.role, u.slot));
        }
        part.batch.part_done(slots, bufs);
    }

    // ----- I/O events -----

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for cid in dirty.drain(..) {
            let Some(conn) = self.conns[cid].as_mut() else {
                continue;
            };
            if matches!(conn.state, ConnState::Dead | ConnState::Connecting) {
                continue;
            }
            let r = match &mut self.backend {
                Backend::Uring(u) => u.send(cid, conn).and_then(|_| u.recv(cid, conn)),
                Backend::Epoll(_) => epoll::flush(conn).map(|_| ()),
            };
            if let Err(e) = r {
                let node = self.nodes[conn.node].addr.to_string();
                self.fail_conn(cid, Error::Io { node, source: e }, true);
            }
        }
        self.dirty = dirty;
    }

    /// `true` when connection `cid` exists and is not closed; a closed one is freed
    /// here once the kernel holds nothing of it.
    fn live_or_reap(&mut self, cid: usize) -> bool {
        match self.conns[cid].as_ref() {
            None => false,
            Some(c) if c.state == ConnState::Dead => {
                self.reap(cid);
                false
            }
            Some(_) => true,
        }
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
            uring::Cqe::Sent { cid, res } => {
                if !self.live_or_reap(cid) {
                    return;
                }
                if res < 0 {
                    return self.io_failed(cid, io::Error::from_raw_os_error(-res));
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
                let direct = buf.direct;
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

    /// Returns a freed connection's registered buffer to the pool.
    fn release_conn(u: &mut uring::Uring, conn: Option<Conn>) {
        if let Some((i, b)) = conn.and_then(|mut c| c.rx.take_fixed()) {
            u.give_back(i, b);
        }
    }

    fn reap(&mut self, cid: usize) {
        let busy = match &self.backend {
            Backend::Uring(u) => u.busy(cid),
            Backend::Epoll(_) => false,
        };
        if !busy && self.conns[cid].is_some() {
            let c = self.conns[cid].take();
            if let Backend::Uring(u) = &mut self.backend {
                Self::release_conn(u, c);
            }
            self.zombies.retain(|&z| z != cid);
            self.free_conns.push(cid);
        }
    }

    fn on_ready(&mut self, ev: epoll::Ev) {
        let epoll::Ev::Ready {
            cid,
            readable,
            writable,
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
                match epoll::read_once(conn) {
                    Ok(Some(0)) => {
                        return self.io_failed(
                            cid,
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "server closed the connection",
                            ),
                        )
                    }
                    Ok(Some(n)) => {
                        self.metrics.received(n);
                        self.process(cid);
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

    fn io_failed(&mut self, cid: usize, e: io::Error) {
        let node = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.to_string())
            .unwrap_or_default();
        self.fail_conn(cid, Error::Io { node, source: e }, false);
    }

    // ----- replies -----

    /// Reads every complete reply the connection holds.
    fn process(&mut self, cid: usize) {
        loop {
            let Some(conn) = self.conns[cid].as_mut() else {
                return;
            };
            if conn.state == ConnState::Dead {
                return;
            }
            let Some(mut p) = conn.pending.pop_front() else {
                if !conn.unread().is_empty() {
                    let n = conn.unread().len();
                    self.protocol_error(cid, format!("{n} bytes arrived with no request waiting"));
                }
                return;
            };
            match p.kind {
                PendKind::Mget => {
                    let max_value = self.cfg.max_value_size;
                    let part = p.part.and_then(|pr| {
                        self.parts
                            .get_mut(pr.idx as usize)
                            .and_then(|x| x.as_mut())
                            .filter(|x| x.gen == pr.gen)
                    });
                    let mut sink = UnitSink {
                        part,
                        units: &p.units,
                        max_value,
                        avg_value: &mut self.avg_value,
                    };
                    let (reader, data) = conn.reader_and_unread();
                    let r = reader.feed(data, &mut sink);
                    match r {
                        Err(e) => {
                            conn.pending.push_front(p);
                            return self.protocol_error(cid, e.0);
                        }
                        Ok((used, None)) => {
                            conn.consume(used);
                            conn.pending.push_front(p);
                            return;
                        }
                        Ok((used, Some(outcome))) => {
                            conn.consume(used);
                            conn.inflight = conn.inflight.saturating_sub(p.weight);
                            match outcome {
                                ArrayOutcome::Done(n) if n == p.units.len() => {}
                                ArrayOutcome::Done(n) => {
                                    let msg = format!(
                                        "MGET of {} keys answered with {n} values",
                                        p.units.len()
                                    );
                                    conn.pending.push_front(p);
                                    return self.protocol_error(cid, msg);
                                }
                                ArrayOutcome::Nil => {
                                    for &u in &p.units {
                                        if let Some(part) = p.part.and_then(|pr| self.part_mut(pr))
                                        {
                                            part.resolve(u, Slot::Nil);
                                        }
                                    }
                                }
                                ArrayOutcome::Error(msg) => {
                                    for &u in &p.units {
                                        self.unit_error(cid, p.part, u, &msg);
                                    }
                                }
                            }
                            if let Some(pr) = p.part {
                                self.maybe_complete(pr.idx as usize);
                            }
                        }
                    }
                }
                _ => {
                    let parsed = resp::parse_value(conn.unread());
                    let (v, used) = match parsed {
                        Err(e) => {
                            conn.pending.push_front(p);
                            return self.protocol_error(cid, e.0);
                        }
                        Ok(None) => {
                            conn.pending.push_front(p);
                            return;
                        }
                        Ok(Some(x)) => x,
                    };
                    conn.consume(used);
                    match p.kind {
                        PendKind::Handshake { auth } => {
                            if let Value::Error(msg) = &v {
                                let node = self.nodes[conn.node].addr.to_string();
                                let message = String::from_utf8_lossy(msg).into_owned();
                                let err = if auth
                                    || message.starts_with("WRONGPASS")
                                    || message.starts_with("NOAUTH")
                                {
                                    Error::Auth { node, message }
                                } else {
                                    Error::Server { node, message }
                                };
                                tracing::error!(shard = self.id, error = %err, "connection handshake failed");
                                return self.fail_conn(cid, err, true);
                            }
                            if !conn
                                .pending
                                .iter()
                                .any(|q| matches!(q.kind, PendKind::Handshake { .. }))
                            {
                                conn.state = ConnState::Ready;
                            }
                        }
                        PendKind::Asking => {}
                        PendKind::Command => {
                            conn.inflight = conn.inflight.saturating_sub(p.weight);
                            if let (Some(pr), Some(&u)) = (p.part, p.units.first()) {
                                self.settle(cid, pr, u, v, Slot::Value);
                                self.maybe_complete(pr.idx as usize);
                            }
                        }
                        PendKind::AllUnits => {
                            conn.inflight = conn.inflight.saturating_sub(p.weight);
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
                                return;
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
                        PendKind::Mget => unreachable!("handled above"),
                    }
                }
            }
        }
    }

    /// Resolves a unit with its reply: an error reply goes through [`Self::unit_error`]
    /// (redirects, retries), anything else becomes the slot `ok` makes of it.
    fn settle(
        &mut self,
        cid: usize,
        pr: PartRef,
        u: u32,
        v: Value,
        ok: impl FnOnce(Value) -> Slot,
    ) {
        match v {
            Value::Error(msg) => self.unit_error(cid, Some(pr), u, &msg),
            v => {
                if let Some(part) = self.part_mut(pr) {
                    part.resolve(u, ok(v));
                }
            }
        }
    }

    /// A server error for one unit: redirects and cluster retries are followed, the
    /// rest reach the caller.
    fn unit_error(&mut self, cid: usize, pr: Option<PartRef>, u: u32, msg: &[u8]) {
        let Some(pr) = pr else { return };
        let node_name = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.to_string())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(msg).into_owned();
        let Some(part) = self.part_mut(pr) else {
            return;
        };
        let Some(unit) = part.units.get_mut(u as usize) else {
            return;
        };
        let hslot = unit.hslot;
        let is_command = matches!(part.batch.op, Op::Command { .. });
        let redirect = crate::cluster::parse_redirect(&message);
        let transient = ["TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING"]
            .iter()
            .any(|p| message.starts_with(p));
        if redirect.is_some() || transient {
            unit.attempts += 1;
            if unit.attempts <= crate::cluster::MAX_REDIRECTS
                && Instant::now() < part.batch.deadline
            {
                let attempts = unit.attempts;
                self.metrics.error("redirect");
                match redirect {
                    Some(crate::cluster::Redirect::Moved { slot, addr }) => {
                        let id = self.router.note_moved(slot, &addr);
                        if is_command || !self.forward(pr, u, id, false) {
                            let node = self.local_node(id);
                            self.requeue(pr, u, node, false);
                        }
                    }
                    Some(crate::cluster::Redirect::Ask { addr, .. }) => {
                        let id = self.router.intern(&addr);
                        if is_command || !self.forward(pr, u, id, true) {
                            let node = self.local_node(id);
                            self.requeue(pr, u, node, true);
                        }
                    }
                    _ => {
                        if !message.starts_with("TRYAGAIN") {
                            self.router.request_refresh();
                        }
                        // Bounded exponential backoff: 20, 40, 80, ... ms, at most 250 ms.
                        let wait = Duration::from_millis((20u64 << attempts.min(4)).min(250));
                        self.delayed.push((Instant::now() + wait, pr, u));
                    }
                }
                return;
            }
        }
        let err = if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") {
            Error::Auth {
                node: node_name,
                message,
            }
        } else if self.router.is_cluster() {
            located(is_command, hslot, &node_name, &message)
        } else {
            Error::Server {
                node: node_name,
                message,
            }
        };
        if let Some(part) = self.part_mut(pr) {
            part.resolve(u, Slot::Err(err));
        }
    }

    fn protocol_error(&mut self, cid: usize, reason: String) {
        let node = self.conns[cid]
            .as_ref()
            .map(|c| self.nodes[c.node].addr.to_string())
            .unwrap_or_default();
        tracing::error!(shard = self.id, node = %node, reason = %reason, "protocol error; closing connection");
        self.metrics.error("protocol");
        self.fail_conn(cid, Error::Protocol { node, reason }, false);
    }

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
            let Some(part) = self.parts[idx].as_mut() else {
                continue;
            };
            if now < part.batch.deadline {
                continue;
            }
            let after = now - part.batch.started;
            for u in 0..part.units.len() as u32 {
                if matches!(part.units[u as usize].slot, Slot::Pending) {
                    let key = show_key(
                        &part
                            .batch
                            .key_of(part.units[u as usize].chunk, part.units[u as usize].role),
                    );
                    part.resolve(
                        u,
                        Slot::Err(Error::Timeout {
                            after,
                            what: format!("key {key}"),
                        }),
                    );
                }
            }
            for g in part.groups.iter_mut() {
                g.queue.clear();
            }
            part.unsent = 0;
            self.maybe_complete(idx);
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
                ConnState::Dead => false,
                _ => c
                    .pending
                    .front()
                    .is_some_and(|p| now.duration_since(p.sent_at) > request_timeout),
            };
            if stalled {
                let node = self.nodes[c.node].addr.to_string();
                let what = if c.state == ConnState::Connecting {
                    "connect"
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
        // Nodes whose backoff expired: their waiting parts can go again.
        if self
            .nodes
            .iter()
            .any(|n| n.retry_at.is_some_and(|t| t <= now))
        {
            for n in &mut self.nodes {
                if n.retry_at.is_some_and(|t| t <= now) {
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

/// A cluster error naming slot and node. A command sent to a chosen node has no slot
/// worth naming.
fn located(is_command: bool, hslot: u16, node: &str, msg: &str) -> Error {
    Error::Cluster(if is_command {
        format!("{node}: {msg}")
    } else {
        format!("slot {hslot} at {node}: {msg}")
    })
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
        Error::Closed => Error::Closed,
        Error::Busy { class } => Error::Busy { class },
        other => Error::Cluster(other.to_string()),
    }
}
