//! Configuration: Redis URLs and the LMCache YAML users already write.
//!
//! An LMCache config file is accepted unchanged: slotline reads `remote_url`,
//! `remote_ttl` and its own keys under `extra_config`, and ignores everything else
//! (LMCache's own settings and other plugins' keys). Keys slotline knows are validated,
//! and every error names the key and the offending value (passwords shown as `***`).
//!
//! ```
//! use slotline::config::{Config, Mode};
//! let cfg = Config::from_yaml_str(r#"
//! chunk_size: 256            # LMCache's token chunk, not slotline's
//! remote_url: "redis://localhost:7000,localhost:7001,localhost:7002"
//! extra_config:
//!   redis_mode: "cluster"
//!   chunk_size: 128          # keys per MGET frame
//! "#).unwrap();
//! assert_eq!(cfg.mode, Mode::Cluster);
//! assert_eq!(cfg.seeds.len(), 3);
//! assert_eq!(cfg.chunk_size, 128);
//! ```

use std::fmt;
use std::net::Ipv6Addr;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::error::{Error, Result};
use crate::layout::KeyLayout;
use crate::priority::{Priority, PriorityWeights, MAX_PRIORITY_WEIGHT};

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_CHUNK_SIZE: usize = 256;
const MAX_CHUNK_SIZE: usize = 1_000_000;
const DEFAULT_MAX_CONNECTIONS: usize = 150;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Adding a larger timeout to `Instant::now()` risks overflow panics downstream; no
/// Redis request legitimately needs more than a day.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LANE_CAPACITY: usize = 1024;
/// Lanes are preallocated rings; this bound keeps a typo from allocating gigabytes.
const MAX_LANE_CAPACITY: usize = 1 << 24;
const DEFAULT_MAX_INFLIGHT_BYTES: usize = 4 << 20;
const DEFAULT_MAX_VALUE_SIZE: usize = 512 << 20;
/// RemoteMetadata stores the payload length as an `i32`.
const MAX_VALUE_SIZE_LIMIT: usize = i32::MAX as usize;
/// glibc's `CPU_SETSIZE`: `sched_setaffinity` cannot address higher CPUs.
const MAX_CPU: usize = 1024;
const DEFAULT_CLIENT_NAME: &str = "slotline";
const TTL_ENV: &str = "LMCACHE_REMOTE_TTL";
const MASK: &str = "***";

/// Where a Redis server listens.
///
/// ```
/// use slotline::config::ServerAddr;
/// let a = ServerAddr::Tcp { host: "::1".into(), port: 6379 };
/// assert_eq!(a.to_string(), "[::1]:6379");
/// let u = ServerAddr::Unix { path: "/run/redis.sock".into() };
/// assert_eq!(u.to_string(), "unix:/run/redis.sock");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// A TCP endpoint; `host` is a name or an IP address (IPv6 without brackets).
    Tcp { host: String, port: u16 },
    /// A Unix domain socket.
    Unix { path: PathBuf },
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Server topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One Redis server (database selectable).
    Standalone,
    /// A Redis Cluster reached through one or more seed nodes.
    Cluster,
}

impl FromStr for Mode {
    type Err = Error;

    /// Parses `standalone` or `cluster` (the enhanced connector's `redis_mode`),
    /// ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("standalone") {
            Ok(Mode::Standalone)
        } else if t.eq_ignore_ascii_case("cluster") {
            Ok(Mode::Cluster)
        } else {
            Err(Error::config(
                "redis_mode",
                s,
                "expected standalone or cluster",
            ))
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        })
    }
}

/// Which I/O driver the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IoBackend {
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring only; fails to start where it is unavailable.
    IoUring,
    /// epoll (through mio).
    Epoll,
}

impl FromStr for IoBackend {
    type Err = Error;

    /// Parses `auto`, `io_uring` (or `iouring`, `uring`), `epoll` (or `mio`),
    /// ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(IoBackend::Auto),
            "io_uring" | "iouring" | "uring" => Ok(IoBackend::IoUring),
            "epoll" | "mio" => Ok(IoBackend::Epoll),
            _ => Err(Error::config(
                "io_backend",
                s,
                "expected auto, io_uring or epoll",
            )),
        }
    }
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Epoll => "epoll",
        })
    }
}

/// Everything slotline needs to reach Redis and size its engine.
///
/// Build it with [`Config::from_url`], [`Config::from_yaml_str`] or
/// [`Config::from_yaml_file`]; hand-built values should go through
/// [`Config::validate`]. `Debug` output masks the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Standalone server or cluster.
    pub mode: Mode,
    /// Server addresses; exactly one in standalone mode, cluster seed nodes otherwise.
    pub seeds: Vec<ServerAddr>,
    /// Connect with TLS (`rediss://` or `use_tls: true`).
    pub tls: bool,
    /// Skip certificate verification (`extra_config.tls_insecure`, default false).
    pub tls_insecure: bool,
    /// Extra CA bundle for verification (`extra_config.tls_ca_file`).
    pub tls_ca_file: Option<PathBuf>,
    /// ACL user name (URL user or `redis_username`).
    pub username: Option<String>,
    /// Password (URL password or `redis_password`).
    pub password: Option<String>,
    /// Database number (URL path `/N`, `?db=N` or `redis_database`); 0 in cluster mode.
    pub database: u32,
    /// Keys per MGET/SET frame (`extra_config.chunk_size`, 1..=1000000, default 256).
    /// Not LMCache's top-level `chunk_size`, which counts tokens.
    pub chunk_size: usize,
    /// Connection limit (`extra_config.max_connections`, default 150).
    pub max_connections: usize,
    /// Explicit CPU list to pin shards to (`extra_config.cores` as a list or range
    /// string such as `"0-3,6"`).
    pub cores: Option<Vec<usize>>,
    /// Number of shards, unpinned (`extra_config.cores` as a single integer).
    pub shards: Option<usize>,
    /// I/O driver (`extra_config.io_backend`, default auto).
    pub io_backend: IoBackend,
    /// How chunk keys map to Redis keys (`extra_config.key_layout`).
    pub key_layout: KeyLayout,
    /// Expiry in seconds added to every SET (`extra_config.ttl`, `remote_ttl` or env
    /// `LMCACHE_REMOTE_TTL`).
    pub ttl: Option<u64>,
    /// TCP/TLS connect timeout (`extra_config.connect_timeout_ms`, default 2000).
    pub connect_timeout: Duration,
    /// Per-request timeout (`extra_config.request_timeout_ms`, default 30000).
    pub request_timeout: Duration,
    /// Submission lane capacity (`extra_config.lane_capacity`, default 1024).
    pub lane_capacity: usize,
    /// Bytes in flight per connection (`extra_config.max_inflight_bytes`, default 4 MiB).
    pub max_inflight_bytes: usize,
    /// Largest value accepted or read (`extra_config.max_value_size`, default 512 MiB).
    pub max_value_size: usize,
    /// Serve reads from cluster replicas (`extra_config.read_from_replicas`).
    pub read_from_replicas: bool,
    /// Name given with `CLIENT SETNAME` (`extra_config.client_name`).
    pub client_name: String,
    /// Shares of the request classes while several wait
    /// (`extra_config.priority_weights`, default peek 8, prefetch 4, get 2, put 1).
    pub priority_weights: PriorityWeights,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mode", &self.mode)
            .field("seeds", &self.seeds)
            .field("tls", &self.tls)
            .field("tls_insecure", &self.tls_insecure)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("database", &self.database)
            .field("chunk_size", &self.chunk_size)
            .field("max_connections", &self.max_connections)
            .field("cores", &self.cores)
            .field("shards", &self.shards)
            .field("io_backend", &self.io_backend)
            .field("key_layout", &self.key_layout)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lane_capacity", &self.lane_capacity)
            .field("max_inflight_bytes", &self.max_inflight_bytes)
            .field("max_value_size", &self.max_value_size)
            .field("read_from_replicas", &self.read_from_replicas)
            .field("client_name", &self.client_name)
            .field("priority_weights", &self.priority_weights)
            .finish()
    }
}

impl Default for Config {
    /// Standalone Redis at 127.0.0.1:6379 with every default.
    fn default() -> Self {
        Config {
            mode: Mode::Standalone,
            seeds: vec![ServerAddr::Tcp {
                host: "127.0.0.1".to_string(),
                port: DEFAULT_PORT,
            }],
            tls: false,
            tls_insecure: false,
            tls_ca_file: None,
            username: None,
            password: None,
            database: 0,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            cores: None,
            shards: None,
            io_backend: IoBackend::Auto,
            key_layout: KeyLayout::Lmcache,
            ttl: None,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            lane_capacity: DEFAULT_LANE_CAPACITY,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            read_from_replicas: false,
            client_name: DEFAULT_CLIENT_NAME.to_string(),
            priority_weights: PriorityWeights::default(),
        }
    }
}

impl Config {
    /// A configuration for `url` with every other setting at its default.
    ///
    /// Several seeds without a `redis-cluster://` scheme mean cluster mode. The
    /// `LMCACHE_REMOTE_TTL` environment variable is not consulted here (it belongs to
    /// LMCache config files; see [`Config::from_yaml_str`]).
    ///
    /// ```
    /// use slotline::config::{Config, Mode};
    /// let c = Config::from_url("redis://:secret@cache:6380/2").unwrap();
    /// assert_eq!(c.mode, Mode::Standalone);
    /// assert_eq!(c.database, 2);
    /// assert_eq!(c.password.as_deref(), Some("secret"));
    /// ```
    pub fn from_url(url: &str) -> Result<Config> {
        build(parse_url(url)?, Settings::default())
    }

    /// Reads an LMCache YAML config (or a slotline-only one with the same keys).
    ///
    /// The Redis URL comes from `extra_config.url`, `extra_config.remote_url` or
    /// `extra_config."remote_storage_plugin.slotline.url"` (the plugin form) and
    /// otherwise from the top-level `remote_url`. The TTL comes from
    /// `extra_config.ttl`, then `remote_ttl`, then env `LMCACHE_REMOTE_TTL`.
    pub fn from_yaml_str(text: &str) -> Result<Config> {
        let env_ttl = std::env::var_os(TTL_ENV).map(|v| v.to_string_lossy().into_owned());
        from_yaml_with_env(text, env_ttl)
    }

    /// Reads an LMCache YAML config file; errors name the file.
    pub fn from_yaml_file(path: &Path) -> Result<Config> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config("config_file", &file, e.to_string()))?;
        Config::from_yaml_str(&text).map_err(|e| match e {
            Error::Config { key, value, reason } => Error::Config {
                key: format!("{key} (in {file})"),
                value,
                reason,
            },
            Error::Url { url, reason } => Error::Url {
                url,
                reason: format!("{reason} (in {file})"),
            },
            other => other,
        })
    }

    /// Checks the invariants the engine relies on; errors name the setting and value.
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(Error::config(
                "remote_url",
                "",
                "no Redis server address given",
            ));
        }
        for seed in &self.seeds {
            match seed {
                ServerAddr::Tcp { host, port } => {
                    if host.is_empty() {
                        return Err(Error::config("remote_url", seed, "empty host"));
                    }
                    if *port == 0 {
                        return Err(Error::config(
                            "remote_url",
                            seed,
                            "port 0 is not a valid port",
                        ));
                    }
                }
                ServerAddr::Unix { path } => {
                    if !path.is_absolute() {
                        return Err(Error::config(
                            "remote_url",
                            seed,
                            "a Unix socket path must be absolute (unix:///path/to.sock)",
                        ));
                    }
                }
            }
        }
        match self.mode {
            Mode::Standalone if self.seeds.len() != 1 => {
                return Err(Error::config(
                    "extra_config.redis_mode",
                    Mode::Standalone,
                    format!(
                        "standalone mode needs exactly one server, got {} (use redis_mode: cluster for cluster seeds)",
                        self.seeds.len()
                    ),
                ));
            }
            Mode::Cluster if self.database != 0 => {
                return Err(Error::config(
                    "extra_config.redis_database",
                    self.database,
                    "Redis Cluster only has database 0",
                ));
            }
            Mode::Standalone if self.read_from_replicas => {
                return Err(Error::config(
                    "extra_config.read_from_replicas",
                    true,
                    "reading from replicas needs cluster mode",
                ));
            }
            _ => {}
        }
        if !(1..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(Error::config(
                "extra_config.chunk_size",
                self.chunk_size,
                format!("keys per frame must be between 1 and {MAX_CHUNK_SIZE}"),
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::config(
                "extra_config.max_connections",
                0,
                "must be at least 1",
            ));
        }
        self.validate_cores()?;
        if self.ttl == Some(0) {
            return Err(Error::config(
                "ttl",
                0,
                "must be a positive number of seconds",
            ));
        }
        for (key, d) in [
            ("extra_config.connect_timeout_ms", self.connect_timeout),
            ("extra_config.request_timeout_ms", self.request_timeout),
        ] {
            if d.is_zero() || d > MAX_TIMEOUT {
                return Err(Error::config(
                    key,
                    d.as_millis(),
                    format!(
                        "must be between 1 and {} milliseconds",
                        MAX_TIMEOUT.as_millis()
                    ),
                ));
            }
        }
        if !(1..=MAX_LANE_CAPACITY).contains(&self.lane_capacity) {
            return Err(Error::config(
                "extra_config.lane_capacity",
                self.lane_capacity,
                format!("must be between 1 and {MAX_LANE_CAPACITY}"),
            ));
        }
        if self.max_inflight_bytes == 0 {
            return Err(Error::config(
                "extra_config.max_inflight_bytes",
                0,
                "must be at least 1",
            ));
        }
        if !(1..=MAX_VALUE_SIZE_LIMIT).contains(&self.max_value_size) {
            return Err(Error::config(
                "extra_config.max_value_size",
                self.max_value_size,
                format!(
                    "must be between 1 and {MAX_VALUE_SIZE_LIMIT} (LMCache metadata stores lengths as 32-bit integers)"
                ),
            ));
        }
        if !self.tls {
            if let Some(ca) = &self.tls_ca_file {
                return Err(Error::config(
                    "extra_config.tls_ca_file",
                    ca.display(),
                    "set, but TLS is off (use rediss:// or use_tls: true)",
                ));
            }
            if self.tls_insecure {
                return Err(Error::config(
                    "extra_config.tls_insecure",
                    true,
                    "set, but TLS is off (use rediss:// or use_tls: true)",
                ));
            }
        }
        if let (Some(user), None) = (&self.username, &self.password) {
            return Err(Error::config(
                "extra_config.redis_username",
                user,
                "a user name needs a password (Redis AUTH takes both)",
            ));
        }
        if self.client_name.is_empty() || !self.client_name.bytes().all(|b| b.is_ascii_graphic()) {
            // CLIENT SETNAME rejects spaces and control characters; fail here, not at
            // connect time on every connection.
            return Err(Error::config(
                "extra_config.client_name",
                &self.client_name,
                "must be non-empty printable ASCII without spaces",
            ));
        }
        for class in Priority::ALL {
            let w = self.priority_weights.of(class);
            if !(1..=MAX_PRIORITY_WEIGHT).contains(&w) {
                return Err(Error::config(
                    &format!("{PRIORITY_WEIGHTS_KEY}.{class}"),
                    w,
                    format!("must be between 1 and {MAX_PRIORITY_WEIGHT} (a class with weight 0 would starve)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_cores(&self) -> Result<()> {
        if let (Some(cores), Some(shards)) = (&self.cores, self.shards) {
            return Err(Error::config(
                "extra_config.cores",
                format!("{cores:?} and {shards} shards"),
                "give either a shard count or a CPU list, not both",
            ));
        }
        if let Some(n) = self.shards {
            if !(1..=MAX_CPU).contains(&n) {
                return Err(Error::config(
                    "extra_config.cores",
                    n,
                    format!("shard count must be between 1 and {MAX_CPU}"),
                ));
            }
        }
        if let Some(cores) = &self.cores {
            if cores.is_empty() {
                return Err(Error::config(
                    "extra_config.cores",
                    "[]",
                    "the CPU list is empty",
                ));
            }
            let mut seen = [false; MAX_CPU];
            for &c in cores {
                let Some(slot) = seen.get_mut(c) else {
                    return Err(Error::config(
                        "extra_config.cores",
                        format!("{cores:?}"),
                        format!(
                            "CPU {c} is out of range (CPUs 0 to {} can be pinned)",
                            MAX_CPU - 1
                        ),
                    ));
                };
                if *slot {
                    return Err(Error::config(
                        "extra_config.cores",
                        format!("{cores:?}"),
                        format!("CPU {c} is listed twice"),
                    ));
                }
                *slot = true;
            }
        }
        Ok(())
    }
}

/// The pieces of a Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// `Some(Cluster)` for `redis-cluster://`; `None` when the URL does not say.
    pub mode: Option<Mode>,
    /// Every address listed, in order.
    pub seeds: Vec<ServerAddr>,
    /// `rediss://`.
    pub tls: bool,
    /// Percent-decoded user name; `None` if absent or empty.
    pub username: Option<String>,
    /// Percent-decoded password; `None` if absent or empty.
    pub password: Option<String>,
    /// Database from the path (`/N`) or `?db=N`.
    pub database: Option<u32>,
}

impl fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedUrl")
            .field("mode", &self.mode)
            .field("seeds", &self.seeds)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("database", &self.database)
            .finish()
    }
}

/// Parses a Redis URL as LMCache and the enhanced connector accept them.
///
/// Forms: `redis://[user:pass@]host[:port][/db]`, `rediss://...` (TLS),
/// `redis://h1:p1,h2:p2` (several seeds), `redis-cluster://h1:p1,h2:p2`,
/// `unix:///path/to.sock[?db=N]` (also `redis+unix://`), IPv6 as `[::1]:6379`.
/// The query may carry `db`, `username` and `password`. Errors are [`Error::Url`] with
/// the password masked.
///
/// ```
/// use slotline::config::{parse_url, Mode, ServerAddr};
/// let p = parse_url("redis-cluster://a:7000,b:7001").unwrap();
/// assert_eq!(p.mode, Some(Mode::Cluster));
/// assert_eq!(p.seeds[1], ServerAddr::Tcp { host: "b".into(), port: 7001 });
/// let e = parse_url("redis://u:hunter2@host:0").unwrap_err().to_string();
/// assert!(e.contains("u:***@host") && !e.contains("hunter2"));
/// ```
pub fn parse_url(url: &str) -> Result<ParsedUrl> {
    let fail = |reason: String| Error::Url {
        url: mask_url(url),
        reason,
    };
    if url.is_empty() {
        return Err(fail("empty URL".to_string()));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(fail("URL contains whitespace".to_string()));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail(
            "missing scheme; expected redis://, rediss://, redis-cluster:// or unix://".to_string(),
        ));
    };
    let (tls, mode, unix) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, None, false),
        "rediss" => (true, None, false),
        "redis-cluster" => (false, Some(Mode::Cluster), false),
        "unix" | "redis+unix" => (false, None, true),
        "redis-sentinel" | "redis+sentinel" | "rediss-sentinel" => {
            return Err(fail(
                "Redis Sentinel is not supported yet; point the URL at the master (redis://host:port) or use a cluster"
                    .to_string(),
            ));
        }
        _ => {
            return Err(fail(format!(
                "unknown scheme {scheme:?}; expected redis://, rediss://, redis-cluster:// or unix://"
            )));
        }
    };

    // Standard URL structure: the authority ends at the first '/' or '?', and the
    // user info is split off at the last '@' inside it (a password with '/' or '?' must
    // be percent-encoded).
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(auth_end);
    let (path, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (after, None),
    };
    if !unix && path.contains('@') {
        // Most likely a password with an unencoded '/' or '?': echoing the pieces
        // would leak it.
        return Err(fail(
            "unexpected '@' after the host; percent-encode '/', '?' and '@' in the user name and password (%2F, %3F, %40)"
                .to_string(),
        ));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };

    let mut username = None;
    let mut password = None;
    if let Some(ui) = userinfo {
        let (user, pass) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        username = decode_text(user).map_err(|r| fail(format!("user name: {r}")))?;
        if let Some(p) = pass {
            password = decode_text(p).map_err(|r| fail(format!("password: {r}")))?;
        }
    }

    let mut database = None;
    let seeds = if unix {
        if !hosts.is_empty() && !hosts.eq_ignore_ascii_case("localhost") {
            // The "host" is not echoed: with an unencoded '/' in a password it holds
            // part of the password.
            return Err(fail(
                "a unix:// URL takes no host; write unix:///path/to.sock".to_string(),
            ));
        }
        if path.is_empty() || path == "/" {
            return Err(fail(
                "missing socket path; write unix:///path/to.sock".to_string(),
            ));
        }
        let bytes = percent_decode(path).map_err(|r| fail(format!("socket path: {r}")))?;
        vec![ServerAddr::Unix {
            path: PathBuf::from(std::ffi::OsString::from_vec(bytes)),
        }]
    } else {
        if hosts.is_empty() {
            return Err(fail("missing host".to_string()));
        }
        let seeds = hosts
            .split(',')
            .map(parse_seed)
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(fail)?;
        let db_text = path.strip_prefix('/').unwrap_or(path);
        if !db_text.is_empty() {
            database = Some(parse_db(db_text).map_err(fail)?);
        }
        seeds
    };

    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "db" => {
                    let db = parse_db(v).map_err(fail)?;
                    if database.is_some_and(|d| d != db) {
                        return Err(fail(format!(
                            "database given twice: in the path and as db={v}"
                        )));
                    }
                    database = Some(db);
                }
                "username" | "user" => {
                    let u = decode_text(v).map_err(|r| fail(format!("user name: {r}")))?;
                    if username.is_some() && u.is_some() && username != u {
                        return Err(fail(
                            "user name given twice, with different values".to_string(),
                        ));
                    }
                    username = username.or(u);
                }
                "password" => {
                    let p = decode_text(v).map_err(|r| fail(format!("password: {r}")))?;
                    if password.is_some() && p.is_some() && password != p {
                        return Err(fail(
                            "password given twice, with different values".to_string(),
                        ));
                    }
                    password = password.or(p);
                }
                _ if k.contains(['@', ':']) => {
                    return Err(fail(
                        "unexpected '@' or ':' in the query; percent-encode '?' and '@' in the user name and password (%3F, %40)"
                            .to_string(),
                    ));
                }
                _ => {
                    return Err(fail(format!(
                        "unknown URL parameter {k:?}; supported: db, username, password"
                    )));
                }
            }
        }
    }

    Ok(ParsedUrl {
        mode,
        seeds,
        tls,
        username,
        password,
        database,
    })
}

/// One `host[:port]` or `[v6][:port]` entry of a seed list.
fn parse_seed(s: &str) -> std::result::Result<ServerAddr, String> {
    if s.is_empty() {
        return Err("empty host in the server list".to_string());
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(format!("{s:?}: missing ']' after the IPv6 address"));
        };
        // A zone suffix (fe80::1%eth0) is legal for link-local addresses.
        let addr = v6.split('%').next().unwrap_or(v6);
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("{s:?}: expected ':port' after ']'")),
            },
        };
        (v6, port)
    } else {
        if s.matches(':').count() > 1 {
            return Err(format!(
                "{s:?}: an IPv6 address must be written in brackets, e.g. [::1]:6379"
            ));
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(format!(
                "host {host:?} contains the invalid character {bad:?}"
            ));
        }
        (host, port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => parse_port(p)?,
    };
    Ok(ServerAddr::Tcp {
        host: host.to_string(),
        port,
    })
}

fn parse_port(p: &str) -> std::result::Result<u16, String> {
    if p.is_empty() {
        return Err("empty port".to_string());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number"));
    }
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 is not a valid port".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("port {p} is out of range (1-65535)")),
    }
}

fn parse_db(s: &str) -> std::result::Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("database {s:?} is not a number"));
    }
    s.parse::<u32>()
        .map_err(|_| format!("database {s} is out of range"))
}

/// Percent-decodes URL text; `None` for the empty string, as redis-py does.
fn decode_text(s: &str) -> std::result::Result<Option<String>, String> {
    let bytes = percent_decode(s)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| "not valid UTF-8 after percent-decoding".to_string())?;
    Ok(if text.is_empty() { None } else { Some(text) })
}

fn percent_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    // Two hex digits are at most 0xFF, so the cast is exact.
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                // The escaped text is not echoed: it may be part of a password.
                _ => return Err("invalid percent-escape (expected %XX)".to_string()),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `url` with its password replaced by `***`, for error messages and logs.
///
/// Deliberately over-masks: everything from the first ':' after the scheme up to the
/// last '@' is hidden, so even a malformed URL with an unencoded '/' or '?' in the
/// password never leaks it; `password=` query values are hidden too.
///
/// ```
/// use slotline::config::mask_url;
/// assert_eq!(mask_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
/// assert_eq!(mask_url("redis://h:1"), "redis://h:1");
/// ```
pub fn mask_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let mut out = match url[start..].rfind('@') {
        Some(at) => {
            let userinfo = &url[start..start + at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{MASK}{}", &url[..start + colon + 1], &url[start + at..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

/// slotline's own settings, as read from YAML; `None` means "not given".
#[derive(Default)]
struct Settings {
    mode: Option<Mode>,
    database: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    use_tls: Option<bool>,
    tls_insecure: Option<bool>,
    tls_ca_file: Option<PathBuf>,
    chunk_size: Option<usize>,
    max_connections: Option<usize>,
    cores: Option<Vec<usize>>,
    shards: Option<usize>,
    io_backend: Option<IoBackend>,
    key_layout: Option<KeyLayout>,
    ttl: Option<u64>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    lane_capacity: Option<usize>,
    max_inflight_bytes: Option<usize>,
    max_value_size: Option<usize>,
    read_from_replicas: Option<bool>,
    client_name: Option<String>,
    priority_weights: Option<PriorityWeights>,
}

/// Merges a parsed URL with explicit settings and validates the result.
fn build(url: ParsedUrl, s: Settings) -> Result<Config> {
    let mode = match (url.mode, s.mode) {
        (Some(Mode::Cluster), Some(Mode::Standalone)) => {
            return Err(Error::config(
                "extra_config.redis_mode",
                Mode::Standalone,
                "conflicts with the redis-cluster:// URL",
            ));
        }
        (_, Some(m)) | (Some(m), None) => m,
        // Only the enhanced connector writes several seeds in a redis:// URL, and for
        // it they are always cluster seeds.
        (None, None) if url.seeds.len() > 1 => Mode::Cluster,
        (None, None) => Mode::Standalone,
    };
    if mode == Mode::Standalone && url.seeds.len() > 1 {
        return Err(Error::config(
            "extra_config.redis_mode",
            Mode::Standalone,
            format!(
                "the URL lists {} servers; standalone mode needs exactly one (use redis_mode: cluster for cluster seeds)",
                url.seeds.len()
            ),
        ));
    }
    let tcp_seeds = url
        .seeds
        .iter()
        .all(|a| matches!(a, ServerAddr::Tcp { .. }));
    // redis-cluster:// is LMCache's own cluster connector (plain layout); redis://
    // seeds in cluster mode are the enhanced connector's, which uses hash tags.
    let default_layout = if mode == Mode::Cluster && url.mode.is_none() && tcp_seeds {
        KeyLayout::Hashtag
    } else {
        KeyLayout::Lmcache
    };

    let username = merge_secretless("extra_config.redis_username", url.username, s.username)?;
    let password = match (url.password, s.password) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::config(
                "extra_config.redis_password",
                MASK,
                "differs from the password in the URL; give it once",
            ));
        }
        (a, b) => a.or(b),
    };
    let database = match (url.database, s.database) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::config(
                "extra_config.redis_database",
                b,
                format!("differs from database {a} in the URL"),
            ));
        }
        (a, b) => a.or(b).unwrap_or(0),
    };

    let d = Config::default();
    let cfg = Config {
        mode,
        seeds: url.seeds,
        tls: url.tls || s.use_tls.unwrap_or(false),
        tls_insecure: s.tls_insecure.unwrap_or(d.tls_insecure),
        tls_ca_file: s.tls_ca_file,
        username,
        password,
        database,
        chunk_size: s.chunk_size.unwrap_or(d.chunk_size),
        max_connections: s.max_connections.unwrap_or(d.max_connections),
        cores: s.cores,
        shards: s.shards,
        io_backend: s.io_backend.unwrap_or(d.io_backend),
        key_layout: s.key_layout.unwrap_or(default_layout),
        ttl: s.ttl,
        connect_timeout: s
            .connect_timeout_ms
            .map_or(d.connect_timeout, Duration::from_millis),
        request_timeout: s
            .request_timeout_ms
            .map_or(d.request_timeout, Duration::from_millis),
        lane_capacity: s.lane_capacity.unwrap_or(d.lane_capacity),
        max_inflight_bytes: s.max_inflight_bytes.unwrap_or(d.max_inflight_bytes),
        max_value_size: s.max_value_size.unwrap_or(d.max_value_size),
        read_from_replicas: s.read_from_replicas.unwrap_or(d.read_from_replicas),
        client_name: s.client_name.unwrap_or(d.client_name),
        priority_weights: s.priority_weights.unwrap_or(d.priority_weights),
    };
    cfg.validate()?;
    Ok(cfg)
}

fn merge_secretless(
    key: &str,
    from_url: Option<String>,
    given: Option<String>,
) -> Result<Option<String>> {
    match (from_url, given) {
        (Some(a), Some(b)) if a != b => Err(Error::config(
            key,
            b,
            format!("differs from the user name {a:?} in the URL; give it once"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// The URL keys slotline reads from `extra_config`, in order of preference.
const EXTRA_URL_KEYS: [&str; 3] = ["url", "remote_url", "remote_storage_plugin.slotline.url"];

/// Plugin settings LMCache itself reads; anything else under this prefix is a typo.
const PLUGIN_PREFIX: &str = "remote_storage_plugin.slotline.";
const PLUGIN_KEYS: [&str; 3] = ["module_path", "class_name", "url"];

/// `from_yaml_str` with the environment TTL passed in, so tests need not mutate the
/// process environment.
fn from_yaml_with_env(text: &str, env_ttl: Option<String>) -> Result<Config> {
    // The text may hold a password, so only its size appears in errors.
    let yaml_err = |reason: String| Error::config("yaml", format!("{} bytes", text.len()), reason);
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| yaml_err(e.to_string()))?;
    doc.apply_merge().map_err(|e| yaml_err(e.to_string()))?;
    let empty = Mapping::new();
    let top = match untag(&doc) {
        Value::Null => &empty,
        Value::Mapping(m) => m,
        other => {
            return Err(yaml_err(format!(
                "expected a mapping of settings at the top level, found {}",
                kind(other)
            )));
        }
    };
    let top = Section {
        map: top,
        prefix: "",
    };
    let extra_map = match top.get("extra_config") {
        None => &empty,
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            return Err(Error::config(
                "extra_config",
                render(other),
                format!("expected a mapping, found {}", kind(other)),
            ));
        }
    };
    let extra = Section {
        map: extra_map,
        prefix: "extra_config.",
    };
    warn_unknown_plugin_keys(extra_map);

    let url = choose_url(&top, &extra)?;
    let parsed = parse_url(&url)?;

    let ttl = match (extra.ttl("ttl")?, top.ttl("remote_ttl")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::config(
                "extra_config.ttl",
                a,
                format!("differs from remote_ttl = {b}; give it once"),
            ));
        }
        (Some(a), _) | (None, Some(a)) => Some(a),
        (None, None) => match env_ttl.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(parse_ttl(TTL_ENV, v)?),
        },
    };

    let (cores, shards) = match extra.get("cores") {
        None => (None, None),
        Some(v) => parse_cores(v)?,
    };

    let settings = Settings {
        mode: extra.parsed("redis_mode")?,
        database: extra.int("redis_database")?,
        username: extra
            .text("redis_username", false)?
            .filter(|s| !s.is_empty()),
        password: extra
            .text("redis_password", true)?
            .filter(|s| !s.is_empty()),
        use_tls: extra.boolean("use_tls")?,
        tls_insecure: extra.boolean("tls_insecure")?,
        tls_ca_file: extra
            .text("tls_ca_file", false)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        chunk_size: extra.int("chunk_size")?,
        max_connections: extra.int("max_connections")?,
        cores,
        shards,
        io_backend: extra.parsed("io_backend")?,
        key_layout: extra.parsed("key_layout")?,
        ttl,
        connect_timeout_ms: extra.int("connect_timeout_ms")?,
        request_timeout_ms: extra.int("request_timeout_ms")?,
        lane_capacity: extra.int("lane_capacity")?,
        max_inflight_bytes: extra.int("max_inflight_bytes")?,
        max_value_size: extra.int("max_value_size")?,
        read_from_replicas: extra.boolean("read_from_replicas")?,
        client_name: extra.text("client_name", false)?,
        priority_weights: extra
            .get("priority_weights")
            .map(parse_priority_weights)
            .transpose()?,
    };
    build(parsed, settings)
}

fn choose_url(top: &Section<'_>, extra: &Section<'_>) -> Result<String> {
    let mut own: Option<(&str, String)> = None;
    for key in EXTRA_URL_KEYS {
        let Some(url) = extra.text(key, false)?.filter(|u| !u.is_empty()) else {
            continue;
        };
        match &own {
            Some((first, seen)) if *seen != url => {
                return Err(Error::config(
                    &format!("extra_config.{key}"),
                    mask_url(&url),
                    format!(
                        "differs from extra_config.{first} = {:?}; give the URL once",
                        mask_url(seen)
                    ),
                ));
            }
            Some(_) => {}
            None => own = Some((key, url)),
        }
    }
    let lmcache_url = top.text("remote_url", false)?.filter(|u| !u.is_empty());
    match (own, lmcache_url) {
        (Some((key, url)), Some(remote)) => {
            if url == remote {
                tracing::warn!(
                    url = %mask_url(&url),
                    "remote_url and extra_config.{key} name the same server: LMCache will also \
                     create its own remote backend and every chunk will be written twice; \
                     drop remote_url when slotline runs as a plugin"
                );
            } else {
                tracing::info!(
                    slotline = %mask_url(&url),
                    remote_url = %mask_url(&remote),
                    "using extra_config.{key}; remote_url belongs to LMCache's own backend"
                );
            }
            Ok(url)
        }
        (Some((_, url)), None) | (None, Some(url)) => Ok(url),
        (None, None) => Err(Error::config(
            "remote_url",
            "",
            "no Redis URL: set remote_url, or extra_config.url when slotline runs as a plugin",
        )),
    }
}

fn warn_unknown_plugin_keys(extra: &Mapping) {
    for key in extra.keys().filter_map(Value::as_str) {
        if let Some(name) = key.strip_prefix(PLUGIN_PREFIX) {
            if !PLUGIN_KEYS.contains(&name) {
                tracing::warn!(
                    key,
                    "ignored: slotline reads its settings from plain extra_config keys \
                     (e.g. extra_config.{name})"
                );
            }
        }
    }
}

/// `extra_config.cores`: a shard count, a CPU list, or a range string such as "0-3,6".
fn parse_cores(v: &Value) -> Result<(Option<Vec<usize>>, Option<usize>)> {
    const KEY: &str = "extra_config.cores";
    let bad = |reason: &str| Error::config(KEY, render(v), reason);
    match untag(v) {
        Value::Number(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok((None, Some(n))),
            None => Err(bad(
                "expected a shard count, a CPU list or a range string like \"0-3,6\"",
            )),
        },
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                let n = t
                    .parse::<usize>()
                    .map_err(|_| bad("shard count out of range"))?;
                return Ok((None, Some(n)));
            }
            Ok((Some(parse_cpu_list(t).map_err(|r| bad(&r))?), None))
        }
        Value::Sequence(items) => {
            let mut cores = Vec::with_capacity(items.len());
            for item in items {
                let n = match untag(item) {
                    Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
                    Value::String(s) => s.trim().parse::<usize>().ok(),
                    _ => None,
                };
                match n {
                    Some(n) => cores.push(n),
                    None => {
                        return Err(bad(&format!(
                            "list entry {} is not a CPU number",
                            render(item)
                        )));
                    }
                }
            }
            Ok((Some(cores), None))
        }
        _ => Err(bad(
            "expected a shard count, a CPU list or a range string like \"0-3,6\"",
        )),
    }
}

const PRIORITY_WEIGHTS_KEY: &str = "extra_config.priority_weights";

/// `extra_config.priority_weights`: a mapping of class name to weight, such as
/// `{peek: 8, prefetch: 4, get: 2, put: 1}`; classes not named keep their default.
fn parse_priority_weights(v: &Value) -> Result<PriorityWeights> {
    let Value::Mapping(map) = untag(v) else {
        return Err(Error::config(
            PRIORITY_WEIGHTS_KEY,
            render(v),
            format!(
                "expected a mapping such as {}, found {}",
                PriorityWeights::default(),
                kind(v)
            ),
        ));
    };
    for key in map.keys() {
        let known = key
            .as_str()
            .is_some_and(|k| Priority::ALL.iter().any(|c| c.name() == k));
        if !known {
            return Err(Error::config(
                &format!("{PRIORITY_WEIGHTS_KEY}.{}", render(key)),
                render(map.get(key).unwrap_or(&Value::Null)),
                "unknown class (expected peek, prefetch, get or put)",
            ));
        }
    }
    let section = Section {
        map,
        prefix: "extra_config.priority_weights.",
    };
    let mut weights = PriorityWeights::default();
    for class in Priority::ALL {
        match section.int::<u32>(class.name())? {
            None => {}
            Some(0) => {
                return Err(Error::config(
                    &section.name(class.name()),
                    0,
                    "must be at least 1 (a class with weight 0 would starve)",
                ));
            }
            Some(w) => *weights.of_mut(class) = w,
        }
    }
    Ok(weights)
}

/// Parses "0-3,6" into [0, 1, 2, 3, 6].
fn parse_cpu_list(s: &str) -> std::result::Result<Vec<usize>, String> {
    let num = |t: &str| -> std::result::Result<usize, String> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{t:?} is not a CPU number"));
        }
        t.parse::<usize>()
            .map_err(|_| format!("CPU {t} is out of range"))
    };
    let mut cores = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {a}-{b} runs backwards"));
                }
                // Bounded before expanding so "0-99999999999" cannot exhaust memory.
                if b >= MAX_CPU {
                    return Err(format!(
                        "CPU {b} is out of range (CPUs 0 to {} can be pinned)",
                        MAX_CPU - 1
                    ));
                }
                cores.extend(a..=b);
            }
            None => cores.push(num(part)?),
        }
    }
    Ok(cores)
}

fn parse_ttl(key: &str, text: &str) -> Result<u64> {
    match parse_integer(text) {
        Some(n) if n > 0 => {
            u64::try_from(n).map_err(|_| Error::config(key, text, "TTL is out of range"))
        }
        _ => Err(Error::config(
            key,
            text,
            "must be a positive integer number of seconds",
        )),
    }
}

/// A decimal integer with an optional sign. '_' between digits is allowed because
/// PyYAML, which LMCache uses, reads `4_194_304` as an integer.
fn parse_integer(s: &str) -> Option<i128> {
    let t = s.trim();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let b = digits.as_bytes();
    let well_formed = b.first().is_some_and(u8::is_ascii_digit)
        && b.last().is_some_and(u8::is_ascii_digit)
        && b.iter().all(|&c| c.is_ascii_digit() || c == b'_');
    if !well_formed {
        return None;
    }
    let n: i128 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -n } else { n })
}

/// One mapping of the YAML document, with typed, error-naming accessors.
struct Section<'a> {
    map: &'a Mapping,
    prefix: &'static str,
}

impl<'a> Section<'a> {
    /// The value of `key`, untagged; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).map(untag).filter(|v| !v.is_null())
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn shown(&self, v: &Value, secret: bool) -> String {
        if secret {
            MASK.to_string()
        } else {
            render(v)
        }
    }

    /// A string; numbers are accepted as their decimal text (unquoted numeric
    /// passwords are common in YAML).
    fn text(&self, key: &str, secret: bool) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(Error::config(
                &self.name(key),
                self.shown(other, secret),
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    /// `true`/`false`, also as strings in any ASCII case. `yes`/`no`/`on`/`off` are
    /// accepted too because LMCache loads its YAML with PyYAML (YAML 1.1), where they
    /// are booleans, while serde_yaml (YAML 1.2) hands them over as strings.
    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        let word =
            |s: &str, words: [&str; 3]| words.iter().any(|w| s.trim().eq_ignore_ascii_case(w));
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if word(s, ["true", "yes", "on"]) => Ok(Some(true)),
            Some(Value::String(s)) if word(s, ["false", "no", "off"]) => Ok(Some(false)),
            Some(other) => Err(Error::config(
                &self.name(key),
                render(other),
                "expected true or false",
            )),
        }
    }

    /// A non-negative integer, also as a string ("256").
    fn int<T: TryFrom<i128>>(&self, key: &str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from)),
            Value::String(s) => parse_integer(s),
            _ => None,
        };
        let Some(n) = n else {
            return Err(Error::config(
                &self.name(key),
                render(v),
                "expected a non-negative integer",
            ));
        };
        if n < 0 {
            return Err(Error::config(&self.name(key), n, "must not be negative"));
        }
        T::try_from(n)
            .map(Some)
            .map_err(|_| Error::config(&self.name(key), n, "is too large"))
    }

    /// A positive number of seconds.
    fn ttl(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ (Value::Number(_) | Value::String(_))) => {
                parse_ttl(&self.name(key), &render(v)).map(Some)
            }
            Some(other) => Err(Error::config(
                &self.name(key),
                render(other),
                "must be a positive integer number of seconds",
            )),
        }
    }

    /// A string parsed with `FromStr`; errors are re-keyed to the full YAML path.
    fn parsed<T: FromStr<Err = Error>>(&self, key: &str) -> Result<Option<T>> {
        let Some(text) = self.text(key, false)? else {
            return Ok(None);
        };
        text.parse::<T>().map(Some).map_err(|e| match e {
            Error::Config { value, reason, .. } => Error::Config {
                key: self.name(key),
                value,
                reason,
            },
            other => other,
        })
    }
}

fn untag(v: &Value) -> &Value {
    let mut cur = v;
    while let Value::Tagged(t) = cur {
        cur = &t.value;
    }
    cur
}

fn kind(v: &Value) -> &'static str {
    match untag(v) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A short rendering of a YAML value for error messages.
fn render(v: &Value) -> String {
    match untag(v) {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            let inner: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Mapping(_) => "{...}".to_string(),
        Value::Tagged(_) => "!tagged".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: host.to_string(),
            port,
        }
    }

    fn yaml(text: &str) -> Result<Config> {
        from_yaml_with_env(text, None)
    }

    /// Asserts that `r` failed and its message names every needle.
    #[track_caller]
    fn err_names<T: fmt::Debug>(r: Result<T>, needles: &[&str]) -> Error {
        let e = r.expect_err("expected an error");
        let msg = e.to_string();
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
        }
        e
    }

    #[track_caller]
    fn url_err(url: &str, reason_part: &str) {
        let e = parse_url(url).expect_err(url);
        match &e {
            Error::Url { reason, .. } => {
                assert!(
                    reason.contains(reason_part),
                    "{url}: reason {reason:?} lacks {reason_part:?}"
                )
            }
            other => panic!("{url}: expected Error::Url, got {other:?}"),
        }
    }

    // --- URLs ---

    #[test]
    fn url_forms() {
        let p = parse_url("redis://localhost:6379").unwrap();
        assert_eq!(p.seeds, vec![tcp("localhost", 6379)]);
        assert_eq!((p.mode, p.tls, p.database), (None, false, None));
        assert_eq!((p.username, p.password), (None, None));

        assert_eq!(
            parse_url("redis://cache").unwrap().seeds,
            vec![tcp("cache", 6379)]
        );
        assert_eq!(
            parse_url("REDIS://cache/").unwrap().seeds,
            vec![tcp("cache", 6379)]
        );

        let p = parse_url("redis://alice:s3cr%40t@db.example.com:6380/3").unwrap();
        assert_eq!(p.username.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("s3cr@t"));
        assert_eq!(p.database, Some(3));
        assert_eq!(p.seeds, vec![tcp("db.example.com", 6380)]);

        let p = parse_url("redis://:pw@host").unwrap();
        assert_eq!((p.username, p.password.as_deref()), (None, Some("pw")));
        let p = parse_url("redis://onlyuser@host").unwrap();
        assert_eq!(
            (p.username.as_deref(), p.password),
            (Some("onlyuser"), None)
        );
        // An unencoded '@' in the password still works: the last '@' ends user info.
        let p = parse_url("redis://u:p@ss@host").unwrap();
        assert_eq!(p.password.as_deref(), Some("p@ss"));

        let p = parse_url("rediss://u:p@redis-123.cloud.example:16379").unwrap();
        assert!(p.tls);
        assert_eq!(p.seeds, vec![tcp("redis-123.cloud.example", 16379)]);

        let p = parse_url("redis://localhost:7000,localhost:7001,localhost:7002").unwrap();
        assert_eq!(p.mode, None);
        assert_eq!(
            p.seeds,
            vec![
                tcp("localhost", 7000),
                tcp("localhost", 7001),
                tcp("localhost", 7002)
            ]
        );

        let p = parse_url("redis-cluster://h1:7000,h2:7001").unwrap();
        assert_eq!(p.mode, Some(Mode::Cluster));
        assert_eq!(p.seeds, vec![tcp("h1", 7000), tcp("h2", 7001)]);

        let p = parse_url("unix:///var/run/redis/redis.sock").unwrap();
        assert_eq!(
            p.seeds,
            vec![ServerAddr::Unix {
                path: "/var/run/redis/redis.sock".into()
            }]
        );
        let p = parse_url("unix:///tmp/r.sock?db=2").unwrap();
        assert_eq!(p.database, Some(2));
        assert_eq!(
            p.seeds,
            vec![ServerAddr::Unix {
                path: "/tmp/r.sock".into()
            }]
        );
        let p = parse_url("redis+unix:///tmp/r%20s.sock").unwrap();
        assert_eq!(
            p.seeds,
            vec![ServerAddr::Unix {
                path: "/tmp/r s.sock".into()
            }]
        );
        let p = parse_url("unix://:pw@/tmp/r.sock?db=1").unwrap();
        assert_eq!(p.password.as_deref(), Some("pw"));
        let p = parse_url("unix:///tmp/r.sock?password=pw&username=bob").unwrap();
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.username.as_deref(), Some("bob"));

        let p = parse_url("redis://[::1]:6379").unwrap();
        assert_eq!(p.seeds, vec![tcp("::1", 6379)]);
        assert_eq!(p.seeds[0].to_string(), "[::1]:6379");
        assert_eq!(
            parse_url("redis://[fe80::1%eth0]").unwrap().seeds,
            vec![tcp("fe80::1%eth0", 6379)]
        );
        assert_eq!(
            parse_url("redis://10.0.0.5:7001").unwrap().seeds[0].to_string(),
            "10.0.0.5:7001"
        );
        assert_eq!(parse_url("redis://h/0?db=0").unwrap().database, Some(0));
    }

    #[test]
    fn url_errors() {
        url_err("", "empty URL");
        url_err("redis://host :6379", "whitespace");
        url_err(" redis://host", "whitespace");
        url_err("localhost:6379", "missing scheme");
        url_err("http://host", "unknown scheme \"http\"");
        url_err("lm://localhost:65432", "unknown scheme");
        url_err(
            "redis-sentinel://h1:26379,h2:26379",
            "Sentinel is not supported",
        );
        url_err("redis://", "missing host");
        url_err("redis://:6379", "empty host");
        url_err("redis://u:p@", "missing host");
        url_err("redis://h1:1,,h2:2", "empty host in the server list");
        url_err("redis://h1:1,", "empty host in the server list");
        url_err("redis://host:0", "port 0");
        url_err("redis://host:", "empty port");
        url_err("redis://host:abc", "port \"abc\" is not a number");
        url_err("redis://host:-1", "not a number");
        url_err("redis://host:65536", "out of range");
        url_err("redis://host:99999999999999999999", "out of range");
        url_err("redis://host/abc", "database \"abc\" is not a number");
        url_err("redis://host/1/2", "is not a number");
        url_err("redis://host/99999999999", "out of range");
        url_err("redis://host/1?db=2", "database given twice");
        url_err("redis://host?db=x", "is not a number");
        url_err(
            "redis://host?timeout=3",
            "unknown URL parameter \"timeout\"",
        );
        url_err("redis://::1:6379", "brackets");
        url_err("redis://[::1", "missing ']'");
        url_err("redis://[nothex]:1", "is not an IPv6 address");
        url_err("redis://[::1]x", "expected ':port'");
        url_err("redis://ho$t:1", "invalid character");
        url_err("redis://u:%zz@host", "password: invalid percent-escape");
        url_err("redis://%ff@host", "not valid UTF-8");
        url_err("unix://", "missing socket path");
        url_err("unix:///", "missing socket path");
        url_err("unix://somehost/tmp/x.sock", "takes no host");
    }

    #[test]
    fn url_errors_mask_password() {
        for url in [
            "redis://user:hunter2@host:0",
            "redis://user:hunter2@host:abc/x",
            "redis://:hunter2@",
            "redis://u:hun/ter2@host",
            "redis://u:hun?ter2@host",
            "unix://u:hun/ter2@/tmp/s",
            "redis://u:hunter2@host?password=hunter2&db=x",
            "unix:///tmp/s?password=hunter2&bogus=1",
            "redis-sentinel://u:hunter2@h:1",
        ] {
            let e = parse_url(url).expect_err(url);
            let msg = e.to_string();
            assert!(!msg.contains("hunter2"), "{msg}");
            assert!(msg.contains("***"), "{msg}");
        }
        assert_eq!(mask_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(mask_url("redis://u@h"), "redis://u@h");
        assert_eq!(
            mask_url("redis://h:1?password=x&db=1"),
            "redis://h:1?password=***&db=1"
        );
        assert_eq!(mask_url("no scheme:pw@h"), "no scheme:***@h");
    }

    #[test]
    fn server_addr_display() {
        assert_eq!(tcp("localhost", 6379).to_string(), "localhost:6379");
        assert_eq!(tcp("::1", 7000).to_string(), "[::1]:7000");
        assert_eq!(
            ServerAddr::Unix {
                path: "/tmp/r.sock".into()
            }
            .to_string(),
            "unix:/tmp/r.sock"
        );
    }

    #[test]
    fn enums_parse() {
        assert_eq!("Standalone".parse::<Mode>().unwrap(), Mode::Standalone);
        assert_eq!("CLUSTER".parse::<Mode>().unwrap(), Mode::Cluster);
        err_names("sentinel".parse::<Mode>(), &["redis_mode", "sentinel"]);
        for (s, b) in [
            ("auto", IoBackend::Auto),
            ("io_uring", IoBackend::IoUring),
            ("iouring", IoBackend::IoUring),
            ("URING", IoBackend::IoUring),
            ("epoll", IoBackend::Epoll),
            ("mio", IoBackend::Epoll),
        ] {
            assert_eq!(s.parse::<IoBackend>().unwrap(), b);
            assert_eq!(b.to_string().parse::<IoBackend>().unwrap(), b);
        }
        err_names("kqueue".parse::<IoBackend>(), &["io_backend", "kqueue"]);
    }

    // --- from_url ---

    #[test]
    fn from_url_defaults() {
        let c = Config::from_url("redis://localhost:6379").unwrap();
        let d = Config::default();
        assert_eq!(c.mode, Mode::Standalone);
        assert_eq!(c.seeds, vec![tcp("localhost", 6379)]);
        assert_eq!(c.key_layout, KeyLayout::Lmcache);
        assert_eq!(c.chunk_size, 256);
        assert_eq!(c.max_connections, 150);
        assert_eq!(c.connect_timeout, Duration::from_millis(2000));
        assert_eq!(c.request_timeout, Duration::from_millis(30000));
        assert_eq!(c.lane_capacity, 1024);
        assert_eq!(c.max_inflight_bytes, 4194304);
        assert_eq!(c.max_value_size, 512 << 20);
        assert_eq!(c.client_name, "slotline");
        assert_eq!(c.ttl, None);
        assert_eq!(
            Config {
                seeds: d.seeds.clone(),
                ..c
            },
            d
        );
        d.validate().unwrap();
        assert_eq!(d.seeds, vec![tcp("127.0.0.1", 6379)]);

        let c = Config::from_url("redis-cluster://h1:1,h2:2").unwrap();
        assert_eq!((c.mode, c.key_layout), (Mode::Cluster, KeyLayout::Lmcache));
        let c = Config::from_url("redis://h1:1,h2:2").unwrap();
        assert_eq!((c.mode, c.key_layout), (Mode::Cluster, KeyLayout::Hashtag));
        let c = Config::from_url("rediss://h1:1").unwrap();
        assert!(c.tls);
        let c = Config::from_url("unix:///tmp/r.sock?db=4").unwrap();
        assert_eq!(
            (c.mode, c.database, c.key_layout),
            (Mode::Standalone, 4, KeyLayout::Lmcache)
        );

        err_names(
            Config::from_url("redis-cluster://h1:1/2"),
            &["redis_database", "2", "database 0"],
        );
        err_names(
            Config::from_url("redis://bob@host"),
            &["redis_username", "bob", "password"],
        );
    }

    #[test]
    fn debug_masks_password() {
        let c = Config::from_url("redis://u:hunter2@h").unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && s.contains("***"), "{s}");
        let p = parse_url("redis://u:hunter2@h").unwrap();
        let s = format!("{p:?}");
        assert!(!s.contains("hunter2") && s.contains("***"), "{s}");
    }

    // --- YAML ---

    const SECTION8_STANDALONE: &str = r#"
remote_url: "redis://localhost:6379"            # or rediss://..., or
# remote_url: "redis://localhost:7000,localhost:7001,localhost:7002"  (cluster seeds)
remote_serde: "naive"
extra_config:
  redis_mode: "standalone"      # or "cluster"
  redis_database: 0
  chunk_size: 256               # keys per MGET
  max_connections: 150
  redis_username: ""
  redis_password: ""
  use_tls: false
"#;

    const SECTION8_CLUSTER: &str = r#"
remote_url: "redis://localhost:7000,localhost:7001,localhost:7002"
remote_serde: "naive"
extra_config:
  redis_mode: "cluster"
  redis_database: 0
  chunk_size: 256               # keys per MGET
  max_connections: 150
  redis_username: ""
  redis_password: ""
  use_tls: false
"#;

    #[test]
    fn section8_standalone() {
        let c = yaml(SECTION8_STANDALONE).unwrap();
        assert_eq!(c.mode, Mode::Standalone);
        assert_eq!(c.seeds, vec![tcp("localhost", 6379)]);
        assert_eq!(c.key_layout, KeyLayout::Lmcache);
        assert_eq!((c.database, c.chunk_size, c.max_connections), (0, 256, 150));
        assert_eq!((c.username, c.password, c.tls), (None, None, false));
    }

    #[test]
    fn section8_cluster() {
        let c = yaml(SECTION8_CLUSTER).unwrap();
        assert_eq!(c.mode, Mode::Cluster);
        assert_eq!(
            c.seeds,
            vec![
                tcp("localhost", 7000),
                tcp("localhost", 7001),
                tcp("localhost", 7002)
            ]
        );
        assert_eq!(c.key_layout, KeyLayout::Hashtag);
    }

    #[test]
    fn section8_variants() {
        let c =
            yaml(&SECTION8_STANDALONE.replace("redis://localhost", "rediss://localhost")).unwrap();
        assert!(c.tls, "rediss:// wins over use_tls: false");
        let c = yaml(&SECTION8_STANDALONE.replace("use_tls: false", "use_tls: true")).unwrap();
        assert!(c.tls);
        for word in ["\"True\"", "yes", "On", "TRUE"] {
            let c =
                yaml(&SECTION8_STANDALONE.replace("use_tls: false", &format!("use_tls: {word}")))
                    .unwrap();
            assert!(c.tls, "{word}");
        }
        for word in ["\"false\"", "no", "off", "False"] {
            let c =
                yaml(&SECTION8_STANDALONE.replace("use_tls: false", &format!("use_tls: {word}")))
                    .unwrap();
            assert!(!c.tls, "{word}");
        }
        let c =
            yaml(&SECTION8_STANDALONE.replace("max_connections: 150", "max_connections: 1_000"))
                .unwrap();
        assert_eq!(c.max_connections, 1000);
        let c =
            yaml(&SECTION8_STANDALONE.replace("max_connections: 150", "max_connections: \"+20\""))
                .unwrap();
        assert_eq!(c.max_connections, 20);
        let c = yaml(
            &SECTION8_STANDALONE
                .replace("redis_username: \"\"", "redis_username: \"app\"")
                .replace("redis_password: \"\"", "redis_password: 123456"),
        )
        .unwrap();
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("123456"));
        let c = yaml(&SECTION8_STANDALONE.replace("redis_database: 0", "redis_database: \"5\""))
            .unwrap();
        assert_eq!(c.database, 5);
        let c =
            yaml(&SECTION8_STANDALONE.replace("chunk_size: 256 ", "chunk_size: \"64\"")).unwrap();
        assert_eq!(c.chunk_size, 64);
    }

    #[test]
    fn full_lmcache_config_with_unrelated_keys() {
        let text = r#"
chunk_size: 512
local_cpu: true
max_local_cpu_size: 40.5
local_disk: null
max_local_disk_size: 0
remote_url: "redis-cluster://10.0.0.1:7000,10.0.0.2:7000"
remote_serde: "cachegen"
remote_ttl: 3600
save_decode_cache: false
enable_blending: false
blend_special_str: " # # "
use_layerwise: false
pd_role: null
nixl_buffer_size: 1073741824
remote_storage_plugins: []
lookup_server_worker_ids: [0, 1]
internal_api_server_port_start: 6999
extra_config:
  some_other_plugin.option: [1, 2, 3]
  save_chunk_meta: true
  chunk_size: "128"
  io_backend: epoll
  cores: "0-3,6"
  lane_capacity: 4096
  max_inflight_bytes: 8388608
  max_value_size: "67108864"
  read_from_replicas: "true"
  connect_timeout_ms: 500
  request_timeout_ms: "10000"
  client_name: vllm-worker-0
  tls_insecure: false
"#;
        let c = yaml(text).unwrap();
        assert_eq!(c.mode, Mode::Cluster);
        assert_eq!(c.key_layout, KeyLayout::Lmcache);
        assert_eq!(c.seeds, vec![tcp("10.0.0.1", 7000), tcp("10.0.0.2", 7000)]);
        assert_eq!(c.ttl, Some(3600));
        assert_eq!(
            c.chunk_size, 128,
            "top-level chunk_size is LMCache's, not ours"
        );
        assert_eq!(c.io_backend, IoBackend::Epoll);
        assert_eq!(c.cores, Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(c.shards, None);
        assert_eq!(c.lane_capacity, 4096);
        assert_eq!(c.max_inflight_bytes, 8388608);
        assert_eq!(c.max_value_size, 67108864);
        assert!(c.read_from_replicas);
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.client_name, "vllm-worker-0");
    }

    #[test]
    fn plugin_form() {
        let text = r#"
chunk_size: 256
remote_storage_plugins: ["slotline"]
extra_config:
  remote_storage_plugin.slotline.module_path: slotline_lmcache
  remote_storage_plugin.slotline.class_name: SlotlineConnector
  url: "redis://:pw@redis.internal:6379/1"
  key_layout: raw
  cores: 4
  ttl: "600"
"#;
        let c = yaml(text).unwrap();
        assert_eq!(c.seeds, vec![tcp("redis.internal", 6379)]);
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.database, 1);
        assert_eq!(c.key_layout, KeyLayout::Raw);
        assert_eq!((c.shards, c.cores.clone()), (Some(4), None));
        assert_eq!(c.ttl, Some(600));

        for key in ["remote_url", "\"remote_storage_plugin.slotline.url\""] {
            let t = format!(
                "remote_storage_plugins: [slotline]\nextra_config:\n  {key}: redis://h1:1,h2:2\n  redis_mode: cluster\n"
            );
            let c = yaml(&t).unwrap();
            assert_eq!(
                (c.mode, c.key_layout),
                (Mode::Cluster, KeyLayout::Hashtag),
                "{key}"
            );
        }

        // slotline's own URL wins over LMCache's remote_url (which may name another backend).
        let t = "remote_url: lm://localhost:65432\nextra_config:\n  url: redis://a:1\n";
        assert_eq!(yaml(t).unwrap().seeds, vec![tcp("a", 1)]);
        let t = "remote_url: redis://a:1\nextra_config:\n  url: redis://a:1\n";
        assert_eq!(yaml(t).unwrap().seeds, vec![tcp("a", 1)]);

        let t = "extra_config:\n  url: redis://a:1\n  remote_url: redis://b:2\n";
        err_names(
            yaml(t),
            &["extra_config.remote_url", "redis://b:2", "redis://a:1"],
        );
        let t = "extra_config:\n  url: redis://a:1\n  remote_url: redis://a:1\n";
        assert!(yaml(t).is_ok());
    }

    #[test]
    fn cores_forms() {
        let cores = |v: &str| {
            yaml(&format!(
                "remote_url: redis://h\nextra_config:\n  cores: {v}\n"
            ))
        };
        let c = cores("[0, 2]").unwrap();
        assert_eq!((c.cores, c.shards), (Some(vec![0, 2]), None));
        let c = cores("[\"1\", 3]").unwrap();
        assert_eq!(c.cores, Some(vec![1, 3]));
        let c = cores("8").unwrap();
        assert_eq!((c.cores, c.shards), (None, Some(8)));
        let c = cores("\"8\"").unwrap();
        assert_eq!((c.cores, c.shards), (None, Some(8)));
        let c = cores("\"0-1, 4-5\"").unwrap();
        assert_eq!(c.cores, Some(vec![0, 1, 4, 5]));
        let c = cores("\"7\"").unwrap();
        assert_eq!(c.shards, Some(7));
        let c = cores("null").unwrap();
        assert_eq!((c.cores, c.shards), (None, None));

        err_names(cores("0"), &["extra_config.cores", "0", "shard count"]);
        err_names(cores("2000"), &["extra_config.cores", "2000"]);
        err_names(cores("-1"), &["extra_config.cores", "-1"]);
        err_names(cores("[]"), &["extra_config.cores", "empty"]);
        err_names(cores("[1, 1]"), &["extra_config.cores", "[1, 1]", "twice"]);
        err_names(cores("\"0-3,2\""), &["extra_config.cores", "twice"]);
        err_names(
            cores("\"3-0\""),
            &["extra_config.cores", "3-0", "backwards"],
        );
        err_names(
            cores("\"0-99999999999\""),
            &["extra_config.cores", "0-99999999999", "out of range"],
        );
        err_names(
            cores("\"a-b\""),
            &["extra_config.cores", "a-b", "not a CPU number"],
        );
        err_names(cores("\"0,,1\""), &["extra_config.cores", "0,,1"]);
        err_names(cores("[0, x]"), &["extra_config.cores", "x"]);
        err_names(
            cores("[5000]"),
            &["extra_config.cores", "5000", "out of range"],
        );
        err_names(cores("true"), &["extra_config.cores", "true"]);
        err_names(cores("1.5"), &["extra_config.cores", "1.5"]);
    }

    #[test]
    fn ttl_sources() {
        let base = "remote_url: redis://h\n";
        assert_eq!(yaml(base).unwrap().ttl, None);
        assert_eq!(
            yaml(&format!("{base}remote_ttl: 60\n")).unwrap().ttl,
            Some(60)
        );
        assert_eq!(
            yaml(&format!("{base}remote_ttl: \"60\"\n")).unwrap().ttl,
            Some(60)
        );
        assert_eq!(
            yaml(&format!("{base}remote_ttl: null\n")).unwrap().ttl,
            None
        );
        assert_eq!(
            yaml(&format!("{base}extra_config:\n  ttl: 30\n"))
                .unwrap()
                .ttl,
            Some(30)
        );
        assert_eq!(
            yaml(&format!("{base}remote_ttl: 30\nextra_config:\n  ttl: 30\n"))
                .unwrap()
                .ttl,
            Some(30)
        );
        err_names(
            yaml(&format!("{base}remote_ttl: 60\nextra_config:\n  ttl: 30\n")),
            &["extra_config.ttl", "30", "remote_ttl = 60"],
        );

        // The environment applies only when neither key is set.
        let env = |text: &str, v: &str| from_yaml_with_env(text, Some(v.to_string()));
        assert_eq!(env(base, "120").unwrap().ttl, Some(120));
        assert_eq!(env(base, "").unwrap().ttl, None);
        assert_eq!(
            env(&format!("{base}remote_ttl: 5\n"), "120").unwrap().ttl,
            Some(5)
        );
        err_names(env(base, "0"), &["LMCACHE_REMOTE_TTL", "0", "positive"]);
        err_names(env(base, "soon"), &["LMCACHE_REMOTE_TTL", "soon"]);

        err_names(
            yaml(&format!("{base}remote_ttl: 0\n")),
            &["remote_ttl", "0", "positive"],
        );
        err_names(
            yaml(&format!("{base}remote_ttl: -5\n")),
            &["remote_ttl", "-5", "positive"],
        );
        err_names(
            yaml(&format!("{base}remote_ttl: 1.5\n")),
            &["remote_ttl", "1.5"],
        );
        err_names(
            yaml(&format!("{base}remote_ttl: [1]\n")),
            &["remote_ttl", "[1]"],
        );
        err_names(
            yaml(&format!("{base}extra_config:\n  ttl: \"-1\"\n")),
            &["extra_config.ttl", "-1", "positive"],
        );
    }

    #[test]
    fn key_layout_defaults_and_override() {
        let t = |url: &str, extra: &str| {
            yaml(&format!(
                "remote_url: \"{url}\"\nextra_config:\n  {extra}\n"
            ))
            .map(|c| c.key_layout)
        };
        assert_eq!(t("redis://h", "x: 1").unwrap(), KeyLayout::Lmcache);
        assert_eq!(
            t("redis://h", "redis_mode: cluster").unwrap(),
            KeyLayout::Hashtag
        );
        assert_eq!(
            t("rediss://h", "redis_mode: cluster").unwrap(),
            KeyLayout::Hashtag
        );
        assert_eq!(
            t("redis-cluster://h", "redis_mode: cluster").unwrap(),
            KeyLayout::Lmcache
        );
        assert_eq!(t("unix:///s", "x: 1").unwrap(), KeyLayout::Lmcache);
        assert_eq!(
            t("redis://h", "key_layout: HASHTAG").unwrap(),
            KeyLayout::Hashtag
        );
        assert_eq!(
            t("redis://h1,h2", "key_layout: lmcache").unwrap(),
            KeyLayout::Lmcache
        );
        err_names(
            t("redis://h", "key_layout: braces"),
            &["extra_config.key_layout", "braces"],
        );
    }

    #[test]
    fn mode_rules() {
        let t = |url: &str, mode: &str| {
            yaml(&format!(
                "remote_url: \"{url}\"\nextra_config:\n  redis_mode: {mode}\n"
            ))
        };
        err_names(
            t("redis://h1:1,h2:2", "standalone"),
            &["extra_config.redis_mode", "standalone", "2 servers"],
        );
        err_names(
            t("redis-cluster://h1:1", "standalone"),
            &["extra_config.redis_mode", "standalone", "redis-cluster://"],
        );
        err_names(
            t("redis://h", "sentinel"),
            &["extra_config.redis_mode", "sentinel"],
        );
        err_names(t("redis://h", "1"), &["extra_config.redis_mode", "1"]);
        assert_eq!(t("redis://h", "cluster").unwrap().mode, Mode::Cluster);
        assert_eq!(
            t("redis://h", "\"Standalone\"").unwrap().mode,
            Mode::Standalone
        );
        err_names(
            yaml("remote_url: redis://h/3\nextra_config:\n  redis_mode: cluster\n"),
            &["extra_config.redis_database", "3", "database 0"],
        );
        err_names(
            yaml("remote_url: redis://h\nextra_config:\n  redis_mode: cluster\n  redis_database: 2\n"),
            &["extra_config.redis_database", "2"],
        );
    }

    #[test]
    fn credentials_merge() {
        let t = |url: &str, extra: &str| {
            yaml(&format!("remote_url: \"{url}\"\nextra_config:\n{extra}"))
        };
        let c = t("redis://h", "  redis_username: u\n  redis_password: p\n").unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let c = t(
            "redis://u:p@h",
            "  redis_username: \"\"\n  redis_password: \"\"\n",
        )
        .unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let c = t(
            "redis://u:p@h",
            "  redis_username: u\n  redis_password: p\n",
        )
        .unwrap();
        assert_eq!(c.password.as_deref(), Some("p"));
        err_names(
            t("redis://u:p@h", "  redis_username: v\n"),
            &["extra_config.redis_username", "v", "\"u\""],
        );
        let e = err_names(
            t("redis://u:hunter2@h", "  redis_password: other\n"),
            &["extra_config.redis_password", "***"],
        );
        assert!(!e.to_string().contains("hunter2") && !e.to_string().contains("other"));
        let e = err_names(
            t("redis://h", "  redis_password: [hunter2]\n"),
            &["extra_config.redis_password", "***"],
        );
        assert!(!e.to_string().contains("hunter2"));
        err_names(
            t("redis://h/1", "  redis_database: 2\n"),
            &["extra_config.redis_database", "2", "database 1"],
        );
        assert_eq!(
            t("redis://h/1", "  redis_database: 1\n").unwrap().database,
            1
        );
    }

    #[test]
    fn every_setting_error_names_key_and_value() {
        let cases: &[(&str, &[&str])] = &[
            ("chunk_size: 0", &["extra_config.chunk_size", "0"]),
            (
                "chunk_size: 1000001",
                &["extra_config.chunk_size", "1000001"],
            ),
            ("chunk_size: -3", &["extra_config.chunk_size", "-3"]),
            ("chunk_size: \"lots\"", &["extra_config.chunk_size", "lots"]),
            ("chunk_size: 2.5", &["extra_config.chunk_size", "2.5"]),
            ("chunk_size: true", &["extra_config.chunk_size", "true"]),
            (
                "chunk_size: 99999999999999999999999",
                &["extra_config.chunk_size"],
            ),
            ("max_connections: 0", &["extra_config.max_connections", "0"]),
            (
                "max_connections: many",
                &["extra_config.max_connections", "many"],
            ),
            (
                "max_connections: _1",
                &["extra_config.max_connections", "_1"],
            ),
            (
                "max_connections: \"1_\"",
                &["extra_config.max_connections", "1_"],
            ),
            (
                "max_connections: \"--1\"",
                &["extra_config.max_connections", "--1"],
            ),
            ("redis_database: -1", &["extra_config.redis_database", "-1"]),
            (
                "redis_database: 4294967296",
                &["extra_config.redis_database", "4294967296"],
            ),
            (
                "redis_database: zero",
                &["extra_config.redis_database", "zero"],
            ),
            (
                "use_tls: yes please",
                &["extra_config.use_tls", "yes please"],
            ),
            ("use_tls: 1", &["extra_config.use_tls", "1"]),
            (
                "tls_insecure: maybe",
                &["extra_config.tls_insecure", "maybe"],
            ),
            (
                "tls_insecure: true",
                &["extra_config.tls_insecure", "true", "TLS is off"],
            ),
            (
                "tls_ca_file: /etc/ca.pem",
                &["extra_config.tls_ca_file", "/etc/ca.pem", "TLS is off"],
            ),
            ("tls_ca_file: [a]", &["extra_config.tls_ca_file", "[a]"]),
            ("io_backend: kqueue", &["extra_config.io_backend", "kqueue"]),
            ("key_layout: 3", &["extra_config.key_layout", "3"]),
            ("ttl: 0", &["extra_config.ttl", "0"]),
            ("ttl: abc", &["extra_config.ttl", "abc"]),
            (
                "connect_timeout_ms: 0",
                &["extra_config.connect_timeout_ms", "0"],
            ),
            (
                "connect_timeout_ms: 86400001",
                &["extra_config.connect_timeout_ms", "86400001"],
            ),
            (
                "request_timeout_ms: -5",
                &["extra_config.request_timeout_ms", "-5"],
            ),
            (
                "request_timeout_ms: soon",
                &["extra_config.request_timeout_ms", "soon"],
            ),
            ("lane_capacity: 0", &["extra_config.lane_capacity", "0"]),
            (
                "lane_capacity: 999999999",
                &["extra_config.lane_capacity", "999999999"],
            ),
            (
                "max_inflight_bytes: 0",
                &["extra_config.max_inflight_bytes", "0"],
            ),
            ("max_value_size: 0", &["extra_config.max_value_size", "0"]),
            (
                "max_value_size: 4294967296",
                &["extra_config.max_value_size", "4294967296"],
            ),
            (
                "read_from_replicas: true",
                &["extra_config.read_from_replicas", "true", "cluster"],
            ),
            (
                "read_from_replicas: sometimes",
                &["extra_config.read_from_replicas", "sometimes"],
            ),
            (
                "client_name: \"my client\"",
                &["extra_config.client_name", "my client"],
            ),
            ("client_name: \"\"", &["extra_config.client_name"]),
            (
                "client_name: {a: 1}",
                &["extra_config.client_name", "{...}"],
            ),
            (
                "redis_mode: [cluster]",
                &["extra_config.redis_mode", "[cluster]"],
            ),
            (
                "redis_username: solo",
                &["extra_config.redis_username", "solo", "password"],
            ),
            ("url: \"redis://h1 h2\"", &["redis://h1 h2", "whitespace"]),
        ];
        for (line, needles) in cases {
            let text = format!("remote_url: redis://h\nextra_config:\n  {line}\n");
            err_names(yaml(&text), needles);
        }
    }

    #[test]
    fn document_shape_errors() {
        err_names(yaml(""), &["remote_url", "no Redis URL"]);
        err_names(yaml("chunk_size: 256\n"), &["remote_url", "no Redis URL"]);
        err_names(yaml("remote_url: null\n"), &["remote_url"]);
        err_names(yaml("- a\n- b\n"), &["yaml", "a list"]);
        err_names(yaml("remote_url: [\n"), &["yaml"]);
        err_names(
            yaml("remote_url: redis://h\nextra_config: 5\n"),
            &["extra_config", "5", "mapping"],
        );
        err_names(
            yaml("remote_url: redis://h\nextra_config: [a]\n"),
            &["extra_config", "[a]"],
        );
        err_names(yaml("remote_url: 5\n"), &["5", "missing scheme"]);
        err_names(yaml("remote_url: [a]\n"), &["remote_url", "[a]"]);
        err_names(
            yaml("remote_url: \"redis-sentinel://h:1\"\n"),
            &["redis-sentinel://h:1", "Sentinel"],
        );
        // Unknown slotline plugin keys only warn.
        assert!(yaml(
            "remote_url: redis://h\nextra_config:\n  remote_storage_plugin.slotline.chunk_sz: 3\n"
        )
        .is_ok());
        // `extra_config:` with nothing under it is null, i.e. absent.
        assert!(yaml("remote_url: redis://h\nextra_config:\n").is_ok());
    }

    #[test]
    fn yaml_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("slotline-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(&good, SECTION8_CLUSTER).unwrap();
        assert_eq!(Config::from_yaml_file(&good).unwrap().mode, Mode::Cluster);

        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "remote_url: redis://h\nextra_config:\n  chunk_size: 0\n",
        )
        .unwrap();
        let name = bad.display().to_string();
        err_names(
            Config::from_yaml_file(&bad),
            &[&name, "extra_config.chunk_size", "0"],
        );

        let bad_url = dir.join("bad_url.yaml");
        std::fs::write(&bad_url, "remote_url: redis://h:0\n").unwrap();
        let name = bad_url.display().to_string();
        err_names(Config::from_yaml_file(&bad_url), &[&name, "port 0"]);

        let missing = dir.join("missing.yaml");
        let name = missing.display().to_string();
        err_names(Config::from_yaml_file(&missing), &["config_file", &name]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn priority_weights() {
        let base = "remote_url: redis://h:1\nextra_config:\n";
        let with = |w: &str| yaml(&format!("{base}  priority_weights: {w}\n"));
        assert_eq!(
            yaml(base).unwrap().priority_weights,
            PriorityWeights::default()
        );
        let c = with("{peek: 16, prefetch: 8, get: 4, put: 2}").unwrap();
        assert_eq!(
            c.priority_weights,
            PriorityWeights {
                peek: 16,
                prefetch: 8,
                get: 4,
                put: 2
            }
        );
        // Missing classes keep their defaults; numbers may be strings.
        let c = with("{put: \"3\"}").unwrap();
        assert_eq!(
            c.priority_weights,
            PriorityWeights {
                put: 3,
                ..PriorityWeights::default()
            }
        );
        let c = yaml(&format!("{base}  priority_weights:\n    get: 5\n")).unwrap();
        assert_eq!(c.priority_weights.get, 5);
        assert_eq!(
            with("null").unwrap().priority_weights,
            PriorityWeights::default()
        );
        err_names(
            with("{peek: 8, put: 0}"),
            &["extra_config.priority_weights.put", "0", "at least 1"],
        );
        err_names(
            with("{get: -1}"),
            &["extra_config.priority_weights.get", "-1"],
        );
        err_names(
            with("{prefetch: lots}"),
            &["extra_config.priority_weights.prefetch", "lots"],
        );
        err_names(
            with("{peek: 1001}"),
            &["extra_config.priority_weights.peek", "1001", "1000"],
        );
        err_names(
            with("{writes: 2}"),
            &["extra_config.priority_weights.writes", "unknown class"],
        );
        err_names(
            with("[8, 4, 2, 1]"),
            &["extra_config.priority_weights", "expected a mapping"],
        );
        err_names(
            Config {
                priority_weights: PriorityWeights {
                    prefetch: 0,
                    ..PriorityWeights::default()
                },
                ..Config::default()
            }
            .validate(),
            &["extra_config.priority_weights.prefetch", "0"],
        );
    }

    #[test]
    fn validate_hand_built() {
        let ok = Config::default();
        ok.validate().unwrap();
        let bad = |c: Config, needles: &[&str]| {
            err_names(c.validate(), needles);
        };
        bad(
            Config {
                seeds: vec![],
                ..ok.clone()
            },
            &["remote_url"],
        );
        bad(
            Config {
                seeds: vec![tcp("", 1)],
                ..ok.clone()
            },
            &["remote_url", "empty host"],
        );
        bad(
            Config {
                seeds: vec![tcp("h", 0)],
                ..ok.clone()
            },
            &["remote_url", "h:0"],
        );
        bad(
            Config {
                seeds: vec![ServerAddr::Unix {
                    path: "rel.sock".into(),
                }],
                ..ok.clone()
            },
            &["remote_url", "unix:rel.sock", "absolute"],
        );
        bad(
            Config {
                seeds: vec![tcp("a", 1), tcp("b", 2)],
                ..ok.clone()
            },
            &["redis_mode", "standalone"],
        );
        bad(
            Config {
                mode: Mode::Cluster,
                database: 1,
                ..ok.clone()
            },
            &["redis_database", "1"],
        );
        bad(
            Config {
                ttl: Some(0),
                ..ok.clone()
            },
            &["ttl", "0"],
        );
        bad(
            Config {
                cores: Some(vec![0]),
                shards: Some(1),
                ..ok.clone()
            },
            &["extra_config.cores", "not both"],
        );
        bad(
            Config {
                shards: Some(0),
                ..ok.clone()
            },
            &["extra_config.cores", "0"],
        );
        bad(
            Config {
                connect_timeout: Duration::ZERO,
                ..ok.clone()
            },
            &["connect_timeout_ms", "0"],
        );
        bad(
            Config {
                request_timeout: Duration::from_secs(90000),
                ..ok.clone()
            },
            &["request_timeout_ms", "90000000"],
        );
        bad(
            Config {
                client_name: "a\nb".into(),
                ..ok.clone()
            },
            &["client_name"],
        );
        Config {
            mode: Mode::Cluster,
            read_from_replicas: true,
            ..ok.clone()
        }
        .validate()
        .unwrap();
        Config {
            tls: true,
            tls_insecure: true,
            tls_ca_file: Some("/ca.pem".into()),
            ..ok.clone()
        }
        .validate()
        .unwrap();
        Config {
            cores: Some(vec![0, 1023]),
            ..ok
        }
        .validate()
        .unwrap();
    }
}
