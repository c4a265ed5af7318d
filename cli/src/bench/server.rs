//! Servers the bench owns: its own redis-server or cluster, stopped at the end.

use super::*;

/// A redis-server (or local cluster) started for the bench in a temporary directory;
/// stopped and the directory removed on drop.
pub struct OwnedServer {
    proc: Option<RedisProcess>,
    cluster: Option<LocalCluster>,
    dir: PathBuf,
    url: String,
}

impl OwnedServer {
    /// Starts one server, or 3 masters + 3 replicas in cluster mode, on free ports.
    pub fn start(mode: Mode) -> Result<OwnedServer, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("slotline-bench-{}-{nanos:x}", std::process::id()));
        let opts = ServerOptions::default();
        let mut s = OwnedServer {
            proc: None,
            cluster: None,
            dir: dir.clone(),
            url: String::new(),
        };
        match mode {
            Mode::Standalone => {
                let p = RedisProcess::start(&dir, &opts)?;
                s.url = p.url();
                s.proc = Some(p);
            }
            Mode::Cluster => {
                let c = LocalCluster::start(&dir, 3, 1, &opts)?;
                s.url = c.seed_url();
                s.cluster = Some(c);
            }
        }
        Ok(s)
    }

    /// Where clients connect.
    pub fn url(&self) -> &str {
        &self.url
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
