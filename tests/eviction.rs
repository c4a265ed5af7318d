//! A small server that evicts (`maxmemory 8mb`, `allkeys-lru`): reads never return
//! wrong bytes, and every stale or corrupt read is a counted miss. And the janitor's
//! atomic "delete metadata if payload absent" racing puts that rewrite the chunk; its
//! bounded queue (`janitor_overflow`) and its cluster check-then-delete path.

mod common;

use std::time::Duration;

use common::*;
use slotline::{Config, IoBackend};
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
            let _ = e.put(puts).wait();
            // Reads interleaved with the writes, of every key so far.
            let probe: Vec<&String> = keys.iter().step_by(7).collect();
            let got = e.get(&probe).wait().unwrap();
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
    let stats = srv.cmd(&["INFO", "stats"]);
    let evicted: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has evicted_keys");
    assert!(evicted > 0, "the server evicted nothing");
    // Half-evicted chunks (metadata kept, payload gone) are counted misses.
    let stale = errors(&e, "stale_metadata") + errors(&e, "corrupt");
    println!("hits {hits}, misses {misses}, stale/corrupt reads {stale}");
    assert!(
        stale > 0,
        "no stale read was counted (hits {hits}, misses {misses})"
    );
}
both_backends!(evicting_server_never_returns_wrong_bytes);

/// Waits until the janitor has dealt with every key queued so far. It takes its queue
/// in order and waits for each batch's deletes before taking the next: a stale sentinel
/// read now is deleted no earlier than the batch holding everything queued before it,
/// and a second sentinel read after that deletion is deleted only once that batch is done.
fn wait_for_janitor(srv: &TestServer, e: &Engine, round: u32) {
    let layout = KeyLayout::Lmcache;
    for n in 0..2 {
        let k = format!("janitor-sentinel-{round}-{n}");
        e.put(vec![PutChunk::new(k.clone(), content(&k, 0, 16), None)])
            .wait()
            .unwrap();
        let pk = String::from_utf8(layout.payload_key(k.as_bytes())).unwrap();
        let mk = String::from_utf8(layout.metadata_key(k.as_bytes()).unwrap()).unwrap();
        srv.cmd(&["DEL", &pk]);
        assert!(
            e.get(&[&k]).wait().unwrap()[0].is_none(),
            "{k} is stale: a miss"
        );
        wait_until(
            Duration::from_secs(20),
            "the janitor to delete the stale sentinel's metadata",
            || srv.cmd(&["EXISTS", &mk]).contains('0'),
        );
    }
}

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
        e.put(puts(round * 2)).wait().unwrap();
        // "Evict" every payload: each read now finds metadata without payload.
        for k in &keys {
            let pk = String::from_utf8(layout.payload_key(k.as_bytes())).unwrap();
            srv.cmd(&["DEL", &pk]);
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in &keys {
                    let _ = e.get(&[k]).wait();
                }
            });
            s.spawn(|| e.put(puts(round * 2 + 1)).wait().unwrap());
        });
        wait_for_janitor(&srv, &e, round);
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
    }
}
both_backends!(janitor_never_deletes_a_fresh_put);

/// Puts `k` and deletes its payload on the server: its metadata is now stale.
fn make_stale(e: &Engine, del: impl Fn(&str), k: &str) {
    e.put(vec![PutChunk::new(k, content(k, 0, 64), None)])
        .wait()
        .unwrap();
    del(&String::from_utf8(KeyLayout::Lmcache.payload_key(k.as_bytes())).unwrap());
}

fn meta_key(k: &str) -> String {
    String::from_utf8(KeyLayout::Lmcache.metadata_key(k.as_bytes()).unwrap()).unwrap()
}

/// The janitor's queue is bounded: while the janitor is held (its delete script waits
/// on a server pausing writes), stale keys beyond `janitor_queue` are skipped and
/// counted as `janitor_overflow`, one per key; a later read queues them again and they
/// are deleted.
fn janitor_overflow_is_counted(b: IoBackend) {
    let srv = TestServer::start();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Lmcache;
    cfg.janitor_queue = 2;
    let e = Engine::new(cfg).unwrap();
    let del = |k: &str| {
        srv.cmd(&["DEL", k]);
    };
    let keys: Vec<String> = (0..5).map(|i| format!("overflow-{i}")).collect();
    for k in &keys {
        make_stale(&e, del, k);
    }
    srv.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    // The first stale key holds the janitor: its EVAL is a write, held by the pause.
    assert!(e.get(&[&keys[0]]).wait().unwrap()[0].is_none());
    wait_until(
        Duration::from_secs(20),
        "the janitor's delete held by the paused server",
        || blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
    );
    // Four more stale keys: two fit the queue, two overflow.
    assert_eq!(errors(&e, "janitor_overflow"), 0);
    let rest: Vec<&String> = keys[1..].iter().collect();
    assert!(e.get(&rest).wait().unwrap().iter().all(Option::is_none));
    assert_eq!(
        errors(&e, "janitor_overflow"),
        2,
        "two keys found the queue full"
    );
    srv.cmd(&["CLIENT", "UNPAUSE"]);
    // The queued ones are deleted; the skipped ones once a read queues them again.
    for k in &keys[..3] {
        wait_until(
            Duration::from_secs(20),
            "the janitor to delete queued stale metadata",
            || srv.cmd(&["EXISTS", &meta_key(k)]).contains('0'),
        );
    }
    for k in &keys[3..] {
        assert!(
            srv.cmd(&["EXISTS", &meta_key(k)]).contains('1'),
            "{k} was skipped"
        );
        assert!(e.get(&[k]).wait().unwrap()[0].is_none());
        wait_until(
            Duration::from_secs(20),
            "the janitor to delete stale metadata queued again",
            || srv.cmd(&["EXISTS", &meta_key(k)]).contains('0'),
        );
    }
    assert_eq!(errors(&e, "janitor_overflow"), 2);
}
both_backends!(janitor_overflow_is_counted);

/// A cluster with the `lmcache` layout (a chunk's keys on different masters): the
/// janitor checks the payload again before deleting the metadata. A chunk found stale
/// and then written again before the janitor gets to it keeps its metadata; a chunk
/// still stale loses it.
fn janitor_cluster_rechecks_before_deleting(b: IoBackend) {
    let cluster = TestCluster::start_with(3, 0, test_options());
    let c = &cluster;
    let mut cfg = Config::from_url(&c.seed_url()).unwrap();
    cfg.mode = slotline::Mode::Cluster;
    cfg.io_backend = b;
    cfg.key_layout = KeyLayout::Lmcache;
    cfg.request_timeout = Duration::from_secs(30);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    let layout = KeyLayout::Lmcache;
    let owner = |key: &[u8]| c.owner_of(std::str::from_utf8(key).unwrap());
    // A chunk key (of `tag`) whose payload is on `p` and metadata on `m`.
    let pick = |tag: &str, p: usize, m: usize| -> String {
        (0u64..)
            .map(|i| format!("{tag}@1@0@{i:x}@bfloat16"))
            .find(|k| {
                owner(&layout.payload_key(k.as_bytes())) == p
                    && owner(&layout.metadata_key(k.as_bytes()).unwrap()) == m
            })
            .unwrap()
    };
    let exists = |idx: usize, key: &str| c.cmd(idx, &["EXISTS", key]).contains('1');
    let del_on = |idx: usize| {
        move |key: &str| {
            c.cmd(idx, &["DEL", key]);
        }
    };
    // `holder`'s metadata delete goes to master 1, which pauses writes: it holds the
    // janitor while `revived` (payload on 2, metadata on 0) is found stale and written
    // again.
    let holder = pick("holder", 2, 1);
    let revived = pick("revived", 2, 0);
    let stale = pick("stale", 0, 2);
    make_stale(&e, del_on(2), &holder);
    make_stale(&e, del_on(2), &revived);
    make_stale(&e, del_on(0), &stale);
    c.cmd(1, &["CLIENT", "PAUSE", "60000", "WRITE"]);
    assert!(e.get(&[&holder]).wait().unwrap()[0].is_none());
    wait_until(
        Duration::from_secs(20),
        "the janitor's DEL held by the paused master",
        || blocked_clients(&c.cmd(1, &["INFO", "clients"])) > 0,
    );
    let got = e.get(&[&revived, &stale]).wait().unwrap();
    assert!(got.iter().all(Option::is_none), "both are stale: misses");
    e.put(vec![PutChunk::new(
        revived.as_str(),
        content(&revived, 1, 64),
        None,
    )])
    .wait()
    .unwrap();
    c.cmd(1, &["CLIENT", "UNPAUSE"]);
    wait_until(
        Duration::from_secs(20),
        "the janitor to delete the still-stale chunk's metadata",
        || !exists(2, &meta_key(&stale)),
    );
    wait_until(
        Duration::from_secs(20),
        "the janitor to delete the holder's metadata",
        || !exists(1, &meta_key(&holder)),
    );
    // `revived` was in the janitor's batch with `stale`, done by now: it kept its
    // metadata because its payload was back.
    assert!(
        exists(0, &meta_key(&revived)),
        "the janitor deleted the metadata of a chunk written again"
    );
    let got = e
        .get(&[&revived])
        .wait()
        .unwrap()
        .remove(0)
        .expect("revived reads back");
    assert_eq!(got.data, content(&revived, 1, 64));
}
both_backends!(janitor_cluster_rechecks_before_deleting);
