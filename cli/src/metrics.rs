//! `slotline metrics`: the engine's Prometheus text, printed once or served on a
//! loopback `/metrics` endpoint while an optional load runs.
//!
//! The responder is deliberately tiny (std::net, one connection at a time, GET only,
//! `Connection: close`): it exists to show and test a scrape, not to be a web server.
//! An application embedding slotline serves `Engine::prometheus_text()` from its own
//! HTTP stack instead.
//!
//! `--load` writes into the target server: its keys (`slotline-metrics@<pid>@...`) carry
//! a TTL of at most [`LOAD_TTL_SECS`] and are deleted when the load ends, on an error,
//! and on SIGINT / SIGTERM (a SIGKILL leaves them to the TTL).

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
    /// Run a put/get/exists load for this many seconds; in the background when serving,
    /// before printing otherwise. Not light: 8 chunks of 64 KiB per batch in a loop as
    /// fast as the server answers (it can keep a core and the server busy). It WRITES
    /// into the target server: keys `slotline-metrics@<pid>@...` with a TTL of at most
    /// 60 s, deleted when the load ends and on Ctrl-C / SIGTERM (after a SIGKILL they
    /// expire with the TTL). Use a test server.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    load: u64,
    /// Stop serving after this many seconds [default: serve until Ctrl-C / SIGTERM].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

/// The longest TTL the load's keys get (a shorter configured `ttl` is kept): each put
/// renews it, so keys a killed load leaves behind are gone within this many seconds.
pub const LOAD_TTL_SECS: u64 = 60;

/// Runs `slotline metrics`.
pub fn run(a: MetricsArgs) -> Result<(), CliError> {
    let mut cfg = a.conn.config()?;
    if a.load > 0 {
        // The CLI's one-shard default suits a one-shot command; a load wants a few.
        if cfg.cores.is_none() && cfg.shards == Some(1) {
            cfg.shards = Some(2);
        }
        cfg.ttl = Some(cfg.ttl.map_or(LOAD_TTL_SECS, |t| t.min(LOAD_TTL_SECS)));
    }
    if let Some(addr) = a.serve.filter(|a| !a.ip().is_loopback()) {
        // The endpoint has no authentication: refuse before touching a server.
        return Err(CliError {
            code: 2,
            msg: format!("--serve {addr}: only loopback addresses are served"),
        });
    }
    let engine = Engine::new(cfg)?;
    // SIGINT / SIGTERM set a flag: the load deletes its keys and serving ends.
    crate::bench::install_signal_handlers();
    let load_for = Duration::from_secs(a.load);
    let Some(addr) = a.serve else {
        if a.load > 0 {
            load(&engine, load_for, &AtomicBool::new(false))?;
            if crate::bench::interrupted() {
                return Err(CliError {
                    code: 130,
                    msg: "interrupted (the load's keys were deleted)".into(),
                });
            }
        }
        print!("{}", engine.prometheus_text());
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .map_err(|e| CliError::failed(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    println!("serving http://{local}/metrics");
    // The line above is how a caller learns the port: flush it even into a pipe.
    let _ = std::io::stdout().flush();
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
    while deadline.is_none_or(|d| Instant::now() < d) && !crate::bench::interrupted() {
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

/// Puts, gets and checks 64 KiB chunks (8 per batch, keys `slotline-metrics@<pid>@...`)
/// until `for_` has passed, `stop` is set or a signal arrived, then deletes them, also
/// after a failed batch (the first error is returned once the keys are deleted).
fn load(e: &Engine, for_: Duration, stop: &AtomicBool) -> Result<(), CliError> {
    let pid = std::process::id();
    let keys: Vec<String> = (0..8)
        .map(|i| format!("slotline-metrics@{pid}@0@{i:04x}@bfloat16"))
        .collect();
    let data = bytes::Bytes::from(vec![0x5au8; 64 * 1024]);
    let end = Instant::now() + for_;
    let run = || -> Result<(), CliError> {
        while Instant::now() < end && !stop.load(Ordering::Relaxed) && !crate::bench::interrupted()
        {
            e.put(
                keys.iter()
                    .map(|k| PutChunk::new(k.as_bytes(), data.clone(), None))
                    .collect::<Vec<_>>(),
            )
            .wait()?;
            e.get(&keys).wait()?;
            e.exists(&keys).wait()?;
        }
        Ok(())
    };
    let ran = run();
    let deleted = e.delete(&keys).wait().map_err(|err| {
        CliError::failed(format!(
            "could not delete the load's keys slotline-metrics@{pid}@* ({err}); \
             they expire within {LOAD_TTL_SECS} s"
        ))
    });
    match (ran, deleted) {
        (Err(first), Err(cleanup)) => {
            eprintln!("{}", cleanup.msg);
            Err(first)
        }
        (Err(first), Ok(_)) => Err(first),
        (Ok(()), d) => d.map(drop),
    }
}
