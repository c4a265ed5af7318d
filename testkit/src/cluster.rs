//! A local Redis Cluster: start, readiness waits, roles, slot ownership, adding a master
//! and moving slots (resharding).

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, Result};

use crate::client::{command, command_str, Client, OwnedFrame};
use crate::nodes::parse_cluster_nodes;
use crate::process::{check_ports_free, connect_host};
use crate::process::{RedisProcess, ServerOptions};
use crate::{info_field, local_err, CLUSTER_SLOTS, CLUSTER_TIMEOUT, MIGRATE_BATCH, POLL};

/// `(first slot, last slot, master port)` per range of CLUSTER SLOTS, sorted.
type SlotMap = Vec<(i64, i64, i64)>;

/// A Redis Cluster of local nodes, stopped when dropped.
///
/// Right after [`LocalCluster::start`], `nodes[0..masters]` are the masters (in slot
/// order) and `nodes[masters + i * replicas_per_master + k]` is replica `k` of master
/// `i`; failovers change roles but never indexes.
#[derive(Debug)]
pub struct LocalCluster {
    /// Every node ever started, by index (stopped ones included).
    pub nodes: Vec<RedisProcess>,
    opts: ServerOptions,
    detached: bool,
}

impl LocalCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes under `dir`, splits the 16384
    /// slots evenly over the masters, joins everything with CLUSTER MEET, attaches the
    /// replicas, and waits (at most 30 s) until every node reports `cluster_state:ok`,
    /// every replica's link to its master is up, and every node sees the same number of
    /// masters and replicas.
    ///
    /// With `opts.port == 0` nodes get free cluster ports; otherwise node `i` gets
    /// `opts.port + i`. `opts.cluster` is implied.
    pub fn start(
        dir: &Path,
        masters: usize,
        replicas_per_master: usize,
        opts: &ServerOptions,
    ) -> Result<LocalCluster> {
        Self::start_each(dir, masters, replicas_per_master, opts, |_, _| {})
    }

    /// [`LocalCluster::start`] with node `i`'s options adjusted by `node(i, opts)`
    /// before it starts (its CPUs, say; `nodes[i]` as documented on the type).
    pub fn start_each(
        dir: &Path,
        masters: usize,
        replicas_per_master: usize,
        opts: &ServerOptions,
        node: impl Fn(usize, &mut ServerOptions),
    ) -> Result<LocalCluster> {
        if masters == 0 {
            return Err(local_err("a cluster needs at least one master"));
        }
        if masters > usize::from(CLUSTER_SLOTS) {
            return Err(local_err(format!(
                "at most {CLUSTER_SLOTS} masters can own slots"
            )));
        }
        let total = masters * (1 + replicas_per_master);
        let started = Instant::now();
        let mut node_opts = opts.clone();
        node_opts.cluster = true;
        if opts.port != 0 {
            let count = u16::try_from(total).map_err(|_| local_err("too many nodes"))?;
            check_ports_free(&opts.bind, opts.port, count, true)?;
        }

        let mut cluster = LocalCluster {
            nodes: Vec::with_capacity(total),
            opts: node_opts.clone(),
            detached: false,
        };
        for i in 0..total {
            let mut o = node_opts.clone();
            o.port = if opts.port == 0 {
                0
            } else {
                opts.port + i as u16
            };
            // A fixed TLS port is the first of a block, like the ports.
            if let Some(t) = o.tls.as_mut().filter(|t| t.port != 0) {
                t.port += i as u16;
            }
            node(i, &mut o);
            cluster.nodes.push(RedisProcess::start(dir, &o)?);
        }
        let pw = cluster.opts.password.clone();
        let pw = pw.as_deref();

        // Distinct epochs up front spare the nodes the epoch-collision dance, which
        // otherwise delays convergence (redis-cli --cluster create does the same).
        for (i, node) in cluster.nodes.iter().enumerate() {
            command_str(
                &node.addr(),
                pw,
                &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()],
            )?;
        }
        for m in 0..masters {
            let first = (m * usize::from(CLUSTER_SLOTS) / masters) as u16;
            let last = ((m + 1) * usize::from(CLUSTER_SLOTS) / masters - 1) as u16;
            add_slots(&cluster.nodes[m].addr(), pw, first, last)?;
        }
        let seed_host = connect_host(&cluster.opts.bind);
        let seed_port = cluster.nodes[0].port().to_string();
        for node in &cluster.nodes[1..] {
            command_str(
                &node.addr(),
                pw,
                &["CLUSTER", "MEET", &seed_host, &seed_port],
            )?;
        }
        let deadline = started + CLUSTER_TIMEOUT;
        let all: Vec<usize> = (0..total).collect();
        cluster.wait_known(&all, &all, deadline)?;
        tracing::debug!(elapsed = ?started.elapsed(), "all cluster nodes know each other");

        for m in 0..masters {
            let master_id = cluster.node_id(m)?;
            for k in 0..replicas_per_master {
                let r = masters + m * replicas_per_master + k;
                command_str(
                    &cluster.nodes[r].addr(),
                    pw,
                    &["CLUSTER", "REPLICATE", &master_id],
                )?;
            }
        }
        cluster.wait_ready(deadline, (masters, masters * replicas_per_master))?;
        tracing::info!(
            masters,
            replicas = masters * replicas_per_master,
            elapsed = ?started.elapsed(),
            "local cluster is up"
        );
        Ok(cluster)
    }

    fn password(&self) -> Option<&str> {
        self.opts.password.as_deref()
    }

    fn cmd(&self, idx: usize, args: &[&str]) -> Result<String> {
        command_str(&self.nodes[idx].addr(), self.password(), args)
    }

    fn running(&self) -> impl Iterator<Item = (usize, &RedisProcess)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_running())
    }

    fn dirs_hint(&self) -> String {
        match self.nodes.first() {
            Some(n) => format!(
                "node logs are in {}/<port>/redis.log",
                n.dir().parent().unwrap_or(n.dir()).display()
            ),
            None => String::new(),
        }
    }

    /// Polls `check` until it returns `Ok(None)`; `Some(reason)` (or an error) means
    /// not yet. On timeout the last reason is reported.
    fn wait_for(
        &self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut() -> Result<Option<String>>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let reason = match check() {
                Ok(None) => return Ok(()),
                Ok(Some(reason)) => reason,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(local_err(format!(
                    "cluster {} did not reach \"{what}\" within {:?}: {reason}; {}",
                    self.addrs().join(","),
                    started.elapsed(),
                    self.dirs_hint()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr()).collect()
    }

    /// Waits until every node in `observers` lists every node in `known` (handshakes
    /// finished).
    fn wait_known(&self, observers: &[usize], known: &[usize], deadline: Instant) -> Result<()> {
        let want: Vec<String> = known.iter().map(|&i| self.nodes[i].addr()).collect();
        self.wait_for(deadline, "every node knows every other", || {
            for &o in observers {
                let nodes = parse_cluster_nodes(&self.cmd(o, &["CLUSTER", "NODES"])?);
                for addr in &want {
                    // A node knows itself (a lone one does not know its own IP yet).
                    if *addr == self.nodes[o].addr() {
                        continue;
                    }
                    let seen = nodes.iter().any(|n| {
                        &n.addr == addr
                            && !n.flags.iter().any(|f| f == "handshake" || f == "noaddr")
                    });
                    if !seen {
                        return Ok(Some(format!(
                            "{} does not know {addr} yet",
                            self.nodes[o].addr()
                        )));
                    }
                }
            }
            Ok(None)
        })
    }

    /// `cluster_state:ok` everywhere, replica links up, and (if given) every node agreeing
    /// on the number of masters and replicas.
    fn wait_ready(&self, deadline: Instant, (want_m, want_r): (usize, usize)) -> Result<()> {
        self.wait_for(deadline, "cluster settled with all replicas linked", || {
            if let Some(reason) = self.unsettled()? {
                return Ok(Some(reason));
            }
            for (i, node) in self.running() {
                let repl = self.cmd(i, &["INFO", "replication"])?;
                if info_field(&repl, "role") == Some("slave") {
                    let link = info_field(&repl, "master_link_status").unwrap_or("?");
                    if link != "up" {
                        return Ok(Some(format!(
                            "replica {} has master_link_status:{link}",
                            node.addr()
                        )));
                    }
                }
                let nodes = parse_cluster_nodes(&self.cmd(i, &["CLUSTER", "NODES"])?);
                let has = |flag: &str| {
                    nodes
                        .iter()
                        .filter(|n| n.flags.iter().any(|f| f == flag))
                        .count()
                };
                let (m, r) = (has("master"), has("slave"));
                if (m, r) != (want_m, want_r) {
                    return Ok(Some(format!(
                        "{} sees {m} masters and {r} replicas, expected {want_m} and {want_r}",
                        node.addr()
                    )));
                }
            }
            Ok(None)
        })
    }

    /// `redis://h:p,h:p,...` listing the current masters (every running node if no
    /// master answers), for the engine's cluster URL.
    pub fn seed_url(&self) -> String {
        let mut addrs: Vec<String> = self.masters().iter().map(|n| n.addr()).collect();
        if addrs.is_empty() {
            addrs = self.running().map(|(_, n)| n.addr()).collect();
        }
        format!("redis://{}", addrs.join(","))
    }

    /// `rediss://h:p,...` of the current masters' TLS ports, for nodes started with
    /// `ServerOptions::tls`; `None` otherwise.
    pub fn tls_seed_url(&self) -> Option<String> {
        let mut nodes: Vec<&RedisProcess> = self.masters();
        if nodes.is_empty() {
            nodes = self.running().map(|(_, n)| n).collect();
        }
        let addrs: Option<Vec<String>> = nodes
            .iter()
            .map(|n| {
                n.tls_url()
                    .map(|u| u.trim_start_matches("rediss://").to_string())
            })
            .collect();
        Some(format!("rediss://{}", addrs?.join(",")))
    }

    fn role(&self, idx: usize) -> Option<String> {
        let frame = command(&self.nodes[idx].addr(), self.password(), &[b"ROLE"]).ok()?;
        match frame {
            OwnedFrame::Array(items) => match items.first()? {
                OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Running nodes whose current role (asked with ROLE) is master, by index order.
    pub fn masters(&self) -> Vec<&RedisProcess> {
        self.running()
            .filter(|(i, _)| self.role(*i).as_deref() == Some("master"))
            .map(|(_, n)| n)
            .collect()
    }

    /// Running nodes whose current role (asked with ROLE) is replica, by index order.
    pub fn replicas(&self) -> Vec<&RedisProcess> {
        self.running()
            .filter(|(i, _)| self.role(*i).as_deref() == Some("slave"))
            .map(|(_, n)| n)
            .collect()
    }

    /// The cluster node id of `nodes[idx]` (CLUSTER MYID).
    pub fn node_id(&self, idx: usize) -> Result<String> {
        self.check_idx(idx)?;
        self.cmd(idx, &["CLUSTER", "MYID"])
    }

    fn check_idx(&self, idx: usize) -> Result<()> {
        if idx >= self.nodes.len() {
            return Err(local_err(format!(
                "node index {idx} out of range: the cluster has {} nodes",
                self.nodes.len()
            )));
        }
        Ok(())
    }

    /// The slot map as node `idx` sees it: `(first, last, master port)` per range, sorted.
    fn slot_map(&self, idx: usize) -> Result<SlotMap> {
        let node = &self.nodes[idx];
        let frame = command(&node.addr(), self.password(), &[b"CLUSTER", b"SLOTS"])?;
        let OwnedFrame::Array(ranges) = frame else {
            return Err(local_err(format!(
                "CLUSTER SLOTS of {} is not an array",
                node.addr()
            )));
        };
        let mut map: SlotMap = ranges
            .iter()
            .filter_map(|range| {
                let OwnedFrame::Array(parts) = range else {
                    return None;
                };
                match (parts.first(), parts.get(1), parts.get(2)) {
                    (
                        Some(OwnedFrame::Integer(lo)),
                        Some(OwnedFrame::Integer(hi)),
                        Some(OwnedFrame::Array(master)),
                    ) => match master.get(1) {
                        Some(OwnedFrame::Integer(port)) => Some((*lo, *hi, *port)),
                        _ => None,
                    },
                    _ => None,
                }
            })
            .collect();
        map.sort_unstable();
        Ok(map)
    }

    /// Index of the node that owns `slot` according to CLUSTER SLOTS of the first
    /// running node (right after a topology change, call [`LocalCluster::wait_ok`] first
    /// so that every node agrees).
    pub fn slot_owner(&self, slot: u16) -> Result<usize> {
        let (i, _) = self
            .running()
            .next()
            .ok_or_else(|| local_err("no node of the cluster is running"))?;
        let slot = i64::from(slot);
        self.slot_map(i)?
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .and_then(|(_, _, port)| self.nodes.iter().position(|n| i64::from(n.port()) == *port))
            .ok_or_else(|| local_err(format!("no node of this cluster owns slot {slot}")))
    }

    /// Waits until the cluster has settled: every running node reports
    /// `cluster_state:ok` and sees the same slot map, whose masters are all running.
    ///
    /// `cluster_state:ok` alone is not enough after a failover: a node that has not yet
    /// learnt of the failure still reports ok with the old map.
    pub fn wait_ok(&self, timeout: Duration) -> Result<()> {
        self.wait_for(
            Instant::now() + timeout,
            "cluster_state:ok and one slot map on every running node",
            || self.unsettled(),
        )
    }

    /// Why the cluster has not settled yet, or `None` once it has (see `wait_ok`).
    fn unsettled(&self) -> Result<Option<String>> {
        let mut first: Option<(String, SlotMap)> = None;
        for (i, node) in self.running() {
            let info = self.cmd(i, &["CLUSTER", "INFO"])?;
            let state = info_field(&info, "cluster_state").unwrap_or("?");
            if state != "ok" {
                return Ok(Some(format!(
                    "{} reports cluster_state:{state}",
                    node.addr()
                )));
            }
            let map = self.slot_map(i)?;
            let stale = map
                .iter()
                .find(|(_, _, port)| !self.running().any(|(_, n)| i64::from(n.port()) == *port));
            if let Some(&(lo, hi, port)) = stale {
                return Ok(Some(format!(
                    "{} still maps slots {lo}-{hi} to the stopped node on port {port}",
                    node.addr()
                )));
            }
            match &first {
                None => first = Some((node.addr(), map)),
                Some((addr, m)) if *m != map => {
                    return Ok(Some(format!(
                        "{} and {addr} disagree on the slot map",
                        node.addr()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// Starts a new master without slots under `dir`, introduces it with CLUSTER MEET, and
    /// waits until it and every running node know each other and it reports
    /// `cluster_state:ok` (about 2 s). Returns its index.
    pub fn add_master(&mut self, dir: &Path) -> Result<usize> {
        let seed = self.running().next().map(|(i, _)| i).ok_or_else(|| {
            local_err("no node of the cluster is running to introduce the new master to")
        })?;
        let mut o = self.opts.clone();
        o.port = 0;
        o.daemonize = self.opts.daemonize;
        let node = RedisProcess::start(dir, &o)?;
        let seed_port = self.nodes[seed].port().to_string();
        command_str(
            &node.addr(),
            self.password(),
            &["CLUSTER", "MEET", &connect_host(&o.bind), &seed_port],
        )?;
        self.nodes.push(node);
        let idx = self.nodes.len() - 1;
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let running: Vec<usize> = self.running().map(|(i, _)| i).collect();
        self.wait_known(&running, &running, deadline)?;
        // Until the new node has learnt the slot map it answers CLUSTERDOWN, which would
        // fail a MIGRATE into it; a fresh master also holds its state at "fail" for 2 s.
        self.wait_for(deadline, "cluster_state:ok on the new master", || {
            let info = self.cmd(idx, &["CLUSTER", "INFO"])?;
            Ok(match info_field(&info, "cluster_state") {
                Some("ok") => None,
                state => Some(format!(
                    "{} reports cluster_state:{}",
                    self.nodes[idx].addr(),
                    state.unwrap_or("?")
                )),
            })
        })?;
        Ok(idx)
    }

    /// Moves `slots` from `nodes[from_idx]` to `nodes[to_idx]` while serving, as the
    /// cluster spec describes: SETSLOT IMPORTING on the target, MIGRATING on the source,
    /// MIGRATE the keys in batches, then SETSLOT NODE on the target, the source and
    /// every other master.
    pub fn move_slots(&self, from_idx: usize, to_idx: usize, slots: Range<u16>) -> Result<()> {
        self.check_idx(from_idx)?;
        self.check_idx(to_idx)?;
        if from_idx == to_idx {
            return Err(local_err(format!(
                "move_slots: source and target are both node {from_idx}"
            )));
        }
        if slots.end > CLUSTER_SLOTS {
            return Err(local_err(format!(
                "move_slots: slots {slots:?} exceed 0..{CLUSTER_SLOTS}"
            )));
        }
        let pw = self.password();
        let (src, dst) = (&self.nodes[from_idx], &self.nodes[to_idx]);
        let src_id = self.node_id(from_idx)?;
        let dst_id = self.node_id(to_idx)?;
        let others: Vec<usize> = self
            .running()
            .map(|(i, _)| i)
            .filter(|&i| i != from_idx && i != to_idx && self.role(i).as_deref() == Some("master"))
            .collect();
        let mut src_conn = Client::open(&src.addr(), pw)?;
        let mut dst_conn = Client::open(&dst.addr(), pw)?;
        let dst_host = connect_host(&dst.options().bind);
        // With tls-cluster the source migrates over TLS, to the TLS port.
        let dst_port = dst.tls_port().unwrap_or_else(|| dst.port()).to_string();
        let stuck = |slot: u16| {
            format!(
                "slot {slot} may be left IMPORTING/MIGRATING: repair it with \
                 `redis-cli --cluster fix {}`",
                src.addr()
            )
        };
        let started = Instant::now();
        let mut moved_keys = 0usize;
        let batch = MIGRATE_BATCH.to_string();
        for slot in slots.clone() {
            let s = slot.to_string();
            dst_conn.call_str(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id])?;
            src_conn
                .call_str(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id])
                .map_err(|e| {
                    local_err(format!(
                        "SETSLOT {slot} MIGRATING on {}: {e}; {}",
                        src.addr(),
                        stuck(slot)
                    ))
                })?;
            loop {
                let keys = match src_conn.call(&[
                    b"CLUSTER",
                    b"GETKEYSINSLOT",
                    s.as_bytes(),
                    batch.as_bytes(),
                ])? {
                    OwnedFrame::Array(keys) => keys,
                    other => {
                        return Err(local_err(format!(
                            "GETKEYSINSLOT {slot} on {} returned {other:?}; {}",
                            src.addr(),
                            stuck(slot)
                        )))
                    }
                };
                if keys.is_empty() {
                    break;
                }
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .filter_map(|k| match k {
                        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                let mut args: Vec<&[u8]> = vec![
                    b"MIGRATE",
                    dst_host.as_bytes(),
                    dst_port.as_bytes(),
                    b"",
                    b"0",
                    b"5000",
                ];
                if let Some(pw) = pw {
                    args.extend([b"AUTH".as_slice(), pw.as_bytes()]);
                }
                args.push(b"KEYS");
                args.extend(keys.iter().map(Vec::as_slice));
                src_conn.call(&args).map_err(|e| {
                    local_err(format!(
                        "MIGRATE of {} keys of slot {slot} from {} to {}: {e}; {}",
                        keys.len(),
                        src.addr(),
                        dst.addr(),
                        stuck(slot)
                    ))
                })?;
                moved_keys += keys.len();
            }
            dst_conn.call_str(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])?;
            src_conn.call_str(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])?;
            for &o in &others {
                self.cmd(o, &["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])?;
            }
        }
        tracing::debug!(?slots, from = %src.addr(), to = %dst.addr(), moved_keys, elapsed = ?started.elapsed(), "slots moved");
        Ok(())
    }

    /// Stops every node (all get SIGTERM first, so they shut down concurrently).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.begin_stop();
        }
        for n in &mut self.nodes {
            n.finish_stop();
        }
    }

    /// Leaves every node running when this handle is dropped (the CLI's `servers up`).
    pub fn detach(&mut self) {
        self.detached = true;
        for n in &mut self.nodes {
            n.detach();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}

fn add_slots(addr: &str, pw: Option<&str>, first: u16, last: u16) -> Result<()> {
    let (f, l) = (first.to_string(), last.to_string());
    match command_str(addr, pw, &["CLUSTER", "ADDSLOTSRANGE", &f, &l]) {
        Ok(_) => Ok(()),
        // Servers before 7.0 only know ADDSLOTS.
        Err(Error::Server { message, .. })
            if message.to_ascii_lowercase().contains("unknown subcommand") =>
        {
            let slots: Vec<String> = (first..=last).map(|s| s.to_string()).collect();
            let mut args = vec!["CLUSTER", "ADDSLOTS"];
            args.extend(slots.iter().map(String::as_str));
            command_str(addr, pw, &args).map(|_| ())
        }
        Err(e) => Err(e),
    }
}
