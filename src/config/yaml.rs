//! The LMCache YAML adapter: reads `remote_url`, `remote_ttl` and slotline's keys under
//! `extra_config` from an LMCache config file, ignoring everything else, and names the
//! key and the value in every error.

use std::path::Path;

use yaml_rust2::yaml::{Hash as Mapping, Yaml as Value};
use yaml_rust2::YamlLoader;

use super::keys::Settings;
use super::read::{
    agree, apply_merge, kind, parse_cores, parse_numa_cores, parse_ttl, render, Section, Shown,
};
use super::settings::build;
use super::{mask_url, parse_url, Config, TTL_ENV};
use crate::error::{Error, Result};

/// The URL keys slotline reads from `extra_config`, in order of preference.
const EXTRA_URL_KEYS: [&str; 3] = ["url", "remote_url", "remote_storage_plugin.slotline.url"];

/// Plugin settings LMCache itself reads; anything else under this prefix is a typo.
const PLUGIN_PREFIX: &str = "remote_storage_plugin.slotline.";
const PLUGIN_KEYS: [&str; 3] = ["module_path", "class_name", "url"];

/// `from_yaml_str` with the environment TTL passed in, so tests need not mutate the
/// process environment.
#[cfg(test)]
pub(super) fn from_yaml_with_env(text: &str, env_ttl: Option<String>) -> Result<Config> {
    from_yaml(text, env_ttl, None).map(|(c, _)| c)
}

/// Reads a YAML config; relative TLS file paths resolve against `base` (the YAML file's
/// directory) when given. Also returns the warnings (keys that look like misspelt
/// slotline keys).
pub(super) fn from_yaml(
    text: &str,
    env_ttl: Option<String>,
    base: Option<&Path>,
) -> Result<(Config, Vec<String>)> {
    // The text may hold a password, so only its size appears in errors.
    let yaml_err = |why: String| Error::config("yaml", format!("{} bytes", text.len()), why);
    let mut docs = YamlLoader::load_from_str(text).map_err(|e| yaml_err(e.to_string()))?;
    if docs.len() > 1 {
        let n = docs.len();
        return Err(yaml_err(format!(
            "found {n} documents; a config file holds one"
        )));
    }
    let mut doc = docs.pop().unwrap_or(Value::Null);
    apply_merge(&mut doc).map_err(yaml_err)?;
    let empty = Mapping::new();
    let top = match &doc {
        Value::Null => &empty,
        Value::Hash(m) => m,
        v => {
            let why = format!(
                "expected a mapping of settings at the top level, found {}",
                kind(v)
            );
            return Err(yaml_err(why));
        }
    };
    let top = Section::new(top, "");
    let extra_map = match top.get("extra_config") {
        None => &empty,
        Some(Value::Hash(m)) => m,
        Some(v) => {
            let why = format!("expected a mapping, found {}", kind(v));
            return Err(Error::config("extra_config", render(v), why));
        }
    };
    let extra = Section::new(extra_map, "extra_config.");
    let warnings = unknown_key_warnings(extra_map);
    warnings.iter().for_each(|w| tracing::warn!("{w}"));

    let parsed = parse_url(&choose_url(&top, &extra)?)?;
    let mut s = Settings::read(&extra)?;
    s.ttl = Some(ttl(&top, &extra, env_ttl)?);
    match extra.get("cores") {
        Some(Value::String(c)) if c.trim().starts_with("numa:") => {
            let (cores, node) = parse_numa_cores(c.trim(), Path::new("/"))?;
            (s.cores, s.numa_node) = (Some(Some(cores)), Some(Some(node)));
        }
        None => {}
        Some(v) => {
            let (c, n) = parse_cores(v)?;
            (s.cores, s.shards) = (Some(c), Some(n));
        }
    }
    let files = [
        &mut s.tls_ca_file,
        &mut s.tls_cert_file,
        &mut s.tls_key_file,
    ];
    for f in files.into_iter().flatten().flatten() {
        if let Some(dir) = base.filter(|_| f.is_relative()) {
            *f = dir.join(&*f);
        }
    }
    Ok((build(parsed, s)?, warnings))
}

/// `extra_config.ttl`, `extra_config.remote_ttl`, then top-level `remote_ttl` (two
/// given must agree), and env `LMCACHE_REMOTE_TTL` when none is.
fn ttl(top: &Section<'_>, extra: &Section<'_>, env_ttl: Option<String>) -> Result<Option<u64>> {
    let given = vec![
        (extra.name("ttl"), extra.ttl("ttl")?),
        (extra.name("remote_ttl"), extra.ttl("remote_ttl")?),
        ("remote_ttl".to_string(), top.ttl("remote_ttl")?),
    ];
    match agree(given, u64::to_string, "the TTL")? {
        Some(v) => Ok(Some(v)),
        None => env_ttl_secs(env_ttl),
    }
}

/// `LMCACHE_REMOTE_TTL`'s value; empty or unset: none.
pub(super) fn env_ttl_secs(env_ttl: Option<String>) -> Result<Option<u64>> {
    match env_ttl.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => parse_ttl(TTL_ENV, v).map(Some),
    }
}

/// Keys under `extra_config` that slotline reads besides the key table's.
pub(super) const OTHER_EXTRA_KEYS: [&str; 4] = [
    "remote_url",
    "remote_ttl",
    "tls_insecure",
    "remote_storage_plugin.slotline.url",
];

/// One warning per `extra_config` key that is not slotline's but close to one of its
/// keys (edit distance at most 2, 1 for short keys, or equal once `_` and case are
/// ignored): most likely a misspelling that would otherwise be ignored without a word.
fn unknown_key_warnings(extra: &Mapping) -> Vec<String> {
    let known = super::keys::known_keys();
    let squash = |k: &str| k.replace('_', "").to_ascii_lowercase();
    let distance = |k: &str, key: &str| match squash(k) == squash(key) {
        true => 0,
        false => edit_distance(k, key),
    };
    let mut out = Vec::new();
    for key in extra.keys().filter_map(Value::as_str) {
        let close = known
            .iter()
            .map(|k| (distance(k, key), k))
            .filter(|(d, k)| *d <= if k.len() <= 4 { 1 } else { 2 })
            .min_by_key(|(d, _)| *d);
        match (key.strip_prefix(PLUGIN_PREFIX), close) {
            (Some(name), _) if !PLUGIN_KEYS.contains(&name) => out.push(format!(
                "extra_config.{key} is ignored: slotline reads its settings from plain \
                 extra_config keys (e.g. extra_config.{name})"
            )),
            (None, Some((_, k))) if !known.contains(&key) => out.push(format!(
                "extra_config.{key} is not a slotline setting and is ignored; did you mean extra_config.{k}?"
            )),
            _ => {}
        }
    }
    out
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn choose_url(top: &Section<'_>, extra: &Section<'_>) -> Result<String> {
    let mut given = Vec::new();
    for key in EXTRA_URL_KEYS {
        let url = extra.text(key, Shown::Url)?.filter(|u| !u.is_empty());
        given.push((extra.name(key), url));
    }
    let key = given
        .iter()
        .find(|(_, u)| u.is_some())
        .map(|(k, _)| k.clone());
    let own = agree(given, |u| format!("{:?}", mask_url(u)), "the URL")?;
    let lmcache_url = top
        .text("remote_url", Shown::Url)?
        .filter(|u| !u.is_empty());
    match (own, lmcache_url) {
        (Some(url), Some(remote)) => {
            let key = key.unwrap_or_default();
            if url == remote {
                tracing::warn!(
                    url = %mask_url(&url),
                    "remote_url and {key} name the same server: LMCache will also \
                     create its own remote backend and every chunk will be written twice; \
                     drop remote_url when slotline runs as a plugin"
                );
            } else {
                tracing::info!(
                    slotline = %mask_url(&url),
                    remote_url = %mask_url(&remote),
                    "using {key}; remote_url belongs to LMCache's own backend"
                );
            }
            Ok(url)
        }
        (Some(url), None) | (None, Some(url)) => Ok(url),
        (None, None) => Err(Error::config(
            "remote_url",
            "",
            "no Redis URL: set remote_url, or extra_config.url when slotline runs as a plugin",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{err_names, tcp};
    use super::super::{Config, IoBackend, Mode};
    use super::*;
    use crate::layout::KeyLayout;
    use crate::priority::PriorityWeights;
    use std::time::Duration;

    fn yaml(text: &str) -> Result<Config> {
        from_yaml_with_env(text, None)
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
    fn tls_keys() {
        let tls = |extra: &str| {
            yaml(&SECTION8_STANDALONE.replace("use_tls: false", &format!("use_tls: true\n{extra}")))
        };
        let c = tls(
            "  tls_ca_file: /etc/ca.pem\n  tls_cert_file: /etc/c.pem\n  tls_key_file: /etc/c.key",
        )
        .unwrap();
        assert!(c.tls && !c.tls_insecure);
        assert_eq!(
            c.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            c.tls_cert_file.as_deref(),
            Some(std::path::Path::new("/etc/c.pem"))
        );
        assert_eq!(
            c.tls_key_file.as_deref(),
            Some(std::path::Path::new("/etc/c.key"))
        );
        // The explicit name and the older one.
        assert!(
            tls("  tls_insecure_skip_verify: true")
                .unwrap()
                .tls_insecure
        );
        assert!(tls("  tls_insecure: yes").unwrap().tls_insecure);
        assert!(
            !tls("  tls_insecure_skip_verify: false")
                .unwrap()
                .tls_insecure
        );
        assert!(
            tls("  tls_insecure_skip_verify: true\n  tls_insecure: true")
                .unwrap()
                .tls_insecure
        );
        // Empty strings are "not given".
        let c = tls("  tls_cert_file: \"\"\n  tls_key_file: \"\"").unwrap();
        assert_eq!((c.tls_cert_file, c.tls_key_file), (None, None));
        let cases: &[(&str, &[&str])] = &[
            (
                "  tls_insecure_skip_verify: true\n  tls_insecure: false",
                &[
                    "extra_config.tls_insecure_skip_verify",
                    "tls_insecure = false",
                ],
            ),
            (
                "  tls_insecure_skip_verify: perhaps",
                &["extra_config.tls_insecure_skip_verify", "perhaps"],
            ),
            (
                "  tls_cert_file: /etc/c.pem",
                &["extra_config.tls_cert_file", "/etc/c.pem", "tls_key_file"],
            ),
            (
                "  tls_key_file: /etc/c.key",
                &["extra_config.tls_key_file", "/etc/c.key", "tls_cert_file"],
            ),
            ("  tls_key_file: [a]", &["extra_config.tls_key_file", "[a]"]),
        ];
        for (extra, want) in cases {
            let e = tls(extra).unwrap_err().to_string();
            for w in *want {
                assert!(e.contains(w), "{extra}: {e} lacks {w}");
            }
        }
        // Client certificates without TLS are a mistake, not silently ignored.
        let e = yaml(&SECTION8_STANDALONE.replace(
            "use_tls: false",
            "use_tls: false\n  tls_cert_file: /c.pem\n  tls_key_file: /c.key",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("TLS is off") && e.contains("/c.pem"), "{e}");
        let e = yaml(&SECTION8_STANDALONE.replace(
            "use_tls: false",
            "use_tls: false\n  tls_insecure_skip_verify: true",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("TLS is off"), "{e}");
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
  max_reply_size: 1048576
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
        assert_eq!(c.max_reply_size, 1 << 20);
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
    fn key_prefix_is_read_and_checked() {
        let t = |v: &str| {
            yaml(&format!(
                "remote_url: redis://h\nextra_config:\n  key_prefix: {v}\n"
            ))
        };
        assert_eq!(t("tenant-a").unwrap().key_prefix, "tenant-a");
        assert_eq!(t("'7'").unwrap().key_prefix, "7");
        assert_eq!(yaml("remote_url: redis://h\n").unwrap().key_prefix, "");
        err_names(t("'a@b'"), &["extra_config.key_prefix", "a@b", "'@'"]);
        err_names(t("'{t}'"), &["extra_config.key_prefix", "{t}", "hash tag"]);
        err_names(t("[a]"), &["extra_config.key_prefix", "expected a string"]);
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
            // Beyond the RESP reader's 512 MiB bulk limit: could be written, never read.
            (
                "max_value_size: 1073741824",
                &["extra_config.max_value_size", "1073741824", "536870912"],
            ),
            (
                "lane_capacity: 16777216",
                &["extra_config.lane_capacity", "16777216", "1048576"],
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
    fn merge_keys_and_anchors() {
        let t = "base: &b\n  chunk_size: 64\n  ttl: 9\nremote_url: redis://h\n\
                 extra_config:\n  <<: *b\n  ttl: 30\n";
        let c = yaml(t).unwrap();
        assert_eq!((c.chunk_size, c.ttl), (64, Some(30)));
        err_names(
            yaml("remote_url: redis://h\nextra_config:\n  <<: 5\n"),
            &["yaml", "merge key"],
        );
        err_names(
            yaml("remote_url: redis://h\n---\nx: 1\n"),
            &["yaml", "2 documents"],
        );
        err_names(
            yaml("remote_url: a\nremote_url: b\n"),
            &["yaml", "duplicate"],
        );
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
            yaml("remote_url: \"rediss-sentinel://h:1\"\n"),
            &["rediss-sentinel://h:1", "Sentinel"],
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
    fn remote_ttl_under_extra_config_is_honoured() {
        let base = "remote_url: redis://h\n";
        let ttl = |t: &str| yaml(&format!("{base}{t}")).map(|c| c.ttl);
        assert_eq!(ttl("extra_config:\n  remote_ttl: 45\n").unwrap(), Some(45));
        assert_eq!(
            ttl("remote_ttl: 45\nextra_config:\n  remote_ttl: \"45\"\n").unwrap(),
            Some(45)
        );
        // Two given that disagree: an error naming both, whichever pair it is.
        err_names(
            ttl("remote_ttl: 60\nextra_config:\n  remote_ttl: 45\n"),
            &["extra_config.remote_ttl", "45", "remote_ttl = 60"],
        );
        err_names(
            ttl("extra_config:\n  ttl: 30\n  remote_ttl: 45\n"),
            &["extra_config.ttl", "30", "extra_config.remote_ttl = 45"],
        );
        err_names(
            ttl("extra_config:\n  remote_ttl: 0\n"),
            &["extra_config.remote_ttl", "0"],
        );
        // The environment fills in only when no key gives a TTL.
        let with_env =
            |t: &str| from_yaml(&format!("{base}{t}"), Some("90".into()), None).map(|(c, _)| c.ttl);
        assert_eq!(with_env("").unwrap(), Some(90));
        assert_eq!(
            with_env("extra_config:\n  remote_ttl: 45\n").unwrap(),
            Some(45)
        );
        // And with a bare URL.
        let c = super::super::Config::from_url_with_env("redis://h", Some("90".into())).unwrap();
        assert_eq!(c.ttl, Some(90));
        err_names(
            super::super::Config::from_url_with_env("redis://h", Some("soon".into())),
            &["LMCACHE_REMOTE_TTL", "soon"],
        );
    }

    #[test]
    fn misspelt_keys_warn_naming_the_known_key() {
        let warnings = |extra: &str| {
            from_yaml(
                &format!("remote_url: redis://h\nextra_config:\n{extra}"),
                None,
                None,
            )
            .unwrap()
            .1
        };
        for (typo, known) in [
            ("chunk_sise: 64", "extra_config.chunk_size"),
            ("maxconnections: 3", "extra_config.max_connections"),
            ("Key_Prefix: a", "extra_config.key_prefix"),
            ("tl: 5", "extra_config.ttl"),
            ("remote_tll: 5", "extra_config.remote_ttl"),
        ] {
            let w = warnings(&format!("  {typo}\n"));
            let key = typo.split(':').next().unwrap();
            assert_eq!(w.len(), 1, "{typo}: {w:?}");
            assert!(
                w[0].contains(&format!("extra_config.{key} ")) && w[0].contains(known),
                "{typo}: {w:?}"
            );
        }
        // Known keys, and other plug-ins' or LMCache's keys far from slotline's: silent.
        let quiet =
            "  chunk_size: 64\n  ttl: 5\n  tls_insecure: false\n  save_unfull_chunk: true\n  \
                     enable_nixl: false\n  remote_storage_plugins: [a]\n";
        assert_eq!(warnings(quiet), Vec::<String>::new());
        let w = warnings("  remote_storage_plugin.slotline.cores: 2\n");
        assert!(w.len() == 1 && w[0].contains("extra_config.cores"), "{w:?}");
    }

    #[test]
    fn tls_files_resolve_against_the_yaml_files_directory() {
        let dir = std::env::temp_dir().join(format!("slotline-cfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        let file = dir.join("conf/lmcache.yaml");
        std::fs::write(
            &file,
            "remote_url: rediss://h:1\nextra_config:\n  tls_ca_file: tls/ca.pem\n  \
             tls_cert_file: /abs/client.pem\n  tls_key_file: ../k.pem\n",
        )
        .unwrap();
        let c = Config::from_yaml_file(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        let c = c.unwrap();
        assert_eq!(c.tls_ca_file, Some(dir.join("conf/tls/ca.pem")));
        assert_eq!(c.tls_cert_file, Some("/abs/client.pem".into()));
        assert_eq!(c.tls_key_file, Some(dir.join("conf/../k.pem")));
        // From text: relative to the current directory, as before.
        let c =
            yaml("remote_url: rediss://h:1\nextra_config:\n  tls_ca_file: tls/ca.pem\n").unwrap();
        assert_eq!(c.tls_ca_file, Some("tls/ca.pem".into()));
    }
}
