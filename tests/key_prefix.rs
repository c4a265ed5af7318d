//! `key_prefix` (tenant isolation) against real servers: every key slotline writes,
//! reads, checks and deletes carries the prefix, in every layout, standalone and in a
//! cluster; two engines with different prefixes never see each other's chunks; the
//! prefix stays in front of the hash tag, so a `hashtag` chunk keeps its slot; and the
//! janitor deletes a tenant's stale metadata under the tenant's prefix.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{test_options, wait_until, TestCluster, TestServer};
use slotline::{Config, Engine, KeyLayout, Priority, PutChunk};
use slotline::{IoBackend, Mode};

const LAYOUTS: [KeyLayout; 3] = [KeyLayout::Lmcache, KeyLayout::Hashtag, KeyLayout::Raw];
const WATCHDOG: Duration = Duration::from_secs(20);

fn engine(url: &str, cluster: bool, backend: IoBackend, layout: KeyLayout, prefix: &str) -> Engine {
    let mut cfg = Config::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    if cluster {
        cfg.mode = Mode::Cluster;
    }
    cfg.io_backend = backend;
    cfg.shards = Some(2);
    cfg.key_layout = layout;
    cfg.key_prefix = prefix.to_string();
    cfg.request_timeout = Duration::from_secs(15);
    Engine::new(cfg).unwrap_or_else(|e| panic!("engine on {url} with prefix {prefix:?}: {e}"))
}

/// LMCache-style chunk keys (they contain `@`, like the keys the prefix is joined to).
fn chunk_keys(tag: &str) -> Vec<String> {
    (0..5)
        .map(|i| format!("Llama-3.1-8B@1@0@{tag}{i:x}@bfloat16"))
        .collect()
}

fn data(i: usize, tenant: u8) -> Vec<u8> {
    (0..(100 + 700 * i))
        .map(|j| (j as u8).wrapping_mul(7) ^ tenant)
        .collect()
}

/// The Redis keys a chunk must occupy, spelt out by hand for each layout.
fn redis_keys(layout: KeyLayout, prefix: &str, k: &str) -> Vec<String> {
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}@")
    };
    match layout {
        KeyLayout::Lmcache => vec![format!("{p}{k}kv_bytes"), format!("{p}{k}metadata")],
        KeyLayout::Hashtag => vec![
            format!("{p}{{{k}}}:kv_bytes"),
            format!("{p}{{{k}}}:metadata"),
        ],
        KeyLayout::Raw => vec![format!("{p}{k}")],
    }
}

fn expected(layout: KeyLayout, prefix: &str, keys: &[String]) -> BTreeSet<String> {
    keys.iter()
        .flat_map(|k| redis_keys(layout, prefix, k))
        .collect()
}

fn put(e: &Engine, keys: &[String], tenant: u8) {
    let chunks: Vec<PutChunk> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| PutChunk::new(k.clone(), data(i, tenant), None))
        .collect();
    e.put(chunks).wait().unwrap();
}

fn assert_reads(e: &Engine, keys: &[String], tenant: u8, who: &str) {
    let got = e.get(keys).wait().unwrap();
    for (i, g) in got.iter().enumerate() {
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("{who}: {} missing", keys[i]));
        assert!(
            g.data == data(i, tenant),
            "{who}: {} holds another tenant's bytes",
            keys[i]
        );
    }
}

/// Two tenants and an unprefixed engine on the same server(s); `server_keys` lists every
/// key the server(s) hold.
fn tenants_never_meet(
    layout: KeyLayout,
    a: &Engine,
    b: &Engine,
    plain: &Engine,
    server_keys: &dyn Fn() -> BTreeSet<String>,
) {
    let keys = chunk_keys(&format!("{layout}"));
    let n = keys.len();
    put(a, &keys, 0xA0);
    assert_eq!(
        server_keys(),
        expected(layout, "tenant-a", &keys),
        "{layout}"
    );

    // B and the unprefixed engine see nothing of A's.
    assert_eq!(b.exists(&keys).wait().unwrap(), vec![false; n], "{layout}");
    assert!(
        b.get(&keys).wait().unwrap().iter().all(Option::is_none),
        "{layout}"
    );
    assert_eq!(b.contains_prefix(&keys).wait().unwrap(), 0, "{layout}");
    assert_eq!(
        plain.exists(&keys).wait().unwrap(),
        vec![false; n],
        "{layout}"
    );
    assert_eq!(
        b.delete(&keys).wait().unwrap(),
        0,
        "{layout}: B deleted A's keys"
    );
    assert_eq!(a.exists(&keys).wait().unwrap(), vec![true; n], "{layout}");
    assert_eq!(a.contains_prefix(&keys).wait().unwrap(), n, "{layout}");

    // Same chunk keys, other bytes: each tenant reads its own.
    put(b, &keys, 0xB0);
    let mut both = expected(layout, "tenant-a", &keys);
    both.extend(expected(layout, "tenant-b", &keys));
    assert_eq!(server_keys(), both, "{layout}");
    assert_reads(a, &keys, 0xA0, "tenant A");
    assert_reads(b, &keys, 0xB0, "tenant B");
    if layout != KeyLayout::Raw {
        let metas = a
            .metadata(&keys)
            .priority(Priority::Get)
            .submit()
            .wait()
            .unwrap();
        for (i, m) in metas.iter().enumerate() {
            assert_eq!(
                m.as_ref().map(|m| m.payload_len()),
                Some(data(i, 0).len()),
                "{layout}: A's metadata of {}",
                keys[i]
            );
        }
    }
    let mut into = vec![Vec::new(); n];
    for (i, b) in into.iter_mut().enumerate() {
        *b = vec![0u8; data(i, 0).len()];
    }
    let (bufs, infos) = a.get(&keys).into_vecs(into).wait().unwrap();
    for (i, info) in infos.iter().enumerate() {
        assert!(
            info.is_some(),
            "{layout}: get_into of {} under A's prefix",
            keys[i]
        );
        assert!(
            bufs[i] == data(i, 0xA0),
            "{layout}: get_into bytes of {}",
            keys[i]
        );
    }

    // B deletes its own, A's stay.
    assert_eq!(b.delete(&keys).wait().unwrap(), n, "{layout}");
    assert_eq!(
        server_keys(),
        expected(layout, "tenant-a", &keys),
        "{layout}"
    );
    assert_reads(a, &keys, 0xA0, "tenant A after B's delete");
    assert_eq!(a.delete(&keys).wait().unwrap(), n, "{layout}");
    assert!(server_keys().is_empty(), "{layout}: {:?}", server_keys());
}

/// A's payload vanishes behind its back (eviction): the read misses and the janitor
/// deletes the stale metadata under A's prefix.
fn stale_metadata_goes(
    layout: KeyLayout,
    a: &Engine,
    del: &dyn Fn(&str),
    server_keys: &dyn Fn() -> BTreeSet<String>,
) {
    let keys = chunk_keys("stale");
    put(a, &keys[..1], 0xA0);
    let [payload, meta] = &redis_keys(layout, "tenant-a", &keys[0])[..] else {
        panic!("{layout} has a metadata key");
    };
    del(payload);
    assert_eq!(server_keys(), BTreeSet::from([meta.clone()]), "{layout}");
    assert!(a.get(&keys[..1]).wait().unwrap()[0].is_none(), "{layout}");
    wait_until(WATCHDOG, "the janitor deleting the stale metadata", || {
        server_keys().is_empty()
    });
}

fn lines(s: String) -> BTreeSet<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn standalone(backend: IoBackend) {
    let srv = TestServer::start_with(test_options());
    let url = srv.url();
    let server_keys = || lines(srv.cmd(&["KEYS", "*"]));
    for layout in LAYOUTS {
        let a = engine(&url, false, backend, layout, "tenant-a");
        let b = engine(&url, false, backend, layout, "tenant-b");
        let plain = engine(&url, false, backend, layout, "");
        tenants_never_meet(layout, &a, &b, &plain, &server_keys);
        if layout != KeyLayout::Raw {
            stale_metadata_goes(layout, &a, &|k| drop(srv.cmd(&["DEL", k])), &server_keys);
        }
    }
}
both_backends!(standalone);

#[test]
fn cluster() {
    let c = TestCluster::start_with(3, 0, test_options());
    let url = c.seed_url();
    let server_keys = || {
        (0..3)
            .flat_map(|i| lines(c.cmd(i, &["KEYS", "*"])))
            .collect::<BTreeSet<_>>()
    };
    let del = |k: &str| drop(c.cmd(c.owner_of(k), &["DEL", k]));
    for layout in LAYOUTS {
        let backend = IoBackend::Auto;
        let a = engine(&url, true, backend, layout, "tenant-a");
        let b = engine(&url, true, backend, layout, "tenant-b");
        let plain = engine(&url, true, backend, layout, "");
        tenants_never_meet(layout, &a, &b, &plain, &server_keys);
        if layout != KeyLayout::Raw {
            stale_metadata_goes(layout, &a, &del, &server_keys);
        }
    }
    // The prefix sits in front of the hash tag: a hashtag chunk's keys share the slot
    // of the unprefixed chunk (the server's own CLUSTER KEYSLOT says so).
    for k in chunk_keys("slot") {
        let plain = c.keyslot(&format!("{{{k}}}:kv_bytes"));
        for key in redis_keys(KeyLayout::Hashtag, "tenant-a", &k) {
            assert_eq!(c.keyslot(&key), plain, "{key}");
        }
    }
}

#[test]
fn a_prefix_that_would_become_the_hash_tag_is_refused() {
    for bad in ["{tenant}", "t{", "t}", "a@b"] {
        let mut cfg = Config::from_url("redis://127.0.0.1:1").unwrap();
        cfg.key_prefix = bad.to_string();
        let e = Engine::new(cfg).unwrap_err().to_string();
        assert!(
            e.contains("extra_config.key_prefix") && e.contains(bad),
            "{e}"
        );
    }
}
