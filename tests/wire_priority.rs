//! Priority on the wire: a PEEK issued while megabytes of PUT are in flight to the
//! same server must not queue behind them on the same connection.
//!
//! Timing ratios are too noisy on a shared machine, so the server here is a fake one
//! (a TcpListener) that makes the effect absolute: it stops reading a connection as
//! soon as a SET or MSET arrives on it, so PUT bytes back up for good. A PEEK sent on
//! any of those connections would never be answered; it must be answered at once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use slotline::config::IoBackend;
use slotline::{Config, Engine, KeyLayout, PutChunk};

const MIB: usize = 1 << 20;

/// Reads one RESP command (an array of bulk strings) from `buf`.
fn parse_command(b: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(b: &[u8], at: usize) -> Option<(usize, usize)> {
        let end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        let n = std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    }
    let (n, mut at) = line(b, 0)?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, start) = line(b, at)?;
        let end = start + len;
        b.get(end..end + 2)?;
        args.push(b[start..end].to_vec());
        at = end + 2;
    }
    Some((args, at))
}

fn serve(mut sock: TcpStream, stop: &AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
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
        match sock.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn peek_under_put_backlog(b: IoBackend) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("redis://{}", l.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let acceptor = thread::spawn(move || {
        let mut conns = Vec::new();
        while !s2.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((sock, _)) => {
                    sock.set_nonblocking(false).unwrap();
                    let s3 = s2.clone();
                    conns.push(thread::spawn(move || serve(sock, &s3)));
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    let mut cfg = Config::from_url(&url).unwrap();
    cfg.io_backend = b;
    // One shard: the PUTs and the PEEK share its connections to the server.
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(3);
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
    stop.store(true, Ordering::SeqCst);
    for t in puts {
        assert!(t.wait().is_err(), "the server never took the PUTs");
    }
    drop(e);
    acceptor.join().unwrap();
}
both_backends!(peek_does_not_queue_behind_puts, peek_under_put_backlog);
