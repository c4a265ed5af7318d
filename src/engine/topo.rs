//! The cluster view: the topology refresh thread and reading CLUSTER SHARDS / NODES.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::ServerAddr;
use crate::cluster::topology;
use crate::error::{Error, Result};

use super::{Engine, MasterView};

/// Topology refreshes happen at most this often, however many requests arrive.
const REFRESH_MIN_GAP: Duration = Duration::from_millis(250);
/// And at least this often.
const REFRESH_PERIOD: Duration = Duration::from_secs(15);
/// Or this often while some node is reported failed or loading.
const REFRESH_UNSETTLED: Duration = Duration::from_secs(1);

impl Engine {
    /// Keeps the slot table fresh: on request (MOVED, failures) at most every
    /// `REFRESH_MIN_GAP`, and every `REFRESH_PERIOD` regardless.
    pub(super) fn start_refresh_thread(&self) {
        let weak = Arc::downgrade(&self.inner);
        let router = self.inner.router.clone();
        let r = std::thread::Builder::new()
            .name("slotline-topology".into())
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    // Look again soon while a node is failed or a replica still loading.
                    let period = if router.topology().has_unhealthy() {
                        REFRESH_UNSETTLED
                    } else {
                        REFRESH_PERIOD
                    };
                    if !router.wait_refresh(period) {
                        break;
                    }
                    let since = last.elapsed();
                    if since < REFRESH_MIN_GAP {
                        std::thread::sleep(REFRESH_MIN_GAP - since);
                    }
                    last = Instant::now();
                    let Some(inner) = weak.upgrade() else { break };
                    let engine = Engine { inner };
                    if let Err(e) = engine.refresh_topology() {
                        tracing::warn!(error = %e, "cluster topology refresh failed; will retry");
                        // Keep polling while the cluster is unsettled.
                        router.request_refresh();
                    }
                }
            });
        if let Err(e) = r {
            tracing::error!(error = %e, "could not start the topology refresh thread");
        }
    }

    /// The cluster as last read: each master with its slot ranges, replicas and owning
    /// shard. Empty in standalone mode.
    pub fn topology(&self) -> Vec<MasterView> {
        let topo = self.inner.router.topology();
        let snap = self.inner.router.snapshot();
        topo.shards
            .into_iter()
            .map(|s| {
                let id = self.inner.router.intern(&s.master.addr);
                MasterView {
                    shard: snap.owner(id).unwrap_or(0),
                    addr: s.master.addr,
                    id: s.master.id,
                    slots: s.slots,
                    replicas: s.replicas.into_iter().map(|r| r.addr).collect(),
                }
            })
            .collect()
    }

    /// Reads the cluster topology from the first node that answers and installs it.
    /// Called at start, on MOVED, on connection failures and periodically.
    pub fn refresh_topology(&self) -> Result<()> {
        let router = &self.inner.router;
        if !router.is_cluster() {
            return Ok(());
        }
        let mut last_err = None;
        for node in router.refresh_candidates() {
            match self.read_topology(&node) {
                Ok(topo) if !topo.shards.is_empty() => {
                    let before = router.topology();
                    let mapping = router.apply(&topo);
                    if before != topo {
                        let covered = topo.covered_slots();
                        for (addr, shard) in &mapping {
                            tracing::info!(master = %addr, shard, "cluster master owned by shard");
                        }
                        if covered < crate::cluster::slot::SLOT_COUNT {
                            tracing::warn!(covered, "cluster topology does not cover every slot");
                        }
                        tracing::info!(masters = mapping.len(), epoch = router.epoch(), asked = %node, "cluster topology installed");
                    }
                    return Ok(());
                }
                Ok(_) => {
                    last_err = Some(Error::Cluster(format!("{node} reports no slots assigned")))
                }
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "topology read failed");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Cluster("no cluster node known".into())))
    }

    pub(super) fn read_topology(&self, node: &ServerAddr) -> Result<topology::Topology> {
        let tls = self.inner.cfg.tls;
        match self.command_at(node, &[b"CLUSTER", b"SHARDS"]) {
            Ok(v) => topology::parse_cluster_shards(&v, node, tls),
            Err(Error::Server { message, .. }) | Err(Error::Cluster(message))
                if message.contains("unknown subcommand")
                    || message.contains("Unknown subcommand") =>
            {
                let v = self.command_at(node, &[b"CLUSTER", b"SLOTS"])?;
                topology::parse_cluster_slots(&v, node)
            }
            Err(e) => Err(e),
        }
    }
}
