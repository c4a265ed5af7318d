//! Servers the bench owns: its own redis-server or cluster, stopped at the end.

use super::*;

/// A redis-server (or local cluster) started for the bench in a temporary directory;
/// stopped and the directory removed on drop.
pub struct OwnedServer {
    proc: Option<RedisProcess>,
    cluster: Option<LocalCluster>,
    dir: PathBuf,
    url: String,
    /// With TLS: the `rediss://` URL and the CA file to trust.
    tls: Option<(String, PathBuf)>,
}

impl OwnedServer {
    /// Starts one server, or 3 masters + 3 replicas in cluster mode, on free ports;
    /// with `tls` they serve TLS too (certificates made in the temporary directory).
    pub fn start(mode: Mode, tls: bool) -> Result<OwnedServer, BenchError> {
        Self::start_topology(&ServerTopology::default_for(mode, tls))
    }

    /// Starts the servers `t` describes: one standalone server, or a cluster of
    /// `t.masters` masters with `t.replicas` replicas each, every node on its CPUs.
    pub fn start_topology(t: &ServerTopology) -> Result<OwnedServer, BenchError> {
        let (mode, tls) = (t.mode, t.tls);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("slotline-bench-{}-{nanos:x}", std::process::id()));
        let mut opts = ServerOptions {
            binary: t.binary.clone(),
            io_threads: t.io_threads,
            ..ServerOptions::default()
        };
        let certs = if tls {
            let c = slotline_testkit::TlsCerts::generate(&dir.join("tls"))?;
            opts.tls = Some(slotline_testkit::TlsServer::new(c.clone()));
            Some(c)
        } else {
            None
        };
        let mut s = OwnedServer {
            proc: None,
            cluster: None,
            dir: dir.clone(),
            url: String::new(),
            tls: None,
        };
        match mode {
            Mode::Standalone => {
                opts.cpus = t.cpus_of(0);
                let p = RedisProcess::start(&dir, &opts)?;
                s.url = p.url();
                s.tls = p.tls_url().zip(certs.map(|c| c.ca));
                s.proc = Some(p);
            }
            Mode::Cluster => {
                let c = LocalCluster::start_each(&dir, t.masters, t.replicas, &opts, |i, o| {
                    o.cpus = t.cpus_of(i)
                })?;
                s.url = c.seed_url();
                s.tls = c.tls_seed_url().zip(certs.map(|c| c.ca));
                s.cluster = Some(c);
            }
        }
        Ok(s)
    }

    /// Where clients connect.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `rediss://` URL and CA file, when started with TLS.
    pub fn tls(&self) -> Option<&(String, PathBuf)> {
        self.tls.as_ref()
    }

    /// Process ids of the servers.
    pub fn pids(&self) -> Vec<u32> {
        match (&self.proc, &self.cluster) {
            (Some(p), _) => vec![p.pid()],
            (None, Some(c)) => c.nodes.iter().map(|n| n.pid()).collect(),
            _ => Vec::new(),
        }
    }

    /// The temporary directory (logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
