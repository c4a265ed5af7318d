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
mod keys;
mod read;
mod redact;
#[cfg(test)]
mod secret_props;
mod settings;
mod url;
mod yaml;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::priority::{Priority, MAX_PRIORITY_WEIGHT};

pub use crate::addr::ServerAddr;
pub use deadlines::Deadlines;
pub use keys::{keys_markdown, Config};
pub use redact::mask_url;
use settings::build;
pub use url::{parse_url, ParsedUrl};

const MAX_CHUNK_SIZE: usize = 1_000_000;
/// Largest janitor queue accepted (keys).
const MAX_JANITOR_QUEUE: usize = 1 << 24;
/// Adding a larger timeout to `Instant::now()` risks overflow panics downstream; no
/// Redis request legitimately needs more than a day.
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
// An MGET frame carries up to two keys per chunk (metadata and payload); its reply
// must stay within what the RESP reader accepts.
const _: () = assert!(2 * MAX_CHUNK_SIZE <= crate::resp::MAX_ARRAY_LEN);
use crate::numa::MAX_CPU;
/// Smallest `max_reply_size` accepted: a small cluster's topology must fit.
const MIN_MAX_REPLY_SIZE: usize = 64 << 10;
const TTL_ENV: &str = "LMCACHE_REMOTE_TTL";
const MASK: &str = "***";
/// The configuration key of the class weights (errors name it).
const PRIORITY_WEIGHTS_KEY: &str = "extra_config.priority_weights";

/// A password: `Debug` shows `***`, so a derived `Debug` of what holds it never
/// prints it. The text is read with [`Secret::expose`] (or through `Deref`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that sends it (AUTH).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl From<Secret> for String {
    fn from(s: Secret) -> String {
        s.0
    }
}

/// An enum read from one of its names or aliases (ignoring ASCII case) and shown by
/// its first name; a parse error names `$key` and the text.
macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident, $key:literal, $expected:literal,
     $($(#[$vm:meta])* $v:ident = $shown:literal $(| $alias:literal)*,)+) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v,)+ }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($shown $(| $alias)* => Ok($name::$v),)+
                    _ => Err(Error::config($key, s, concat!("expected ", $expected))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$v => $shown,)+ })
            }
        }
    };
}

keyword_enum! {
    /// Server topology (`redis_mode`).
    Mode, "redis_mode", "standalone or cluster",
    /// One Redis server (database selectable).
    Standalone = "standalone",
    /// A Redis Cluster reached through one or more seed nodes.
    Cluster = "cluster",
}

keyword_enum! {
    /// Which I/O driver the shards use (`io_backend`).
    #[derive(Default)]
    IoBackend, "io_backend", "auto, io_uring or epoll",
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto = "auto",
    /// io_uring only; fails to start where it is unavailable.
    IoUring = "io_uring" | "iouring" | "uring",
    /// epoll (through mio).
    Epoll = "epoll" | "mio",
}

fn env_ttl() -> Option<String> {
    std::env::var_os(TTL_ENV).map(|v| v.to_string_lossy().into_owned())
}

impl Config {
    /// The deadline of a request of `class` moving `bytes` of payload: the class's
    /// [`Deadlines`] budget, at most `request_timeout`.
    pub fn deadline(&self, class: Priority, bytes: u64) -> Duration {
        self.deadlines.budget(class, bytes, self.request_timeout)
    }

    /// A configuration for `url` with every other setting at its default, and the TTL
    /// of env `LMCACHE_REMOTE_TTL` (as for a YAML file that gives none).
    ///
    /// Several seeds without a `redis-cluster://` scheme mean cluster mode.
    ///
    /// ```
    /// use slotline::{Config, Mode};
    /// let c = Config::from_url("redis://:secret@cache:6380/2").unwrap();
    /// assert_eq!(c.mode, Mode::Standalone);
    /// assert_eq!(c.database, 2);
    /// assert_eq!(c.password.as_deref(), Some("secret"));
    /// ```
    pub fn from_url(url: &str) -> Result<Config> {
        Config::from_url_with_env(url, env_ttl())
    }

    fn from_url_with_env(url: &str, env_ttl: Option<String>) -> Result<Config> {
        let s = keys::Settings {
            ttl: Some(yaml::env_ttl_secs(env_ttl)?),
            ..Default::default()
        };
        build(parse_url(url)?, s)
    }

    /// Reads an LMCache YAML config (or a slotline-only one with the same keys).
    ///
    /// The Redis URL comes from `extra_config.url`, `extra_config.remote_url` or
    /// `extra_config."remote_storage_plugin.slotline.url"` (the plugin form) and
    /// otherwise from the top-level `remote_url`. The TTL comes from
    /// `extra_config.ttl`, `extra_config.remote_ttl` or `remote_ttl` (two given must
    /// agree), else env `LMCACHE_REMOTE_TTL`. An `extra_config` key close to one of
    /// slotline's is logged as a likely misspelling (see
    /// [`Config::from_yaml_str_with_warnings`]). Relative file paths stay relative to
    /// the current directory.
    pub fn from_yaml_str(text: &str) -> Result<Config> {
        Ok(Config::from_yaml_str_with_warnings(text)?.0)
    }

    /// [`Config::from_yaml_str`], also returning the warnings it logged.
    pub fn from_yaml_str_with_warnings(text: &str) -> Result<(Config, Vec<String>)> {
        yaml::from_yaml(text, env_ttl(), None)
    }

    /// Reads an LMCache YAML config file; errors name the file, and relative
    /// `tls_ca_file`, `tls_cert_file` and `tls_key_file` paths resolve against the
    /// file's directory.
    pub fn from_yaml_file(path: &Path) -> Result<Config> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config("config_file", &file, e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        yaml::from_yaml(&text, env_ttl(), Some(dir))
            .map(|(c, _)| c)
            .map_err(|e| match e {
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
        const TLS_OFF: &str = "set, but TLS is off (use rediss:// or use_tls: true)";
        let ex = |key: &str| format!("extra_config.{key}");
        crate::layout::check_key_prefix(&self.key_prefix)
            .map_err(|r| Error::config(&ex("key_prefix"), &self.key_prefix, r))?;
        let no_seed = "no Redis server address given";
        ensure(!self.seeds.is_empty(), "remote_url", "", no_seed)?;
        for seed in &self.seeds {
            let why = match seed {
                ServerAddr::Tcp { host, .. } if host.is_empty() => "empty host",
                ServerAddr::Tcp { port: 0, .. } => "port 0 is not a valid port",
                ServerAddr::Unix { path } if !path.is_absolute() => {
                    "a Unix socket path must be absolute (unix:///path/to.sock)"
                }
                _ => continue,
            };
            return Err(Error::config("remote_url", seed, why));
        }
        let (sentinel, mode) = (self.sentinel_master.is_some(), self.mode);
        let standalone = mode == Mode::Standalone;
        ensure(
            standalone || !sentinel,
            &ex("redis_mode"),
            mode,
            "conflicts with the redis-sentinel:// URL (sentinels watch one master)",
        )?;
        let why = "TLS through Redis Sentinel is not supported yet";
        ensure(!(sentinel && self.tls), "use_tls", true, why)?;
        ensure(
            !standalone || sentinel || self.seeds.len() == 1,
            &ex("redis_mode"),
            mode,
            format!(
                "standalone mode needs exactly one server, got {} (use redis_mode: cluster for cluster seeds)",
                self.seeds.len()
            ),
        )?;
        let why = "Redis Cluster only has database 0";
        ensure(
            standalone || self.database == 0,
            &ex("redis_database"),
            self.database,
            why,
        )?;
        let why = "reading from replicas needs cluster mode";
        ensure(
            !standalone || !self.read_from_replicas,
            &ex("read_from_replicas"),
            true,
            why,
        )?;
        self.check_bounds()?;
        self.validate_cores()?;
        let why = "must be a positive number of seconds";
        ensure(self.ttl != Some(0), "ttl", 0, why)?;
        self.deadlines.validate()?;
        let shown = |f: &Option<std::path::PathBuf>| f.as_ref().map(|f| f.display().to_string());
        let (ca, cert, key) = (
            shown(&self.tls_ca_file),
            shown(&self.tls_cert_file),
            shown(&self.tls_key_file),
        );
        if !self.tls {
            ensure(
                ca.is_none(),
                &ex("tls_ca_file"),
                ca.as_deref().unwrap_or(""),
                TLS_OFF,
            )?;
            ensure(!self.tls_insecure, &ex("tls_insecure"), true, TLS_OFF)?;
            let f = cert.as_ref().or(key.as_ref());
            ensure(
                f.is_none(),
                &ex("tls_cert_file"),
                f.map_or("", |f| f),
                TLS_OFF,
            )?;
        }
        match (cert, key) {
            (Some(c), None) => {
                let why = "a client certificate needs its key (tls_key_file)";
                return Err(Error::config(&ex("tls_cert_file"), c, why));
            }
            (None, Some(k)) => {
                let why = "a client key needs its certificate (tls_cert_file)";
                return Err(Error::config(&ex("tls_key_file"), k, why));
            }
            _ => {}
        }
        let unix = self
            .seeds
            .iter()
            .any(|s| matches!(s, ServerAddr::Unix { .. }));
        let why = "TLS needs a TCP address (Redis serves no TLS on a unix socket)";
        ensure(!(self.tls && unix), "remote_url", "unix://", why)?;
        if let (Some(user), None) = (&self.username, &self.password) {
            let why = "a user name needs a password (Redis AUTH takes both)";
            return Err(Error::config(&ex("redis_username"), user, why));
        }
        // CLIENT SETNAME rejects spaces and control characters; fail here, not at
        // connect time on every connection. Empty turns CLIENT SETNAME off.
        ensure(
            self.client_name.bytes().all(|b| b.is_ascii_graphic()),
            &ex("client_name"),
            &self.client_name,
            "must be printable ASCII without spaces (empty: send no CLIENT SETNAME)",
        )?;
        for class in Priority::ALL {
            let w = self.priority_weights.of(class);
            ensure(
                (1..=MAX_PRIORITY_WEIGHT).contains(&w),
                &format!("{PRIORITY_WEIGHTS_KEY}.{class}"),
                w,
                format!("must be between 1 and {MAX_PRIORITY_WEIGHT} (a class with weight 0 would starve)"),
            )?;
        }
        Ok(())
    }

    fn validate_cores(&self) -> Result<()> {
        const KEY: &str = "extra_config.cores";
        if let (Some(cores), Some(shards)) = (&self.cores, self.shards) {
            let why = "give either a shard count or a CPU list, not both";
            return Err(Error::config(
                KEY,
                format!("{cores:?} and {shards} shards"),
                why,
            ));
        }
        if let Some(n) = self.shards {
            let why = format!("shard count must be between 1 and {MAX_CPU}");
            ensure((1..=MAX_CPU).contains(&n), KEY, n, why)?;
        }
        let Some(cores) = &self.cores else {
            return Ok(());
        };
        ensure(!cores.is_empty(), KEY, "[]", "the CPU list is empty")?;
        let mut seen = [false; MAX_CPU];
        for &c in cores {
            let why = match seen.get_mut(c) {
                None => format!(
                    "CPU {c} is out of range (CPUs 0 to {} can be pinned)",
                    MAX_CPU - 1
                ),
                Some(true) => format!("CPU {c} is listed twice"),
                Some(slot) => {
                    *slot = true;
                    continue;
                }
            };
            return Err(Error::config(KEY, format!("{cores:?}"), why));
        }
        Ok(())
    }
}

/// `Err` naming `key` and `value` with `reason` unless `ok`.
fn ensure(ok: bool, key: &str, value: impl fmt::Display, reason: impl Into<String>) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(Error::config(key, value, reason)),
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
    use crate::layout::KeyLayout;
    const MAX_VALUE_SIZE_LIMIT: usize = crate::resp::MAX_BULK_LEN;
    const MAX_LANE_CAPACITY: usize = crate::lanes::MAX_LANE_CAPACITY;

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
