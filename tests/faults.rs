//! Fault paths (issue 9): a dropped two-phase put still writes its metadata; a write
//! whose connection drops after it was sent is never resent.
//!
//! Every test runs on both backends against real redis-server processes started by the
//! harness; nothing is mocked.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, TestCluster, TestServer};
use slotline::{Config, Engine, Error, KeyLayout, PutChunk, RemoteMetadata, Value};
use slotline::{IoBackend, Mode};

/// A cluster `put_async` in the `lmcache` layout whose ticket is dropped at once: the
/// engine drives the metadata phase itself, so both keys of every chunk appear.
fn dropped_two_phase_put_completes(backend: IoBackend) {
    let c = TestCluster::start();
    let mut cfg = Config::from_url(&c.seed_url()).expect("seed URL parses");
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    cfg.key_layout = KeyLayout::Lmcache;
    cfg.request_timeout = Duration::from_secs(10);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).expect("engine");
    let layout = KeyLayout::Lmcache;
    let keys: Vec<Vec<u8>> = (0..64)
        .map(|i| format!("model@1@0@{i:x}@bfloat16").into_bytes())
        .collect();
    let len = 4096;
    let chunks: Vec<PutChunk> = keys
        .iter()
        .map(|k| {
            let meta = RemoteMetadata::new(len, 1, 3, &[2, 1, len / 2, 1]).unwrap();
            PutChunk::new(k.clone(), vec![7u8; len], Some(meta))
        })
        .collect();
    drop(e.put(chunks).submit());
    let exists = |k: &[u8]| e.command(&[b"EXISTS", k]).unwrap() == Value::Int(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut missing: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        missing = keys
            .iter()
            .flat_map(|k| [layout.metadata_key(k).unwrap(), layout.payload_key(k)])
            .filter(|rk| !exists(rk))
            .map(|rk| String::from_utf8_lossy(&rk).into_owned())
            .collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        missing.is_empty(),
        "{} keys never written after a dropped put_async, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(4)]
    );
    // A ticket that is kept completes as before, and is_done() turns true.
    let k = b"model@1@0@kept@bfloat16".to_vec();
    let meta = RemoteMetadata::new(len, 1, 3, &[2, 1, len / 2, 1]).unwrap();
    let t = e
        .put(vec![PutChunk::new(k.clone(), vec![1u8; len], Some(meta))])
        .submit();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.is_done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t.is_done(), "is_done() never became true");
    t.wait().expect("kept put");
    assert!(exists(&layout.metadata_key(&k).unwrap()) && exists(&layout.payload_key(&k)));
}
both_backends!(dropped_two_phase_put_completes);

/// A TCP relay in front of a real redis-server that, once, forwards a command starting
/// with `trigger` and then closes the client's connection before the reply: the server
/// applied the command and the client never learns it (what a dropped connection does
/// to a sent request). Everything else is relayed untouched.
struct CuttingRelay {
    port: u16,
    /// Commands seen carrying the trigger (the first one was cut).
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CuttingRelay {
    fn start(upstream: String, trigger: &'static [u8]) -> CuttingRelay {
        CuttingRelay::start_with(upstream, trigger, false)
    }

    /// `partial`: the cut command is not forwarded whole but only its first bytes (the
    /// rest of what was read), then both sides are closed: the server never runs it,
    /// and the client cannot have written it wholly (it is larger than the socket
    /// buffers) before its connection dies.
    fn start_with(upstream: String, trigger: &'static [u8], partial: bool) -> CuttingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(&upstream).unwrap();
                let (mut c_rd, mut s_wr) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_rd, mut c_wr) = (server, client);
                let cuts = c2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match c_rd.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let cut = contains(&buf[..n], trigger)
                            && cuts.fetch_add(1, Ordering::SeqCst) == 0;
                        if cut && partial {
                            let _ = s_wr.write_all(&buf[..n / 2]);
                            let _ = c_rd.shutdown(Shutdown::Both);
                            let _ = s_wr.shutdown(Shutdown::Both);
                            break;
                        }
                        if cut {
                            // Close the client's side first, so no reply can reach it,
                            // then let the server run the command.
                            let _ = c_rd.shutdown(Shutdown::Both);
                        }
                        if s_wr.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if cut {
                            std::thread::sleep(Duration::from_millis(100));
                            let _ = s_wr.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_rd, &mut c_wr);
                    let _ = c_wr.shutdown(Shutdown::Both);
                });
            }
        });
        CuttingRelay { port, cuts, stop }
    }
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for the relay to hand the cut command to the server and the server to run it
/// (`done`). A resend would show in the relay's count of trigger-carrying commands.
fn settle(done: impl Fn() -> bool) {
    wait_until(
        Duration::from_secs(20),
        "the cut command to be applied",
        done,
    );
}

/// `calls` of `cmdstat_<cmd>` on `s` (0 if never called).
fn calls(s: &TestServer, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    s.cmd(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn engine_via(relay: &CuttingRelay, backend: IoBackend) -> Engine {
    let mut cfg = Config::from_url(&format!("redis://127.0.0.1:{}", relay.port)).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(1);
    // Raw keys: the test reads and writes them under these names on the server.
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(5);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).expect("engine through the relay")
}

/// A write whose connection drops after it was sent is never resent: INCR is applied
/// at most once and fails with the unknown-outcome error; a DEL is not resent either
/// (a resent DEL would report 0 deleted). Reads are still retried.
fn sent_writes_are_not_resent(backend: IoBackend) {
    let s = TestServer::start();
    // INCR through Engine::command.
    let relay = CuttingRelay::start(s.addr(), b"INCR");
    let e = engine_via(&relay, backend);
    let r = e.command(&[b"INCR", b"counter"]);
    // `cuts` counts commands carrying the trigger: the INCR went through once.
    assert_eq!(relay.cuts.load(Ordering::SeqCst), 1, "INCR sent once");
    assert!(
        matches!(r, Err(Error::OutcomeUnknown { .. })),
        "INCR after a cut connection: {r:?}"
    );
    // The relay hands the INCR to the server just after cutting the client: give the
    // server a moment, then the count must be exactly one.
    settle(|| s.cmd(&["GET", "counter"]) == "1");
    assert_eq!(s.cmd(&["GET", "counter"]), "1", "INCR applied exactly once");
    drop(e);
    drop(relay);

    // DEL of three keys: applied once, never resent.
    for k in ["d1", "d2", "d3"] {
        s.cmd(&["SET", k, "v"]);
    }
    let relay = CuttingRelay::start(s.addr(), b"DEL");
    let e = engine_via(&relay, backend);
    let r = e.delete(&["d1", "d2", "d3"]).wait();
    assert!(
        matches!(r, Err(Error::OutcomeUnknown { .. })),
        "DEL after a cut connection: {r:?}"
    );
    settle(|| s.cmd(&["EXISTS", "d1", "d2", "d3"]) == "0");
    assert_eq!(relay.cuts.load(Ordering::SeqCst), 1, "DEL sent once");
    drop(e);
    drop(relay);

    // A put (one MSET): never resent; the error says how many chunks are in doubt.
    let relay = CuttingRelay::start(s.addr(), b"MSET");
    let e = engine_via(&relay, backend);
    let r = e
        .put(vec![
            PutChunk::new("p1", b"one".to_vec(), None),
            PutChunk::new("p2", b"two".to_vec(), None),
        ])
        .wait();
    assert!(
        matches!(
            r,
            Err(Error::PutFailed {
                failed: 2,
                outcome_unknown: 2,
                ..
            })
        ),
        "put after a cut connection: {r:?}"
    );
    assert_eq!(relay.cuts.load(Ordering::SeqCst), 1, "MSET sent once");
    settle(|| s.cmd(&["GET", "p2"]) == "two");
    assert_eq!(s.cmd(&["GET", "p1"]), "one", "the MSET itself was applied");
    drop(e);
    drop(relay);

    // A read (EXISTS) whose connection is cut is retried and answers right.
    s.cmd(&["SET", "present", "v"]);
    let relay = CuttingRelay::start(s.addr(), b"EXISTS");
    let e = engine_via(&relay, backend);
    let found = e
        .exists(&["present", "absent"])
        .wait()
        .expect("EXISTS is retried");
    assert!(
        relay.cuts.load(Ordering::SeqCst) >= 2,
        "EXISTS was sent again"
    );
    assert_eq!(found, vec![true, false]);
}
both_backends!(sent_writes_are_not_resent);

/// With a TTL a put is one `SET .. EX` per chunk: cut after it was sent, it is not
/// resent (applied once, with its TTL) and the put reports the chunk as in doubt.
fn sent_set_ex_is_not_resent(backend: IoBackend) {
    let s = TestServer::start();
    let relay = CuttingRelay::start(s.addr(), b"\r\nEX\r\n");
    let mut cfg = Config::from_url(&format!("redis://127.0.0.1:{}", relay.port)).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.ttl = Some(600);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).expect("engine through the relay");
    let r = e
        .put(vec![PutChunk::new("ex1", b"one".to_vec(), None)])
        .wait();
    assert!(
        matches!(
            r,
            Err(Error::PutFailed {
                failed: 1,
                outcome_unknown: 1,
                ..
            })
        ),
        "SET .. EX after a cut connection: {r:?}"
    );
    settle(|| s.cmd(&["GET", "ex1"]) == "one");
    let ttl: i64 = s.cmd(&["TTL", "ex1"]).parse().unwrap();
    assert!((1..=600).contains(&ttl), "applied with its TTL: {ttl}");
    // A later put through the same engine: had the cut one been queued for a resend,
    // it would have gone out before this one.
    e.put(vec![PutChunk::new("ex2", b"two".to_vec(), None)])
        .wait()
        .unwrap();
    assert_eq!(
        relay.cuts.load(Ordering::SeqCst),
        2,
        "ex1 sent once, then ex2"
    );
    assert_eq!(calls(&s, "set"), 2, "SET .. EX applied once per put");
}
both_backends!(sent_set_ex_is_not_resent);

/// A write cut before the whole command reached the socket (a 32 MiB SET, larger than
/// the socket buffers; the server got only its first bytes and never ran it) is sent
/// again on a new connection and applied exactly once: the put succeeds.
fn partly_written_command_is_resent_once(backend: IoBackend) {
    let s = TestServer::start();
    // Large values go out as one SET each: the cut is on part1's.
    let relay = CuttingRelay::start_with(s.addr(), b"$3\r\nSET\r\n$5\r\npart1\r\n", true);
    let e = engine_via(&relay, backend);
    let big: Vec<u8> = (0..32 << 20).map(|i: usize| (i % 251) as u8).collect();
    e.put(vec![
        PutChunk::new("part1", big.clone(), None),
        PutChunk::new("part2", b"two".to_vec(), None),
    ])
    .wait()
    .expect("a command cut before it was wholly sent is resent");
    assert!(
        relay.cuts.load(Ordering::SeqCst) >= 2,
        "the SET was cut, then sent again"
    );
    assert_eq!(calls(&s, "set"), 2, "the server ran each SET once");
    assert_eq!(s.cmd(&["STRLEN", "part1"]), (32 << 20).to_string());
    let got = e.get(&["part1", "part2"]).wait().unwrap();
    assert!(got[0].as_ref().unwrap().data == big);
    assert_eq!(got[1].as_ref().unwrap().data, b"two".to_vec());
    assert_eq!(e.stats().metrics.error_count("outcome_unknown"), 0);
}
both_backends!(partly_written_command_is_resent_once);

/// One shard with a 1-slot lane over a server holding `k`, paused (`CLIENT PAUSE ms
/// ALL`: in force once it has answered, and it answers nothing until `ms` pass).
/// Returns when the pause ends.
fn paused_single_lane_engine(backend: IoBackend, ms: u64) -> (TestServer, Engine, Instant) {
    let s = TestServer::start();
    s.cmd(&["SET", "k", "v"]);
    let mut cfg = Config::from_url(&s.url()).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(1);
    cfg.lane_capacity = 1;
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(60);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    s.cmd(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]);
    let ends = Instant::now() + Duration::from_millis(ms);
    (s, e, ends)
}

/// `*_async` never waits for lane space: with a 1-slot lane and a paused server, far
/// more calls than the shard takes in (512 active parts + the lane) all return while
/// the server is still paused (a call waiting for lane space would wait for the pause)
/// and complete once the server answers again, as futures and as waits.
fn async_calls_never_block(backend: IoBackend) {
    let (_s, e, ends) = paused_single_lane_engine(backend, 8000);
    let mut tickets = Vec::new();
    for _ in 0..700 {
        tickets.push(e.get(&["k"]).submit());
    }
    assert!(
        Instant::now() < ends,
        "the async calls returned only once the server answered"
    );
    // Half as futures (polled by a minimal executor), half by wait().
    let futures = tickets.split_off(350);
    for t in tickets {
        let got = t.wait().expect("get after the pause");
        assert_eq!(got[0].as_ref().map(|c| c.data.clone()), Some(b"v".to_vec()));
    }
    for t in futures {
        let got = block_on(t).expect("get future after the pause");
        assert_eq!(got[0].as_ref().map(|c| c.data.clone()), Some(b"v".to_vec()));
    }
}
both_backends!(async_calls_never_block);

/// Polls a future to completion on this thread, parking between wakes.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < limit, "future never completed");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// A shard thread that dies (test hook: it panics) fails the requests it held, active
/// or still waiting for its lane, instead of leaving awaited tickets hanging; new calls
/// routed to it fail at once.
fn dead_shard_fails_awaited_tickets(backend: IoBackend) {
    let (_s, e, ends) = paused_single_lane_engine(backend, 10_000);
    // Active parts (512) and parts the tickets still hold (the lane is full).
    let tickets: Vec<_> = (0..600).map(|_| e.get(&["k"]).submit()).collect();
    e.debug_crash_shard(0);
    for t in tickets {
        let r = block_on(t);
        assert!(r.is_err(), "a ticket of a dead shard succeeded: {r:?}");
    }
    // Failed by the crash, not by the server answering after the pause (their 60 s
    // deadline is far off).
    assert!(
        Instant::now() < ends,
        "awaited tickets failed only after the pause ended"
    );
    let r = e.get(&["k"]).wait();
    assert!(r.is_err(), "a call routed to a dead shard: {r:?}");
}
both_backends!(dead_shard_fails_awaited_tickets);
