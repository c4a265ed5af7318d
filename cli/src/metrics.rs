//! `slotline metrics`: the engine's Prometheus text, printed once or served on a
//! loopback `/metrics` endpoint while an optional light load runs.
//!
//! The responder is deliberately tiny (std::net, one connection at a time, GET only,
//! `Connection: close`): it exists to show and test a scrape, not to be a web server.
//! An application embedding slotline serves `Engine::prometheus_text()` from its own
//! HTTP stack instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use slotline::{Engine, PutChunk};

use crate::{CliError, ConnArgs};

/// Arguments of `slotline metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Serve GET /metrics on this loopback address (e.g. 127.0.0.1:9464) instead of
    /// printing once.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// Run a light put/get load (64 KiB chunks) for this many seconds; in the background
    /// when serving, before printing otherwise.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    load: u64,
    /// Stop serving after this many seconds [default: serve until killed].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

/// Runs `slotline metrics`.
pub fn run(a: MetricsArgs) -> Result<(), CliError> {
    let mut cfg = a.conn.config()?;
    // The CLI's one-shard default suits a one-shot command; a load wants a few.
    if a.load > 0 && cfg.cores.is_none() && cfg.shards == Some(1) {
        cfg.shards = Some(2);
    }
    if let Some(addr) = a.serve.filter(|a| !a.ip().is_loopback()) {
        // The endpoint has no authentication: refuse before touching a server.
        return Err(CliError {
            code: 2,
            msg: format!("--serve {addr}: only loopback addresses are served"),
        });
    }
    let engine = Engine::new(cfg)?;
    let load_for = Duration::from_secs(a.load);
    let Some(addr) = a.serve else {
        if a.load > 0 {
            load(&engine, load_for, &AtomicBool::new(false))?;
        }
        print!("{}", engine.prometheus_text());
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .map_err(|e| CliError::failed(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    println!("serving http://{local}/metrics");
    let stop = Arc::new(AtomicBool::new(false));
    let loader = (a.load > 0).then(|| {
        let (e, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            if let Err(err) = load(&e, load_for, &stop) {
                eprintln!("load stopped: {err}");
            }
        })
    });
    let deadline = a.duration.map(|s| Instant::now() + Duration::from_secs(s));
    // Non-blocking accept so that --duration is honoured without a connection.
    listener
        .set_nonblocking(true)
        .map_err(|e| CliError::failed(format!("listener: {e}")))?;
    while deadline.is_none_or(|d| Instant::now() < d) {
        match listener.accept() {
            Ok((s, _)) => {
                if let Err(e) = respond(s, &engine) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(CliError::failed(format!("accept: {e}"))),
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = loader {
        let _ = t.join();
    }
    Ok(())
}

/// Answers one HTTP/1.x request: `GET /metrics` -> 200 with the exposition, any other
/// path 404, any other method 405.
fn respond(mut s: TcpStream, engine: &Engine) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line =
        String::from_utf8_lossy(req.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            slotline::PROMETHEUS_CONTENT_TYPE,
            engine.prometheus_text(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

/// Puts and gets 64 KiB chunks (8 per batch, keys `slotline-metrics@...`) until `for_`
/// has passed or `stop` is set, then deletes them.
fn load(e: &Engine, for_: Duration, stop: &AtomicBool) -> Result<(), CliError> {
    let keys: Vec<String> = (0..8)
        .map(|i| format!("slotline-metrics@1@0@{i:04x}@bfloat16"))
        .collect();
    let data = bytes::Bytes::from(vec![0x5au8; 64 * 1024]);
    let end = Instant::now() + for_;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        e.put(
            keys.iter()
                .map(|k| PutChunk::new(k.as_bytes(), data.clone(), None))
                .collect::<Vec<_>>(),
        )
        .wait()?;
        e.get(&keys).wait()?;
        e.exists(&keys).wait()?;
    }
    e.delete(&keys).wait()?;
    Ok(())
}
