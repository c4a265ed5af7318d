//! The public API: an [`Engine`] owns the shards and turns calls into batches.
//!
//! ```no_run
//! use slotline::{Config, Engine, PutChunk, RemoteMetadata};
//!
//! let engine = Engine::new(Config::from_url("redis://127.0.0.1:6379")?)?;
//! let meta = RemoteMetadata::new(4, 4, 6, &[4])?;
//! engine.put(vec![PutChunk::new("model@1@0@3f9a@bfloat16", vec![1u8, 2, 3, 4], Some(meta))]).wait()?;
//! let got = engine.get(&["model@1@0@3f9a@bfloat16", "missing"]).wait()?;
//! assert_eq!(got[0].as_ref().unwrap().data, vec![1, 2, 3, 4]);
//! assert!(got[1].is_none());
//! # Ok::<(), slotline::Error>(())
//! ```

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use crate::addr::ServerAddr;
use crate::batch::SubmitPart;
use crate::batch::{Batch, Chunk, Op, Output, PutChunk, Role, Ticket};
use crate::cluster::NodeId;
use crate::cluster::Router;
use crate::config::{Config, Mode};
use crate::error::{show_key, Error, Result};
use crate::lanes::Lanes;
use crate::layout::{KeyLayout, KeyScheme, RemoteMetadata};
use crate::mem::ValuePool;
use crate::metrics::{BackendKind, Metrics, MetricsHandle, Stats};
use crate::priority::Priority;
use crate::resp::Value;
use crate::shard::{self, ShardHandle};

mod caller;
mod janitor;
pub mod request;
mod sentinel;
mod submit;
mod ticket;
mod topo;
mod twophase;

pub use crate::lanes::{DeathHold, DeathStage};
pub use caller::{GetIntoTicket, PutOwned, PutRef, PutTicket};
pub use ticket::{CallerTicket, Returned};

use janitor::{run_janitor, JanitorQueue};
use submit::{Req, Submit};

/// MemoryFormat BINARY and dtype uint8: what a chunk stored without metadata is labelled.
const FMT_BINARY: i32 = 4;
const DTYPE_UINT8: i32 = 6;

struct Inner {
    cfg: Arc<Config>,
    /// The Redis keys of a chunk: `cfg.key_layout` behind `cfg.key_prefix`.
    keys: KeyScheme,
    shards: Vec<ShardHandle>,
    cores: Vec<Option<usize>>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    rr: AtomicUsize,
    backend: BackendKind,
    me: Weak<Inner>,
    /// Stale-metadata deletions, checked and carried out off the shard threads.
    janitor: Arc<JanitorQueue>,
    /// Metadata phases of two-phase puts, submitted off the shard threads.
    meta_phase: std::sync::mpsc::Sender<twophase::MetaPhase>,
    /// Registered regions (see [`crate::region`]).
    regions: Arc<crate::region::Regions>,
    /// Each shard's pool of `get()` value buffers.
    values: Vec<Arc<ValuePool>>,
}

/// The engine: shards, their connections, and the API LMCache's connector calls.
///
/// Cheap to clone; all clones share the shards. The shards stop when the last clone is
/// dropped (after finishing what they hold).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Engine({} shards, {}, {:?})",
            self.inner.shards.len(),
            self.inner.backend,
            self.inner.cfg.mode
        )
    }
}

/// One master as [`Engine::topology`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterView {
    /// Address.
    pub addr: ServerAddr,
    /// Cluster node id.
    pub id: String,
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
    /// Replica addresses.
    pub replicas: Vec<ServerAddr>,
    /// The shard owning its connections.
    pub shard: usize,
}

/// A validated put: keys, payloads (shared, not copied) and encoded metadata.
struct PutPlan {
    /// The priority class it is sent at.
    class: Priority,
    keys: Vec<Vec<u8>>,
    data: Vec<Bytes>,
    metas: Vec<Vec<u8>>,
}

impl Engine {
    /// Starts the shards and checks that the server answers (and accepts the
    /// credentials). Fails with a clear error otherwise.
    pub fn new(cfg: Config) -> Result<Engine> {
        cfg.validate()?;
        let keys = KeyScheme::new(cfg.key_layout, &cfg.key_prefix)?;
        let tls = crate::tls::for_engine(&cfg)?;
        let cfg = Arc::new(cfg);
        let allowed = crate::sys::allowed_cores();
        let cores: Vec<Option<usize>> = match (&cfg.cores, cfg.shards) {
            (Some(list), _) => list.iter().map(|&c| Some(c)).collect(),
            (None, Some(n)) => (0..n.max(1)).map(|i| allowed.get(i).copied()).collect(),
            (None, None) => allowed.iter().map(|&c| Some(c)).collect(),
        };
        let seed = cfg
            .seeds
            .first()
            .cloned()
            .ok_or_else(|| Error::config("remote_url", "", "no server address given"))?;
        // Behind sentinels the seeds are the sentinels: the master is what they name.
        let seed = match &cfg.sentinel_master {
            Some(name) => crate::sentinel::ask_master(&cfg.seeds, name, cfg.connect_timeout)?,
            None => seed,
        };
        if let (Some(_), crate::addr::ServerAddr::Tcp { host, port }) =
            (&cfg.sentinel_master, &seed)
        {
            crate::resolver::resolve_now(host, *port);
        }
        // Names are resolved here, on the caller's thread, never on a shard's: the
        // shards find the answers cached (see `crate::resolver`).
        for a in &cfg.seeds {
            if let crate::addr::ServerAddr::Tcp { host, port } = a {
                crate::resolver::resolve_now(host, *port);
            }
        }
        let router = Arc::new(match cfg.mode {
            Mode::Standalone => Router::standalone(seed, cores.len()),
            Mode::Cluster => Router::cluster(&cfg.seeds, cores.len()),
        });
        if cfg.sentinel_master.is_some() {
            router.follow_sentinels();
        }
        let metrics = Arc::new(Metrics::with_shards(cores.len()));
        // All lanes exist before any shard starts: a shard hands redirected units to
        // the shard that owns their node.
        let all_lanes: Arc<[Arc<Lanes<SubmitPart>>]> = (0..cores.len())
            .map(|_| Lanes::new(cfg.lane_capacity).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::Io {
                node: "local".into(),
                source: e,
            })?
            .into();
        let regions = Arc::new(crate::region::Regions::default());
        let bells = all_lanes.clone();
        regions.set_waker(Box::new(move || bells.iter().for_each(|l| l.ring())));
        let mut shards = Vec::with_capacity(cores.len());
        // Bounded by what one shard may have in flight per server.
        let values: Vec<Arc<ValuePool>> = (0..cores.len())
            .map(|_| Arc::new(ValuePool::new(cfg.max_node_inflight_bytes)))
            .collect();
        for (i, core) in cores.iter().enumerate() {
            shards.push(shard::start(
                i,
                cfg.clone(),
                router.clone(),
                metrics.clone(),
                *core,
                all_lanes.clone(),
                shard::Shared {
                    tls: tls.clone(),
                    regions: regions.clone(),
                    values: values[i].clone(),
                },
            )?);
        }
        let backend = shards[0].backend;
        tracing::info!(
            backend = %backend,
            shards = shards.len(),
            cores = ?cores,
            mode = ?cfg.mode,
            "slotline engine started on the {} backend",
            backend
        );
        let janitor = Arc::new(JanitorQueue::new(cfg.janitor_queue));
        let (meta_tx, meta_rx) = std::sync::mpsc::channel();
        let inner = Arc::new_cyclic(|me| Inner {
            cfg,
            keys,
            shards,
            cores,
            router,
            metrics,
            rr: AtomicUsize::new(0),
            backend,
            me: me.clone(),
            janitor: janitor.clone(),
            meta_phase: meta_tx,
            regions,
            values,
        });
        let weak = Arc::downgrade(&inner);
        if let Err(e) = std::thread::Builder::new()
            .name("slotline-put-meta".into())
            .spawn({
                let weak = weak.clone();
                move || twophase::run_meta_phases(weak, meta_rx)
            })
        {
            // Without it two-phase puts end with Error::Closed: refuse to start.
            return Err(Error::Io {
                node: "engine".into(),
                source: e,
            });
        }
        if let Err(e) = std::thread::Builder::new()
            .name("slotline-janitor".into())
            .spawn(move || run_janitor(weak, janitor))
        {
            tracing::warn!(error = %e, "could not start the stale-metadata thread; stale metadata will be kept");
        }
        let engine = Engine { inner };
        if engine.inner.router.is_cluster() {
            engine.refresh_topology()?;
            engine.start_refresh_thread();
        } else if let Some(name) = engine.inner.cfg.sentinel_master.clone() {
            let master = engine.inner.router.addr(engine.inner.router.master());
            engine.check_master(&master)?;
            engine.start_sentinel_thread(name);
        } else {
            engine.command(&[b"PING"])?;
        }
        Ok(engine)
    }

    /// Test hook: makes shard `shard`'s thread panic at its next turn, as a bug would,
    /// to check that callers get errors rather than hang. Not for production use.
    #[doc(hidden)]
    pub fn debug_crash_shard(&self, shard: usize) {
        if let Some(s) = self.inner.shards.get(shard) {
            s.lanes.request_crash();
        }
    }

    /// Test hook: like [`debug_crash_shard`](Self::debug_crash_shard), and the dying
    /// shard waits at `stage` until the returned hold is released (or dropped), so a
    /// test can act in that window deterministically. Not for production use.
    #[doc(hidden)]
    pub fn debug_crash_shard_held(&self, shard: usize, stage: DeathStage) -> Option<DeathHold> {
        let s = self.inner.shards.get(shard)?;
        let hold = s.lanes.hold_death(stage);
        s.lanes.request_crash();
        Some(hold)
    }

    /// Shards whose thread died (a panic): they take no new work, the others carry it.
    #[doc(hidden)]
    pub fn dead_shards(&self) -> Vec<usize> {
        (0..self.inner.shards.len())
            .filter(|&i| !self.inner.shards[i].is_alive())
            .collect()
    }

    /// Shortcut for `Engine::new(Config::from_url(url)?)`.
    pub fn from_url(url: &str) -> Result<Engine> {
        Engine::new(Config::from_url(url)?)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The event loop the shards run.
    pub fn backend(&self) -> BackendKind {
        self.inner.backend
    }

    /// Counters, errors by kind and latency histograms per priority class.
    pub fn stats(&self) -> Stats {
        Stats {
            backend: self.inner.backend,
            shards: self.inner.shards.len(),
            cores: self.inner.cores.clone(),
            metrics: {
                use std::sync::atomic::Ordering::Relaxed;
                let r = &self.inner.regions;
                let mut m = self.inner.metrics.snapshot();
                m.regions = r.handles.load(Relaxed);
                m.regions_registered = r.registered.load(Relaxed);
                m.region_fallbacks = r.fallbacks.load(Relaxed);
                m
            },
            lane_depth: self.inner.shards.iter().map(|s| s.lanes.depth()).collect(),
            value_pool: self
                .inner
                .values
                .iter()
                .fold(Default::default(), |mut a, p| {
                    a.add(&p.stats());
                    a
                }),
        }
    }

    /// [`Engine::stats`] and the per-class latency histograms as Prometheus text
    /// exposition (format 0.0.4, content type [`crate::metrics::prometheus::CONTENT_TYPE`]), for
    /// a `/metrics` endpoint.
    pub fn prometheus_text(&self) -> String {
        crate::metrics::prometheus::render(&self.stats(), &self.inner.metrics.latency_histograms())
    }

    /// A handle to the live counters that stays readable after the engine is dropped:
    /// what the shards did while stopping (`kernel_drained`, `kernel_leaks`) is only
    /// known once the engine is gone.
    pub fn metrics_handle(&self) -> MetricsHandle {
        MetricsHandle(self.inner.metrics.clone())
    }

    /// Submits a put. In a cluster with the `lmcache` layout a chunk's two keys usually
    /// live on different masters, where no single connection orders them; there the
    /// metadata is written only after every payload is acknowledged, so a reader never
    /// finds metadata whose payload is still on its way (and deletes it as stale).
    fn start_put(&self, plan: PutPlan, mode: Submit) -> Result<Ticket<()>> {
        let split =
            self.inner.router.is_cluster() && self.inner.cfg.key_layout == KeyLayout::Lmcache;
        if !split {
            let (b, unpushed) = self.submit_put(&plan, None, mode)?;
            return Ok(Ticket::new(b, unit).with_unpushed(unpushed));
        }
        self.start_two_phase_put(plan, &self.inner.meta_phase, mode)
    }

    fn submit_put(
        &self,
        plan: &PutPlan,
        only: Option<Role>,
        mode: Submit,
    ) -> Result<(Arc<Batch>, Vec<crate::batch::Unpushed>)> {
        let op = Op::Put {
            data: plan.data.clone(),
            metas: plan.metas.clone(),
            only,
        };
        self.submit_parts(self.req(op, plan.class, mode), &plan.keys, Vec::new())
    }

    fn put_op(&self, chunks: Vec<PutChunk>, class: Priority) -> Result<PutPlan> {
        let layout = self.inner.cfg.key_layout;
        let limit = self.inner.cfg.max_value_size;
        let mut keys = Vec::with_capacity(chunks.len());
        let mut data: Vec<Bytes> = Vec::with_capacity(chunks.len());
        let mut metas = Vec::with_capacity(chunks.len());
        for c in chunks {
            if c.data.len() > limit {
                return Err(Error::TooLarge {
                    key: show_key(&c.key),
                    len: c.data.len(),
                    limit,
                });
            }
            if layout.keys_per_chunk() == 2 {
                let meta = match c.meta {
                    Some(m) => {
                        if m.payload_len() != c.data.len() {
                            return Err(Error::Invalid(format!(
                                "key {}: metadata length {} but payload is {} bytes",
                                show_key(&c.key),
                                m.length,
                                c.data.len()
                            )));
                        }
                        m
                    }
                    None => {
                        RemoteMetadata::new(c.data.len(), FMT_BINARY, DTYPE_UINT8, &[c.data.len()])?
                    }
                };
                metas.push(meta.encode());
            } else {
                metas.push(Vec::new());
            }
            keys.push(c.key);
            data.push(c.data);
        }
        Ok(PutPlan {
            class,
            keys,
            data,
            metas,
        })
    }

    // ----- control -----

    /// Sends one command to the server owning its first key argument (any server in
    /// standalone mode) and returns the reply. Error replies come back as
    /// [`Error::Server`] (or [`Error::Cluster`] naming slot and node).
    pub fn command(&self, args: &[&[u8]]) -> Result<Value> {
        let key: &[u8] = args.get(1).copied().unwrap_or(b"");
        self.run_command(args, key, None)
    }

    /// Sends one command to a chosen server (cluster administration, topology).
    pub fn command_at(&self, node: &ServerAddr, args: &[&[u8]]) -> Result<Value> {
        let id = self.inner.router.intern(node);
        self.run_command(args, b"", Some(id))
    }

    fn run_command(&self, args: &[&[u8]], key: &[u8], target: Option<NodeId>) -> Result<Value> {
        let op = Op::Command {
            args: args.iter().map(|a| a.to_vec()).collect(),
        };
        let b = self.submit_keys(
            Req {
                op,
                class: Priority::Peek,
                layout: KeyScheme::plain(KeyLayout::Raw),
                mode: Submit::Wait,
                target,
            },
            &[key],
            Vec::new(),
        )?;
        Ticket::new(b, |o| match o {
            Output::Value(v) => Ok(v),
            _ => Err(Error::Closed),
        })
        .wait()
    }

    // ----- plumbing -----
}

fn chunks(o: Output) -> Result<Vec<Option<Chunk>>> {
    match o {
        Output::Chunks(c) => Ok(c),
        _ => Err(Error::Closed),
    }
}

fn bools(o: Output) -> Result<Vec<bool>> {
    match o {
        Output::Bools(b) => Ok(b),
        _ => Err(Error::Closed),
    }
}

fn count(o: Output) -> Result<usize> {
    match o {
        Output::Count(c) => Ok(c),
        _ => Err(Error::Closed),
    }
}

fn unit(o: Output) -> Result<()> {
    match o {
        Output::Unit => Ok(()),
        _ => Err(Error::Closed),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.janitor.close();
        self.router.shutdown();
        for s in &mut self.shards {
            s.shutdown();
        }
    }
}
