//! The one table of configuration keys. Each row is a [`Config`] field: its type,
//! default, the `extra_config` key it is read from and how, its bounds, the LMCache
//! adapter parameter it stands for, and its documentation. From the table come the
//! struct, its `Default`, [`Settings`] (what a YAML file gave) and how it is read,
//! the bounds checks of [`Config::validate`], and the README's configuration table
//! ([`keys_markdown`]).

use std::path::PathBuf;
use std::time::Duration;

use super::deadlines::Deadlines;
use super::read::{self, Section};
use super::{IoBackend, Mode, Secret, ServerAddr};
use crate::error::{Error, Result};
use crate::layout::KeyLayout;
use crate::priority::PriorityWeights;

/// A row of the key table, for the documentation.
pub(crate) struct KeyDoc {
    /// The key under `extra_config` (empty: set through other keys only).
    pub(crate) key: &'static str,
    /// What the value is written as.
    pub(crate) kind: &'static str,
    /// The default, as documentation shows it.
    pub(crate) default: String,
    /// `lo..=hi`, `>= lo` or empty.
    pub(crate) bounds: String,
    /// The parameter of LMCache's `valkey` / `resp` adapters that maps onto the key.
    pub(crate) alias: &'static str,
    /// The field's documentation.
    pub(crate) doc: &'static str,
}

/// The `read` column: a reader named in the row, else the type's [`read::FromSetting`].
macro_rules! reader {
    () => {
        read::FromSetting::read
    };
    ($read:path) => {
        $read
    };
}

macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty = $default:expr,
            key $key:literal as $kind:literal
            $(, read $read:path)?
            $(, bounds $lo:expr, $hi:expr, $why:literal)?
            $(, alias $alias:literal)?;
    )*) => {
        /// Everything slotline needs to reach Redis and size its engine.
        ///
        /// Build it with [`Config::from_url`], [`Config::from_yaml_str`] or
        /// [`Config::from_yaml_file`]; hand-built values should go through
        /// [`Config::validate`]. `Debug` never shows the password ([`Secret`]).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $field: $default, )* }
            }
        }

        /// The keys a YAML file gave under `extra_config`; `None`: not given.
        #[derive(Default)]
        pub(super) struct Settings {
            $( pub(super) $field: Option<$ty>, )*
        }

        impl Settings {
            /// Reads every key of the table that is read directly; the rest are set by
            /// the caller.
            pub(super) fn read(extra: &Section<'_>) -> Result<Settings> {
                Ok(Settings { $( $field: reader!($($read)?)(extra, $key)?, )* })
            }

            /// Overwrites the fields of `cfg` that were given.
            pub(super) fn apply(self, cfg: &mut Config) {
                $( if let Some(v) = self.$field { cfg.$field = v; } )*
            }
        }

        impl Config {
            /// The bounds of the table.
            pub(super) fn check_bounds(&self) -> Result<()> {
                $( $( check(concat!("extra_config.", $key), &self.$field, $lo, $hi, $why)?; )? )*
                Ok(())
            }
        }

        /// The rows of the table with a key, in order.
        pub(crate) fn key_docs() -> Vec<KeyDoc> {
            let d = Config::default();
            let mut rows = vec![$(
                KeyDoc {
                    key: $key,
                    kind: $kind,
                    default: DocValue::doc(&d.$field),
                    bounds: String::new() $( + &bounds_text($lo, $hi) )?,
                    alias: concat!("" $(, $alias)?),
                    doc: concat!($($doc, "\n"),+),
                },
            )*];
            rows.retain(|r| !r.key.is_empty());
            rows
        }
    };
}

config_keys! {
    /// Standalone server or cluster (default: cluster when the URL lists several
    /// `redis://` seeds).
    mode: Mode = Mode::Standalone,
        key "redis_mode" as "standalone | cluster", alias "valkey: `cluster_mode`";
    /// Server addresses: exactly one in standalone mode, the seed nodes of a cluster,
    /// or the sentinels of `redis-sentinel://`. Also top-level `remote_url`, or
    /// `remote_storage_plugin.slotline.url`.
    seeds: Vec<ServerAddr> = vec![ServerAddr::Tcp {
        host: "127.0.0.1".to_string(),
        port: crate::addr::DEFAULT_PORT,
    }],
        key "url" as "Redis URL", read read::by_hand,
        alias "valkey: `startup_nodes`; resp: `host`, `port`";
    /// Connect with TLS (also `rediss://`).
    tls: bool = false,
        key "use_tls" as "bool", alias "valkey: `tls_enable`";
    /// Skip server certificate verification (logged as a warning); older name
    /// `tls_insecure`.
    tls_insecure: bool = false,
        key "tls_insecure_skip_verify" as "bool", read read::tls_insecure;
    /// Extra CA bundle (PEM) for verification; a server certificate byte-identical to
    /// one in it is accepted too. Relative to the YAML file's directory.
    tls_ca_file: Option<PathBuf> = None,
        key "tls_ca_file" as "path";
    /// Client certificate chain (PEM) for servers that require one (mTLS, with
    /// `tls_key_file`). Relative to the YAML file's directory.
    tls_cert_file: Option<PathBuf> = None,
        key "tls_cert_file" as "path";
    /// Private key (PEM) of `tls_cert_file`. Relative to the YAML file's directory.
    tls_key_file: Option<PathBuf> = None,
        key "tls_key_file" as "path";
    /// ACL user name (also the URL's user).
    username: Option<String> = None,
        key "redis_username" as "string", alias "valkey, resp: `username`";
    /// Password (also the URL's password); never shown.
    password: Option<Secret> = None,
        key "redis_password" as "string", alias "valkey, resp: `password`";
    /// Database number (also the URL path `/N` or `?db=N`); 0 in cluster mode.
    database: u32 = 0,
        key "redis_database" as "integer", alias "valkey: `database_id`";
    /// Keys per MGET/SET frame. Not LMCache's top-level `chunk_size`, which counts
    /// tokens.
    chunk_size: usize = 256,
        key "chunk_size" as "integer", bounds 1, super::MAX_CHUNK_SIZE, "";
    /// Connection limit.
    max_connections: usize = 150,
        key "max_connections" as "integer", bounds 1, usize::MAX, "";
    /// Explicit CPU list to pin shards to: a list, a range string such as `"0-3,6"`,
    /// `"numa:N"` (the CPUs of NUMA node N, whose memory shards then prefer), or a
    /// single integer: that many shards, unpinned (default: one per CPU).
    cores: Option<Vec<usize>> = None,
        key "cores" as "count, list, \"0-3,6\" or \"numa:N\"", read read::by_hand,
        alias "valkey, resp: `num_workers`";
    /// Number of shards, unpinned (`cores` as a single integer).
    shards: Option<usize> = None,
        key "" as "", read read::by_hand;
    /// NUMA node whose CPUs `cores` came from (`cores: "numa:N"`).
    numa_node: Option<usize> = None,
        key "" as "", read read::by_hand;
    /// I/O driver of the shards.
    io_backend: IoBackend = IoBackend::Auto,
        key "io_backend" as "auto | io_uring | epoll";
    /// How chunk keys map to Redis keys (default `hashtag` for `redis://` cluster
    /// seeds, what the enhanced connector writes).
    key_layout: KeyLayout = KeyLayout::Lmcache,
        key "key_layout" as "lmcache | hashtag | raw";
    /// Tenant prefix of every Redis key slotline writes, reads, checks and deletes
    /// (empty: none): keys become `<key_prefix>@...`, as LMCache's `valkey` adapter
    /// writes them. No `@`, `{` or `}`. `Engine::command` sends its arguments as given.
    key_prefix: String = String::new(),
        key "key_prefix" as "string", alias "valkey: `key_prefix`";
    /// Expiry in seconds added to every SET. Also `extra_config.remote_ttl`, top-level
    /// `remote_ttl` or env `LMCACHE_REMOTE_TTL` (in that order; two given must agree).
    ttl: Option<u64> = None,
        key "ttl" as "seconds", read read::by_hand, alias "valkey: `ttl_seconds`";
    /// TCP/TLS connect timeout.
    connect_timeout: Duration = Duration::from_millis(2_000),
        key "connect_timeout_ms" as "milliseconds",
        bounds 1, super::MAX_TIMEOUT_MS, "",
        alias "valkey: `connection_timeout` (s)";
    /// Per-request timeout.
    request_timeout: Duration = Duration::from_millis(30_000),
        key "request_timeout_ms" as "milliseconds",
        bounds 1, super::MAX_TIMEOUT_MS, "",
        alias "valkey: `request_timeout` (s)";
    /// Submission lane capacity.
    lane_capacity: usize = 1024,
        key "lane_capacity" as "integer",
        bounds 1, crate::lanes::MAX_LANE_CAPACITY,
            " (every slot of the four lanes of each shard is allocated up front)";
    /// Bytes in flight per connection (at least one value always goes). The Python
    /// plug-ins default to 1 MiB (RESULTS.md A.5, A.6).
    max_inflight_bytes: usize = 4 << 20,
        key "max_inflight_bytes" as "bytes", bounds 1, usize::MAX, "";
    /// Bytes in flight per server and shard over all the shard's connections to it
    /// (at least one value always goes): with large values this, not the connection
    /// count, bounds the memory both ends hold.
    max_node_inflight_bytes: usize = 64 << 20,
        key "max_node_inflight_bytes" as "bytes", bounds 1, usize::MAX, "";
    /// Connections per server once values average at least 1 MiB, over all shards
    /// (default: twice the CPU count, between 2 and 8, and 8 once values average
    /// 16 MiB or more). Small values keep `max_connections`' pool of up to 4 per shard.
    large_value_connections: Option<usize> = None,
        key "large_value_connections" as "integer", bounds 1, usize::MAX, "";
    /// Largest value accepted or read.
    max_value_size: usize = 512 << 20,
        key "max_value_size" as "bytes",
        bounds 1, crate::resp::MAX_BULK_LEN,
            " (the largest bulk string the RESP reader, and Redis, accept)";
    /// Serve PEEK and PREFETCH from cluster replicas.
    read_from_replicas: bool = false,
        key "read_from_replicas" as "bool";
    /// Name given with `CLIENT SETNAME`; empty: none is sent. A server refusing it is
    /// logged once and otherwise ignored.
    client_name: String = "slotline".to_string(),
        key "client_name" as "string";
    /// Shares of the request classes while several wait.
    priority_weights: PriorityWeights = PriorityWeights::default(),
        key "priority_weights" as "{peek, prefetch, get, put}";
    /// Per-class deadlines scaled by payload size, each at most `request_timeout`.
    deadlines: Deadlines = Deadlines::default(),
        key "deadlines" as "{peek_ms, prefetch_ms, get_ms, put_ms, per_mib_ms}";
    /// Most stale-metadata checks waiting for the janitor; beyond, they are counted
    /// and skipped (the next read finds the key again).
    janitor_queue: usize = 4096,
        key "janitor_queue" as "integer", bounds 1, super::MAX_JANITOR_QUEUE, "";
    /// Largest reply to `Engine::command` and to the topology reads (CLUSTER SHARDS /
    /// SLOTS), in bytes of the parsed value; a larger one fails its connection.
    max_reply_size: usize = 8 << 20,
        key "max_reply_size" as "bytes",
        bounds super::MIN_MAX_REPLY_SIZE, crate::resp::MAX_BULK_LEN, "";
    /// `redis-sentinel://`: the master's name; `seeds` are then the sentinels, asked
    /// for the master's address at start and after a failure.
    sentinel_master: Option<String> = None,
        key "" as "", read read::by_hand;
}

/// A value as the bounds see it: a number, or milliseconds; `None` is not checked.
trait Measure {
    fn measure(&self) -> Option<u128>;
}

impl Measure for usize {
    fn measure(&self) -> Option<u128> {
        Some(*self as u128)
    }
}

impl Measure for Duration {
    fn measure(&self) -> Option<u128> {
        Some(self.as_millis())
    }
}

impl<T: Measure> Measure for Option<T> {
    fn measure(&self) -> Option<u128> {
        self.as_ref().and_then(Measure::measure)
    }
}

/// `lo..=hi` as numbers; `None`: no upper bound.
fn limits<B: TryInto<u128>>(lo: B, hi: B) -> (u128, Option<u128>) {
    let hi = hi.try_into().ok().filter(|&h| h < usize::MAX as u128);
    (lo.try_into().unwrap_or(0), hi)
}

fn check<T: Measure, B: TryInto<u128>>(key: &str, v: &T, lo: B, hi: B, why: &str) -> Result<()> {
    let (lo, hi) = limits(lo, hi);
    match (v.measure(), hi) {
        (Some(n), None) if n < lo => {
            Err(Error::config(key, n, format!("must be at least {lo}{why}")))
        }
        (Some(n), Some(hi)) if n < lo || n > hi => Err(Error::config(
            key,
            n,
            format!("must be between {lo} and {hi}{why}"),
        )),
        _ => Ok(()),
    }
}

fn bounds_text<B: TryInto<u128>>(lo: B, hi: B) -> String {
    match limits(lo, hi) {
        (lo, None) => format!(">= {lo}"),
        (lo, Some(hi)) => format!("{lo}..={hi}"),
    }
}

/// A default as the documentation shows it.
trait DocValue {
    fn doc(&self) -> String;
}

macro_rules! doc_value {
    ($($t:ty => |$v:ident| $e:expr;)*) => {$(
        impl DocValue for $t {
            fn doc(&self) -> String {
                let $v = self;
                $e
            }
        }
    )*};
}

doc_value! {
    bool => |v| v.to_string();
    u32 => |v| v.to_string();
    u64 => |v| v.to_string();
    usize => |v| v.to_string();
    Mode => |v| v.to_string();
    IoBackend => |v| v.to_string();
    KeyLayout => |v| v.to_string();
    PriorityWeights => |v| v.to_string();
    ServerAddr => |v| v.to_string();
    String => |v| format!("{v:?}");
    Deadlines => |v| format!("{v:?}");
    Duration => |v| v.as_millis().to_string();
    PathBuf => |v| v.display().to_string();
    Secret => |_v| super::MASK.to_string();
}

impl<T: DocValue> DocValue for Vec<T> {
    fn doc(&self) -> String {
        self.iter().map(DocValue::doc).collect::<Vec<_>>().join(",")
    }
}

impl<T: DocValue> DocValue for Option<T> {
    fn doc(&self) -> String {
        self.as_ref().map_or_else(|| "none".into(), DocValue::doc)
    }
}

/// The README's table of `extra_config` keys, generated from the table above
/// (`slotline config --keys-markdown` prints it).
pub fn keys_markdown() -> String {
    let mut out = String::from(
        "| `extra_config` key | value | default | bounds | LMCache adapter parameter | meaning |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in key_docs() {
        let doc = r.doc.split_whitespace().collect::<Vec<_>>().join(" ");
        let cell = |s: &str| s.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} | {} |\n",
            r.key,
            cell(r.kind),
            cell(&r.default),
            r.bounds,
            r.alias,
            cell(&doc)
        ));
    }
    out
}

/// The keys of the table that `extra_config` may hold, with the other keys slotline
/// reads there.
pub(super) fn known_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = key_docs().iter().map(|r| r.key).collect();
    keys.extend(super::yaml::OTHER_EXTRA_KEYS);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- config-keys:begin (generated: SLOTLINE_WRITE_README=1 cargo test --release --lib readme_table) -->\n";
    const END: &str = "<!-- config-keys:end -->";

    #[test]
    fn readme_table_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let (Some(a), Some(b)) = (readme.find(BEGIN), readme.find(END)) else {
            panic!("README.md lacks the markers {BEGIN:?} ... {END:?}");
        };
        let table = keys_markdown();
        if readme[a + BEGIN.len()..b] != table {
            if std::env::var_os("SLOTLINE_WRITE_README").is_some() {
                let new = format!("{}{table}{}", &readme[..a + BEGIN.len()], &readme[b..]);
                std::fs::write(path, new).unwrap();
                return;
            }
            panic!(
                "README.md's configuration table differs from the key table in \
                 src/config/keys.rs; regenerate it with \
                 `SLOTLINE_WRITE_README=1 cargo test --release --lib readme_table`"
            );
        }
    }

    #[test]
    fn every_key_is_documented_once() {
        let rows = key_docs();
        let mut keys: Vec<_> = rows.iter().map(|r| r.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), rows.len(), "a key is listed twice");
        assert!(rows
            .iter()
            .all(|r| !r.doc.trim().is_empty() && !r.kind.is_empty()));
        let md = keys_markdown();
        assert!(
            md.contains("| `chunk_size` | integer | `256` | 1..=1000000 |"),
            "{md}"
        );
        assert!(
            md.contains("| `redis_password` | string | `none` |"),
            "{md}"
        );
        assert!(md.contains("`database_id`"), "{md}");
    }

    #[test]
    fn bounds_name_key_value_and_limits() {
        let e = check("extra_config.x", &5usize, 1usize, 4, " (why)").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("extra_config.x") && s.contains('5') && s.contains("between 1 and 4 (why)"),
            "{s}"
        );
        check("k", &None::<usize>, 1usize, 4, "").unwrap();
        check("k", &Some(0usize), 1usize, usize::MAX, "").unwrap_err();
        check("k", &Duration::from_millis(3), 1u64, 3, "").unwrap();
    }
}
