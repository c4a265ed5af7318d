//! The lent-memory contract, on canary memory (`common::canary`): once the engine
//! reports a request finished, neither a shard thread nor the kernel touches the
//! caller's memory again, and every request finishes within a bound.
//!
//! Each scenario lends canary buffers (pages that turn `PROT_NONE` the moment they come
//! back: a late write by a shard thread crashes the test, a late kernel access fails
//! its op with EFAULT, counted in `efault_ops` and asserted zero), runs under a watchdog
//! (a thread that fails the test instead of letting it hang) and must end within
//! `request_timeout` plus 2 s. A fake server (`common::fake`) plays what a real
//! redis-server never does: a peer that stops reading, a value stalled or cut off
//! halfway.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::canary::Canary;
use common::fake::{parse_command, read_more, FakeServer};
use common::wait_until;
use common::within;
use slotline::IoBackend;
use slotline::{CallerBufMut, Config, Engine, KeyLayout, PutOwned, PutRef};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The engine's request timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The contract's bound: every call returns within the request timeout plus this.
const GRACE: Duration = Duration::from_secs(2);
/// How long a watchdog lets a scenario run before failing the test (the bound, plus
/// room for a loaded machine; a hang is what it catches).
const WATCHDOG: Duration = Duration::from_secs(20);
/// A value read through the fake server: large enough to be received directly into its
/// destination.
const GET_VALUE: usize = MIB;

fn within_bound(took: Duration, what: &str) {
    assert!(
        took <= TIMEOUT + GRACE,
        "{what} took {took:?}, more than request_timeout + {GRACE:?}"
    );
}

// ----- the fake server -----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    /// Answers the handshake, then stops reading for good once a write (SET, MSET)
    /// starts arriving, keeping the connection open.
    StopsReading,
    /// MGET: the header and half the value, then nothing until released; then the
    /// rest (the client should be long gone).
    StallsMidValue,
    /// MGET: the header and half the value, then the connection closes.
    ClosesMidValue,
    /// MGET: the whole value, then the connection closes.
    Full,
}

#[derive(Default)]
struct Flags {
    /// A write started arriving (StopsReading), or a value started going out.
    started: AtomicBool,
    /// The test sealed its buffers: a stalled value may go on.
    release: AtomicBool,
    /// The rest of a stalled value was written (or the write failed).
    rest_done: AtomicBool,
}

struct Fake {
    srv: FakeServer,
    flags: Arc<Flags>,
}

impl Fake {
    fn start(peer: Peer) -> Fake {
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        let srv = FakeServer::start(move |sock, stop| serve(sock, stop, peer, &f));
        Fake { srv, flags }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn serve(mut sock: TcpStream, stop: &AtomicBool, peer: Peer, f: &Flags) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        while let Some((args, used)) = parse_command(&buf) {
            buf.drain(..used);
            let r = match &args[0].to_ascii_uppercase()[..] {
                b"MGET" => return serve_value(sock, stop, peer, f),
                b"PING" => sock.write_all(b"+PONG\r\n"),
                _ => sock.write_all(b"+OK\r\n"),
            };
            if r.is_err() {
                return;
            }
        }
        // "SET\r\n" ends both "$3\r\nSET" and "$4\r\nMSET" (not "SETNAME").
        if peer == Peer::StopsReading && find(&buf, b"SET\r\n") {
            f.started.store(true, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            return;
        }
        if !read_more(&mut sock, &mut buf) {
            return;
        }
    }
}

fn serve_value(mut sock: TcpStream, stop: &AtomicBool, peer: Peer, f: &Flags) {
    let value = vec![0xCDu8; GET_VALUE];
    if peer == Peer::Full {
        let mut all = format!("*1\r\n${GET_VALUE}\r\n").into_bytes();
        all.extend_from_slice(&value);
        all.extend_from_slice(b"\r\n");
        let _ = sock.write_all(&all);
        f.started.store(true, Ordering::SeqCst);
        return;
    }
    let mut head = format!("*1\r\n${GET_VALUE}\r\n").into_bytes();
    head.extend_from_slice(&value[..GET_VALUE / 2]);
    let sent = sock.write_all(&head);
    f.started.store(true, Ordering::SeqCst);
    if sent.is_err() || peer == Peer::ClosesMidValue {
        return;
    }
    while !f.release.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
    let _ = sock.write_all(&value[GET_VALUE / 2..]);
    let _ = sock.write_all(b"\r\n");
    f.rest_done.store(true, Ordering::SeqCst);
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
}

fn engine(url: &str, b: IoBackend) -> Engine {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = TIMEOUT;
    cfg.deadlines = slotline::Deadlines::uniform(TIMEOUT);
    Engine::new(cfg).unwrap_or_else(|e| panic!("Engine::new: {e}"))
}

/// After a scenario: no EFAULT, no connection still waiting for the kernel, and the
/// engine's drop (bounded) drains its rings without leaking.
fn settle(e: Engine) {
    let m = e.metrics_handle();
    wait_until(
        Duration::from_secs(10),
        "closed connections to be freed",
        || m.snapshot().zombie_conns == 0,
    );
    within(WATCHDOG, "engine drop", move || drop(e));
    let s = m.snapshot();
    assert_eq!(s.efault_ops, 0, "a kernel op hit memory no longer valid");
    assert_eq!(s.kernel_leaks, 0, "operations leaked at shutdown");
    assert_eq!(s.leaked_buffers, 0, "caller buffers given up on");
    assert_eq!(s.zombie_conns, 0);
}

// ----- a peer that stops reading -----

/// A put whose peer stops reading mid-value: the blocking call returns an error
/// within the bound, and only then is the canary sealed.
fn stops_reading_plain(b: IoBackend) {
    let fake = Fake::start(Peer::StopsReading);
    let e = engine(&fake.srv.url(), b);
    let data = Canary::new(12 * MIB, 0x11);
    let (e, data, r, took) = within(
        WATCHDOG,
        "put_slices to a peer that stopped reading",
        move || {
            let t0 = Instant::now();
            let r = e
                .put(&[PutRef {
                    key: b"stalled",
                    data: data.bytes(),
                    meta: None,
                }])
                .wait();
            (e, data, r, t0.elapsed())
        },
    );
    data.seal();
    assert!(r.is_err(), "the put cannot succeed: {r:?}");
    assert!(
        fake.flags.started.load(Ordering::SeqCst),
        "the write reached the peer"
    );
    within_bound(took, "put_slices");
    settle(e);
}
both_backends!(peer_that_stops_reading_plain, stops_reading_plain);

/// The same from a registered region: io_uring sends it with SEND_ZC from the fixed
/// buffer, whose notification comes only once the kernel dropped the unsent data. The
/// region's drop (waiting until no ring holds it) is bounded too.
fn stops_reading_region(b: IoBackend) {
    let fake = Fake::start(Peer::StopsReading);
    let e = engine(&fake.srv.url(), b);
    let region = e.register_region(Canary::new(8 * MIB, 0x5A)).unwrap();
    let registered = e.stats().metrics.regions_registered;
    if b == IoBackend::IoUring && registered == 0 {
        eprintln!("region registration fell back here: the send is not SEND_ZC");
    }
    let (e, r, took) = within(
        WATCHDOG,
        "put_slices from a region to a peer that stopped reading",
        move || {
            let t0 = Instant::now();
            let r = e
                .put(&[PutRef {
                    key: b"stalled",
                    data: region.as_slice(),
                    meta: None,
                }])
                .wait();
            let took = t0.elapsed();
            // Unregisters (waiting for the ring), then drops the canary, which seals it.
            drop(region);
            (e, r, took)
        },
    );
    assert!(r.is_err(), "the put cannot succeed: {r:?}");
    within_bound(took, "put_slices");
    settle(e);
}
both_backends!(peer_that_stops_reading_region, stops_reading_region);

/// Engine drop while a zero-copy put to a peer that stopped reading is in flight (an
/// owned buffer inside a raw region): the drop, the ticket and the region's drop all
/// end within the bound, with every buffer home and nothing leaked past the drain.
fn drop_past_the_drain(b: IoBackend) {
    let fake = Fake::start(Peer::StopsReading);
    let e = engine(&fake.srv.url(), b);
    let m = e.metrics_handle();
    let data = Canary::new(8 * MIB, 0x77);
    let sealer = data.sealer();
    let range = data.addr_range();
    // SAFETY: the canary's mapping is never unmapped (sealing keeps it mapped), so it
    // outlives the region; the engine reaches it only through the owned put below.
    let region = unsafe { e.register_region_raw(range.start as *mut u8, range.len()) }.unwrap();
    let ticket = e
        .put(vec![PutOwned {
            key: b"stalled".to_vec(),
            data: Box::new(data),
            meta: None,
        }])
        .submit();
    wait_until(
        Duration::from_secs(10),
        "the write to reach the peer",
        || fake.flags.started.load(Ordering::SeqCst),
    );
    let t0 = Instant::now();
    let (ticket, region) = within(WATCHDOG, "engine drop with a put in flight", move || {
        drop(e);
        (ticket, region)
    });
    within_bound(t0.elapsed(), "engine drop");
    let back = within(WATCHDOG, "the put's ticket", move || ticket.wait());
    assert_eq!(back.bufs.len(), 1, "the buffer came home");
    assert!(back.result.is_err());
    drop(back.bufs);
    sealer.seal();
    within(WATCHDOG, "region drop", move || drop(region));
    let s = m.snapshot();
    assert_eq!(s.efault_ops, 0);
    assert_eq!(s.kernel_leaks, 0, "operations leaked at shutdown");
    assert_eq!(s.leaked_buffers, 0);
    assert_eq!(s.zombie_conns, 0);
}
both_backends!(engine_drop_past_the_drain, drop_past_the_drain);

// ----- values stalled or cut off halfway -----

/// A read into a canary whose value stops halfway (`StallsMidValue`) or whose
/// connection closes halfway (`ClosesMidValue`, retried until the deadline): the call
/// fails within the bound; the canary is sealed; the rest of a stalled value is then
/// written to the old socket and must not reach it.
fn read_cut_short(b: IoBackend, peer: Peer) {
    let fake = Fake::start(peer);
    let e = engine(&fake.srv.url(), b);
    let dest = Canary::new(GET_VALUE, 0);
    let sealer = dest.sealer();
    let t0 = Instant::now();
    let (e, back) = within(WATCHDOG, "get_into_bufs_async", move || {
        let back = e
            .get(&["k"])
            .into_bufs(vec![Box::new(dest) as Box<dyn CallerBufMut>])
            .submit()
            .wait();
        (e, back)
    });
    let took = t0.elapsed();
    assert_eq!(back.bufs.len(), 1, "the buffer came home");
    drop(back.bufs);
    sealer.seal();
    assert!(back.result.is_err(), "{:?}", back.result);
    within_bound(took, "get_into_bufs_async");
    fake.flags.release.store(true, Ordering::SeqCst);
    if peer == Peer::StallsMidValue {
        wait_until(Duration::from_secs(10), "the rest of the value", || {
            fake.flags.rest_done.load(Ordering::SeqCst)
        });
    }
    settle(e);
}

fn timeout_mid_value(b: IoBackend) {
    read_cut_short(b, Peer::StallsMidValue);
}
both_backends!(
    timeout_mid_value_never_writes_after_return,
    timeout_mid_value
);

fn killed_mid_value(b: IoBackend) {
    read_cut_short(b, Peer::ClosesMidValue);
}
both_backends!(
    connection_killed_mid_value_never_writes_after_return,
    killed_mid_value
);

/// Engine drop with a read and a write in flight (value stalled halfway, peer not
/// reading): the drop ends within the bound, both tickets then complete with their
/// buffers, and the canaries are sealed.
fn drop_in_flight(b: IoBackend) {
    let reads = Fake::start(Peer::StallsMidValue);
    let writes = Fake::start(Peer::StopsReading);
    let er = engine(&reads.srv.url(), b);
    let ew = engine(&writes.srv.url(), b);
    let (mr, mw) = (er.metrics_handle(), ew.metrics_handle());
    let dest = Canary::new(GET_VALUE, 0);
    let src = Canary::new(12 * MIB, 0x33);
    let seals = [dest.sealer(), src.sealer()];
    let get = er
        .get(&["k"])
        .into_bufs(vec![Box::new(dest) as Box<dyn CallerBufMut>])
        .submit();
    let put = ew
        .put(vec![PutOwned {
            key: b"k".to_vec(),
            data: Box::new(src),
            meta: None,
        }])
        .submit();
    wait_until(Duration::from_secs(10), "both requests in flight", || {
        reads.flags.started.load(Ordering::SeqCst) && writes.flags.started.load(Ordering::SeqCst)
    });
    let t0 = Instant::now();
    within(WATCHDOG, "engine drops", move || {
        drop(er);
        drop(ew);
    });
    within_bound(t0.elapsed(), "the engines' drops");
    let (g, p) = within(WATCHDOG, "the tickets", move || (get.wait(), put.wait()));
    assert_eq!((g.bufs.len(), p.bufs.len()), (1, 1), "buffers came home");
    assert!(g.result.is_err() && p.result.is_err());
    drop((g, p));
    for s in &seals {
        s.seal();
    }
    reads.flags.release.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "the rest of the value", || {
        reads.flags.rest_done.load(Ordering::SeqCst)
    });
    for m in [mr, mw] {
        let s = m.snapshot();
        assert_eq!(s.efault_ops, 0);
        assert_eq!(s.kernel_leaks, 0);
        assert_eq!(s.leaked_buffers, 0);
        assert_eq!(s.zombie_conns, 0);
    }
}
both_backends!(engine_drop_with_requests_in_flight, drop_in_flight);

/// The EFAULT counter counts what the canary tests assert is zero: a destination
/// sealed before the call (what a buffer handed back too early looks like to the
/// kernel) fails its receive with EFAULT; the call still ends within the bound.
fn efault_is_counted(b: IoBackend) {
    let fake = Fake::start(Peer::Full);
    let e = engine(&fake.srv.url(), b);
    let m = e.metrics_handle();
    let dest = Canary::new(GET_VALUE, 0);
    dest.seal();
    let t0 = Instant::now();
    let back = within(
        WATCHDOG,
        "get_into_bufs_async into sealed memory",
        move || {
            let back = e
                .get(&["k"])
                .into_bufs(vec![Box::new(dest) as Box<dyn CallerBufMut>])
                .submit()
                .wait();
            drop(e);
            back
        },
    );
    within_bound(t0.elapsed(), "the read and the engine's drop");
    assert!(
        !matches!(&back.result, Ok(v) if v[0].is_some()),
        "a read into sealed memory cannot hit: {:?}",
        back.result
    );
    assert!(m.snapshot().efault_ops >= 1, "EFAULT not counted");
    std::mem::forget(back.bufs);
}
both_backends!(an_efault_is_counted, efault_is_counted);
