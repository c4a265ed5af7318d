//! Local Redis Sentinel processes (`redis-server --sentinel`) watching a master, for
//! failover tests. A sentinel needs a writable config file: each one gets
//! `<dir>/<port>/sentinel.conf` and its log next to it. Stopped (SIGKILL) when dropped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, OwnedFrame};
use crate::error::Result;
use crate::os::log_tail;
use crate::{free_port, local_err, redis_server_binary, POLL, START_TIMEOUT};

/// What a sentinel watches and how quickly it fails over.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// The master's name (`sentinel monitor <name> ...`).
    pub name: String,
    /// The master's `host:port` (an IP address: sentinels do not resolve names here).
    pub master: String,
    /// Sentinels that must agree the master is down.
    pub quorum: u32,
    /// `down-after-milliseconds`: how long the master may be silent.
    pub down_after_ms: u64,
    /// `failover-timeout` in milliseconds.
    pub failover_timeout_ms: u64,
    /// The data nodes' password (`auth-pass`).
    pub auth_pass: Option<String>,
}

/// One running sentinel.
#[derive(Debug)]
pub struct SentinelProcess {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl SentinelProcess {
    /// Starts a sentinel under `dir/<port>/` and waits (at most 10 s) until it answers
    /// PING. A port taken before the sentinel binds it is retried with another.
    pub fn start(dir: &Path, opts: &SentinelOptions) -> Result<SentinelProcess> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            match Self::launch(dir, port, opts) {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        Err(local_err(format!(
            "no sentinel started after 5 ports: {last}"
        )))
    }

    fn launch(dir: &Path, port: u16, opts: &SentinelOptions) -> Result<SentinelProcess> {
        let binary = redis_server_binary()?;
        let node_dir = dir.join(port.to_string());
        fs::create_dir_all(&node_dir)
            .map_err(|e| local_err(format!("cannot create {}: {e}", node_dir.display())))?;
        let node_dir = node_dir
            .canonicalize()
            .map_err(|e| local_err(format!("cannot resolve {}: {e}", node_dir.display())))?;
        let conf = node_dir.join("sentinel.conf");
        let log = node_dir.join("sentinel.log");
        let (host, mport) = opts
            .master
            .rsplit_once(':')
            .ok_or_else(|| local_err(format!("master {:?} is not host:port", opts.master)))?;
        let n = &opts.name;
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
             sentinel monitor {n} {host} {mport} {}\n\
             sentinel down-after-milliseconds {n} {}\n\
             sentinel failover-timeout {n} {}\n\
             sentinel parallel-syncs {n} 1\n",
            node_dir.display(),
            log.display(),
            opts.quorum,
            opts.down_after_ms,
            opts.failover_timeout_ms,
        );
        if let Some(pw) = &opts.auth_pass {
            text.push_str(&format!("sentinel auth-pass {n} {pw}\n"));
        }
        fs::File::create(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| local_err(format!("cannot write {}: {e}", conf.display())))?;
        let child = Command::new(&binary)
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(&node_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| local_err(format!("cannot run {} --sentinel: {e}", binary.display())))?;
        let mut s = SentinelProcess {
            port,
            dir: node_dir,
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(local_err(format!(
                    "sentinel on port {port} exited with {status}; its log ends with:\n{}",
                    log_tail(&log, 20)
                )));
            }
            if Client::connect(&s.addr(), Duration::from_secs(1))
                .and_then(|mut c| c.call_str(&["PING"]))
                .is_ok_and(|r| r == "PONG")
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                s.kill();
                return Err(local_err(format!(
                    "sentinel on port {port} did not answer PING within {START_TIMEOUT:?}; log:\n{}",
                    log_tail(&log, 20)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (config and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log's last lines (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join("sentinel.log"), lines)
    }

    /// `SENTINEL get-master-addr-by-name`: the master's `host:port` as this sentinel
    /// sees it.
    pub fn master_addr(&self, name: &str) -> Result<String> {
        let mut c = Client::connect(&self.addr(), Duration::from_secs(2))?;
        match c.call(&[b"SENTINEL", b"get-master-addr-by-name", name.as_bytes()])? {
            OwnedFrame::Array(v) if v.len() == 2 => {
                let s = |f: &OwnedFrame| match f {
                    OwnedFrame::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                };
                Ok(format!("{}:{}", s(&v[0]), s(&v[1])))
            }
            other => Err(local_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// How many other sentinels and replicas this sentinel knows for `name`.
    pub fn peers(&self, name: &str) -> Result<(usize, usize)> {
        let mut c = Client::connect(&self.addr(), Duration::from_secs(2))?;
        let count = |f: OwnedFrame| match f {
            OwnedFrame::Array(v) => v.len(),
            _ => 0,
        };
        let sentinels = count(c.call(&[b"SENTINEL", b"sentinels", name.as_bytes()])?);
        let replicas = count(c.call(&[b"SENTINEL", b"replicas", name.as_bytes()])?);
        Ok((sentinels, replicas))
    }

    /// SIGKILLs the sentinel and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every sentinel knows the other sentinels and `replicas` replicas of
/// `name` (what a failover needs), at most `limit`.
pub fn wait_sentinels_ready(
    sentinels: &[SentinelProcess],
    name: &str,
    replicas: usize,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let ready = sentinels.iter().all(|s| {
            s.peers(name)
                .is_ok_and(|(o, r)| o + 1 >= sentinels.len() && r >= replicas)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = sentinels
                .iter()
                .map(|s| format!("{}: {:?}", s.addr(), s.peers(name)))
                .collect();
            return Err(local_err(format!(
                "sentinels of {name} did not find each other and {replicas} replica(s) within {limit:?}: {seen:?}"
            )));
        }
        std::thread::sleep(POLL);
    }
}
