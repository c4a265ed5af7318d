//! One `redis-server` process: its options, start (as a child or daemonized), readiness
//! probe, stop, restart, and the process helpers (pidfiles, signals) behind them.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

use crate::client::{Client, OwnedFrame};
use crate::os::{log_since, log_tail, process_alive, read_pidfile, remove_if_exists, send_signal};
use crate::ports::{free_cluster_port, free_port, redis_server_binary};
use crate::redact::redact_args;
use crate::tls::TlsServer;
use crate::{local_err, BUS_PORT_OFFSET, MAX_CLUSTER_PORT, POLL, START_TIMEOUT, STOP_GRACE};

/// How to start one `redis-server`. `Debug` masks the passwords.
#[derive(Clone)]
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
    /// Also serve TLS (`--tls-port` and the certificate files).
    pub tls: Option<TlsServer>,
    /// The server binary (`redis-server`, `valkey-server`, any build of either);
    /// `None`: `SLOTLINE_REDIS_SERVER`, else `redis-server` on PATH
    /// ([`redis_server_binary`]).
    pub binary: Option<PathBuf>,
    /// CPUs the server may run on (`--server_cpulist` for its main and I/O threads,
    /// `--bio_cpulist` for its background threads); empty: wherever the OS puts it.
    pub cpus: Vec<usize>,
    /// `--io-threads` (threads that read and write client sockets); `None`: the
    /// server's default (1).
    pub io_threads: Option<u32>,
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
            tls: None,
            binary: None,
            cpus: Vec::new(),
            io_threads: None,
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
        let binary = match &opts.binary {
            Some(b) if crate::ports::is_executable(b) => b.clone(),
            Some(b) => {
                return Err(local_err(format!(
                    "server binary {} is not an executable file",
                    b.display()
                )))
            }
            None => redis_server_binary()?,
        };
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
        let pidfile = node_dir.join(crate::PIDFILE);
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
        // The TLS port is chosen once and kept across restarts (it is in `opts`).
        let tls = match &opts.tls {
            Some(t) if t.port == 0 => Some(TlsServer {
                port: free_port().map_err(|e| fail(e.to_string()))?,
                ..t.clone()
            }),
            other => other.clone(),
        };
        if let Some(t) = &tls {
            let bus = opts.cluster.then(|| port + BUS_PORT_OFFSET);
            args.extend(t.args(bus));
        }
        if !opts.cpus.is_empty() {
            let list = cpu_list(&opts.cpus);
            args.extend([
                "--server_cpulist".into(),
                list.clone(),
                "--bio_cpulist".into(),
                list,
            ]);
        }
        if let Some(n) = opts.io_threads {
            args.extend(["--io-threads".into(), n.to_string()]);
            if n > 1 {
                args.extend(["--io-threads-do-reads".into(), "yes".into()]);
            }
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
        let shown = redact_args(&args);
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
                tls,
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

    /// The TLS port, when the server serves TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.opts.tls.as_ref().map(|t| t.port)
    }

    /// `rediss://HOST:TLS_PORT`, when the server serves TLS.
    pub fn tls_url(&self) -> Option<String> {
        let port = self.tls_port()?;
        Some(format!("rediss://{}", connect_addr(&self.opts.bind, port)))
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
    pub(crate) fn begin_stop(&mut self) {
        if self.is_running() {
            send_signal(self.pid, libc::SIGTERM);
        }
    }

    pub(crate) fn finish_stop(&mut self) {
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

pub(crate) fn check_ports_free(bind: &str, first: u16, count: u16, cluster: bool) -> Result<()> {
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
pub(crate) fn connect_host(bind: &str) -> String {
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

/// One readiness probe: Ok once the server answers PING (or refuses it with NOAUTH, which
/// still proves it is serving); Err with the reason otherwise.
fn probe(addr: &str, password: Option<&str>) -> std::result::Result<(), String> {
    let mut conn = Client::connect(addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
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

/// `[0, 1, 2, 5]` as `"0,1,2,5"` (redis-server's cpulist syntax).
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
