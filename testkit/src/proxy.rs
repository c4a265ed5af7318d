//! A fault-injecting TCP proxy in front of a real server: it relays bytes both ways
//! unchanged until told to [`stall`](FaultProxy::stall) (stop reading and forwarding
//! in both directions, so the peers' socket buffers fill and their sends block),
//! [`cut`](FaultProxy::cut) (close both sides of every current connection with a FIN)
//! or [`reset`](FaultProxy::reset) (close them with `SO_LINGER` 0: a RST, unsent data
//! dropped); [`pass`](FaultProxy::pass) resumes relaying. New connections are accepted
//! all the while (stalled ones wait like the others).
//!
//! It works on bytes, not commands: pipelined traffic, partial values and large
//! payloads go through as the kernel hands them over. (The command-level proxy of
//! `tests/hostile.rs` answers chosen commands itself; this one never invents bytes.)
//!
//! Each connection is served by two threads (one per direction) using blocking
//! sockets with 20 ms time-outs, so every state change takes effect within about
//! 20 ms; dropping the proxy stops and joins them all.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often a blocked relay thread looks at the proxy's state.
const TICK: Duration = Duration::from_millis(20);
/// Connect time-out towards the upstream server.
const CONNECT: Duration = Duration::from_secs(2);

/// One relayed connection: the client's socket and ours to the server.
struct Link {
    client: TcpStream,
    server: TcpStream,
    /// Cut or reset: both relay threads leave (dropping the last handles closes the
    /// sockets, with a RST after a reset).
    dead: AtomicBool,
}

struct Shared {
    upstream: SocketAddr,
    stop: AtomicBool,
    stalled: Mutex<bool>,
    resumed: Condvar,
    links: Mutex<Vec<Weak<Link>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
    relayed: AtomicU64,
}

impl Shared {
    fn stalled(&self) -> bool {
        *self.stalled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to a tick while stalled; `true` if still stalled.
    fn wait_stalled(&self) -> bool {
        let g = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        if !*g {
            return false;
        }
        let (g, _) = self
            .resumed
            .wait_timeout(g, TICK)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }

    fn live_links(&self) -> Vec<Arc<Link>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|l| l.strong_count() > 0);
        links.iter().filter_map(Weak::upgrade).collect()
    }
}

/// The proxy; see the module documentation. Dropping it closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultProxy({} -> {})", self.addr, self.shared.upstream)
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and relays to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<FaultProxy> {
        let upstream = upstream.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidInput, format!("no address: {upstream}"))
        })?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            stop: AtomicBool::new(false),
            stalled: Mutex::new(false),
            resumed: Condvar::new(),
            links: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `redis://127.0.0.1:port` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops reading and forwarding, both ways, on every connection (current and new)
    /// until [`pass`](Self::pass).
    pub fn stall(&self) {
        *self
            .shared
            .stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Relays again (the end of a stall).
    pub fn pass(&self) {
        *self
            .shared
            .stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = false;
        self.shared.resumed.notify_all();
    }

    /// Whether the proxy is stalled.
    pub fn is_stalled(&self) -> bool {
        self.shared.stalled()
    }

    /// Closes both sides of every current connection (a FIN each way). Returns how
    /// many connections it cut.
    pub fn cut(&self) -> usize {
        let links = self.shared.live_links();
        for l in &links {
            l.dead.store(true, Ordering::SeqCst);
            let _ = l.client.shutdown(Shutdown::Both);
            let _ = l.server.shutdown(Shutdown::Both);
        }
        links.len()
    }

    /// Resets every current connection: both sockets get `SO_LINGER` 0 and are closed
    /// by their relay threads within a tick, which sends a RST each way. Returns how
    /// many connections it reset.
    pub fn reset(&self) -> usize {
        let links = self.shared.live_links();
        for l in &links {
            let _ = crate::os::set_linger_zero(&l.client);
            let _ = crate::os::set_linger_zero(&l.server);
            l.dead.store(true, Ordering::SeqCst);
        }
        self.shared.resumed.notify_all();
        links.len()
    }

    /// Connections currently relayed.
    pub fn connections(&self) -> usize {
        self.shared.live_links().len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes relayed since the start, both ways.
    pub fn relayed_bytes(&self) -> u64 {
        self.shared.relayed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.pass();
        self.cut();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((sock, _)) => sock,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fault proxy: accept failed");
                thread::sleep(TICK);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, CONNECT) else {
            // The client sees its connection closed, as if the server were down.
            continue;
        };
        let setup = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nonblocking(false)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(TICK))?;
            s.set_write_timeout(Some(TICK))
        };
        if setup(&client).is_err() || setup(&server).is_err() {
            continue;
        }
        let link = Arc::new(Link {
            client,
            server,
            dead: AtomicBool::new(false),
        });
        shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&link));
        let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        for to_server in [true, false] {
            let (l, s) = (link.clone(), shared.clone());
            let t = thread::Builder::new()
                .name("fault-proxy-relay".into())
                .spawn(move || relay(&l, &s, to_server));
            match t {
                Ok(t) => threads.push(t),
                Err(_) => link.dead.store(true, Ordering::SeqCst),
            }
        }
    }
}

/// Copies one direction of `link` until either side closes, the link is cut or reset,
/// or the proxy stops.
fn relay(link: &Link, shared: &Shared, to_server: bool) {
    let (mut from, mut to) = if to_server {
        (&link.client, &link.server)
    } else {
        (&link.server, &link.client)
    };
    let gone = || link.dead.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst);
    let mut buf = vec![0u8; 64 * 1024];
    'outer: while !gone() {
        if shared.wait_stalled() {
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let mut at = 0;
        while at < n {
            if gone() {
                break 'outer;
            }
            if shared.wait_stalled() {
                continue;
            }
            match to.write(&buf[at..n]) {
                Ok(0) => break 'outer,
                Ok(k) => {
                    at += k;
                    shared.relayed.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break 'outer,
            }
        }
    }
    // One side closed or failed: close the other too (unless a reset wants the close
    // itself to carry the RST), and let the sibling thread leave.
    if !link.dead.swap(true, Ordering::SeqCst) {
        let _ = link.client.shutdown(Shutdown::Both);
        let _ = link.server.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a free port: writes back whatever it reads.
    fn echo() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            for s in l.incoming().take(4) {
                let Ok(mut s) = s else { return };
                thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, t)
    }

    fn read_exact_within(s: &mut TcpStream, n: usize, limit: Duration) -> Vec<u8> {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn relays_stalls_cuts_and_resets() {
        let (up, _t) = echo();
        let p = FaultProxy::start(&up.to_string()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"hello").unwrap();
        assert_eq!(
            read_exact_within(&mut c, 5, Duration::from_secs(10)),
            b"hello"
        );

        // Stalled: nothing comes back until released.
        p.stall();
        c.write_all(b"later").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 5];
        let r = c.read(&mut b);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "a stalled proxy relayed: {r:?}"
        );
        p.pass();
        assert_eq!(
            read_exact_within(&mut c, 5, Duration::from_secs(10)),
            b"later"
        );

        // Cut: the client reads EOF.
        assert_eq!(p.cut(), 1);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(c.read(&mut b).unwrap(), 0, "a cut connection stays open");

        // Reset: the client sees ECONNRESET.
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.write_all(b"x").unwrap();
        assert_eq!(read_exact_within(&mut c, 1, Duration::from_secs(10)), b"x");
        assert_eq!(p.reset(), 1);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t0 = Instant::now();
        let r = c.read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "a reset connection read {r:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(p.accepted(), 2);
    }
}
