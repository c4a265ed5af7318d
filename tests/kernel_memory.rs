//! Memory the kernel may write (io_uring receives straight into a value's destination)
//! is freed only after the kernel returned it: when a connection fails mid-value, when
//! a caller's buffer must go back to the caller, and when the engine is dropped.
//!
//! A real redis-server never trickles a value or closes mid-value, so these tests use a
//! fake server (a TcpListener here) that answers the handshake and then does exactly
//! that. The rings are forced onto the plain setup (no DEFER_TASKRUN) through
//! `SLOTLINE_URING_SETUP=plain`: there the kernel completes receives at any time, not
//! only while the shard waits, which is where an early free would do damage.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use common::fake::{parse_command, read_more, FakeServer};
use common::wait_until;
use slotline::IoBackend;
use slotline::{Config, Engine, KeyLayout};

const VALUE: usize = 64 * 1024;

fn plain_ring() {
    static ONCE: Once = Once::new();
    // Every test calls this before it starts an engine, so no ring is being set up
    // (reading the variable) while it is written.
    ONCE.call_once(|| std::env::set_var("SLOTLINE_URING_SETUP", "plain"));
}

/// How the fake server answers the n-th MGET it sees (counting over all connections).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reply {
    /// The header and 1 KiB of the value, then 1 KiB every 50 ms (64 KiB take ~3 s).
    Trickle,
    /// Half the value, then the connection closes.
    CloseMidway,
    /// The whole value at once.
    Full,
}

/// The fake server and its counters.
struct Fake {
    srv: FakeServer,
    mgets: Arc<AtomicUsize>,
    /// Bytes of values written while the client was still reading.
    trickled: Arc<AtomicUsize>,
}

impl Fake {
    /// Answers MGET number i with `script[i]` (the last entry for later ones).
    fn start(script: Vec<Reply>) -> Fake {
        let mgets = Arc::new(AtomicUsize::new(0));
        let trickled = Arc::new(AtomicUsize::new(0));
        let (m, t) = (mgets.clone(), trickled.clone());
        let srv = FakeServer::start(move |sock, stop| serve(sock, stop, &m, &t, &script));
        Fake {
            srv,
            mgets,
            trickled,
        }
    }

    fn url(&self) -> String {
        self.srv.url()
    }
}

/// Reads one RESP command (an array of bulk strings); `None` at end of stream.
fn read_command(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> Option<Vec<Vec<u8>>> {
    loop {
        if let Some((args, used)) = parse_command(buf) {
            buf.drain(..used);
            return Some(args);
        }
        if !read_more(sock, buf) || stop.load(Ordering::SeqCst) {
            return None;
        }
    }
}

fn serve(
    mut sock: TcpStream,
    stop: &AtomicBool,
    mgets: &AtomicUsize,
    trickled: &AtomicUsize,
    script: &[Reply],
) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(args) = read_command(&mut sock, &mut buf, stop) {
        let name = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        let r = match &name[..] {
            b"PING" => sock.write_all(b"+PONG\r\n"),
            b"MGET" => {
                let i = mgets.fetch_add(1, Ordering::SeqCst);
                let reply = script[i.min(script.len() - 1)];
                // Every key but the last is a miss; the last is the 64 KiB value.
                let mut head = format!("*{}\r\n", args.len() - 1).into_bytes();
                for _ in 2..args.len() {
                    head.extend_from_slice(b"$-1\r\n");
                }
                head.extend_from_slice(format!("${VALUE}\r\n").as_bytes());
                let value = vec![0xAB; VALUE];
                match reply {
                    Reply::Full => {
                        head.extend_from_slice(&value);
                        head.extend_from_slice(b"\r\n");
                        sock.write_all(&head)
                    }
                    Reply::CloseMidway => {
                        head.extend_from_slice(&value[..VALUE / 2]);
                        let _ = sock.write_all(&head);
                        return;
                    }
                    Reply::Trickle => {
                        head.extend_from_slice(&value[..1024]);
                        let mut r = sock.write_all(&head);
                        let mut sent = 1024;
                        while r.is_ok() && sent < VALUE && !stop.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(50));
                            r = sock.write_all(&value[sent..sent + 1024]);
                            if r.is_ok() {
                                trickled.fetch_add(1024, Ordering::SeqCst);
                            }
                            sent += 1024;
                        }
                        r.and_then(|_| sock.write_all(b"\r\n"))
                    }
                }
            }
            _ => sock.write_all(b"+OK\r\n"),
        };
        if r.is_err() {
            return;
        }
    }
}

fn engine(srv: &Fake, b: IoBackend) -> Engine {
    plain_ring();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_millis(200);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).unwrap_or_else(|e| panic!("Engine::new: {e}"))
}

/// A value trickling in past the request timeout: the call fails in time, and (on
/// io_uring) the destination the receive writes into is released only when the kernel
/// returned that receive, counted as a late release; nothing is leaked.
fn slow_value_past_timeout(b: IoBackend, into: bool) {
    let srv = Fake::start(vec![Reply::Trickle]);
    let e = engine(&srv, b);
    let t0 = Instant::now();
    let r = if into {
        e.get(&["k"])
            .into_vecs(vec![vec![0u8; VALUE]])
            .wait()
            .map(|_| ())
    } else {
        e.get(&["k"]).wait().map(|_| ())
    };
    let took = t0.elapsed();
    assert!(
        r.is_err(),
        "a value trickling past the timeout must fail the call"
    );
    assert!(took < Duration::from_secs(3), "the call took {took:?}");
    let m = e.metrics_handle();
    if b == IoBackend::IoUring {
        wait_until(
            Duration::from_secs(5),
            "the kernel to return the receive",
            || m.snapshot().kernel_late_releases >= 1,
        );
    }
    // The server keeps writing for a while after the close; nothing may land anywhere.
    thread::sleep(Duration::from_millis(150));
    drop(e);
    let s = m.snapshot();
    assert_eq!(s.kernel_leaks, 0, "nothing leaked");
    if b == IoBackend::Epoll {
        assert_eq!(s.kernel_late_releases, 0);
    }
}

fn slow_get_past_timeout(b: IoBackend) {
    slow_value_past_timeout(b, false);
}
both_backends!(
    slow_get_releases_destination_after_the_kernel,
    slow_get_past_timeout
);

fn slow_get_into_past_timeout(b: IoBackend) {
    slow_value_past_timeout(b, true);
}
both_backends!(
    slow_get_into_releases_destination_after_the_kernel,
    slow_get_into_past_timeout
);

/// A connection closing mid-value: the unit is retried on a new connection and the
/// caller's own buffer (not a copy, not a fresh one) comes back with the value.
fn caller_buffer_survives_reconnect(b: IoBackend) {
    let srv = Fake::start(vec![Reply::CloseMidway, Reply::Full]);
    let e = engine(&srv, b);
    let buf = vec![0u8; VALUE];
    let ptr = buf.as_ptr();
    let (bufs, infos) = e.get(&["k"]).into_vecs(vec![buf]).wait().unwrap();
    assert_eq!(
        infos[0].as_ref().map(|i| i.len),
        Some(VALUE),
        "hit after the retry"
    );
    assert!(
        srv.mgets.load(Ordering::SeqCst) >= 2,
        "the first attempt was cut off"
    );
    assert_eq!(bufs[0].as_ptr(), ptr, "the caller's buffer came back");
    assert!(bufs[0].iter().all(|&x| x == 0xAB));
    let m = e.metrics_handle();
    drop(e);
    assert_eq!(m.snapshot().kernel_leaks, 0);
}
both_backends!(
    get_into_buffer_comes_back_after_reconnect,
    caller_buffer_survives_reconnect
);

/// Dropping the engine while a receive writes into a value's destination: drop returns
/// only after the kernel gave every operation back (cancelled or completed).
fn drop_with_receive_armed(b: IoBackend) {
    let srv = Fake::start(vec![Reply::Trickle]);
    let e = engine(&srv, b);
    let m = e.metrics_handle();
    let ticket = e.get(&["k"]).submit();
    wait_until(
        Duration::from_secs(5),
        "the value to start trickling",
        || srv.trickled.load(Ordering::SeqCst) > 0,
    );
    drop(e);
    let s = m.snapshot();
    assert_eq!(s.kernel_leaks, 0, "nothing leaked");
    if b == IoBackend::IoUring {
        // The doorbell read and the connection's receive at least.
        assert!(
            s.kernel_drained + s.kernel_late_releases >= 2,
            "drop returned before the kernel gave the receive back: {s:?}"
        );
    }
    assert!(ticket.wait().is_err());
}
both_backends!(engine_drop_waits_for_receives, drop_with_receive_armed);

/// Dropping an idle engine: whatever the ring holds (the doorbell read; an idle
/// connection has no receive armed) comes back.
fn drop_idle(b: IoBackend) {
    let srv = Fake::start(vec![Reply::Full]);
    let e = engine(&srv, b);
    let (bufs, _) = e
        .get(&["k"])
        .into_vecs(vec![vec![0u8; VALUE]])
        .wait()
        .unwrap();
    assert_eq!(bufs[0].len(), VALUE);
    // Let the shard go idle: it re-arms the connection's receive after each reply.
    thread::sleep(Duration::from_millis(100));
    let m = e.metrics_handle();
    drop(e);
    let s = m.snapshot();
    assert_eq!(s.kernel_leaks, 0);
    if b == IoBackend::IoUring {
        assert!(s.kernel_drained >= 1, "doorbell drained: {s:?}");
    }
}
both_backends!(idle_engine_drop_drains_the_ring, drop_idle);
