//! Scheduling large values: the first GET on a fresh engine is split before any value
//! size is known, MGET replies stay under the in-flight budget (sized by the caller's
//! buffers when there are some), and the per-server byte budget throttles without
//! losing or stalling anything. Real redis-server, both backends.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{blocked_clients, wait_until, TestServer};
use slotline::IoBackend;
use slotline::{Config, Engine, KeyLayout, PutChunk};

const MIB: usize = 1 << 20;

fn engine(url: &str, b: IoBackend, tweak: impl FnOnce(&mut Config)) -> Engine {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(20);
    tweak(&mut cfg);
    Engine::new(cfg).unwrap_or_else(|e| panic!("Engine::new: {e}"))
}

fn value(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_add(seed)).collect()
}

fn put_values(e: &Engine, tag: &str, n: usize, size: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let chunks = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            PutChunk::new(
                k.as_bytes().to_vec(),
                bytes::Bytes::from(value(i as u8, size)),
                None,
            )
        })
        .collect::<Vec<_>>();
    e.put(chunks).wait().unwrap();
    keys
}

fn first_get_is_bounded(b: IoBackend) {
    let srv = TestServer::start();
    let writer = engine(&srv.url(), b, |_| {});
    let keys = put_values(&writer, "first", 8, 4 * MIB);
    // A fresh engine knows no value size: its first MGET must not ask for all 32 MiB.
    let e = engine(&srv.url(), b, |c| c.max_inflight_bytes = 4 * MIB);
    let before = e.stats().metrics.frames_sent;
    let got = e.get(&keys).wait().unwrap();
    let frames = e.stats().metrics.frames_sent - before;
    for (i, c) in got.iter().enumerate() {
        assert!(c.as_ref().unwrap().data[..] == value(i as u8, 4 * MIB)[..]);
    }
    assert!(
        frames >= 4,
        "8 x 4 MiB under a 4 MiB budget took only {frames} MGET frame(s)"
    );
}
both_backends!(first_get_is_bounded);

fn caller_buffers_size_the_budget(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv.url(), b, |c| c.max_inflight_bytes = 2 * MIB);
    let keys = put_values(&e, "into", 8, MIB);
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; MIB]).collect();
    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let before = e.stats().metrics;
    e.get(&keys).into_slices(&mut slices).wait().unwrap();
    let after = e.stats().metrics;
    for (i, buf) in bufs.iter().enumerate() {
        assert!(buf[..] == value(i as u8, MIB)[..]);
    }
    // Two 1 MiB values per MGET (the budget), every byte received directly.
    assert!(after.frames_sent - before.frames_sent >= 4);
    assert_eq!(
        after.recv_direct_bytes - before.recv_direct_bytes,
        8 * MIB as u64
    );
}
both_backends!(caller_buffers_size_the_budget);

fn node_budget_throttles_without_losing_anything(b: IoBackend) {
    let srv = TestServer::start();
    // One value in flight per server at a time: still every write and read completes.
    let e = engine(&srv.url(), b, |c| {
        c.max_node_inflight_bytes = 1;
        c.large_value_connections = Some(2);
    });
    let keys = put_values(&e, "budget", 12, 2 * MIB);
    let got = e.get(&keys).wait().unwrap();
    for (i, c) in got.iter().enumerate() {
        assert!(c.as_ref().unwrap().data[..] == value(i as u8, 2 * MIB)[..]);
    }
    // A PEEK (EXISTS) answers while large reads are queued behind the budget: a write
    // held by the server (CLIENT PAUSE .. WRITE) keeps the one value of budget in
    // flight, so the reads cannot start until it is answered.
    srv.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    let held = e
        .put(vec![PutChunk::new(
            "held",
            bytes::Bytes::from(value(99, 2 * MIB)),
            None,
        )])
        .submit();
    wait_until(
        Duration::from_secs(20),
        "the server to hold the write",
        || blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
    );
    // Submitted (queued) before the PEEK, by the time get_async returns.
    let mut reads = e.get(&keys).submit();
    let present = e.exists(&keys[..1]).wait().unwrap();
    assert_eq!(present, vec![true]);
    // Polled once: the reads are still waiting, behind the held write.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        std::pin::Pin::new(&mut reads).poll(&mut cx).is_pending(),
        "the large reads completed while the budget was held"
    );
    assert!(
        blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
        "the write was answered before the PEEK"
    );
    srv.cmd(&["CLIENT", "UNPAUSE"]);
    held.wait().unwrap();
    let got = reads.wait().unwrap();
    assert_eq!(got.iter().filter(|c| c.is_some()).count(), 12);
}

both_backends!(node_budget_throttles_without_losing_anything);

#[test]
fn scheduling_keys_parse_and_validate() {
    let mut c = Config::from_url("redis://127.0.0.1:6379").unwrap();
    assert_eq!(c.max_node_inflight_bytes, 64 * MIB);
    assert_eq!(c.large_value_connections, None);
    c.max_node_inflight_bytes = 0;
    assert!(c.validate().is_err());
    c.max_node_inflight_bytes = 1;
    c.large_value_connections = Some(0);
    assert!(c.validate().is_err());
    let yaml = "remote_url: redis://127.0.0.1:6379\nextra_config:\n  max_node_inflight_bytes: 33554432\n  large_value_connections: 4\n";
    let c = Config::from_yaml_str(yaml).unwrap();
    assert_eq!(c.max_node_inflight_bytes, 32 * MIB);
    assert_eq!(c.large_value_connections, Some(4));
}
