//! Per-class deadlines, write time-outs with an unknown outcome, a server known down
//! (fast failures, probes, recovery), an unreachable server, name resolution, and
//! caller-memory async calls that never wait for lane space.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use slotline::config::{Config, Deadlines, IoBackend};
use slotline::{Engine, Error, PutChunk};

fn engine_for(url: &str, b: IoBackend, f: impl FnOnce(&mut Config)) -> Engine {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    f(&mut cfg);
    Engine::new(cfg).unwrap()
}

/// Stalls `srv` with `DEBUG SLEEP secs` on another connection (returns once it runs).
fn stall(srv: &TestServer, secs: &'static str) -> std::thread::JoinHandle<()> {
    let addr = srv.addr();
    let h = std::thread::spawn(move || {
        let _ = slotline_testkit::command_str(&addr, None, &["DEBUG", "SLEEP", secs]);
    });
    std::thread::sleep(Duration::from_millis(150));
    h
}

/// With a 30 s `request_timeout`, a PEEK on a stalled server fails after its own short
/// deadline with `Error::Timeout`, and a PUT whose command reached the socket fails
/// with an unknown outcome, not a plain time-out.
fn class_deadlines(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_for(&srv.url(), b, |c| {
        c.request_timeout = Duration::from_secs(30);
        c.deadlines = Deadlines {
            peek: Duration::from_millis(200),
            put: Duration::from_millis(300),
            ..Deadlines::default()
        };
    });
    e.put(vec![PutChunk::new("k", vec![1u8; 64], None)])
        .unwrap();
    let sleeper = stall(&srv, "2");
    let t0 = Instant::now();
    let r = e.exists(&["k"]);
    let took = t0.elapsed();
    assert!(matches!(r, Err(Error::Timeout { .. })), "exists: {r:?}");
    assert!(took < Duration::from_millis(1500), "exists took {took:?}");

    let t0 = Instant::now();
    let r = e.put(vec![PutChunk::new("w", vec![2u8; 64], None)]);
    let took = t0.elapsed();
    match r {
        Err(Error::PutFailed {
            outcome_unknown, ..
        }) if outcome_unknown > 0 => {}
        other => panic!("a sent, unanswered put: expected an unknown outcome, got {other:?}"),
    }
    assert!(took < Duration::from_millis(1500), "put took {took:?}");
    sleeper.join().unwrap();
    // The server answers again: nothing is stuck.
    assert_eq!(e.exists(&["k"]).unwrap(), vec![true]);
}
both_backends!(class_deadlines);

/// A killed server: after the first failed connect, calls fail at once with "down",
/// naming the server; after a restart on the same port a probe finds it and calls
/// succeed again.
fn host_down_fails_fast_and_recovers(b: IoBackend) {
    let mut srv = TestServer::start();
    let addr = srv.addr();
    let e = engine_for(&srv.url(), b, |c| {
        c.connect_timeout = Duration::from_secs(2);
    });
    e.put(vec![PutChunk::new("k", vec![1u8; 64], None)])
        .unwrap();
    srv.proc.kill();
    // The first call finds the connection gone and the reconnect refused.
    let _ = e.get(&["k"]);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t0 = Instant::now();
        let r = e.get(&["k"]);
        slowest = slowest.max(t0.elapsed());
        match r {
            Err(Error::Io {
                ref node,
                ref source,
            }) if node.contains(&addr) => {
                let msg = source.to_string();
                assert!(
                    msg.contains("is down") && msg.contains("next probe in"),
                    "{msg}"
                );
            }
            other => panic!("get while down: {other:?}"),
        }
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a call to a server known down took {slowest:?}"
    );
    srv.proc.restart().unwrap();
    let waited = wait_until(Duration::from_secs(5), "calls succeed again", || {
        e.get(&["k"]).is_ok()
    });
    println!("recovered {waited:?} after the restart");
}
both_backends!(host_down_fails_fast_and_recovers);

/// A listener whose accept queue is full: connects get no answer at all (no RST).
/// Returns it and the connections filling it (keep both alive).
fn blackhole() -> (TcpListener, Vec<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..1024 {
        match TcpStream::connect_timeout(&a, Duration::from_millis(100)) {
            Ok(s) => held.push(s),
            Err(_) => return (l, held),
        }
    }
    panic!("the accept queue never filled");
}

/// An unreachable server holds a call for one connect timeout at most, not three.
fn unreachable_host_costs_one_connect_timeout(b: IoBackend) {
    let (l, _held) = blackhole();
    let url = format!("redis://{}", l.local_addr().unwrap());
    let mut cfg = Config::from_url(&url).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.connect_timeout = Duration::from_millis(1000);
    let t0 = Instant::now();
    let r = Engine::new(cfg);
    let took = t0.elapsed();
    assert!(r.is_err(), "an unreachable server answered");
    assert!(
        took < Duration::from_millis(2500),
        "an unreachable server held the call for {took:?} (connect timeout 1 s)"
    );
}
both_backends!(unreachable_host_costs_one_connect_timeout);

/// `localhost` is resolved off the shard threads and every address is tried (the
/// server listens on 127.0.0.1 only).
fn localhost_url_works(b: IoBackend) {
    let srv = TestServer::start();
    let url = format!("redis://localhost:{}", srv.proc.port());
    let e = engine_for(&url, b, |_| {});
    e.put(vec![PutChunk::new("k", vec![7u8; 100], None)])
        .unwrap();
    let got = e.get(&["k"]).unwrap();
    assert_eq!(
        got[0].as_ref().map(|c| c.data.clone()),
        Some(vec![7u8; 100])
    );
}
both_backends!(localhost_url_works);

/// The caller-memory async calls never wait for lane space: with a 1-slot lane and a
/// stalled server, far more calls than the shard takes in return at once, and complete
/// once the server answers.
fn caller_memory_async_never_blocks(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_for(&srv.url(), b, |c| {
        c.lane_capacity = 1;
        c.request_timeout = Duration::from_secs(20);
        c.deadlines = Deadlines::uniform(c.request_timeout);
    });
    e.put(vec![PutChunk::new("k", vec![5u8; 16], None)])
        .unwrap();
    let sleeper = stall(&srv, "1.5");
    let mut slowest = Duration::ZERO;
    let mut gets = Vec::new();
    let mut puts = Vec::new();
    for i in 0..700 {
        let t0 = Instant::now();
        if i % 2 == 0 {
            let buf: Box<dyn slotline::CallerBufMut> = Box::new(vec![0u8; 16]);
            gets.push(e.get_into_bufs_async(&["k"], vec![buf]));
        } else {
            let data: Box<dyn slotline::CallerBuf> = Box::new(vec![5u8; 16]);
            puts.push(e.put_from_async(vec![slotline::PutOwned {
                key: b"k".to_vec(),
                data,
                meta: None,
            }]));
        }
        slowest = slowest.max(t0.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "a caller-memory async call blocked for {slowest:?} on a full lane"
    );
    for t in gets {
        let r = t.wait().result;
        assert!(r.expect("get_into after the stall")[0].is_some());
    }
    for t in puts {
        t.wait().result.expect("put_from after the stall");
    }
    sleeper.join().unwrap();
}
both_backends!(caller_memory_async_never_blocks);
