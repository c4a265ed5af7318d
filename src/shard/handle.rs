//! Starting and stopping a shard thread, and the event-loop backend it runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::cluster::Router;
use crate::config::{Config, IoBackend};
use crate::error::{Error, Result};
use crate::lanes::{DeathStage, Lanes};
use crate::metrics::Metrics;
use crate::syscalls::SyscallCounters;

use super::{epoll, uring, Shard, SubmitPart};
use crate::mem::ValuePool;
use crate::metrics::BackendKind;

/// The engine's handle on a running shard.
pub(crate) struct ShardHandle {
    pub lanes: Arc<Lanes<SubmitPart>>,
    pub backend: BackendKind,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ShardHandle {
    /// `false` once the shard refuses work (it panicked, or shut down): its lanes are
    /// closed before its thread ends.
    pub fn is_alive(&self) -> bool {
        !self.lanes.is_closed() && self.thread.as_ref().is_some_and(|t| !t.is_finished())
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

/// What every shard of an engine is started with, beside its own lanes.
pub(crate) struct Shared {
    /// The TLS client configuration, when the engine connects with TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The engine's registered regions (each io_uring shard registers them).
    pub regions: Arc<crate::region::Regions>,
    /// This shard's pool of `get()` value buffers.
    pub values: Arc<ValuePool>,
}

/// Starts shard `id`, pinned to `core` if given. Returns once its event loop is set up.
pub(crate) fn start(
    id: usize,
    cfg: Arc<Config>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    core: Option<usize>,
    all_lanes: Arc<[Arc<Lanes<SubmitPart>>]>,
    shared: Shared,
) -> Result<ShardHandle> {
    let Shared {
        tls,
        regions,
        values,
    } = shared;
    let nshards = all_lanes.len();
    let lanes = all_lanes[id].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (l2, s2) = (lanes.clone(), stop.clone());
    let all_lanes = all_lanes.clone();
    let exit_router = router.clone();
    let thread = std::thread::Builder::new()
        .name(format!("slotline-shard-{id}"))
        .spawn(move || {
            // Whatever way this thread ends, its lanes close and what they hold fails.
            let mut exit = Exit {
                id,
                lanes: l2.clone(),
                router: exit_router,
                gone: None,
            };
            crate::metrics::set_current_shard(id);
            if let Some(core) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    tracing::warn!(shard = id, core, "could not pin shard thread to core");
                }
            }
            if let Some(node) = cfg.numa_node {
                crate::numa::prefer_node_for_shard(id, node);
            }
            let calls = Arc::new(SyscallCounters::default());
            metrics.add_syscall_source(calls.clone());
            metrics.add_syscall_source(l2.syscalls().clone());
            let backend = match Backend::new(cfg.io_backend, &l2, calls) {
                Ok(Backend::Uring(mut u)) => {
                    u.attach_regions(regions, id);
                    Backend::Uring(u)
                }
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(backend.kind()));
            let mut shard = Shard::new(
                id, cfg, router, metrics, all_lanes, s2, backend, nshards, tls, values,
            );
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.run()));
            if let Err(payload) = run {
                exit.died(&mut shard, &panic_message(payload.as_ref()));
            }
            exit.close();
            // The shard (its ring, connections, active parts and their caller buffers)
            // is dropped here, after its lanes refuse new work.
            drop(shard);
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

/// The end of a shard thread. A panic ([`Exit::died`]) fails the batches of the
/// shard's active parts with the panic's message and hands the shard's masters to live
/// shards; then (always, from `close` or from the drop if something panicked on the
/// way) the lanes close: later pushes are refused, so callers route elsewhere, and
/// what was queued fails with the same message, its caller buffers handed back.
struct Exit {
    id: usize,
    lanes: Arc<Lanes<SubmitPart>>,
    router: Arc<Router>,
    /// The shard's label and its panic's message, once it panicked.
    gone: Option<(String, String)>,
}

impl Exit {
    fn died(&mut self, shard: &mut Shard, msg: &str) {
        let id = self.id;
        tracing::error!(
            shard = id,
            panic = msg,
            "shard thread panicked; its requests fail and new requests go to the other shards"
        );
        let node = format!("shard {id}");
        let err = crate::lanes::shard_died(&node, msg);
        self.gone = Some((node, msg.to_string()));
        // New work stops coming here before the lanes close (a push refused after that
        // goes to another shard).
        self.router.retire_shard(id);
        self.lanes.death_stage(DeathStage::Panicked);
        // The shard's state may be inconsistent after a panic: a second one here must
        // not keep the lanes open.
        let abandon = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard.abandon(&err);
        }));
        if abandon.is_err() {
            tracing::error!(shard = id, "failing the dead shard's requests panicked too");
        }
    }

    fn close(&mut self) {
        if self.lanes.is_closed() {
            return;
        }
        let left = self.lanes.close(self.gone.clone());
        if !left.is_empty() {
            tracing::debug!(shard = self.id, parts = left.len(), "failing queued parts");
        }
        for sp in left {
            // Failed first, so the returned buffers do not complete it as a success.
            sp.batch.fail(self.lanes.gone_error());
            sp.batch.part_done(Vec::new(), sp.bufs);
        }
        self.lanes.death_stage(DeathStage::Closed);
    }
}

impl Drop for Exit {
    fn drop(&mut self) {
        self.close();
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

pub(super) enum Backend {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
}

impl Backend {
    fn new(
        want: IoBackend,
        lanes: &Lanes<SubmitPart>,
        calls: Arc<SyscallCounters>,
    ) -> Result<Backend> {
        let io_err = |e| Error::Io {
            node: "local".into(),
            source: e,
        };
        match want {
            IoBackend::Epoll => Ok(Backend::Epoll(
                epoll::Epoll::new(lanes.doorbell(), calls.clone()).map_err(io_err)?,
            )),
            IoBackend::IoUring => match uring::Uring::new(lanes.doorbell(), calls.clone()) {
                Ok(u) => Ok(Backend::Uring(Box::new(u))),
                Err(e) => Err(Error::config(
                    "io_backend",
                    "io_uring",
                    format!("io_uring is not available here ({e}); use io_backend: auto or epoll"),
                )),
            },
            IoBackend::Auto => match uring::Uring::new(lanes.doorbell(), calls.clone()) {
                Ok(u) => Ok(Backend::Uring(Box::new(u))),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable (blocked by seccomp or an old kernel?); using the epoll fallback");
                    Ok(Backend::Epoll(
                        epoll::Epoll::new(lanes.doorbell(), calls.clone()).map_err(io_err)?,
                    ))
                }
            },
        }
    }

    /// The shard's syscall counters, kept by the backend.
    pub(super) fn calls(&self) -> Arc<SyscallCounters> {
        match self {
            Backend::Uring(u) => u.calls(),
            Backend::Epoll(e) => e.calls(),
        }
    }

    pub(super) fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::IoUring,
            Backend::Epoll(_) => BackendKind::Epoll,
        }
    }
}
