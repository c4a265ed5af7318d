//! Replies a real redis-server never sends (issue 9 items 8 and 10): huge or deeply
//! nested replies to writes, to `Engine::command` and to the topology reads; replies of
//! the wrong shape or length; a proxy refusing CLIENT SETNAME; a MOVED without a host.
//!
//! A hostile proxy sits in front of a real redis-server: it relays every command to the
//! server and every reply back, except for commands naming a trigger, which it answers
//! itself. So the engine under test keeps a real server behind it and must go on
//! working after the hostile reply. Every test runs on both backends.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake::{serve_commands, FakeServer};
use common::{TestCluster, TestServer};
use slotline::{Config, Engine, Error, KeyLayout, PutChunk, Value};
use slotline::{IoBackend, Mode};

/// 64 MiB: the size of the hostile replies.
const HOSTILE: usize = 64 << 20;
/// Most the process's resident memory may grow while one is read.
const RSS_BUDGET: u64 = 16 << 20;

/// The RSS checks measure the whole process: one hostile test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Runs `f` while a thread samples the resident set every millisecond; returns what
/// `f` returned, the peak growth over the start and how long `f` took.
fn peak_rss<T>(f: impl FnOnce() -> T) -> (T, u64, Duration) {
    let base = rss();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = base;
        while !s.load(Ordering::Relaxed) {
            peak = peak.max(rss());
            std::thread::sleep(Duration::from_millis(1));
        }
        peak.max(rss())
    });
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    (out, peak.saturating_sub(base), took)
}

/// Length of the first complete RESP reply in `b`, if it is all there.
fn reply_len(b: &[u8], at: usize) -> Option<usize> {
    let end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
    let num = || -> Option<i64> { std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok() };
    match *b.get(at)? {
        b'+' | b'-' | b':' => Some(end + 2),
        b'$' => {
            let n = num()?;
            if n < 0 {
                return Some(end + 2);
            }
            let stop = end + 2 + n as usize + 2;
            (b.len() >= stop).then_some(stop)
        }
        b'*' => {
            let n = num()?;
            let mut p = end + 2;
            for _ in 0..n.max(0) {
                p = reply_len(b, p)?;
            }
            Some(p)
        }
        _ => None,
    }
}

/// What the proxy answers instead of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostile {
    /// `$67108864` and 64 MiB of bytes.
    Bulk,
    /// 64 MiB of arrays of arrays: `*1024` of `*16384` of `:1`.
    Wide,
    /// 64 MiB of `*1`: arrays nested 16 million deep.
    Deep,
    /// `:5` to a write.
    WrongShape,
    /// One element too many to an MGET.
    WrongCount,
}

const TRIGGERS: [(&[u8], Hostile); 5] = [
    (b"hostile-bulk", Hostile::Bulk),
    (b"hostile-wide", Hostile::Wide),
    (b"hostile-deep", Hostile::Deep),
    (b"hostile-shape", Hostile::WrongShape),
    (b"hostile-count", Hostile::WrongCount),
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes 64 MiB of `unit` after `head`, in 64 KiB writes, until done or the peer
/// goes away. Nothing of that size is ever held in this process.
fn stream_hostile(sock: &mut TcpStream, head: &[u8], unit: &[u8]) {
    if sock.write_all(head).is_err() {
        return;
    }
    let block: Vec<u8> = unit.iter().copied().cycle().take(64 * 1024).collect();
    let mut sent = 0;
    while sent < HOSTILE {
        if sock.write_all(&block).is_err() {
            return;
        }
        sent += block.len();
    }
}

fn answer_hostile(sock: &mut TcpStream, how: Hostile, nkeys: usize, write: bool) {
    match how {
        Hostile::Bulk => stream_hostile(sock, format!("${HOSTILE}\r\n").as_bytes(), b"x"),
        Hostile::Wide => {
            // Each element: `*16384\r\n` then 16384 x `:1\r\n` (64 KiB).
            let mut el = b"*16384\r\n".to_vec();
            el.extend(b":1\r\n".repeat(16384));
            stream_hostile(sock, b"*1024\r\n", &el);
        }
        Hostile::Deep => stream_hostile(sock, b"", b"*1\r\n"),
        // `:5` to a write, `+OK` to anything else (EXISTS, DEL).
        Hostile::WrongShape if write => {
            let _ = sock.write_all(b":5\r\n");
        }
        Hostile::WrongShape => {
            let _ = sock.write_all(b"+OK\r\n");
        }
        Hostile::WrongCount => {
            let mut r = format!("*{}\r\n", nkeys + 1).into_bytes();
            for _ in 0..=nkeys {
                r.extend_from_slice(b"$1\r\nv\r\n");
            }
            let _ = sock.write_all(&r);
        }
    }
}

/// Options of a proxy.
#[derive(Default, Clone, Copy)]
struct ProxyOpts {
    /// Answer CLIENT SETNAME with an error, as twemproxy and envoy do.
    refuse_setname: bool,
}

/// The hostile proxy in front of `upstream`; counts the CLIENT SETNAMEs it saw.
struct Proxy {
    fake: FakeServer,
    setnames: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: String, opts: ProxyOpts) -> Proxy {
        let setnames = Arc::new(AtomicUsize::new(0));
        let seen = setnames.clone();
        let fake = FakeServer::start(move |client, stop| {
            let Ok(mut server) = TcpStream::connect(&upstream) else {
                return;
            };
            let mut rbuf = Vec::new();
            serve_commands(client, stop, |client, args, raw| {
                let is_setname = args.len() >= 2
                    && args[0].eq_ignore_ascii_case(b"CLIENT")
                    && args[1].eq_ignore_ascii_case(b"SETNAME");
                if is_setname {
                    seen.fetch_add(1, Ordering::SeqCst);
                    if opts.refuse_setname {
                        let _ = client.write_all(b"-ERR unknown command 'CLIENT'\r\n");
                        return true;
                    }
                }
                if let Some(&(_, how)) = TRIGGERS
                    .iter()
                    .find(|(t, _)| args[1..].iter().any(|a| contains(a, t)))
                {
                    let write = args[0].eq_ignore_ascii_case(b"SET")
                        || args[0].eq_ignore_ascii_case(b"MSET");
                    answer_hostile(client, how, args.len() - 1, write);
                    if !matches!(how, Hostile::WrongShape | Hostile::WrongCount) {
                        // The engine gave up on this connection; so does the proxy.
                        return false;
                    }
                    return true;
                }
                if server.write_all(&raw).is_err() {
                    return false;
                }
                let n = loop {
                    if let Some(n) = reply_len(&rbuf, 0) {
                        break n;
                    }
                    let mut tmp = [0u8; 64 * 1024];
                    match server.read(&mut tmp) {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => rbuf.extend_from_slice(&tmp[..k]),
                    }
                };
                if client.write_all(&rbuf[..n]).is_err() {
                    return false;
                }
                rbuf.drain(..n);
                true
            });
        });
        Proxy { fake, setnames }
    }

    fn url(&self) -> String {
        self.fake.url()
    }
}

fn engine_at(url: &str, backend: IoBackend, tune: impl FnOnce(&mut Config)) -> Engine {
    let mut cfg = Config::from_url(url).expect("URL parses");
    cfg.io_backend = backend;
    cfg.cores = Some(vec![0]);
    cfg.request_timeout = Duration::from_secs(20);
    tune(&mut cfg);
    Engine::new(cfg).expect("engine")
}

fn protocol_errors(e: &Engine) -> u64 {
    e.stats()
        .metrics
        .errors
        .get("protocol")
        .copied()
        .unwrap_or(0)
}

/// The engine still reads and writes through the proxy.
fn still_works(e: &Engine, tag: &str) {
    let key = format!("after-{tag}").into_bytes();
    e.put(vec![PutChunk::new(key.clone(), vec![9u8; 5000], None)])
        .wait()
        .unwrap_or_else(|err| panic!("put after {tag}: {err}"));
    let got = e
        .get(&[key.as_slice()])
        .wait()
        .expect("get after hostile reply");
    assert_eq!(got[0].as_ref().map(|c| c.data.len()), Some(5000), "{tag}");
    assert_eq!(
        e.command(&[b"PING"]).expect("PING"),
        Value::Simple(b"PONG".to_vec())
    );
}

/// 64 MiB replies (one bulk, wide arrays, deep arrays) to a SET, an MSET and a
/// command: each call fails promptly with a clear error, memory stays bounded, the
/// write is reported as of unknown outcome, and the engine keeps working.
fn huge_replies_are_refused(backend: IoBackend) {
    let _g = serial();
    let server = TestServer::start();
    let proxy = Proxy::start(server.addr(), ProxyOpts::default());
    let e = engine_at(&proxy.url(), backend, |_| {});
    let ttl = engine_at(&proxy.url(), backend, |c| c.ttl = Some(60));
    still_works(&e, "start");
    for (trigger, what) in [
        ("hostile-bulk", "bulk"),
        ("hostile-wide", "wide arrays"),
        ("hostile-deep", "deep arrays"),
    ] {
        // A put: MSET without a TTL, SET .. EX with one.
        for (eng, cmd) in [(&e, "MSET"), (&ttl, "SET")] {
            let before = protocol_errors(eng);
            let chunk = PutChunk::new(
                format!("{trigger}-{cmd}").into_bytes(),
                vec![1u8; 4000],
                None,
            );
            let (r, grew, took) = peak_rss(|| eng.put(vec![chunk]).wait());
            let err = r.expect_err("a put answered by a hostile reply fails");
            let msg = err.to_string();
            assert!(
                msg.contains("larger than its limit") || msg.contains("nested deeper"),
                "{what} to {cmd}: {msg}"
            );
            match err {
                Error::PutFailed {
                    outcome_unknown, ..
                } => assert!(outcome_unknown >= 1, "{what} to {cmd}: {msg}"),
                other => panic!("{what} to {cmd}: {other}"),
            }
            eprintln!("{what} to {cmd}: RSS +{} KiB, {took:?}", grew >> 10);
            assert!(grew < RSS_BUDGET, "{what} to {cmd}: RSS grew {grew} bytes");
            assert!(
                took < Duration::from_secs(10),
                "{what} to {cmd}: took {took:?}"
            );
            assert!(
                protocol_errors(eng) > before,
                "{what} to {cmd}: not counted"
            );
            still_works(eng, &format!("{what} to {cmd}"));
        }
        // A raw command.
        let before = protocol_errors(&e);
        let (r, grew, took) = peak_rss(|| e.command(&[b"GET", trigger.as_bytes()]));
        let msg = r.expect_err("hostile command reply").to_string();
        assert!(
            msg.contains("larger than its limit") || msg.contains("nested deeper"),
            "{what} to a command: {msg}"
        );
        assert!(
            msg.contains("max_reply_size") || msg.contains("nested"),
            "{msg}"
        );
        eprintln!("{what} to a command: RSS +{} KiB, {took:?}", grew >> 10);
        assert!(
            grew < RSS_BUDGET,
            "{what} to a command: RSS grew {grew} bytes"
        );
        assert!(
            took < Duration::from_secs(10),
            "{what} to a command: {took:?}"
        );
        assert!(protocol_errors(&e) > before);
        still_works(&e, &format!("{what} to a command"));
    }
}
both_backends!(huge_replies_are_refused);

/// A write answered by something else than `+OK`, an EXISTS/DEL by something else
/// than an integer: that unit fails (a write as of unknown outcome), counted; the
/// connection stays usable.
fn wrong_shaped_replies_fail_the_unit(backend: IoBackend) {
    let server = TestServer::start();
    let proxy = Proxy::start(server.addr(), ProxyOpts::default());
    let e = engine_at(&proxy.url(), backend, |_| {});
    let ttl = engine_at(&proxy.url(), backend, |c| c.ttl = Some(60));
    for eng in [&e, &ttl] {
        let before = protocol_errors(eng);
        let chunk = PutChunk::new(b"hostile-shape".to_vec(), vec![1u8; 100], None);
        let err = eng
            .put(vec![chunk])
            .wait()
            .expect_err(":5 is no answer to a write");
        let msg = err.to_string();
        assert!(
            msg.contains("unexpected reply to SET/MSET: (integer) 5"),
            "{msg}"
        );
        assert!(
            matches!(err, Error::PutFailed { outcome_unknown, .. } if outcome_unknown >= 1),
            "{msg}"
        );
        assert!(protocol_errors(eng) > before);
        still_works(eng, "wrong shape");
    }
    let raw = engine_at(&proxy.url(), backend, |c| c.key_layout = KeyLayout::Raw);
    let err = raw
        .exists(&[b"hostile-shape".as_slice()])
        .wait()
        .expect_err("+OK is no answer to EXISTS");
    assert!(
        matches!(&err, Error::Protocol { reason, .. } if reason.contains("unexpected reply to EXISTS: OK")),
        "{err}"
    );
    let err = raw
        .delete(&[b"hostile-shape".as_slice()])
        .wait()
        .expect_err("+OK is no answer to DEL");
    assert!(
        matches!(&err, Error::OutcomeUnknown { reason, .. } if reason.contains("unexpected reply to DEL: OK")),
        "{err}"
    );
    still_works(&raw, "wrong shape to EXISTS/DEL");
}
both_backends!(wrong_shaped_replies_fail_the_unit);

/// An MGET answered with more values than keys: nothing is delivered, the keys fail
/// with a clear error, the mismatch is counted.
fn mget_with_wrong_count_delivers_nothing(backend: IoBackend) {
    let server = TestServer::start();
    let proxy = Proxy::start(server.addr(), ProxyOpts::default());
    let e = engine_at(&proxy.url(), backend, |c| c.key_layout = KeyLayout::Raw);
    // The first read of a fresh shard asks for one value (its size is not known
    // yet); after it, two keys go out in one MGET.
    e.get(&[b"warm-up".as_slice()])
        .wait()
        .expect("a plain miss");
    let before = protocol_errors(&e);
    let err = e
        .get(&[b"a-hostile-count".as_slice(), b"b"])
        .wait()
        .expect_err("a 3-value reply to a 2-key MGET");
    let msg = err.to_string();
    assert!(
        msg.contains("MGET of 2 keys answered with 3 values"),
        "{msg}"
    );
    assert!(protocol_errors(&e) > before);
    still_works(&e, "wrong count");
}
both_backends!(mget_with_wrong_count_delivers_nothing);

/// A proxy that refuses CLIENT SETNAME: the engine works anyway; with `client_name`
/// empty it does not even send it.
fn setname_is_optional(backend: IoBackend) {
    let server = TestServer::start();
    let proxy = Proxy::start(
        server.addr(),
        ProxyOpts {
            refuse_setname: true,
        },
    );
    let e = engine_at(&proxy.url(), backend, |_| {});
    still_works(&e, "refused SETNAME");
    assert!(proxy.setnames.load(Ordering::SeqCst) >= 1);
    drop(e);
    let plain = Proxy::start(server.addr(), ProxyOpts::default());
    let e = engine_at(&plain.url(), backend, |c| c.client_name = String::new());
    still_works(&e, "no client name");
    assert_eq!(plain.setnames.load(Ordering::SeqCst), 0, "SETNAME sent");
}
both_backends!(setname_is_optional);

/// SELECT of a database the server does not have stays fatal, with a clear message.
fn select_error_is_fatal_and_clear(backend: IoBackend) {
    let server = TestServer::start();
    let mut cfg = Config::from_url(&server.url()).expect("URL parses");
    cfg.io_backend = backend;
    cfg.cores = Some(vec![0]);
    cfg.database = 99;
    let err = match Engine::new(cfg) {
        Ok(e) => e
            .command(&[b"PING"])
            .expect_err("database 99 does not exist"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("SELECT refused") && msg.contains("DB index"),
        "{msg}"
    );
}
both_backends!(select_error_is_fatal_and_clear);

/// A fake cluster node: owns every slot by CLUSTER SLOTS (it refuses CLUSTER SHARDS,
/// like an old server), answers the handshake, and redirects every other command with
/// `MOVED <slot> :<port>`: no host, which means its own.
fn empty_moved_host_means_the_same_host(backend: IoBackend) {
    let target = TestServer::start();
    let target_port: u16 = target.addr().rsplit(':').next().unwrap().parse().unwrap();
    let port_cell = Arc::new(std::sync::OnceLock::<u16>::new());
    let pc = port_cell.clone();
    let fake = FakeServer::start(move |sock, stop| {
        let me = *pc.get().unwrap();
        serve_commands(sock, stop, |sock, args, _| {
            let up = |a: &[u8]| a.to_ascii_uppercase();
            let reply = match (up(&args[0]).as_slice(), args.get(1).map(|a| up(a))) {
                (b"CLUSTER", Some(sub)) if sub == b"SHARDS" => {
                    b"-ERR unknown subcommand 'SHARDS'\r\n".to_vec()
                }
                (b"CLUSTER", Some(sub)) if sub == b"SLOTS" => {
                    format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{me}\r\n")
                        .into_bytes()
                }
                (b"CLIENT", _) | (b"PING", _) => b"+OK\r\n".to_vec(),
                _ => format!("-MOVED 1 :{target_port}\r\n").into_bytes(),
            };
            sock.write_all(&reply).is_ok()
        });
    });
    let fake_port: u16 = fake.addr.rsplit(':').next().unwrap().parse().unwrap();
    port_cell.set(fake_port).unwrap();
    let mut cfg = Config::from_url(&fake.url()).expect("URL");
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    cfg.cores = Some(vec![0]);
    cfg.request_timeout = Duration::from_secs(10);
    let e = Engine::new(cfg).expect("cluster engine on the fake node");
    let r = e
        .command(&[b"SET", b"moved-key", b"landed"])
        .expect("SET follows the MOVED");
    assert_eq!(r, Value::Simple(b"OK".to_vec()));
    assert_eq!(target.cmd(&["GET", "moved-key"]), "landed");
}
both_backends!(empty_moved_host_means_the_same_host);

/// A fake cluster seed answering CLUSTER SHARDS (or, refusing that, CLUSTER SLOTS) with
/// 64 MiB: the read fails promptly within bounded memory, the next seed (a real
/// cluster node) is used, and the engine works.
fn huge_topology_replies_are_refused(backend: IoBackend) {
    let _g = serial();
    let cluster = TestCluster::start();
    for slots in [false, true] {
        for how in [Hostile::Bulk, Hostile::Wide, Hostile::Deep] {
            let fake = FakeServer::start(move |sock, stop| {
                serve_commands(sock, stop, |sock, args, _| {
                    let sub = args.get(1).map(|a| a.to_ascii_uppercase());
                    match sub.as_deref() {
                        Some(b"SHARDS") if slots => sock
                            .write_all(b"-ERR unknown subcommand 'SHARDS'\r\n")
                            .is_ok(),
                        Some(b"SHARDS") | Some(b"SLOTS") => {
                            answer_hostile(sock, how, 0, false);
                            false
                        }
                        _ => sock.write_all(b"+OK\r\n").is_ok(),
                    }
                });
            });
            let what = format!(
                "{how:?} to CLUSTER {}",
                if slots { "SLOTS" } else { "SHARDS" }
            );
            // The fake alone: a clear error, promptly, within bounded memory.
            let mut cfg = Config::from_url(&fake.url()).expect("URL");
            cfg.mode = Mode::Cluster;
            cfg.io_backend = backend;
            cfg.cores = Some(vec![0]);
            let (r, grew, took) = peak_rss(|| Engine::new(cfg.clone()));
            let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.contains("larger than its limit") || msg.contains("nested deeper"),
                "{what}: {msg}"
            );
            eprintln!("{what}: RSS +{} KiB, {took:?}", grew >> 10);
            assert!(grew < RSS_BUDGET, "{what}: RSS grew {grew} bytes");
            assert!(took < Duration::from_secs(10), "{what}: {took:?}");
            // The fake first, then a real node: the engine starts and works.
            cfg.seeds.push(
                Config::from_url(&format!("redis://{}", cluster.addr(0)))
                    .unwrap()
                    .seeds[0]
                    .clone(),
            );
            let e = Engine::new(cfg).expect("the second seed answers");
            still_works(&e, &what);
        }
    }
}
both_backends!(huge_topology_replies_are_refused);
