//! Per-class deadlines, write time-outs with an unknown outcome, a server known down
//! (fast failures, probes, recovery), an unreachable server, name resolution, and
//! caller-memory async calls that never wait for lane space.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use slotline::{Config, Deadlines, IoBackend};
use slotline::{Engine, Error, PutChunk};

fn engine_for(url: &str, b: IoBackend, f: impl FnOnce(&mut Config)) -> Engine {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    f(&mut cfg);
    Engine::new(cfg).unwrap()
}

/// Pauses `srv` (`CLIENT PAUSE ms mode`, mode `ALL` or `WRITE`): in force once this
/// returns (the server has answered), so no guess about when a stall began. Returns
/// when it ends by itself. Under `ALL` the server answers nothing, `CLIENT UNPAUSE`
/// included, until then; under `WRITE` it still answers reads and `CLIENT UNPAUSE`.
fn pause(srv: &TestServer, d: Duration, mode: &str) -> Instant {
    srv.cmd(&["CLIENT", "PAUSE", &d.as_millis().to_string(), mode]);
    Instant::now() + d
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
        .wait()
        .unwrap();
    // Paused far longer than the classes' deadlines and far shorter than the 30 s cap:
    // a call that returns while the server is paused ran out of its class's time.
    let ends = pause(&srv, Duration::from_secs(6), "ALL");
    let r = e.exists(&["k"]).wait();
    assert!(Instant::now() < ends, "exists waited for the paused server");
    assert!(matches!(r, Err(Error::Timeout { .. })), "exists: {r:?}");

    let r = e.put(vec![PutChunk::new("w", vec![2u8; 64], None)]).wait();
    assert!(Instant::now() < ends, "put waited for the paused server");
    match r {
        Err(Error::PutFailed {
            outcome_unknown, ..
        }) if outcome_unknown > 0 => {}
        other => panic!("a sent, unanswered put: expected an unknown outcome, got {other:?}"),
    }
    // The server answers again: nothing is stuck.
    wait_until(
        Duration::from_secs(30),
        "exists to answer after the pause",
        || e.exists(&["k"]).wait().ok() == Some(vec![true]),
    );
}
both_backends!(class_deadlines);

/// A killed server: after the first failed connect, calls fail at once with "down",
/// naming the server; after a restart on the same port a probe finds it and calls
/// succeed again.
fn host_down_fails_fast_and_recovers(b: IoBackend) {
    let mut srv = TestServer::start();
    let addr = srv.addr();
    let e = engine_for(&srv.url(), b, |c| {
        c.connect_timeout = Duration::from_secs(10);
    });
    e.put(vec![PutChunk::new("k", vec![1u8; 64], None)])
        .wait()
        .unwrap();
    srv.proc.kill();
    // The first call finds the connection gone and the reconnect refused.
    let _ = e.get(&["k"]).wait();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t0 = Instant::now();
        let r = e.get(&["k"]).wait();
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
    // None waited for a connect (10 s connect timeout; a refused connect is quick
    // anyway: the messages above are what shows no connect was tried).
    assert!(
        slowest < Duration::from_secs(5),
        "a call to a server known down took {slowest:?}"
    );
    srv.proc.restart().unwrap();
    let waited = wait_until(Duration::from_secs(5), "calls succeed again", || {
        e.get(&["k"]).wait().is_ok()
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
    let connect = Duration::from_secs(3);
    cfg.connect_timeout = connect;
    let t0 = Instant::now();
    let r = Engine::new(cfg);
    let took = t0.elapsed();
    assert!(r.is_err(), "an unreachable server answered");
    // One connect timeout (3 s), with 3 s to spare on a loaded machine; three would
    // take 9 s.
    assert!(
        took < 2 * connect,
        "an unreachable server held the call for {took:?} (connect timeout {connect:?})"
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
        .wait()
        .unwrap();
    let got = e.get(&["k"]).wait().unwrap();
    assert_eq!(
        got[0].as_ref().map(|c| c.data.clone()),
        Some(vec![7u8; 100])
    );
}
both_backends!(localhost_url_works);

/// The caller-memory async calls never wait for lane space: with a 1-slot lane and a
/// server holding writes, far more calls than the shard takes in return at once, and
/// complete once the server answers.
fn caller_memory_async_never_blocks(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_for(&srv.url(), b, |c| {
        c.lane_capacity = 1;
        c.request_timeout = Duration::from_secs(20);
        c.deadlines = Deadlines::uniform(c.request_timeout);
    });
    e.put(vec![PutChunk::new("k", vec![5u8; 16], None)])
        .wait()
        .unwrap();
    // Writes are held by the server: the PUT lane (1 slot) fills at once.
    pause(&srv, Duration::from_secs(60), "WRITE");
    let mut gets = Vec::new();
    let mut puts = Vec::new();
    // More puts than a shard works on at once (512 parts): the rest wait in the lane.
    for i in 0..1400 {
        if i % 4 == 0 {
            let buf: Box<dyn slotline::CallerBufMut> = Box::new(vec![0u8; 16]);
            gets.push(e.get(&["k"]).into_bufs(vec![buf]).submit());
        } else {
            let data: Box<dyn slotline::CallerBuf> = Box::new(vec![5u8; 16]);
            puts.push(
                e.put(vec![slotline::PutOwned {
                    key: b"k".to_vec(),
                    data,
                    meta: None,
                }])
                .submit(),
            );
        }
    }
    // Every call returned while the server still held the writes: none waited for
    // lane space (a call that did would still be waiting, or would have waited out
    // the minute's pause).
    wait_until(
        Duration::from_secs(20),
        "the server to hold the writes the calls submitted",
        || blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
    );
    srv.cmd(&["CLIENT", "UNPAUSE"]);
    for t in gets {
        let r = t.wait().result;
        assert!(r.expect("get_into after the stall")[0].is_some());
    }
    for t in puts {
        t.wait().result.expect("put_from after the stall");
    }
}
both_backends!(caller_memory_async_never_blocks);

/// What a read did: its name, whether it was served (a hit) rather than timed out,
/// and when it returned. A GET that times out fails with `Error::Timeout`; a PREFETCH
/// (LMCache's prefix read) ends its prefix at a key that failed, so its time-out is an
/// empty prefix. Any other result fails the test.
type Outcome = (&'static str, bool, Instant);

fn outcome(what: &'static str, r: Result<bool, Error>) -> Outcome {
    let at = Instant::now();
    match r {
        Ok(true) => (what, true, at),
        Ok(false) if what.starts_with("PREFETCH") => (what, false, at),
        Err(Error::Timeout { .. }) if what.starts_with("GET") => (what, false, at),
        other => panic!("{what}: {other:?}"),
    }
}

/// GET and PREFETCH each run on their own class deadline (not one uniform time), and a
/// read's deadline grows by `per_mib_ms` per MiB of caller buffer, capped by
/// `request_timeout`. All calls run while the server is paused for 4 s: a short
/// deadline (300 ms) times out before the pause ends, a long one (20 s or more)
/// outlasts it and the call succeeds once the server answers.
fn get_and_prefetch_deadlines(b: IoBackend) {
    let srv = TestServer::start();
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(20);
    let mib = 1 << 20;
    let with = |get, prefetch, per_mib, cap| {
        engine_for(&srv.url(), b, move |c| {
            c.request_timeout = cap;
            c.deadlines = Deadlines {
                get,
                prefetch,
                per_mib,
                ..Deadlines::default()
            };
        })
    };
    let cap = Duration::from_secs(60);
    let get_short = with(short, long, Duration::ZERO, cap);
    let prefetch_short = with(long, short, Duration::ZERO, cap);
    // 300 ms + 30 s per MiB: a 1 MiB buffer has 30.3 s, a 16-byte one 300 ms.
    let scaled = with(short, short, Duration::from_secs(30), cap);
    // The same scaling under a 1 s cap: 1 s for the 1 MiB buffer.
    let capped = with(
        short,
        short,
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    get_short
        .put(vec![
            PutChunk::new("k", vec![1u8; 16], None),
            PutChunk::new("big", vec![2u8; mib], None),
        ])
        .wait()
        .unwrap();
    let ends = pause(&srv, Duration::from_secs(4), "ALL");
    let one = |buf_len: usize| vec![0u8; buf_len];
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let calls = [
            s.spawn(|| {
                outcome(
                    "GET, get_ms 300",
                    get_short.get(&["k"]).wait().map(|g| g[0].is_some()),
                )
            }),
            s.spawn(|| {
                outcome(
                    "PREFETCH, prefetch_ms 20 s",
                    get_short.prefetch(&["k"]).wait().map(|g| g.len() == 1),
                )
            }),
            s.spawn(|| {
                outcome(
                    "GET, get_ms 20 s",
                    prefetch_short.get(&["k"]).wait().map(|g| g[0].is_some()),
                )
            }),
            s.spawn(|| {
                outcome(
                    "PREFETCH, prefetch_ms 300",
                    prefetch_short.prefetch(&["k"]).wait().map(|g| g.len() == 1),
                )
            }),
            s.spawn(|| {
                let mut buf = one(mib);
                let r = scaled.get(&["big"]).into_slices(&mut [&mut buf[..]]).wait();
                outcome(
                    "GET into 1 MiB, 300 ms + 30 s/MiB",
                    r.map(|g| g[0].is_some()),
                )
            }),
            s.spawn(|| {
                let mut buf = one(16);
                let r = scaled.get(&["k"]).into_slices(&mut [&mut buf[..]]).wait();
                outcome(
                    "GET into 16 B, 300 ms + 30 s/MiB",
                    r.map(|g| g[0].is_some()),
                )
            }),
            s.spawn(|| {
                let mut buf = one(mib);
                let r = capped.get(&["big"]).into_slices(&mut [&mut buf[..]]).wait();
                outcome("GET into 1 MiB, capped at 1 s", r.map(|g| g[0].is_some()))
            }),
        ];
        calls.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // (The PREFETCH's time-out is logged but not counted in the stats: its batch
    // answers Ok with an empty prefix, and only failed batches are counted.)
    assert_eq!(get_short.stats().metrics.error_count("timeout"), 1);
    let expect = [false, true, true, false, true, false, false];
    for ((what, ok, at), want) in outcomes.iter().zip(expect) {
        if want {
            assert!(*ok, "{what}: timed out, its deadline outlasts the pause");
            assert!(*at >= ends, "{what}: answered while the server was paused");
        } else {
            assert!(
                !*ok,
                "{what}: succeeded, but its deadline is shorter than the pause"
            );
            assert!(*at < ends, "{what}: timed out only after the pause ended");
        }
    }
}
both_backends!(get_and_prefetch_deadlines);

/// A write that never left the engine before its deadline (queued behind a paused
/// server's in-flight budget) fails with `Error::Timeout`-kind time-out, not an unknown
/// outcome, and is not applied later: the server cannot have run it.
fn write_timed_out_before_sending_is_not_unknown(b: IoBackend) {
    let srv = TestServer::start();
    let mib = 1 << 20;
    let e = engine_for(&srv.url(), b, |c| {
        c.request_timeout = Duration::from_secs(60);
        // 200 ms + 4 s per MiB: the 4 MiB put has 16.2 s, the 64 KiB one 450 ms.
        c.deadlines = Deadlines {
            put: Duration::from_millis(200),
            per_mib: Duration::from_secs(4),
            ..Deadlines::default()
        };
        c.max_node_inflight_bytes = 4 * mib;
    });
    let ends = pause(&srv, Duration::from_secs(60), "WRITE");
    let first = e
        .put(vec![PutChunk::new("first", vec![1u8; 4 * mib], None)])
        .submit();
    wait_until(
        Duration::from_secs(20),
        "the first put held by the paused server",
        || blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
    );
    // The server has the budget's worth in flight: the next write waits unsent.
    let r = e
        .put(vec![PutChunk::new("second", vec![2u8; 64 << 10], None)])
        .wait();
    assert!(Instant::now() < ends);
    match &r {
        Err(Error::Timeout { .. }) => {}
        Err(Error::PutFailed {
            outcome_unknown: 0,
            first_error,
            ..
        }) if first_error.contains("timed out") => {}
        other => panic!("an unsent write past its deadline: expected a time-out, got {other:?}"),
    }
    srv.cmd(&["CLIENT", "UNPAUSE"]);
    first
        .wait()
        .expect("the first put, once the server answers");
    // Anything the engine still had of the second put would have gone out by now,
    // behind the first on the same connection.
    e.put(vec![PutChunk::new("third", vec![3u8; 16], None)])
        .wait()
        .unwrap();
    assert_eq!(
        srv.cmd(&["EXISTS", "second"]),
        "0",
        "a write that failed with a time-out was applied"
    );
    assert_eq!(e.stats().metrics.error_count("outcome_unknown"), 0);
}
both_backends!(write_timed_out_before_sending_is_not_unknown);
