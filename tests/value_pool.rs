//! The pool of `get()` value buffers (issue 19, item 3), against a real redis-server: a
//! dropped chunk's buffer is received into again (`Stats::value_pool.reused`), the pool
//! never holds more than its bound, a reused buffer never shows a previous value's
//! bytes, and a payload taken with `Chunk::into_data` stays with the caller.

mod common;

use std::time::Duration;

use common::TestServer;
use slotline::IoBackend;
use slotline::{Config, Engine, PutChunk};

const KIB: usize = 1024;
/// Pooled values (64 KiB and up), several of which exceed the bound together.
const VALUE: usize = 256 * KIB;
/// The pool's bound: `max_node_inflight_bytes` of the one shard.
const BOUND: usize = 1024 * KIB;
const KEYS: usize = 8;

/// A value that differs per key and per byte, so that a stale byte shows.
fn value(k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(k as u32 * 97) as u8
        })
        .collect()
}

fn engine(srv: &TestServer, backend: IoBackend) -> Engine {
    let mut cfg = Config::from_url(&srv.url()).expect("url");
    cfg.io_backend = backend;
    cfg.shards = Some(1);
    cfg.max_node_inflight_bytes = BOUND;
    cfg.request_timeout = Duration::from_secs(20);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).expect("engine")
}

fn value_pool_reuses_within_its_bound(backend: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, backend);
    let keys: Vec<String> = (0..KEYS).map(|k| format!("pool-{k}")).collect();
    e.put(
        (0..KEYS)
            .map(|k| PutChunk::new(keys[k].clone(), value(k, VALUE), None))
            .collect::<Vec<_>>(),
    )
    .wait()
    .expect("put");
    let stats = || e.stats().value_pool;
    assert_eq!(stats().bound_bytes, BOUND as u64);

    // Two keys at a time, dropped before the next read: the same buffers come back.
    for round in 0..4 {
        for pair in keys.chunks(2) {
            let got = e.get(pair).wait().expect("get");
            for (c, k) in got.iter().zip(pair) {
                let k: usize = k["pool-".len()..].parse().expect("key number");
                let c = c
                    .as_ref()
                    .unwrap_or_else(|| panic!("round {round}: key {k} missed"));
                assert!(c.data == value(k, VALUE), "round {round}: key {k} differs");
            }
        }
        let s = stats();
        assert!(s.held_bytes <= s.bound_bytes, "round {round}: {s:?}");
    }
    let s = stats();
    // Only the first pair needed fresh buffers; the other 14 reads reused them.
    assert!(s.reused >= 14, "{s:?}");
    assert!(s.allocated <= 2, "{s:?}");

    // Every value alive at once (2 MiB, twice the bound): dropping them all keeps at
    // most the bound.
    let all = e.get(&keys).wait().expect("get all");
    for (k, c) in all.iter().enumerate() {
        assert!(c.as_ref().expect("hit").data == value(k, VALUE), "key {k}");
    }
    drop(all);
    let s = stats();
    assert!(s.held_bytes <= BOUND as u64, "{s:?}");
    assert!(s.evicted >= 4, "the pool kept more than it may: {s:?}");

    // A slightly shorter value reuses a pooled buffer, at its own length.
    let short = VALUE - 3000;
    e.put(vec![PutChunk::new("pool-short", value(99, short), None)])
        .wait()
        .expect("put short");
    let reused = stats().reused;
    let got = e.get(&["pool-short"]).wait().expect("get short");
    let c = got[0].as_ref().expect("hit");
    assert_eq!(c.data.len(), short);
    assert!(
        c.data == value(99, short),
        "a reused buffer shows other bytes"
    );
    assert_eq!(stats().reused, reused + 1);
    drop(got);

    // A payload the caller takes is not returned.
    let returned = stats().returned;
    let mut got = e.get(&keys[..1]).wait().expect("get");
    let data = got[0].take().expect("hit").into_data();
    assert_eq!(stats().returned, returned);
    assert!(data == value(0, VALUE));
}

both_backends!(value_pool_reuses_within_its_bound);
