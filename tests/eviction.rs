//! A small server that evicts (`maxmemory 8mb`, `allkeys-lru`): reads never return
//! wrong bytes, and every stale or corrupt read is a counted miss. And the janitor's
//! atomic "delete metadata if payload absent" racing puts that rewrite the chunk.

mod common;

use std::time::{Duration, Instant};

use common::*;
use slotline::config::{Config, IoBackend};
use slotline::{Engine, KeyLayout, PutChunk};
use slotline_testkit::ServerOptions;

fn engine_for(srv: &TestServer, b: IoBackend) -> Engine {
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(2);
    cfg.key_layout = KeyLayout::Lmcache;
    Engine::new(cfg).unwrap()
}

/// Content derived from the key and a version: any mix-up shows.
fn content(key: &str, version: u32, len: usize) -> Vec<u8> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes().chain(version.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    (0..len)
        .map(|i| (h.rotate_left((i % 64) as u32) as u8) ^ (i as u8))
        .collect()
}

fn errors(e: &Engine, kind: &str) -> u64 {
    e.stats().metrics.error_count(kind)
}

fn evicting_server_never_returns_wrong_bytes(b: IoBackend) {
    let srv = TestServer::start_with(ServerOptions {
        maxmemory: Some("8mb".into()),
        ..test_options()
    });
    let e = engine_for(&srv, b);
    let len = 64 * 1024;
    let keys: Vec<String> = (0..400).map(|i| format!("evict-{i}")).collect();
    let mut version = vec![0u32; keys.len()];
    let (mut hits, mut misses) = (0u64, 0u64);
    for round in 0..6u32 {
        // ~25 MiB per round into an 8 MiB server: most of it is evicted.
        for (i, chunk) in keys.chunks(20).enumerate() {
            let puts: Vec<PutChunk> = chunk
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    version[i * 20 + j] = round + 1;
                    PutChunk::new(k.clone(), content(k, round + 1, len), None)
                })
                .collect();
            // A put may fail with OOM when eviction cannot keep up: that is an answer.
            let _ = e.put(puts);
            // Reads interleaved with the writes, of every key so far.
            let probe: Vec<&String> = keys.iter().step_by(7).collect();
            let got = e.get(&probe).unwrap();
            for (k, g) in probe.iter().zip(got) {
                let idx: usize = k["evict-".len()..].parse().unwrap();
                match g {
                    Some(c) => {
                        hits += 1;
                        // The newest version, or an older one still held (a put that
                        // failed leaves the previous value): never foreign bytes.
                        let ok = (0..=version[idx]).any(|v| c.data == content(k, v, len));
                        assert!(ok, "wrong bytes for {k} (round {round})");
                    }
                    None => misses += 1,
                }
            }
        }
    }
    assert!(hits > 0, "nothing was ever read back");
    assert!(
        misses > 0,
        "nothing was evicted: the test did not test eviction"
    );
    let evicted = srv.cmd(&["INFO", "stats"]);
    assert!(evicted.contains("evicted_keys:"), "{evicted}");
    // Half-evicted chunks (metadata kept, payload gone) are counted misses.
    let stale = errors(&e, "stale_metadata") + errors(&e, "corrupt");
    println!("hits {hits}, misses {misses}, stale/corrupt reads {stale}");
    assert!(
        stale > 0,
        "no stale read was counted (hits {hits}, misses {misses})"
    );
}
both_backends!(evicting_server_never_returns_wrong_bytes);

/// Puts rewriting payload and metadata race the janitor deleting the chunk's "stale"
/// metadata: a chunk whose payload exists afterwards always has its metadata.
fn janitor_never_deletes_a_fresh_put(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_for(&srv, b);
    let layout = KeyLayout::Lmcache;
    let keys: Vec<String> = (0..200).map(|i| format!("race-{i}")).collect();
    for round in 0..5u32 {
        let puts = |v: u32| -> Vec<PutChunk> {
            keys.iter()
                .map(|k| PutChunk::new(k.clone(), content(k, v, 256), None))
                .collect()
        };
        e.put(puts(round * 2)).unwrap();
        // "Evict" every payload: each read now finds metadata without payload.
        for k in &keys {
            let pk = String::from_utf8(layout.payload_key(k.as_bytes())).unwrap();
            srv.cmd(&["DEL", &pk]);
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in &keys {
                    let _ = e.get(&[k]);
                }
            });
            s.spawn(|| e.put(puts(round * 2 + 1)).unwrap());
        });
        // Let the janitor finish what it queued.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        for k in &keys {
            let pk = String::from_utf8(layout.payload_key(k.as_bytes())).unwrap();
            let mk = String::from_utf8(layout.metadata_key(k.as_bytes()).unwrap()).unwrap();
            let payload = srv.cmd(&["EXISTS", &pk]);
            let meta = srv.cmd(&["EXISTS", &mk]);
            assert!(
                !(payload.contains('1') && meta.contains('0')),
                "round {round}: {k} has its payload but the janitor deleted its metadata"
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
    }
}
both_backends!(janitor_never_deletes_a_fresh_put);
