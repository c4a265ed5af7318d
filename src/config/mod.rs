//! Configuration: the model ([`Config`] and its parts), Redis URLs ([`parse_url`], in
//! `url`) and the LMCache YAML users already write (in `yaml`).
//!
//! An LMCache config file is accepted unchanged: slotline reads `remote_url`,
//! `remote_ttl` and its own keys under `extra_config`, and ignores everything else
//! (LMCache's own settings and other plugins' keys). Keys slotline knows are validated,
//! and every error names the key and the offending value (passwords shown as `***`).
//!
//! ```
//! use slotline::{Config, Mode};
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

mod deadlines;
mod redact;
#[cfg(test)]
mod secret_props;
mod settings;
mod url;
pub(crate) mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::KeyLayout;
use crate::priority::{Priority, PriorityWeights, MAX_PRIORITY_WEIGHT};

pub use deadlines::Deadlines;
pub use redact::mask_url;
use settings::{build, Settings};
pub use url::{parse_url, ParsedUrl};

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_CHUNK_SIZE: usize = 256;
const MAX_CHUNK_SIZE: usize = 1_000_000;
const DEFAULT_MAX_CONNECTIONS: usize = 150;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Adding a larger timeout to `Instant::now()` risks overflow panics downstream; no
/// Redis request legitimately needs more than a day.
/// Default bound of the janitor's queue (keys).
const DEFAULT_JANITOR_QUEUE: usize = 4096;
/// Largest janitor queue accepted (keys).
const MAX_JANITOR_QUEUE: usize = 1 << 24;
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LANE_CAPACITY: usize = 1024;
/// Lanes preallocate every slot; the lanes own the bound.
const MAX_LANE_CAPACITY: usize = crate::lanes::MAX_LANE_CAPACITY;
/// 4 MiB. The Python plug-ins default to 1 MiB instead (`python/slotline/config.py`):
/// with their single shard, four 1 MiB values per MGET cost redis-server 1.5x the CPU
/// per GET batch (RESULTS.md A.6); with two shards and over TLS, 1 MiB cost PUTs up to
/// 40% (RESULTS.md A.5, tuning/README.md).
const DEFAULT_MAX_INFLIGHT_BYTES: usize = 4 << 20;
const DEFAULT_MAX_NODE_INFLIGHT_BYTES: usize = 64 << 20;
const DEFAULT_MAX_VALUE_SIZE: usize = 512 << 20;
/// The largest bulk string the RESP reader accepts (Redis's own `proto-max-bulk-len`
/// ceiling). RemoteMetadata's `i32` length would allow more, but a larger value could
/// be written and never read back.
const MAX_VALUE_SIZE_LIMIT: usize = crate::resp::MAX_BULK_LEN;
// An MGET frame carries up to two keys per chunk (metadata and payload); its reply
// must stay within what the RESP reader accepts.
const _: () = assert!(2 * MAX_CHUNK_SIZE <= crate::resp::MAX_ARRAY_LEN);
const _: () = assert!(DEFAULT_MAX_VALUE_SIZE <= MAX_VALUE_SIZE_LIMIT);
/// glibc's `CPU_SETSIZE`: `sched_setaffinity` cannot address higher CPUs.
const MAX_CPU: usize = 1024;
const DEFAULT_CLIENT_NAME: &str = "slotline";
/// Default bound of a reply to `Engine::command` or a topology read, in bytes of the
/// parsed value: CLUSTER SHARDS of a 1000-node cluster takes about 1 MiB.
const DEFAULT_MAX_REPLY_SIZE: usize = 8 << 20;
/// Smallest `max_reply_size` accepted: a small cluster's topology must fit.
const MIN_MAX_REPLY_SIZE: usize = 64 << 10;
const TTL_ENV: &str = "LMCACHE_REMOTE_TTL";
const MASK: &str = "***";
/// The configuration key of the class weights (errors name it).
const PRIORITY_WEIGHTS_KEY: &str = "extra_config.priority_weights";

/// Where a Redis server listens.
///
/// ```
/// use slotline::ServerAddr;
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
    /// Skip server certificate verification (`extra_config.tls_insecure_skip_verify`,
    /// or its older name `tls_insecure`; default false). Logged as a warning.
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
    /// NUMA node whose CPUs `cores` came from (`extra_config.cores: "numa:N"`): each
    /// shard thread then prefers that node for its memory (`set_mempolicy`).
    pub numa_node: Option<usize>,
    /// I/O driver (`extra_config.io_backend`, default auto).
    pub io_backend: IoBackend,
    /// How chunk keys map to Redis keys (`extra_config.key_layout`).
    pub key_layout: KeyLayout,
    /// Tenant prefix of every Redis key slotline writes, reads, checks and deletes
    /// (`extra_config.key_prefix`; empty: none): keys become `<key_prefix>@...`, as
    /// LMCache's `valkey` adapter writes them. No `@`, `{` or `}` (see
    /// [`KeyScheme`](crate::layout::KeyScheme)). [`Engine::command`](crate::Engine::command)
    /// sends its arguments as given.
    pub key_prefix: String,
    /// Expiry in seconds added to every SET (`extra_config.ttl`, `remote_ttl` or env
    /// `LMCACHE_REMOTE_TTL`).
    pub ttl: Option<u64>,
    /// TCP/TLS connect timeout (`extra_config.connect_timeout_ms`, default 2000).
    pub connect_timeout: Duration,
    /// Per-request timeout (`extra_config.request_timeout_ms`, default 30000).
    pub request_timeout: Duration,
    /// Submission lane capacity (`extra_config.lane_capacity`, default 1024).
    pub lane_capacity: usize,
    /// Bytes in flight per connection (`extra_config.max_inflight_bytes`, default 4 MiB;
    /// at least one value).
    pub max_inflight_bytes: usize,
    /// Largest value accepted or read (`extra_config.max_value_size`, default 512 MiB).
    pub max_value_size: usize,
    /// Serve reads from cluster replicas (`extra_config.read_from_replicas`).
    pub read_from_replicas: bool,
    /// Name given with `CLIENT SETNAME` (`extra_config.client_name`, default
    /// "slotline"); empty: no CLIENT SETNAME is sent. A server or proxy refusing it
    /// is logged once and otherwise ignored.
    pub client_name: String,
    /// Shares of the request classes while several wait
    /// (`extra_config.priority_weights`, default peek 8, prefetch 4, get 2, put 1).
    pub priority_weights: PriorityWeights,
    /// Per-class deadlines scaled by payload size (`extra_config.deadlines`), each at
    /// most `request_timeout`.
    pub deadlines: Deadlines,
    /// Most stale-metadata checks waiting for the janitor
    /// (`extra_config.janitor_queue`, default 4096); beyond, they are counted and
    /// skipped (the next read finds the key again).
    pub janitor_queue: usize,
    /// Largest reply to [`Engine::command`](crate::Engine::command) and to the
    /// topology reads (CLUSTER SHARDS / SLOTS), in bytes of the parsed value
    /// (`extra_config.max_reply_size`, default 8 MiB). A larger reply fails its
    /// connection with a protocol error instead of being buffered.
    pub max_reply_size: usize,
    /// Client certificate chain (PEM) for servers that require one (mTLS;
    /// `extra_config.tls_cert_file`, with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert_file` (`extra_config.tls_key_file`).
    pub tls_key_file: Option<PathBuf>,
    /// Bytes in flight per server and shard over all the shard's connections to it
    /// (`extra_config.max_node_inflight_bytes`, default 64 MiB; at least one value
    /// always goes): with large values this, not the connection count, bounds the
    /// memory both ends hold for replies and requests in flight.
    pub max_node_inflight_bytes: usize,
    /// Connections per server once values are large (running average of at least
    /// 1 MiB), over all shards (`extra_config.large_value_connections`; default
    /// `None`: twice the CPU count, between 2 and 8, and 8 once values average 16 MiB
    /// or more). Small values keep `max_connections`' pool of up to 4 per shard.
    pub large_value_connections: Option<usize>,
    /// `redis-sentinel://`: the master's name; `seeds` are then the sentinels, asked
    /// for the master's address at start and after a failure ([`crate::Engine`]).
    pub sentinel_master: Option<String>,
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
            .field("numa_node", &self.numa_node)
            .field("io_backend", &self.io_backend)
            .field("key_layout", &self.key_layout)
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lane_capacity", &self.lane_capacity)
            .field("max_inflight_bytes", &self.max_inflight_bytes)
            .field("max_value_size", &self.max_value_size)
            .field("read_from_replicas", &self.read_from_replicas)
            .field("client_name", &self.client_name)
            .field("priority_weights", &self.priority_weights)
            .field("deadlines", &self.deadlines)
            .field("janitor_queue", &self.janitor_queue)
            .field("max_reply_size", &self.max_reply_size)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("max_node_inflight_bytes", &self.max_node_inflight_bytes)
            .field("large_value_connections", &self.large_value_connections)
            .field("sentinel_master", &self.sentinel_master)
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
            numa_node: None,
            io_backend: IoBackend::Auto,
            key_layout: KeyLayout::Lmcache,
            key_prefix: String::new(),
            ttl: None,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            lane_capacity: DEFAULT_LANE_CAPACITY,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            read_from_replicas: false,
            client_name: DEFAULT_CLIENT_NAME.to_string(),
            priority_weights: PriorityWeights::default(),
            deadlines: Deadlines::default(),
            janitor_queue: DEFAULT_JANITOR_QUEUE,
            max_reply_size: DEFAULT_MAX_REPLY_SIZE,
            tls_cert_file: None,
            tls_key_file: None,
            max_node_inflight_bytes: DEFAULT_MAX_NODE_INFLIGHT_BYTES,
            large_value_connections: None,
            sentinel_master: None,
        }
    }
}

impl Config {
    /// The deadline of a request of `class` moving `bytes` of payload: the class's
    /// [`Deadlines`] budget, at most `request_timeout`.
    pub fn deadline(&self, class: Priority, bytes: u64) -> Duration {
        self.deadlines.budget(class, bytes, self.request_timeout)
    }

    /// A configuration for `url` with every other setting at its default.
    ///
    /// Several seeds without a `redis-cluster://` scheme mean cluster mode. The
    /// `LMCACHE_REMOTE_TTL` environment variable is not consulted here (it belongs to
    /// LMCache config files; see [`Config::from_yaml_str`]).
    ///
    /// ```
    /// use slotline::{Config, Mode};
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
        yaml::from_yaml_with_env(text, env_ttl)
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
        crate::layout::check_key_prefix(&self.key_prefix)
            .map_err(|r| Error::config("extra_config.key_prefix", &self.key_prefix, r))?;
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
            Mode::Cluster if self.sentinel_master.is_some() => {
                return Err(Error::config(
                    "extra_config.redis_mode",
                    Mode::Cluster,
                    "conflicts with the redis-sentinel:// URL (sentinels watch one master)",
                ));
            }
            Mode::Standalone if self.sentinel_master.is_some() && self.tls => {
                return Err(Error::config(
                    "use_tls",
                    true,
                    "TLS through Redis Sentinel is not supported yet",
                ));
            }
            Mode::Standalone if self.seeds.len() != 1 && self.sentinel_master.is_none() => {
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
        self.deadlines.validate()?;
        if !(1..=MAX_JANITOR_QUEUE).contains(&self.janitor_queue) {
            return Err(Error::config(
                "extra_config.janitor_queue",
                self.janitor_queue,
                format!("must be between 1 and {MAX_JANITOR_QUEUE}"),
            ));
        }
        if !(1..=MAX_LANE_CAPACITY).contains(&self.lane_capacity) {
            return Err(Error::config(
                "extra_config.lane_capacity",
                self.lane_capacity,
                format!(
                    "must be between 1 and {MAX_LANE_CAPACITY} (every slot of the four lanes of each shard is allocated up front)"
                ),
            ));
        }
        if self.max_node_inflight_bytes == 0 {
            return Err(Error::config(
                "extra_config.max_node_inflight_bytes",
                0,
                "must be at least 1",
            ));
        }
        if self.large_value_connections == Some(0) {
            return Err(Error::config(
                "extra_config.large_value_connections",
                0,
                "must be at least 1",
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
                    "must be between 1 and {MAX_VALUE_SIZE_LIMIT} (the largest bulk string the RESP reader, and Redis, accept)"
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
            if let Some(f) = self.tls_cert_file.as_ref().or(self.tls_key_file.as_ref()) {
                return Err(Error::config(
                    "extra_config.tls_cert_file",
                    f.display(),
                    "set, but TLS is off (use rediss:// or use_tls: true)",
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(c), None) => {
                return Err(Error::config(
                    "extra_config.tls_cert_file",
                    c.display(),
                    "a client certificate needs its key (tls_key_file)",
                ))
            }
            (None, Some(k)) => {
                return Err(Error::config(
                    "extra_config.tls_key_file",
                    k.display(),
                    "a client key needs its certificate (tls_cert_file)",
                ))
            }
            _ => {}
        }
        if self.tls
            && self
                .seeds
                .iter()
                .any(|s| matches!(s, ServerAddr::Unix { .. }))
        {
            return Err(Error::config(
                "remote_url",
                "unix://",
                "TLS needs a TCP address (Redis serves no TLS on a unix socket)",
            ));
        }
        if let (Some(user), None) = (&self.username, &self.password) {
            return Err(Error::config(
                "extra_config.redis_username",
                user,
                "a user name needs a password (Redis AUTH takes both)",
            ));
        }
        if !self.client_name.bytes().all(|b| b.is_ascii_graphic()) {
            // CLIENT SETNAME rejects spaces and control characters; fail here, not at
            // connect time on every connection. Empty turns CLIENT SETNAME off.
            return Err(Error::config(
                "extra_config.client_name",
                &self.client_name,
                "must be printable ASCII without spaces (empty: send no CLIENT SETNAME)",
            ));
        }
        if !(MIN_MAX_REPLY_SIZE..=crate::resp::MAX_BULK_LEN).contains(&self.max_reply_size) {
            return Err(Error::config(
                "extra_config.max_reply_size",
                self.max_reply_size,
                format!(
                    "must be between {MIN_MAX_REPLY_SIZE} and {}",
                    crate::resp::MAX_BULK_LEN
                ),
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

#[cfg(test)]
mod testutil {
    use super::*;

    pub(super) fn tcp(host: &str, port: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: host.to_string(),
            port,
        }
    }

    /// Asserts that `r` failed and its message names every needle.
    #[track_caller]
    pub(super) fn err_names<T: fmt::Debug>(r: Result<T>, needles: &[&str]) -> Error {
        let e = r.expect_err("expected an error");
        let msg = e.to_string();
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{err_names, tcp};
    use super::*;

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
                max_value_size: MAX_VALUE_SIZE_LIMIT + 1,
                ..ok.clone()
            },
            &["extra_config.max_value_size", "536870913", "536870912"],
        );
        bad(
            Config {
                max_value_size: i32::MAX as usize,
                ..ok.clone()
            },
            &["extra_config.max_value_size", "2147483647"],
        );
        bad(
            Config {
                lane_capacity: MAX_LANE_CAPACITY + 1,
                ..ok.clone()
            },
            &["extra_config.lane_capacity", "1048577", "1048576"],
        );
        bad(
            Config {
                lane_capacity: 0,
                ..ok.clone()
            },
            &["extra_config.lane_capacity", "0"],
        );
        Config {
            max_value_size: MAX_VALUE_SIZE_LIMIT,
            lane_capacity: MAX_LANE_CAPACITY,
            ..ok.clone()
        }
        .validate()
        .unwrap();
        bad(
            Config {
                client_name: "a\nb".into(),
                ..ok.clone()
            },
            &["client_name"],
        );
        // Empty turns CLIENT SETNAME off.
        Config {
            client_name: String::new(),
            ..ok.clone()
        }
        .validate()
        .unwrap();
        for n in [0, MIN_MAX_REPLY_SIZE - 1, crate::resp::MAX_BULK_LEN + 1] {
            bad(
                Config {
                    max_reply_size: n,
                    ..ok.clone()
                },
                &["extra_config.max_reply_size", &n.to_string()],
            );
        }
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
