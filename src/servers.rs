//! Local `redis-server` processes: single servers, small Redis Clusters, and the set of
//! daemonized servers behind `slotline servers up|down|status`.
//!
//! The same code starts the servers of the integration tests (as child processes that die
//! with the test) and the ones a user keeps running from the CLI (daemonized, recorded in a
//! state directory). Every server gets its own directory `<dir>/<port>/` holding its log
//! file, pidfile and, for cluster nodes, `nodes.conf`; processes are always stopped by pid,
//! never by name, so an unrelated server on the machine (such as the Debian package's
//! default one on 6379) is never touched.
//!
//! Control-plane traffic goes through a tiny blocking client ([`command`]) so that this
//! module needs neither the engine nor `redis-cli`.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;

use crate::error::{Error, Result};

/// How long a freshly spawned server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server gets to exit after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Connect, read and write timeout of the admin client.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cluster may take to form (slots, gossip, replica links).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Number of hash slots of Redis Cluster.
const CLUSTER_SLOTS: u16 = 16384;
/// The cluster bus of a node listens on its port plus this offset.
const BUS_PORT_OFFSET: u16 = 10000;
/// Highest client port whose bus port still fits in 16 bits.
const MAX_CLUSTER_PORT: u16 = u16::MAX - BUS_PORT_OFFSET;
/// Poll interval of every wait loop here; servers change state in tens of milliseconds.
const POLL: Duration = Duration::from_millis(50);
/// Keys moved per MIGRATE during resharding.
const MIGRATE_BATCH: usize = 100;

fn local_err(msg: impl Into<String>) -> Error {
    Error::LocalServer(msg.into())
}

// ---------------------------------------------------------------------------------------
// Binary and ports
// ---------------------------------------------------------------------------------------

/// Finds the `redis-server` binary: `$SLOTLINE_REDIS_SERVER` if set, else the first
/// `redis-server` on `PATH`, else `/usr/bin/redis-server`, else `/usr/sbin/redis-server`.
///
/// `SLOTLINE_REDIS_SERVER` may name any compatible server (e.g. `valkey-server`).
pub fn redis_server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLOTLINE_REDIS_SERVER") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(local_err(format!(
            "SLOTLINE_REDIS_SERVER={} is not an executable file: point it at a redis-server \
             (or valkey-server) binary, or unset it to search PATH",
            p.display()
        )));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("redis-server");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    // Non-login root shells and CI environments sometimes lack the sbin directories.
    for candidate in ["/usr/bin/redis-server", "/usr/sbin/redis-server"] {
        let candidate = PathBuf::from(candidate);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(local_err(
        "redis-server not found on PATH, in /usr/bin or in /usr/sbin: install it with \
         `apt-get install -y redis-server`, or set SLOTLINE_REDIS_SERVER to its path",
    ))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Ports (client and bus) this process has handed out already, so that parallel tests in
/// one process never get the same one.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn claim_ports(ports: &[u16]) -> bool {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if ports.iter().any(|p| handed.contains(p)) {
        return false;
    }
    handed.extend_from_slice(ports);
    true
}

/// Whether a TCP listener could bind `127.0.0.1:port` right now.
pub fn port_is_free(port: u16) -> bool {
    port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A TCP port on 127.0.0.1 that is free now and that this process has not handed out
/// before.
///
/// Ports are drawn at random below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), where the local end of an outgoing connection never
/// lands: a port found free stays free until the server binds it, and a killed server
/// can be restarted on its port even while tests open thousands of connections. Only
/// if that range leaves no room does this fall back to binding port 0. Another listener
/// can still take the port first; [`RedisProcess::start`] then retries on a new one.
pub fn free_port() -> Result<u16> {
    free_port_block(1, false)
}

/// Like [`free_port`], for a cluster node: the port is below 55535 and its cluster bus
/// port (port + 10000) is free as well.
pub fn free_cluster_port() -> Result<u16> {
    free_port_block(1, true)
}

/// The first of `count` consecutive free ports (each with a free bus port if `cluster`),
/// for topologies on consecutive ports such as `slotline servers up` with a base port.
/// Chosen as [`free_port`] chooses.
pub fn free_port_block(count: u16, cluster: bool) -> Result<u16> {
    let count = count.max(1);
    let span = count - 1 + if cluster { BUS_PORT_OFFSET } else { 0 };
    // Well-known services (6379, 7000-7005 of `servers up`, ...) live below this.
    const POOL_START: u32 = 10_000;
    let pool_end = u32::from(ephemeral_port_start()).saturating_sub(u32::from(span));
    let mut rng = seed();
    for attempt in 0..1000u32 {
        let first = if pool_end > POOL_START + 1000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (POOL_START + (rng % u64::from(pool_end - POOL_START)) as u32) as u16
        } else {
            let probe = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| {
                    local_err(format!(
                        "cannot bind a TCP socket on 127.0.0.1 to find a free port: {e}; \
                         check that the loopback interface is up"
                    ))
                })?;
            probe.port()
        };
        let Some(last) = first.checked_add(count - 1) else {
            continue;
        };
        if cluster && last > MAX_CLUSTER_PORT {
            continue;
        }
        let mut ports: Vec<u16> = (first..=last).collect();
        if cluster {
            ports.extend((first..=last).map(|p| p + BUS_PORT_OFFSET));
        }
        if ports.iter().all(|&p| port_is_free(p)) && claim_ports(&ports) {
            tracing::trace!(first, count, attempt, "picked free port(s)");
            return Ok(first);
        }
    }
    Err(local_err(format!(
        "found no {count} consecutive free port(s) on 127.0.0.1 after 1000 tries; \
         close some listening processes"
    )))
}

/// First port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A seed that differs between processes and calls, so that concurrent test binaries
/// start their searches at different ports.
fn seed() -> u64 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (nanos ^ (u64::from(std::process::id()) << 32) ^ calls.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

// ---------------------------------------------------------------------------------------
// Options and one server process
// ---------------------------------------------------------------------------------------

/// How to start one `redis-server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// Address to bind (`--bind`).
    pub bind: String,
    /// Password of the default user (`--requirepass`, and `--masterauth` so replicas
    /// can sync).
    pub password: Option<String>,
    /// Extra ACL users `(name, password)` with full access
    /// (`user NAME on >PASS ~* &* +@all`).
    pub acl_users: Vec<(String, String)>,
    /// Also listen on this unix socket (`--unixsocket`, permissions 700).
    pub unix_socket: Option<PathBuf>,
    /// Start as a cluster node (`--cluster-enabled yes`).
    pub cluster: bool,
    /// `--cluster-node-timeout` in milliseconds; it bounds failover time.
    pub cluster_node_timeout_ms: u64,
    /// `--maxmemory` (e.g. `"64mb"`) with policy `allkeys-lru`.
    pub maxmemory: Option<String>,
    /// Appended last, so they override anything above.
    pub extra_args: Vec<String>,
    /// `--daemonize yes`: the server outlives this process (the CLI). Otherwise it runs
    /// as a child process (tests).
    pub daemonize: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            port: 0,
            bind: "127.0.0.1".to_string(),
            password: None,
            acl_users: Vec::new(),
            unix_socket: None,
            cluster: false,
            cluster_node_timeout_ms: 2000,
            maxmemory: None,
            extra_args: Vec::new(),
            daemonize: false,
        }
    }
}

/// One running (or stopped) `redis-server`, stopped when dropped unless detached.
#[derive(Debug)]
pub struct RedisProcess {
    port: u16,
    dir: PathBuf,
    opts: ServerOptions,
    binary: PathBuf,
    pid: u32,
    child: Option<Child>,
    stopped: bool,
    detached: bool,
}

/// Why a launch failed; `port_in_use` lets [`RedisProcess::start`] retry on another port.
struct LaunchFailure {
    message: String,
    port_in_use: bool,
}

impl RedisProcess {
    /// Starts a server under `dir/<port>/` and waits (at most 10 s) until it answers PING.
    ///
    /// With `opts.port == 0` a free port is picked (a cluster-capable one if
    /// `opts.cluster`), and another is tried if someone else binds it first. A stale
    /// `nodes.conf` in the node directory is removed: a started node is always new (use
    /// [`RedisProcess::restart`] to keep its cluster identity). On failure the error
    /// includes the tail of the server's log file.
    pub fn start(dir: &Path, opts: &ServerOptions) -> Result<RedisProcess> {
        let binary = redis_server_binary()?;
        fs::create_dir_all(dir).map_err(|e| {
            local_err(format!(
                "cannot create server directory {}: {e}; choose a writable directory",
                dir.display()
            ))
        })?;
        // redis-server chdirs into --dir while it parses its arguments, so every path
        // handed to it must be absolute.
        let base = dir.canonicalize().map_err(|e| {
            local_err(format!(
                "cannot resolve server directory {}: {e}",
                dir.display()
            ))
        })?;

        if opts.port != 0 {
            check_ports_free(&opts.bind, opts.port, 1, opts.cluster)?;
            return Self::launch(&binary, &base, opts.port, opts, true)
                .map_err(|f| local_err(f.message));
        }

        let mut last = String::new();
        for _ in 0..5 {
            let port = if opts.cluster {
                free_cluster_port()?
            } else {
                free_port()?
            };
            match Self::launch(&binary, &base, port, opts, true) {
                Ok(p) => return Ok(p),
                Err(f) if f.port_in_use => {
                    tracing::debug!(port, "port taken before redis-server bound it; retrying");
                    last = f.message;
                }
                Err(f) => return Err(local_err(f.message)),
            }
        }
        Err(local_err(format!(
            "gave up after 5 free ports were taken by other processes before redis-server \
             could bind them; last failure: {last}"
        )))
    }

    fn launch(
        binary: &Path,
        base: &Path,
        port: u16,
        opts: &ServerOptions,
        fresh: bool,
    ) -> Result<RedisProcess, LaunchFailure> {
        let fail = |message: String| LaunchFailure {
            message,
            port_in_use: false,
        };
        let node_dir = base.join(port.to_string());
        fs::create_dir_all(&node_dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", node_dir.display())))?;
        let log_path = node_dir.join("redis.log");
        let pidfile = node_dir.join("redis.pid");
        if fresh {
            remove_if_exists(&node_dir.join("nodes.conf"));
        }
        // A pidfile left by a SIGKILLed server would name a dead (or reused) pid.
        remove_if_exists(&pidfile);

        let mut args: Vec<String> = vec![
            "--bind".into(),
            opts.bind.clone(),
            "--port".into(),
            port.to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            node_dir.display().to_string(),
            "--pidfile".into(),
            pidfile.display().to_string(),
            "--logfile".into(),
            log_path.display().to_string(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
            "--daemonize".into(),
            if opts.daemonize { "yes" } else { "no" }.into(),
        ];
        if let Some(pw) = &opts.password {
            args.extend([
                "--requirepass".into(),
                pw.clone(),
                "--masterauth".into(),
                pw.clone(),
            ]);
        }
        for (user, pass) in &opts.acl_users {
            args.extend([
                "--user".into(),
                user.clone(),
                "on".into(),
                format!(">{pass}"),
                "~*".into(),
                "&*".into(),
                "+@all".into(),
            ]);
        }
        if let Some(sock) = &opts.unix_socket {
            let sock = if sock.is_absolute() {
                sock.clone()
            } else {
                base.join(sock)
            };
            args.extend([
                "--unixsocket".into(),
                sock.display().to_string(),
                "--unixsocketperm".into(),
                "700".into(),
            ]);
        }
        if opts.cluster {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                opts.cluster_node_timeout_ms.to_string(),
            ]);
        }
        if let Some(mm) = &opts.maxmemory {
            args.extend([
                "--maxmemory".into(),
                mm.clone(),
                "--maxmemory-policy".into(),
                "allkeys-lru".into(),
            ]);
        }
        args.extend(opts.extra_args.iter().cloned());

        // Errors printed before logging is set up (bad arguments) go to stderr; sending it
        // to the log file keeps them next to everything else.
        let open_log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| fail(format!("cannot open log file {}: {e}", log_path.display())))
        };
        let log_start = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(binary);
        cmd.args(&args)
            .current_dir(&node_dir)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?);
        let shown: Vec<&str> = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let secret =
                    i > 0 && matches!(args[i - 1].as_str(), "--requirepass" | "--masterauth");
                if secret || a.starts_with('>') {
                    "<redacted>"
                } else {
                    a.as_str()
                }
            })
            .collect();
        tracing::debug!(binary = %binary.display(), args = ?shown, "starting redis-server");
        let mut child = cmd.spawn().map_err(|e| {
            fail(format!(
                "cannot run {}: {e}; install redis-server with `apt-get install -y redis-server` \
                 or set SLOTLINE_REDIS_SERVER",
                binary.display()
            ))
        })?;

        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let addr = connect_addr(&opts.bind, port);
        let failure = |why: String| {
            let tail = log_tail(&log_path, 30);
            LaunchFailure {
                port_in_use: log_since(&log_path, log_start).contains("Address already in use"),
                message: format!(
                    "redis-server on {addr} {why}; its log {} ends with:\n{tail}",
                    log_path.display()
                ),
            }
        };

        let (pid, child) = if opts.daemonize {
            // The launcher exits as soon as it has forked the daemon (or failed on its
            // arguments); the daemon announces itself through the pidfile.
            let status = child
                .wait()
                .map_err(|e| failure(format!("could not be awaited: {e}")))?;
            if !status.success() {
                return Err(failure(format!("exited with {status} while starting")));
            }
            let pid = loop {
                if let Some(pid) = read_pidfile(&pidfile) {
                    break pid;
                }
                if log_since(&log_path, log_start).contains(", aborting") {
                    return Err(failure("aborted while starting".into()));
                }
                if Instant::now() >= deadline {
                    return Err(failure(format!(
                        "wrote no pidfile {} within {START_TIMEOUT:?}",
                        pidfile.display()
                    )));
                }
                std::thread::sleep(POLL);
            };
            (pid, None)
        } else {
            (child.id(), Some(child))
        };

        let mut proc = RedisProcess {
            port,
            dir: node_dir,
            opts: ServerOptions {
                port,
                ..opts.clone()
            },
            binary: binary.to_path_buf(),
            pid,
            child,
            stopped: false,
            detached: false,
        };
        loop {
            if !proc.is_running() {
                let f = failure("exited while starting".into());
                proc.kill();
                return Err(f);
            }
            match probe(&addr, opts.password.as_deref()) {
                Ok(()) => break,
                Err(why) if Instant::now() >= deadline => {
                    proc.stop();
                    return Err(failure(format!(
                        "did not answer PING within {START_TIMEOUT:?} (last: {why})"
                    )));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
        tracing::debug!(%addr, pid, elapsed = ?started.elapsed(), "redis-server is up");
        Ok(proc)
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the server (of the daemon, when daemonized).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `host:port` to connect to, e.g. `127.0.0.1:6379`.
    pub fn addr(&self) -> String {
        connect_addr(&self.opts.bind, self.port)
    }

    /// `redis://host:port` (without credentials).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// The server's own directory (`<dir>/<port>/`): log, pidfile, `nodes.conf`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file, for error messages and post-mortems.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The options the server runs with (`port` filled in).
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The unix socket path the server listens on, if any.
    pub fn unix_socket(&self) -> Option<PathBuf> {
        self.opts.unix_socket.as_ref().map(|s| {
            if s.is_absolute() {
                s.clone()
            } else {
                self.dir.parent().unwrap_or(&self.dir).join(s)
            }
        })
    }

    /// Whether the process is alive (a zombie counts as dead).
    pub fn is_running(&self) -> bool {
        !self.stopped && process_alive(self.pid)
    }

    /// SIGKILLs the server and waits until it is gone: a crash, for failover tests.
    pub fn kill(&mut self) {
        if self.is_running() {
            send_signal(self.pid, libc::SIGKILL);
            self.wait_gone(STOP_GRACE);
        }
        self.reap();
        self.stopped = true;
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL. Does nothing if already stopped.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.begin_stop();
        self.finish_stop();
    }

    /// Sends SIGTERM without waiting, so that many servers can shut down concurrently.
    fn begin_stop(&mut self) {
        if self.is_running() {
            send_signal(self.pid, libc::SIGTERM);
        }
    }

    fn finish_stop(&mut self) {
        if self.stopped {
            return;
        }
        if !self.wait_gone(STOP_GRACE) {
            tracing::warn!(
                pid = self.pid,
                port = self.port,
                "redis-server ignored SIGTERM; killing it"
            );
            send_signal(self.pid, libc::SIGKILL);
            self.wait_gone(STOP_GRACE);
        }
        self.reap();
        self.stopped = true;
    }

    /// Starts the server again on the same port with the same options; `nodes.conf` is
    /// kept, so a cluster node rejoins with its old identity. Stops it first if running.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let base = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
        let fresh = Self::launch(&self.binary, &base, self.port, &self.opts, false)
            .map_err(|f| local_err(f.message))?;
        let detached = self.detached;
        *self = fresh;
        self.detached = detached;
        Ok(())
    }

    /// Leaves the server running when this handle is dropped (the CLI's `servers up`).
    pub fn detach(&mut self) {
        self.detached = true;
    }

    fn wait_gone(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = match &mut self.child {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => !process_alive(self.pid),
            };
            if gone {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                // Still alive after SIGKILL and the grace period: nothing more can be done
                // without blocking forever, so the handle is left to the OS.
                tracing::warn!(pid = self.pid, "redis-server survived SIGKILL");
            }
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}

fn check_ports_free(bind: &str, first: u16, count: u16, cluster: bool) -> Result<()> {
    let host = connect_host(bind);
    let last = first
        .checked_add(count - 1)
        .filter(|&l| !cluster || l <= MAX_CLUSTER_PORT);
    let Some(last) = last else {
        return Err(local_err(format!(
            "ports {first}..{} do not fit: a cluster node's bus port (port + 10000) must be \
             at most 65535, so choose a base port of at most {}",
            u32::from(first) + u32::from(count) - 1,
            MAX_CLUSTER_PORT - (count - 1)
        )));
    };
    for port in first..=last {
        let mut to_check = vec![(port, "")];
        if cluster {
            to_check.push((port + BUS_PORT_OFFSET, " (cluster bus port)"));
        }
        for (p, what) in to_check {
            if TcpListener::bind((host.as_str(), p)).is_err() {
                return Err(local_err(format!(
                    "port {p}{what} is already in use on {host}: stop whatever listens there \
                     (`ss -ltnp 'sport = :{p}'` shows it; the Debian package's own server runs on \
                     6379, stop it with `service redis-server stop`) or choose another port"
                )));
            }
        }
    }
    Ok(())
}

/// The host clients connect to for a `--bind` value: wildcard binds are reached on
/// loopback, IPv6 literals need brackets.
fn connect_host(bind: &str) -> String {
    let first = bind.split_whitespace().next().unwrap_or("127.0.0.1");
    let first = first.trim_start_matches('-');
    match first {
        "" | "*" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "::*" => "::1".to_string(),
        other => other.to_string(),
    }
}

fn connect_addr(bind: &str, port: u16) -> String {
    let host = connect_host(bind);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn remove_if_exists(p: &Path) {
    if let Err(e) = fs::remove_file(p) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove stale file");
        }
    }
}

fn read_pidfile(p: &Path) -> Option<u32> {
    fs::read_to_string(p)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(p: &Path, lines: usize) -> String {
    let text = log_since(p, 0);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// Log text written after byte `offset` (logs are appended to across restarts).
fn log_since(p: &Path, offset: u64) -> String {
    let Ok(mut f) = fs::File::open(p) else {
        return String::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Alive per `/proc/<pid>/stat`: a zombie or a missing entry is dead. Unlike
/// `kill(pid, 0)` this is not fooled by an exited child nobody has reaped yet.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name in parentheses may itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X') | Some('x'))
}

/// Whether `pid` is alive and is a server on `port`; guards against signalling a reused
/// pid from a stale record. redis-server retitles itself "redis-server 127.0.0.1:PORT".
fn is_server_on_port(pid: u32, port: u16) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    let port_s = port.to_string();
    cmdline
        .split_whitespace()
        .any(|tok| tok == port_s || tok.rsplit_once(':').is_some_and(|(_, p)| p == port_s))
}

fn send_signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; pid > 0 was
    // checked, so this never signals a process group.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// One readiness probe: Ok once the server answers PING (or refuses it with NOAUTH, which
/// still proves it is serving); Err with the reason otherwise.
fn probe(addr: &str, password: Option<&str>) -> std::result::Result<(), String> {
    let mut conn = Conn::connect(addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    if let Some(pw) = password {
        match conn
            .call_raw(&[b"AUTH", pw.as_bytes()])
            .map_err(|e| e.to_string())?
        {
            OwnedFrame::Error(e) if e.starts_with("LOADING") => return Err(e),
            _ => {}
        }
    }
    match conn.call_raw(&[b"PING"]).map_err(|e| e.to_string())? {
        OwnedFrame::Error(e) if !e.starts_with("NOAUTH") => Err(e),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Tiny blocking admin client
// ---------------------------------------------------------------------------------------

/// A blocking connection for control-plane commands; one per call site, not pooled.
struct Conn {
    node: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: &str, timeout: Duration) -> Result<Conn> {
        let io_err = |source: io::Error| Error::Io {
            node: addr.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for sa in addr.to_socket_addrs().map_err(io_err)? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
                    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
                    stream.set_nodelay(true).map_err(io_err)?;
                    return Ok(Conn {
                        node: addr.to_string(),
                        stream,
                        buf: Vec::new(),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(io_err(last))
    }

    fn open(addr: &str, password: Option<&str>) -> Result<Conn> {
        let mut conn = Conn::connect(addr, ADMIN_TIMEOUT)?;
        if let Some(pw) = password {
            if let OwnedFrame::Error(message) = conn.call_raw(&[b"AUTH", pw.as_bytes()])? {
                return Err(Error::Auth {
                    node: addr.to_string(),
                    message,
                });
            }
        }
        Ok(conn)
    }

    /// Sends one command; an error reply becomes `Error::Server`.
    fn call(&mut self, args: &[&[u8]]) -> Result<OwnedFrame> {
        match self.call_raw(args)? {
            OwnedFrame::Error(message) => Err(Error::Server {
                node: self.node.clone(),
                message,
            }),
            frame => Ok(frame),
        }
    }

    fn call_raw(&mut self, args: &[&[u8]]) -> Result<OwnedFrame> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        let what = || String::from_utf8_lossy(args.first().copied().unwrap_or(b"")).into_owned();
        self.stream
            .write_all(&out)
            .map_err(|e| self.io_error(e, &what()))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match redis_protocol::resp2::decode::decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Protocol {
                        node: self.node.clone(),
                        reason: format!("unparsable reply to {}: {e:?}", what()),
                    })
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| self.io_error(e, &what()))?;
            if n == 0 {
                return Err(Error::Io {
                    node: self.node.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed before the reply to {}", what()),
                    ),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn io_error(&self, e: io::Error, what: &str) -> Error {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            Error::Timeout {
                after: ADMIN_TIMEOUT,
                what: format!("{what} to {}", self.node),
            }
        } else {
            Error::Io {
                node: self.node.clone(),
                source: e,
            }
        }
    }

    fn call_str(&mut self, args: &[&str]) -> Result<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Ok(render(&self.call(&args)?))
    }
}

/// Sends one command to `addr` over a new connection (AUTH first if `password` is set)
/// and returns the parsed reply. Connect, read and write time out after 5 s.
///
/// Errors: `Error::Io`/`Error::Timeout` for the connection, `Error::Auth` if AUTH is
/// refused, `Error::Server` for an error reply (its message keeps the server's prefix,
/// e.g. `NOAUTH ...`, `MOVED 3999 127.0.0.1:7001`), `Error::Protocol` for bad RESP.
pub fn command(addr: &str, password: Option<&str>, args: &[&[u8]]) -> Result<OwnedFrame> {
    Conn::open(addr, password)?.call(args)
}

/// Like [`command`] with text arguments, the reply rendered as text: simple and bulk
/// strings as they are (lossy UTF-8), integers in decimal, nil as the empty string,
/// arrays as their rendered elements joined by newlines.
pub fn command_str(addr: &str, password: Option<&str>, args: &[&str]) -> Result<String> {
    Conn::open(addr, password)?.call_str(args)
}

/// Runs several commands in order on one connection (as [`command_str`] renders them),
/// for sequences that depend on connection state: a write then `WAIT`, `READONLY` then
/// a read on a replica, `MULTI`...`EXEC`. Stops at the first error reply.
pub fn command_strs(
    addr: &str,
    password: Option<&str>,
    commands: &[&[&str]],
) -> Result<Vec<String>> {
    let mut conn = Conn::open(addr, password)?;
    commands.iter().map(|args| conn.call_str(args)).collect()
}

fn render(frame: &OwnedFrame) -> String {
    match frame {
        OwnedFrame::SimpleString(b) | OwnedFrame::BulkString(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        OwnedFrame::Error(e) => e.clone(),
        OwnedFrame::Integer(i) => i.to_string(),
        OwnedFrame::Null => String::new(),
        OwnedFrame::Array(items) => items.iter().map(render).collect::<Vec<_>>().join("\n"),
    }
}

/// `field:value` lookup in INFO / CLUSTER INFO text.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

// ---------------------------------------------------------------------------------------
// Local cluster
// ---------------------------------------------------------------------------------------

/// `(first slot, last slot, master port)` per range of CLUSTER SLOTS, sorted.
type SlotMap = Vec<(i64, i64, i64)>;

/// One line of CLUSTER NODES.
struct NodeLine {
    /// `ip:port` without the bus port.
    addr: String,
    flags: Vec<String>,
}

fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            let addr = f.next()?.split('@').next()?.to_string();
            let flags = f.next()?.split(',').map(str::to_string).collect();
            Some(NodeLine { addr, flags })
        })
        .collect()
}

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
        let mut src_conn = Conn::open(&src.addr(), pw)?;
        let mut dst_conn = Conn::open(&dst.addr(), pw)?;
        let dst_host = connect_host(&dst.opts.bind);
        let dst_port = dst.port().to_string();
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

// ---------------------------------------------------------------------------------------
// CLI state directory: servers up | down | status
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
    /// Whether the recorded pid is still a server on the recorded port.
    pub fn is_running(&self) -> bool {
        is_server_on_port(self.pid, self.port)
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
    if let Some(set) = ServerSet::load(state_dir)? {
        let alive: Vec<String> = set
            .servers
            .iter()
            .filter(|s| s.is_running())
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
    let opts = ServerOptions {
        port: base,
        daemonize: true,
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
    let running: Vec<bool> = set.servers.iter().map(ServerRecord::is_running).collect();
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
            || (send_signal(s.pid, libc::SIGKILL) && wait_pid_gone(s.pid, STOP_GRACE))
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
            if s.is_running() {
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
