//! The daemonized servers behind `slotline servers up | down | status`, recorded in a
//! state directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Result;

use crate::client::{command, OwnedFrame};
use crate::cluster::LocalCluster;
use crate::os::{is_our_server, process_alive, send_signal};
use crate::process::{RedisProcess, ServerOptions};
use crate::tls::{TlsCerts, TlsServer};
use crate::{local_err, STOP_GRACE};

// ---------------------------------------------------------------------------------------

/// What a recorded server belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// A standalone server.
    Standalone,
    /// A node of the recorded cluster.
    Cluster,
}

impl ServerKind {
    fn as_str(self) -> &'static str {
        match self {
            ServerKind::Standalone => "standalone",
            ServerKind::Cluster => "cluster",
        }
    }

    fn parse(s: &str) -> Option<ServerKind> {
        match s {
            "standalone" => Some(ServerKind::Standalone),
            "cluster" => Some(ServerKind::Cluster),
            _ => None,
        }
    }
}

/// One line of `servers.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// Standalone server or cluster node.
    pub kind: ServerKind,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Pid of the daemonized server.
    pub pid: u32,
}

impl ServerRecord {
    /// Whether the recorded pid is still the server recorded in `state_dir`: on the
    /// recorded port, running in its directory there and named by its pidfile. Only
    /// then may it be signalled.
    pub fn is_running(&self, state_dir: &Path) -> bool {
        is_our_server(self.pid, self.port, &state_dir.join(self.port.to_string()))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The daemonized servers started by `slotline servers up`, recorded in
/// `<state_dir>/servers.txt` as one `kind port pid` line per server.
#[derive(Debug, Clone)]
pub struct ServerSet {
    state_dir: PathBuf,
    /// The recorded servers, in start order.
    pub servers: Vec<ServerRecord>,
}

impl ServerSet {
    /// Path of the record file in `state_dir`.
    pub fn record_path(state_dir: &Path) -> PathBuf {
        state_dir.join("servers.txt")
    }

    /// The state directory the set is recorded in.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Reads the record; `None` if there is none.
    pub fn load(state_dir: &Path) -> Result<Option<ServerSet>> {
        let path = Self::record_path(state_dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(local_err(format!("cannot read {}: {e}", path.display()))),
        };
        let mut servers = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let rec = match f.as_slice() {
                [kind, port, pid] => ServerKind::parse(kind).and_then(|kind| {
                    Some(ServerRecord {
                        kind,
                        port: port.parse().ok()?,
                        pid: pid.parse().ok()?,
                    })
                }),
                _ => None,
            };
            servers.push(rec.ok_or_else(|| {
                local_err(format!(
                    "{}:{}: expected `standalone|cluster PORT PID`, found {line:?}; fix or delete \
                     the file (stop its servers by pid first)",
                    path.display(),
                    n + 1
                ))
            })?);
        }
        Ok(Some(ServerSet {
            state_dir: state_dir.to_path_buf(),
            servers,
        }))
    }

    /// Writes the record (replacing any previous one).
    pub fn save(&self) -> Result<()> {
        fs::create_dir_all(&self.state_dir).map_err(|e| {
            local_err(format!(
                "cannot create state directory {}: {e}",
                self.state_dir.display()
            ))
        })?;
        let mut text = String::from("# slotline servers: kind port pid\n");
        for s in &self.servers {
            text.push_str(&format!("{} {} {}\n", s.kind.as_str(), s.port, s.pid));
        }
        let path = Self::record_path(&self.state_dir);
        let tmp = path.with_extension("txt.tmp");
        fs::write(&tmp, text)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| local_err(format!("cannot write {}: {e}", path.display())))
    }
}

/// The CLI's state directory: `$SLOTLINE_STATE_DIR`, else `./.slotline`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("SLOTLINE_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".slotline"))
}

/// Starts daemonized servers recorded in `state_dir`: a standalone server on `base_port`
/// (default 6379), or with `cluster` 3 masters + 3 replicas on `base_port..base_port+6`
/// (default 7000). Fails if servers recorded there still run or a port is taken. Returns
/// lines describing what runs.
pub fn up(state_dir: &Path, cluster: bool, base_port: Option<u16>) -> Result<Vec<String>> {
    up_with(state_dir, cluster, base_port, false)
}

/// Said after the CA file of `up --tls`: which CA this is, and which it is not.
const CA_NOTE: &str = "(the CA made for these servers, kept in the state directory; \
                       `slotline servers certs DIR` makes a separate one, e.g. for docker \
                       compose's redis-tls)";

/// [`up`], with `tls`: every server also serves TLS, on its port plus 1 (standalone) or
/// plus 100 (cluster nodes, whose bus and replication use TLS too), with certificates
/// from `<state_dir>/tls/` (made there if missing, see [`TlsCerts::generate`]). The
/// lines name the `rediss://` URL and the CA file clients must trust.
pub fn up_with(
    state_dir: &Path,
    cluster: bool,
    base_port: Option<u16>,
    tls: bool,
) -> Result<Vec<String>> {
    if let Some(set) = ServerSet::load(state_dir)? {
        let alive: Vec<String> = set
            .servers
            .iter()
            .filter(|s| s.is_running(&set.state_dir))
            .map(|s| s.port.to_string())
            .collect();
        if !alive.is_empty() {
            return Err(local_err(format!(
                "servers recorded in {} are already up (ports {}): stop them with \
                 `slotline servers down`, or use another state directory (SLOTLINE_STATE_DIR)",
                ServerSet::record_path(state_dir).display(),
                alive.join(", ")
            )));
        }
    }
    fs::create_dir_all(state_dir).map_err(|e| {
        local_err(format!(
            "cannot create state directory {}: {e}",
            state_dir.display()
        ))
    })?;
    let state_dir = state_dir
        .canonicalize()
        .map_err(|e| local_err(format!("cannot resolve {}: {e}", state_dir.display())))?;
    let base = base_port.unwrap_or(if cluster { 7000 } else { 6379 });
    if base == 0 {
        return Err(local_err(
            "base port 0 is not a port: pass a real port or none for the default",
        ));
    }
    let certs = if tls {
        let dir = state_dir.join("tls");
        let found = TlsCerts::in_dir(&dir);
        Some(
            if found.ca.exists() && found.server_cert.exists() && found.server_key.exists() {
                found
            } else {
                TlsCerts::generate(&dir)?
            },
        )
    } else {
        None
    };
    let tls_offset = if cluster { 100 } else { 1 };
    let opts = ServerOptions {
        port: base,
        daemonize: true,
        tls: match &certs {
            Some(c) => Some(TlsServer {
                port: base.checked_add(tls_offset).ok_or_else(|| {
                    local_err(format!("base port {base} leaves no room for the TLS ports"))
                })?,
                ..TlsServer::new(c.clone())
            }),
            None => None,
        },
        ..ServerOptions::default()
    };
    let mut lines = Vec::new();
    if cluster {
        let mut c = LocalCluster::start(&state_dir, 3, 1, &opts)?;
        let set = ServerSet {
            state_dir: state_dir.clone(),
            servers: c
                .nodes
                .iter()
                .map(|n| ServerRecord {
                    kind: ServerKind::Cluster,
                    port: n.port(),
                    pid: n.pid(),
                })
                .collect(),
        };
        // Recorded before detaching: if saving fails, dropping `c` stops the nodes.
        set.save()?;
        for (i, n) in c.nodes.iter().enumerate() {
            let role = if i < 3 { "master" } else { "replica" };
            lines.push(format!(
                "cluster {role:7} {} (pid {}, dir {})",
                n.url(),
                n.pid(),
                n.dir().display()
            ));
        }
        lines.push(format!("cluster URL: {}", c.seed_url()));
        if let (Some(url), Some(certs)) = (c.tls_seed_url(), &certs) {
            lines.push(format!("cluster TLS URL: {url}"));
            lines.push(format!("TLS CA file: {}", certs.ca.display()));
            lines.push(CA_NOTE.to_string());
        }
        c.detach();
    } else {
        let mut p = RedisProcess::start(&state_dir, &opts)?;
        let set = ServerSet {
            state_dir: state_dir.clone(),
            servers: vec![ServerRecord {
                kind: ServerKind::Standalone,
                port: p.port(),
                pid: p.pid(),
            }],
        };
        set.save()?;
        lines.push(format!(
            "standalone {} (pid {}, dir {})",
            p.url(),
            p.pid(),
            p.dir().display()
        ));
        if let (Some(url), Some(certs)) = (p.tls_url(), &certs) {
            lines.push(format!("TLS URL: {url}"));
            lines.push(format!("TLS CA file: {}", certs.ca.display()));
            lines.push(CA_NOTE.to_string());
        }
        p.detach();
    }
    lines.push(format!(
        "stop with `slotline servers down` (state in {})",
        state_dir.display()
    ));
    Ok(lines)
}

/// Stops every server recorded in `state_dir` (SIGTERM, then SIGKILL after 5 s) and
/// removes the record. Returns one line per server.
pub fn down(state_dir: &Path) -> Result<Vec<String>> {
    let Some(set) = ServerSet::load(state_dir)? else {
        return Ok(vec![format!(
            "no servers recorded in {}; nothing to stop",
            state_dir.display()
        )]);
    };
    let running: Vec<bool> = set
        .servers
        .iter()
        .map(|s| s.is_running(state_dir))
        .collect();
    for (s, &up) in set.servers.iter().zip(&running) {
        if up {
            send_signal(s.pid, libc::SIGTERM);
        }
    }
    let mut lines = Vec::new();
    let mut survivors = Vec::new();
    for (s, &up) in set.servers.iter().zip(&running) {
        if !up {
            lines.push(format!(
                "{} {}: pid {} was not running",
                s.kind.as_str(),
                s.addr(),
                s.pid
            ));
            continue;
        }
        let gone = wait_pid_gone(s.pid, STOP_GRACE)
            // Checked again: the pid may have been reused during the grace period.
            || (s.is_running(state_dir)
                && send_signal(s.pid, libc::SIGKILL)
                && wait_pid_gone(s.pid, STOP_GRACE))
            || !process_alive(s.pid);
        if gone {
            lines.push(format!(
                "{} {}: stopped pid {}",
                s.kind.as_str(),
                s.addr(),
                s.pid
            ));
        } else {
            survivors.push(format!("{} (pid {})", s.addr(), s.pid));
        }
    }
    if !survivors.is_empty() {
        return Err(local_err(format!(
            "could not stop {}: check permissions (`ps -o user= -p PID`) and kill them by pid; \
             the record {} is kept",
            survivors.join(", "),
            ServerSet::record_path(state_dir).display()
        )));
    }
    let path = ServerSet::record_path(state_dir);
    fs::remove_file(&path)
        .map_err(|e| local_err(format!("cannot remove {}: {e}", path.display())))?;
    Ok(lines)
}

fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// One line per server recorded in `state_dir`: kind, address, pid, running or not, and
/// the role it reports (ROLE).
pub fn status(state_dir: &Path) -> Result<Vec<String>> {
    let Some(set) = ServerSet::load(state_dir)? else {
        return Ok(vec![format!(
            "no servers recorded in {}; start some with `slotline servers up`",
            state_dir.display()
        )]);
    };
    Ok(set
        .servers
        .iter()
        .map(|s| {
            if s.is_running(state_dir) {
                let role = match command(&s.addr(), None, &[b"ROLE"]) {
                    Ok(OwnedFrame::Array(items)) => match items.first() {
                        Some(OwnedFrame::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                        _ => "unknown".to_string(),
                    },
                    Ok(_) => "unknown".to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                let role = if role == "slave" {
                    "replica".to_string()
                } else {
                    role
                };
                format!(
                    "{} redis://{} pid {} running {role}",
                    s.kind.as_str(),
                    s.addr(),
                    s.pid
                )
            } else {
                format!(
                    "{} redis://{} pid {} not running",
                    s.kind.as_str(),
                    s.addr(),
                    s.pid
                )
            }
        })
        .collect())
}
