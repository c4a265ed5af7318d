//! `slotline bench`: slotline against the seed's naive baseline (one GET/SET round trip
//! per Redis key) and a model of LMCache's native client (`parallel`: N blocking
//! connections, one GET/SET per key), on the same server, in the same process, with the
//! same keys, values and LMCache byte format.
//!
//! Each run writes `batches x batch` chunks (PUT phase, timed: on fresh keys, over
//! existing keys, or both, see [`Keys`]) and reads them back (GET phase, timed, every
//! value's presence, length and metadata checked, every 16th value compared byte for
//! byte). A miss or a mismatch fails the bench. Runs interleave the
//! clients (run 1: naive, slotline..., run 2: ...) so that drifting machine load hits all
//! of them alike, and each table cell is the median over runs.
//!
//! `benches/engine.rs` adds more peers (redis-rs, fred) through the [`Peer`] and
//! [`Worker`] traits.

mod measure;
mod parallel;
mod peers;
mod report;
mod server;
mod workload;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};

use slotline::config::{IoBackend, Mode};
use slotline::{Config, Engine, KeyLayout, PutChunk, RemoteMetadata};
use slotline_testkit::{LocalCluster, RedisProcess, ServerOptions};

use crate::naive::NaiveClient;
use slotline_testkit::Resp2Frame;

pub use measure::*;
pub use parallel::*;
pub use peers::*;
pub use report::*;
pub use server::*;
pub use workload::*;

/// Every `SAMPLE_EVERY`-th chunk is compared byte for byte; the others have their
/// length, metadata and first bytes checked.
const SAMPLE_EVERY: usize = 16;
/// Distinct values generated per bench, at most (more keys reuse them cyclically).
const POOL_BYTES: usize = 64 << 20;
/// Keys per DEL batch when cleaning up a server the bench does not own.
const CLEANUP_BATCH: usize = 1024;

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

/// Arguments of `slotline bench`.
#[derive(Debug, Args)]
#[command(after_help = "\
Without --url the bench starts its own redis-server (a 3+3 cluster with --mode cluster) \
on free ports in a temporary directory, empties it between clients with FLUSHALL and \
stops it at the end, also on error or Ctrl-C. With --url it deletes only its own keys \
(prefix slotline-bench/<pid>/...) unless --flush is given.

Reported per client and phase (median over runs): keys/s (LMCache chunks per second), \
MB/s (payload, 10^6 bytes), p50/p95/p99 latency of one batch, CPU time of this whole \
process per chunk (client threads and slotline's shard threads; the server runs in \
another process and is not included), Redis commands per batch (slotline's counted by \
the server, INFO commandstats), frames per batch (writes of one or more pipelined \
commands: slotline's frames_sent; one per command for naive and parallel) and \
slotline's syscalls per batch. Ratios are slotline / naive and slotline / parallel.

Peers: naive = one blocking round trip per Redis key; parallel = LMCache's native \
client modelled: --parallel-conns threads, each with one blocking connection, one \
GET/SET per Redis key, the keys of a batch split across the threads, reads into \
preallocated buffers (standalone servers only; skipped in cluster mode).

Key patterns (--keys): fresh = every timed PUT writes a key never written before in the \
run (the server pays first-touch page faults, about half the speed of overwrites for \
large values); overwrite = the keys are written once untimed, then the timed PUTs \
overwrite them. The default, both, times a fresh pass and then an overwrite pass over \
the same keys (the fresh pass is the pre-population), so it costs one PUT phase more \
per run than either alone; GET reads what the PUTs wrote.

Examples:
  slotline bench --batches 50 --runs 3
  slotline bench --value-size 4m --batch 8 --batches 40 --peers parallel,slotline
  slotline bench --value-size 1m --batch 16 --keys overwrite --get-into
  slotline bench --mode cluster --layout hashtag --peers slotline
  slotline bench --url redis://127.0.0.1:6400 --backend io_uring --json")]
pub struct BenchArgs {
    /// Server to use instead of starting one (a cluster seed URL with --mode cluster).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Bytes per chunk payload; suffixes k, m, g (powers of 1024), e.g. 2k, 4m, 32m.
    #[arg(long, value_name = "SIZE", default_value = "2048", value_parser = parse_size)]
    value_size: usize,
    /// Chunks (LMCache keys) per batch.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Batches per phase and run.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    batches: u32,
    /// Runs; each number reported is the median over runs.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// slotline's I/O backend(s): auto, io_uring, epoll, or both (one slotline row each).
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// Key layout: lmcache, hashtag or raw.
    #[arg(long, value_name = "LAYOUT", default_value = "lmcache", value_parser = parse_layout)]
    layout: KeyLayout,
    /// Batches in flight: that many caller threads, each with its own batch (the naive
    /// client gets one connection per thread; slotline's threads share one engine).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Clients to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "naive,parallel,slotline"
    )]
    peers: Vec<PeerKind>,
    /// Connections (threads) of the parallel peer per caller thread.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    parallel_conns: u32,
    /// Key pattern of the timed PUTs: fresh, overwrite, or both (default; one PUT
    /// phase more per run, see below).
    #[arg(long, value_enum, default_value_t = Keys::Both)]
    keys: Keys,
    /// Server topology.
    #[arg(long, value_enum, default_value_t = ModeArg::Standalone)]
    mode: ModeArg,
    /// slotline shard threads [default: one per allowed core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: Option<u32>,
    /// Read with slotline's get_into_slices (caller-owned buffers allocated once per run)
    /// instead of get. The parallel peer always reads into preallocated buffers.
    #[arg(long)]
    get_into: bool,
    /// slotline puts from and (with --get-into) reads into registered regions
    /// (`Engine::register_region`): io_uring's fixed buffers (SEND_ZC / READ_FIXED;
    /// `SLOTLINE_REGION_SEND=write` in the environment: WRITE_FIXED).
    #[arg(long)]
    region: bool,
    /// slotline's connections per server once values are >= 1 MiB
    /// (`large_value_connections`) [default: the engine's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    large_value_connections: Option<u32>,
    /// With --url: FLUSHALL between clients instead of deleting the bench's own keys.
    #[arg(long)]
    flush: bool,
    /// Refuse to run when one run would store more than this (batch x batches x
    /// value size) in Redis.
    #[arg(long, value_name = "SIZE", default_value = "4g", value_parser = parse_size)]
    max_data: usize,
    /// Also print one JSON object per line for each result (per run and medians).
    #[arg(long)]
    json: bool,
}

/// `--backend` of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    /// io_uring only.
    #[value(name = "io_uring", alias = "uring")]
    IoUring,
    /// epoll only.
    Epoll,
    /// One slotline row per backend (io_uring is skipped with a warning if unavailable).
    Both,
}

/// `--peers` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerKind {
    /// One blocking round trip per Redis key.
    Naive,
    /// LMCache's native client modelled: N blocking connections, one GET/SET per key.
    Parallel,
    /// The engine.
    Slotline,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// One server.
    Standalone,
    /// Redis Cluster.
    Cluster,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Standalone => Mode::Standalone,
            ModeArg::Cluster => Mode::Cluster,
        }
    }
}

/// Parses a byte size: digits with an optional suffix b, k/kb/kib, m/mb/mib, g/gb/gib
/// (all powers of 1024, case-insensitive).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "size {s:?}: unknown unit; use e.g. 2048, 2k, 4m, 1g"
            ))
        }
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a number; use e.g. 2048, 2k, 4m"))?;
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_layout(s: &str) -> Result<KeyLayout, String> {
    s.parse::<KeyLayout>()
        .map_err(|_| format!("unknown layout {s:?}: expected lmcache, hashtag or raw"))
}

/// A bench failure: message and exit code (1 runtime, 2 usage).
#[derive(Debug)]
pub struct BenchError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong.
    pub msg: String,
}

impl BenchError {
    /// Exit code 1.
    pub fn failed(msg: impl Into<String>) -> BenchError {
        BenchError {
            code: 1,
            msg: msg.into(),
        }
    }

    /// Exit code 2.
    pub fn usage(msg: impl Into<String>) -> BenchError {
        BenchError {
            code: 2,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<slotline::Error> for BenchError {
    fn from(e: slotline::Error) -> Self {
        BenchError::failed(e.to_string())
    }
}

impl From<slotline_testkit::Error> for BenchError {
    fn from(e: slotline_testkit::Error) -> Self {
        BenchError::failed(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Interruption
// ---------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C kills at once.
    // SAFETY: signal() is async-signal-safe; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Turns SIGINT/SIGTERM into a flag checked between batches, so the bench unwinds
/// normally and the servers it started are stopped by their Drop.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic and calls signal(), both
        // async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn check_interrupted() -> Result<(), BenchError> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(BenchError::failed("interrupted"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The CLI entry point
// ---------------------------------------------------------------------------------------

/// "redis X.Y.Z" from INFO server, or "unknown server".
pub fn server_version(url: &str, mode: Mode) -> String {
    let Ok(mut c) = NaiveClient::connect(url, mode, KeyLayout::Raw) else {
        return "unknown server".into();
    };
    match c.command(&[b"INFO", b"server"]) {
        Ok(v) => v
            .as_str()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("redis_version:")
                        .map(|v| format!("redis {}", v.trim()))
                })
            })
            .unwrap_or_else(|| "unknown server".into()),
        Err(_) => "unknown server".into(),
    }
}

/// `slotline bench`.
pub fn run_cli(a: BenchArgs) -> Result<(), BenchError> {
    let value_size = a.value_size;
    if value_size == 0 {
        return Err(BenchError::usage("--value-size must be at least 1 byte"));
    }
    let max_value = slotline::Config::default()
        .max_value_size
        .min(i32::MAX as usize);
    if value_size > max_value {
        return Err(BenchError::usage(format!(
            "--value-size {value_size} exceeds slotline's max_value_size ({max_value} bytes)"
        )));
    }
    let (batch, batches) = (a.batch as usize, a.batches as usize);
    let total = (batch * batches) as u128 * value_size as u128;
    if total > a.max_data as u128 {
        return Err(BenchError::usage(format!(
            "one run would store {:.2} GiB in Redis ({batches} batches x {batch} chunks x \
             {value_size} bytes), more than --max-data {:.2} GiB; lower --batches or --batch, \
             or raise --max-data",
            total as f64 / (1u64 << 30) as f64,
            a.max_data as f64 / (1u64 << 30) as f64
        )));
    }
    if a.peers.is_empty() {
        return Err(BenchError::usage("--peers lists no client"));
    }
    let mode: Mode = a.mode.into();
    install_signal_handlers();

    let owned = match &a.url {
        Some(_) => None,
        None => {
            eprintln!(
                "starting a {} redis-server for the bench...",
                if mode == Mode::Cluster {
                    "3+3 cluster of"
                } else {
                    "local"
                }
            );
            let s = OwnedServer::start(mode)?;
            eprintln!(
                "  {} (pids {:?}, dir {})",
                s.url(),
                s.pids(),
                s.dir().display()
            );
            Some(s)
        }
    };
    let url = match (&a.url, &owned) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url().to_string(),
        (None, None) => return Err(BenchError::failed("no server")),
    };

    let mut base = Config::from_url(&url).map_err(|e| BenchError::usage(e.to_string()))?;
    if mode == Mode::Cluster {
        base.mode = Mode::Cluster;
    }
    let mode = base.mode;
    base.key_layout = a.layout;
    base.large_value_connections = a.large_value_connections.map(|n| n as usize);
    if let Some(n) = a.shards {
        base.cores = None;
        base.shards = Some(n as usize);
    }
    base.validate()
        .map_err(|e| BenchError::usage(e.to_string()))?;

    let mut peers: Vec<Box<dyn Peer>> = Vec::new();
    let mut seen = Vec::new();
    for p in &a.peers {
        if seen.contains(p) {
            continue;
        }
        seen.push(*p);
        match p {
            PeerKind::Naive => peers.push(Box::new(NaivePeer::new(&url, mode, a.layout))),
            PeerKind::Parallel if mode == Mode::Cluster => {
                eprintln!("warning: the parallel peer talks to one standalone server; skipped");
            }
            PeerKind::Parallel => peers.push(Box::new(ParallelPeer::new(
                &url,
                mode,
                a.parallel_conns as usize,
            ))),
            PeerKind::Slotline => {
                let backends: &[(IoBackend, bool)] = match a.backend {
                    BackendChoice::Auto => &[(IoBackend::Auto, false)],
                    BackendChoice::IoUring => &[(IoBackend::IoUring, false)],
                    BackendChoice::Epoll => &[(IoBackend::Epoll, false)],
                    BackendChoice::Both => &[(IoBackend::IoUring, true), (IoBackend::Epoll, false)],
                };
                for &(b, optional) in backends {
                    let mut cfg = base.clone();
                    cfg.io_backend = b;
                    peers.push(Box::new(
                        SlotlinePeer::new(cfg, a.get_into, optional)
                            .with_regions(a.region)
                            .count_commands_at(&url, mode),
                    ));
                }
            }
        }
    }

    let plan = Plan {
        value_size,
        batch,
        batches,
        runs: a.runs as usize,
        concurrency: a.concurrency as usize,
        layout: a.layout,
        keys: a.keys,
        mode,
        json: a.json,
    };
    let flush = owned.is_some() || a.flush;
    let cleanup_cfg = base.clone();
    let cleanup_url = url.clone();
    let mut cleanup_engine: Option<Engine> = None;
    let mut cleanup = |keys: &[Vec<u8>]| -> Result<(), BenchError> {
        if flush {
            let mut c = NaiveClient::connect(&cleanup_url, mode, KeyLayout::Raw)?;
            c.flush_all()?;
            return Ok(());
        }
        if cleanup_engine.is_none() {
            let mut cfg = cleanup_cfg.clone();
            cfg.shards = Some(1);
            cfg.cores = None;
            cleanup_engine = Some(Engine::new(cfg)?);
        }
        if let Some(e) = &cleanup_engine {
            for chunk in keys.chunks(CLEANUP_BATCH) {
                e.delete(chunk)?;
            }
        }
        Ok(())
    };

    println!(
        "slotline bench: {value_size}-byte values, {batch} keys/batch, {batches} batches, \
         {} in flight, layout {}, {mode}, {} run(s), PUT keys {}{}",
        plan.concurrency,
        plan.layout,
        plan.runs,
        match plan.keys {
            Keys::Fresh => "fresh",
            Keys::Overwrite => "overwrite",
            Keys::Both => "fresh and overwrite",
        },
        if a.get_into {
            ", slotline reads with get_into_slices"
        } else {
            ""
        }
    );
    println!(
        "server: {} at {}{}; client machine: {} CPUs",
        server_version(&url, mode),
        slotline::config::mask_url(&url),
        if owned.is_some() {
            " (started for this bench)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let results = run_plan(&plan, &mut peers, &mut cleanup)?;
    drop(cleanup_engine.take());
    let row = |name: &str| results.iter().position(|r| r.name == name);
    let mut ratios: Vec<(usize, usize)> = Vec::new();
    // Every other row / naive, then every slotline row / parallel.
    if let Some(n) = row("naive") {
        ratios.extend((0..results.len()).filter(|&i| i != n).map(|i| (i, n)));
    }
    if let Some(p) = row("parallel") {
        ratios.extend(
            (0..results.len())
                .filter(|&i| results[i].name.starts_with("slotline"))
                .map(|i| (i, p)),
        );
    }
    // Both backends measured: io_uring / epoll as well.
    if let (Some(u), Some(e)) = (row("slotline[io_uring]"), row("slotline[epoll]")) {
        ratios.push((u, e));
    }
    for note in peers.iter().filter_map(|p| p.note()) {
        println!("{note}");
    }
    print_report(&plan, &results, &ratios);
    drop(owned);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("32mib"), Ok(32 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("k").is_err());
        assert!(parse_size("2x").is_err());
        assert!(parse_size("-1").is_err());
    }
}
