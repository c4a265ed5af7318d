//! A fake server: a TcpListener on a free loopback port that hands every connection to
//! a test's own handler, for what a real redis-server never does (stalls, trickled or
//! cut-off values). Everything else the tests check against real servers.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Accepts connections until stopped, each served by the handler on its own thread;
/// dropping it stops the handlers (they watch the flag) and joins every thread.
pub struct FakeServer {
    /// `127.0.0.1:port`.
    pub addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Starts the listener; `serve(sock, stop)` runs for each connection and should
    /// return soon after `stop` is set.
    pub fn start<F>(serve: F) -> FakeServer
    where
        F: Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let serve = Arc::new(serve);
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((sock, _)) => {
                        // Handlers rely on blocking reads with a time-out.
                        sock.set_nonblocking(false).unwrap();
                        let (s, serve) = (s.clone(), serve.clone());
                        conns.push(thread::spawn(move || serve(sock, &s)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `redis://` URL of the listener.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Tells the handlers to stop (and close their connections) without waiting.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses one RESP command (an array of bulk strings) at the start of `b`: the
/// arguments and the bytes used, or `None` while it is incomplete.
pub fn parse_command(b: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(b: &[u8], at: usize) -> Option<(usize, usize)> {
        let end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        let n = std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    }
    if b.first() != Some(&b'*') {
        return None;
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

/// Appends what the socket has to `buf`; `false` once the peer closed or the read
/// failed. A read time-out (set by the handler) is not a failure: it lets the handler
/// look at its stop flag.
pub fn read_more(sock: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 64 * 1024];
    match sock.read(&mut tmp) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Serves `sock` one command at a time until `stop` is set, the peer closes, or
/// `answer(sock, args, raw)` returns `false`; `raw` is the command as it came.
#[allow(dead_code)] // not every test binary that includes this module serves commands
pub fn serve_commands(
    mut sock: TcpStream,
    stop: &AtomicBool,
    mut answer: impl FnMut(&mut TcpStream, Vec<Vec<u8>>, Vec<u8>) -> bool,
) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some((args, used)) = parse_command(&buf) else {
            if !read_more(&mut sock, &mut buf) {
                return;
            }
            continue;
        };
        let raw: Vec<u8> = buf.drain(..used).collect();
        if !answer(&mut sock, args, raw) {
            return;
        }
    }
}
