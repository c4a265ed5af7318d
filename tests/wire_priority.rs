//! Priority on the wire: a PEEK issued while megabytes of PUT are in flight to the
//! same server must not queue behind them on the same connection.
//!
//! Timing ratios are too noisy on a shared machine, so the server here is a fake one
//! (a TcpListener) that makes the effect absolute: it stops reading a connection as
//! soon as a SET or MSET arrives on it, so PUT bytes back up for good. A PEEK sent on
//! any of those connections would never be answered; it must be answered at once.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::fake::{parse_command, read_more, FakeServer};
use slotline::config::IoBackend;
use slotline::{Config, Engine, KeyLayout, PutChunk};

const MIB: usize = 1 << 20;

fn serve(mut sock: TcpStream, stop: &AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        while let Some((args, used)) = parse_command(&buf) {
            buf.drain(..used);
            let name = args[0].to_ascii_uppercase();
            let reply: &[u8] = match &name[..] {
                b"PING" => b"+PONG\r\n",
                b"EXISTS" => b":1\r\n",
                b"SET" | b"MSET" => {
                    // Stall: this connection is never read again.
                    while !stop.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
                _ => b"+OK\r\n",
            };
            if sock.write_all(reply).is_err() {
                return;
            }
        }
        // Stop reading as soon as a SET's header shows up, mid-command: its payload
        // then backs up in the socket.
        if buf.windows(3).any(|w| w.eq_ignore_ascii_case(b"SET")) {
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        if !read_more(&mut sock, &mut buf) {
            return;
        }
    }
}

fn peek_under_put_backlog(b: IoBackend) {
    let srv = FakeServer::start(serve);
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    // One shard: the PUTs and the PEEK share its connections to the server.
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(3);
    cfg.deadlines = slotline::config::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    let value = bytes::Bytes::from(vec![7u8; MIB]);
    // 32 MiB of PUT, each chunk its own request; none can finish.
    let puts: Vec<_> = (0..32)
        .map(|i| e.put_async(vec![PutChunk::new(format!("big-{i}"), value.clone(), None)]))
        .collect();
    thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let r = e.exists(&["probe"]);
    let took = t0.elapsed();
    println!("{b:?}: PEEK answered in {took:?} behind a stalled 32 MiB PUT backlog");
    assert_eq!(r.unwrap(), vec![true], "the PEEK queued behind the PUTs");
    assert!(took < Duration::from_secs(2), "PEEK took {took:?}");
    srv.stop();
    for t in puts {
        assert!(t.wait().is_err(), "the server never took the PUTs");
    }
    drop(e);
    drop(srv);
}
both_backends!(peek_does_not_queue_behind_puts, peek_under_put_backlog);
