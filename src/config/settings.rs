//! Explicit settings (from YAML) merged with a parsed URL into a validated [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use super::{Config, Deadlines, IoBackend, Mode, ParsedUrl, ServerAddr, MASK};
use crate::error::{Error, Result};
use crate::layout::KeyLayout;
use crate::priority::PriorityWeights;

/// slotline's own settings, as read from YAML; `None` means "not given".
#[derive(Default)]
pub(super) struct Settings {
    pub(super) mode: Option<Mode>,
    pub(super) database: Option<u32>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) use_tls: Option<bool>,
    pub(super) tls_insecure: Option<bool>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) chunk_size: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) cores: Option<Vec<usize>>,
    pub(super) shards: Option<usize>,
    pub(super) numa_node: Option<usize>,
    pub(super) io_backend: Option<IoBackend>,
    pub(super) key_layout: Option<KeyLayout>,
    pub(super) key_prefix: Option<String>,
    pub(super) ttl: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) request_timeout_ms: Option<u64>,
    pub(super) lane_capacity: Option<usize>,
    pub(super) max_inflight_bytes: Option<usize>,
    pub(super) max_value_size: Option<usize>,
    pub(super) read_from_replicas: Option<bool>,
    pub(super) client_name: Option<String>,
    pub(super) priority_weights: Option<PriorityWeights>,
    pub(super) deadlines: Option<Deadlines>,
    pub(super) janitor_queue: Option<usize>,
    pub(super) max_reply_size: Option<usize>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) max_node_inflight_bytes: Option<usize>,
    pub(super) large_value_connections: Option<usize>,
}

/// Merges a parsed URL with explicit settings and validates the result.
pub(super) fn build(url: ParsedUrl, s: Settings) -> Result<Config> {
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
    if mode == Mode::Standalone && url.seeds.len() > 1 && url.sentinel.is_none() {
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
        numa_node: s.numa_node,
        io_backend: s.io_backend.unwrap_or(d.io_backend),
        key_layout: s.key_layout.unwrap_or(default_layout),
        key_prefix: s.key_prefix.unwrap_or_default(),
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
        deadlines: s.deadlines.unwrap_or(d.deadlines),
        janitor_queue: s.janitor_queue.unwrap_or(d.janitor_queue),
        max_reply_size: s.max_reply_size.unwrap_or(d.max_reply_size),
        tls_cert_file: s.tls_cert_file,
        tls_key_file: s.tls_key_file,
        max_node_inflight_bytes: s
            .max_node_inflight_bytes
            .unwrap_or(d.max_node_inflight_bytes),
        large_value_connections: s.large_value_connections,
        sentinel_master: url.sentinel,
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
