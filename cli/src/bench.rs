//! `slotline bench`: slotline against the seed's naive baseline (one GET/SET round trip
//! per Redis key), on the same server, in the same process, with the same keys, values
//! and LMCache byte format.
//!
//! Each run writes `batches x batch` chunks (PUT phase, timed) and reads them back (GET
//! phase, timed, every value's presence, length and metadata checked, every 16th value
//! compared byte for byte). A miss or a mismatch fails the bench. Runs interleave the
//! clients (run 1: naive, slotline..., run 2: ...) so that drifting machine load hits all
//! of them alike, and each table cell is the median over runs.
//!
//! `benches/engine.rs` adds more peers (redis-rs, fred) through the [`Peer`] and
//! [`Worker`] traits.

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
another process and is not included), and requests sent per batch (frames for \
slotline, round trips for the naive client). Ratios are slotline / naive.

Examples:
  slotline bench --batches 50 --runs 3
  slotline bench --value-size 4m --batch 8 --batches 40
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
        default_value = "naive,slotline"
    )]
    peers: Vec<PeerKind>,
    /// Server topology.
    #[arg(long, value_enum, default_value_t = ModeArg::Standalone)]
    mode: ModeArg,
    /// slotline shard threads [default: one per allowed core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: Option<u32>,
    /// Read with slotline's get_into (caller-owned, reused buffers) instead of get.
    #[arg(long)]
    get_into: bool,
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
// Servers the bench owns
// ---------------------------------------------------------------------------------------

/// A redis-server (or local cluster) started for the bench in a temporary directory;
/// stopped and the directory removed on drop.
pub struct OwnedServer {
    proc: Option<RedisProcess>,
    cluster: Option<LocalCluster>,
    dir: PathBuf,
    url: String,
}

impl OwnedServer {
    /// Starts one server, or 3 masters + 3 replicas in cluster mode, on free ports.
    pub fn start(mode: Mode) -> Result<OwnedServer, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("slotline-bench-{}-{nanos:x}", std::process::id()));
        let opts = ServerOptions::default();
        let mut s = OwnedServer {
            proc: None,
            cluster: None,
            dir: dir.clone(),
            url: String::new(),
        };
        match mode {
            Mode::Standalone => {
                let p = RedisProcess::start(&dir, &opts)?;
                s.url = p.url();
                s.proc = Some(p);
            }
            Mode::Cluster => {
                let c = LocalCluster::start(&dir, 3, 1, &opts)?;
                s.url = c.seed_url();
                s.cluster = Some(c);
            }
        }
        Ok(s)
    }

    /// Where clients connect.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Process ids of the servers.
    pub fn pids(&self) -> Vec<u32> {
        match (&self.proc, &self.cluster) {
            (Some(p), _) => vec![p.pid()],
            (None, Some(c)) => c.nodes.iter().map(|n| n.pid()).collect(),
            _ => Vec::new(),
        }
    }

    /// The temporary directory (logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Workload and verification
// ---------------------------------------------------------------------------------------

/// Values and metadata shared by every run: a pool of distinct pseudo-random payloads,
/// each starting with its pool index so that a value served for the wrong key is caught
/// even where only the first bytes are checked.
pub struct Data {
    /// Payload bytes per chunk.
    pub value_size: usize,
    values: Vec<Bytes>,
    /// Metadata every chunk carries.
    pub meta: RemoteMetadata,
    /// `meta.encode()`.
    pub meta_bytes: Vec<u8>,
}

impl Data {
    /// Generates the pool for `keys` chunks of `value_size` bytes.
    pub fn new(value_size: usize, keys: usize) -> Result<Data, BenchError> {
        let pool = (POOL_BYTES / value_size.max(1)).clamp(2, keys.max(2));
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut values = Vec::with_capacity(pool);
        for idx in 0..pool {
            let mut v = vec![0u8; value_size];
            for w in v.chunks_mut(8) {
                // xorshift64: cheap, and never the zero pages a lazy server might fake.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let b = seed.to_le_bytes();
                w.copy_from_slice(&b[..w.len()]);
            }
            let tag = (idx as u64).to_le_bytes();
            let n = tag.len().min(v.len());
            v[..n].copy_from_slice(&tag[..n]);
            values.push(Bytes::from(v));
        }
        // LMCache's KV_2LTD / bfloat16 when the size allows a [2, 1, 1, n/4] shape.
        let meta = if value_size % 4 == 0 && value_size > 0 {
            RemoteMetadata::new(value_size, 1, 3, &[2, 1, 1, value_size / 4])?
        } else {
            RemoteMetadata::new(value_size, 4, 6, &[value_size])?
        };
        let meta_bytes = meta.encode();
        Ok(Data {
            value_size,
            values,
            meta,
            meta_bytes,
        })
    }

    /// The payload of chunk number `idx` of a run.
    pub fn value(&self, idx: usize) -> &Bytes {
        &self.values[idx % self.values.len()]
    }
}

/// One client's run: its keys, cut into batches.
pub struct Workload<'a> {
    /// Values and metadata.
    pub data: &'a Data,
    /// LMCache key strings, `batch * batches` of them.
    pub keys: Vec<Vec<u8>>,
    /// Chunks per batch.
    pub batch: usize,
    /// Number of batches.
    pub batches: usize,
    /// Key layout in use.
    pub layout: KeyLayout,
}

impl<'a> Workload<'a> {
    /// Keys shaped like LMCache's (`model@world@worker@hash@dtype`) under a prefix unique
    /// to this process, run and client.
    pub fn new(
        data: &'a Data,
        tag: &str,
        run: usize,
        batch: usize,
        batches: usize,
        layout: KeyLayout,
    ) -> Workload<'a> {
        let pid = std::process::id();
        let keys = (0..batch * batches)
            .map(|i| {
                format!(
                    "slotline-bench/{pid}/r{run}-{tag}@1@0@{:x}@bfloat16",
                    0x1000_0000 + i
                )
                .into_bytes()
            })
            .collect();
        Workload {
            data,
            keys,
            batch,
            batches,
            layout,
        }
    }

    /// Index of the first chunk of batch `b`.
    pub fn first(&self, b: usize) -> usize {
        b * self.batch
    }

    /// Keys of batch `b`.
    pub fn batch_keys(&self, b: usize) -> &[Vec<u8>] {
        let s = self.first(b);
        &self.keys[s..s + self.batch]
    }

    /// Payload of chunk `i` of batch `b`.
    pub fn value(&self, b: usize, i: usize) -> &Bytes {
        self.data.value(self.first(b) + i)
    }

    /// Whether the layout stores metadata.
    pub fn has_meta(&self) -> bool {
        self.layout.keys_per_chunk() == 2
    }
}

/// Checks what a GET returned; counts misses and mismatches and keeps the first problem.
pub struct Verifier<'w, 'a> {
    wl: &'w Workload<'a>,
    batch: usize,
    /// Chunks not found.
    pub misses: u64,
    /// Chunks found with wrong bytes or metadata.
    pub mismatches: u64,
    /// Description of the first miss or mismatch.
    pub first: Option<String>,
}

impl<'w, 'a> Verifier<'w, 'a> {
    fn new(wl: &'w Workload<'a>) -> Self {
        Verifier {
            wl,
            batch: 0,
            misses: 0,
            mismatches: 0,
            first: None,
        }
    }

    /// Checks chunk `i` of the current batch: `data` is its payload (None on a miss),
    /// `meta` its decoded metadata where the client exposes it.
    pub fn check(&mut self, i: usize, data: Option<&[u8]>, meta: Option<&RemoteMetadata>) {
        let idx = self.wl.first(self.batch) + i;
        let key = || String::from_utf8_lossy(&self.wl.keys[idx]).into_owned();
        let Some(data) = data else {
            self.misses += 1;
            if self.first.is_none() {
                self.first = Some(format!("miss: {}", key()));
            }
            return;
        };
        let want = self.wl.data.value(idx);
        let head = want.len().min(64);
        let problem = if data.len() != want.len() {
            Some(format!("{} bytes instead of {}", data.len(), want.len()))
        } else if data[..head] != want[..head]
            || data[data.len() - head..] != want[want.len() - head..]
        {
            Some("wrong bytes".to_string())
        } else if idx % SAMPLE_EVERY == 0 && data != &want[..] {
            Some("wrong bytes (full comparison)".to_string())
        } else if self.wl.has_meta() && meta.is_none() {
            Some("no metadata returned".to_string())
        } else if meta.is_some_and(|m| *m != self.wl.data.meta) {
            Some(format!(
                "metadata {} instead of {}",
                meta.map(|m| m.to_string()).unwrap_or_default(),
                self.wl.data.meta
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.mismatches += 1;
            if self.first.is_none() {
                self.first = Some(format!("mismatch: {}: {p}", key()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// One caller thread's handle on a client: one batch at a time.
pub trait Worker: Send {
    /// Writes batch `b` and returns once the server acknowledged it.
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String>;
    /// Reads batch `b`, reporting every chunk to `v` (see [`Verifier::check`]).
    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String>;
    /// Requests sent so far, for clients that count them per worker.
    fn round_trips(&self) -> Option<u64> {
        None
    }
}

/// A client under test.
pub trait Peer {
    /// Row label.
    fn name(&self) -> String;
    /// Short tag for key prefixes (no spaces or braces).
    fn tag(&self) -> String;
    /// Opens `n` workers for one run of `wl` (connections, engine).
    fn open(&mut self, n: usize, wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String>;
    /// Ends the run: everything opened is dropped.
    fn close(&mut self) {}
    /// Requests sent so far by a client-wide counter (slotline's frames).
    fn frames(&self) -> Option<u64> {
        None
    }
    /// Skipped with a warning (instead of failing the bench) if it cannot open.
    fn optional(&self) -> bool {
        false
    }
    /// A line about how it ran (shards, backend), printed under the header.
    fn note(&self) -> Option<String> {
        None
    }
}

/// The naive baseline as a [`Peer`].
pub struct NaivePeer {
    url: String,
    mode: Mode,
    layout: KeyLayout,
}

impl NaivePeer {
    /// A naive client of `url`.
    pub fn new(url: &str, mode: Mode, layout: KeyLayout) -> NaivePeer {
        NaivePeer {
            url: url.to_string(),
            mode,
            layout,
        }
    }
}

struct NaiveWorker {
    c: NaiveClient,
}

impl Worker for NaiveWorker {
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String> {
        for (i, k) in wl.batch_keys(b).iter().enumerate() {
            self.c
                .put_chunk(k, &wl.data.meta_bytes, wl.value(b, i), None)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        for (i, k) in wl.batch_keys(b).iter().enumerate() {
            let got = self.c.get_chunk(k).map_err(|e| e.to_string())?;
            match got {
                Some(c) => v.check(i, Some(&c.data[..]), c.meta.as_ref()),
                None => v.check(i, None, None),
            }
        }
        Ok(())
    }

    fn round_trips(&self) -> Option<u64> {
        Some(self.c.round_trips())
    }
}

impl Peer for NaivePeer {
    fn name(&self) -> String {
        "naive".into()
    }

    fn tag(&self) -> String {
        "naive".into()
    }

    fn open(&mut self, n: usize, _wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        (0..n)
            .map(|_| {
                NaiveClient::connect(&self.url, self.mode, self.layout)
                    .map(|c| Box::new(NaiveWorker { c }) as Box<dyn Worker>)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// slotline on one I/O backend as a [`Peer`]; a fresh engine per run.
pub struct SlotlinePeer {
    cfg: Config,
    get_into: bool,
    optional: bool,
    actual: Option<slotline::BackendKind>,
    shards: usize,
    engine: Option<Engine>,
}

impl SlotlinePeer {
    /// An engine per run built from `cfg`; `get_into` reads into reused buffers.
    pub fn new(cfg: Config, get_into: bool, optional: bool) -> SlotlinePeer {
        SlotlinePeer {
            cfg,
            get_into,
            optional,
            actual: None,
            shards: 0,
            engine: None,
        }
    }
}

struct SlotlineWorker {
    e: Engine,
    into: Option<Vec<Vec<u8>>>,
}

impl Worker for SlotlineWorker {
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String> {
        let chunks = wl
            .batch_keys(b)
            .iter()
            .enumerate()
            .map(|(i, k)| {
                PutChunk::new(
                    k.clone(),
                    wl.value(b, i).clone(),
                    Some(wl.data.meta.clone()),
                )
            })
            .collect();
        self.e.put(chunks).map_err(|e| e.to_string())
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        let keys = wl.batch_keys(b);
        if let Some(bufs) = self.into.take() {
            let (bufs, infos) = self.e.get_into(keys, bufs).map_err(|e| e.to_string())?;
            for (i, (buf, info)) in bufs.iter().zip(&infos).enumerate() {
                match info {
                    Some(info) => v.check(i, buf.get(..info.len), info.meta.as_ref()),
                    None => v.check(i, None, None),
                }
            }
            self.into = Some(bufs);
            return Ok(());
        }
        let got = self.e.get(keys).map_err(|e| e.to_string())?;
        for (i, c) in got.iter().enumerate() {
            match c {
                Some(c) => v.check(i, Some(&c.data[..]), c.meta.as_ref()),
                None => v.check(i, None, None),
            }
        }
        Ok(())
    }
}

impl Peer for SlotlinePeer {
    fn name(&self) -> String {
        match self.actual {
            Some(b) => format!("slotline[{b}]"),
            None => format!("slotline[{}]", self.cfg.io_backend),
        }
    }

    fn tag(&self) -> String {
        format!("slotline-{}", self.cfg.io_backend)
    }

    fn open(&mut self, n: usize, wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        let e = Engine::new(self.cfg.clone()).map_err(|e| e.to_string())?;
        self.actual = Some(e.backend());
        self.shards = e.stats().shards;
        let into = self.get_into;
        let workers = (0..n)
            .map(|_| {
                Box::new(SlotlineWorker {
                    e: e.clone(),
                    into: into.then(|| vec![vec![0u8; wl.data.value_size]; wl.batch]),
                }) as Box<dyn Worker>
            })
            .collect();
        self.engine = Some(e);
        Ok(workers)
    }

    fn close(&mut self) {
        if let Some(e) = self.engine.take() {
            tracing::debug!("engine stats after the run:\n{}", e.stats());
            drop(e);
        }
    }

    fn frames(&self) -> Option<u64> {
        self.engine.as_ref().map(|e| e.stats().metrics.frames_sent)
    }

    fn optional(&self) -> bool {
        self.optional
    }

    fn note(&self) -> Option<String> {
        self.actual.map(|_| {
            format!(
                "{}: {} shard thread(s), reads with {}",
                self.name(),
                self.shards,
                if self.get_into { "get_into" } else { "get" }
            )
        })
    }
}

// ---------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------

/// Benchmark phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writes.
    Put,
    /// Reads.
    Get,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Put => "put",
            Phase::Get => "get",
        }
    }
}

/// CPU time (user + system) of the whole process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed local we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The value at percentile `p` (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The numbers of one phase of one run (or their medians).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Chunks per second.
    pub keys_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Batch latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Process CPU time per chunk, microseconds.
    pub cpu_us_per_key: f64,
    /// Requests (frames, round trips) per batch, where known.
    pub frames_per_batch: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Sample {
    /// Field-by-field medians.
    pub fn median_of(samples: &[Sample]) -> Sample {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let frames: Vec<f64> = samples.iter().filter_map(|s| s.frames_per_batch).collect();
        Sample {
            keys_per_s: m(|s| s.keys_per_s),
            mb_per_s: m(|s| s.mb_per_s),
            p50_ms: m(|s| s.p50_ms),
            p95_ms: m(|s| s.p95_ms),
            p99_ms: m(|s| s.p99_ms),
            cpu_us_per_key: m(|s| s.cpu_us_per_key),
            frames_per_batch: (!frames.is_empty()).then(|| median(frames)),
        }
    }
}

struct ThreadOutcome {
    lat: Vec<Duration>,
    misses: u64,
    mismatches: u64,
    first: Option<String>,
    err: Option<String>,
}

fn drive(
    w: &mut dyn Worker,
    wl: &Workload<'_>,
    phase: Phase,
    batches: impl Iterator<Item = usize>,
) -> ThreadOutcome {
    let mut out = ThreadOutcome {
        lat: Vec::new(),
        misses: 0,
        mismatches: 0,
        first: None,
        err: None,
    };
    let mut v = Verifier::new(wl);
    for b in batches {
        if INTERRUPTED.load(Ordering::Relaxed) {
            out.err = Some("interrupted".into());
            break;
        }
        let t = Instant::now();
        let r = match phase {
            Phase::Put => w.put(wl, b),
            Phase::Get => {
                v.batch = b;
                w.get(wl, b, &mut v)
            }
        };
        out.lat.push(t.elapsed());
        if let Err(e) = r {
            out.err = Some(format!("batch {b}: {e}"));
            break;
        }
    }
    out.misses = v.misses;
    out.mismatches = v.mismatches;
    out.first = v.first;
    out
}

/// Runs one phase over every batch with one thread per worker (inline for one worker).
pub fn run_phase(
    peer: &dyn Peer,
    workers: &mut [Box<dyn Worker>],
    wl: &Workload<'_>,
    phase: Phase,
) -> Result<Sample, BenchError> {
    let n = workers.len().max(1);
    let rt = |ws: &[Box<dyn Worker>]| -> Option<u64> {
        ws.iter().map(|w| w.round_trips()).sum::<Option<u64>>()
    };
    let frames0 = peer.frames().or_else(|| rt(workers));
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let outcomes: Vec<ThreadOutcome> = if workers.len() == 1 {
        vec![drive(workers[0].as_mut(), wl, phase, 0..wl.batches)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter_mut()
                .enumerate()
                .map(|(t, w)| {
                    s.spawn(move || drive(w.as_mut(), wl, phase, (t..wl.batches).step_by(n)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| ThreadOutcome {
                        lat: Vec::new(),
                        misses: 0,
                        mismatches: 0,
                        first: None,
                        err: Some("a caller thread panicked".into()),
                    })
                })
                .collect()
        })
    };
    let wall = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let frames1 = peer.frames().or_else(|| rt(workers));
    let name = peer.name();
    let mut lat = Vec::with_capacity(wl.batches);
    let (mut misses, mut mismatches, mut first) = (0, 0, None);
    for o in outcomes {
        if let Some(e) = o.err {
            return Err(BenchError::failed(format!("{name} {}: {e}", phase.name())));
        }
        lat.extend(o.lat);
        misses += o.misses;
        mismatches += o.mismatches;
        first = first.or(o.first);
    }
    if misses + mismatches > 0 {
        return Err(BenchError::failed(format!(
            "{name} read back {misses} misses and {mismatches} mismatches out of {} chunks; \
             first: {}",
            wl.keys.len(),
            first.unwrap_or_default()
        )));
    }
    lat.sort_unstable();
    let keys = wl.keys.len() as f64;
    let secs = wall.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Sample {
        keys_per_s: keys / secs,
        mb_per_s: keys * wl.data.value_size as f64 / secs / 1e6,
        p50_ms: ms(percentile(&lat, 50.0)),
        p95_ms: ms(percentile(&lat, 95.0)),
        p99_ms: ms(percentile(&lat, 99.0)),
        cpu_us_per_key: cpu.as_secs_f64() * 1e6 / keys,
        frames_per_batch: match (frames0, frames1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / wl.batches as f64),
            _ => None,
        },
    })
}

/// What a bench measures, independent of how peers and servers were chosen.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Payload bytes per chunk.
    pub value_size: usize,
    /// Chunks per batch.
    pub batch: usize,
    /// Batches per phase.
    pub batches: usize,
    /// Runs (medians are over these).
    pub runs: usize,
    /// Batches in flight.
    pub concurrency: usize,
    /// Key layout.
    pub layout: KeyLayout,
    /// Topology, for the report.
    pub mode: Mode,
    /// Print JSON lines.
    pub json: bool,
}

/// Per peer: name and the samples of each run.
pub struct PeerResult {
    /// Row label.
    pub name: String,
    /// PUT phase, one per run.
    pub put: Vec<Sample>,
    /// GET phase, one per run.
    pub get: Vec<Sample>,
}

/// Removes one run's keys from the server (or empties it) between clients.
pub type Cleanup<'a> = dyn FnMut(&[Vec<u8>]) -> Result<(), BenchError> + 'a;

/// Runs every peer `plan.runs` times, interleaved; `cleanup` gets each run's keys after
/// the run (untimed) and must leave the server empty of them.
pub fn run_plan(
    plan: &Plan,
    peers: &mut [Box<dyn Peer>],
    cleanup: &mut Cleanup<'_>,
) -> Result<Vec<PeerResult>, BenchError> {
    let data = Data::new(plan.value_size, plan.batch * plan.batches)?;
    let mut results: Vec<Option<PeerResult>> = peers
        .iter()
        .map(|p| {
            Some(PeerResult {
                name: p.name(),
                put: Vec::new(),
                get: Vec::new(),
            })
        })
        .collect();
    for run in 0..plan.runs {
        for (pi, peer) in peers.iter_mut().enumerate() {
            if results[pi].is_none() {
                continue;
            }
            check_interrupted()?;
            let wl = Workload::new(
                &data,
                &peer.tag(),
                run,
                plan.batch,
                plan.batches,
                plan.layout,
            );
            let mut workers = match peer.open(plan.concurrency, &wl) {
                Ok(w) => w,
                Err(e) if peer.optional() && run == 0 => {
                    eprintln!("warning: {} unavailable, skipped: {e}", peer.name());
                    results[pi] = None;
                    continue;
                }
                Err(e) => return Err(BenchError::failed(format!("{}: {e}", peer.name()))),
            };
            let measured =
                run_phase(peer.as_ref(), &mut workers, &wl, Phase::Put).and_then(|put| {
                    run_phase(peer.as_ref(), &mut workers, &wl, Phase::Get).map(|get| (put, get))
                });
            drop(workers);
            peer.close();
            let cleaned = cleanup(&wl.keys);
            let (put, get) = measured?;
            cleaned?;
            let name = peer.name();
            eprintln!(
                "run {}/{} {name:<20} put {:>9} keys/s {:>9.1} MB/s | get {:>9} keys/s {:>9.1} MB/s",
                run + 1,
                plan.runs,
                fmt_rate(put.keys_per_s),
                put.mb_per_s,
                fmt_rate(get.keys_per_s),
                get.mb_per_s
            );
            if plan.json {
                println!(
                    "{}",
                    json_line(plan, &name, Phase::Put, Some(run + 1), &put)
                );
                println!(
                    "{}",
                    json_line(plan, &name, Phase::Get, Some(run + 1), &get)
                );
            }
            if let Some(r) = results[pi].as_mut() {
                r.name = name;
                r.put.push(put);
                r.get.push(get);
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

// ---------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------

/// `812.4k`, `1.23M`, `950`.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Three significant digits and an `x`.
pub fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        return "-".into();
    }
    let a = r.abs();
    if a >= 100.0 {
        format!("{r:.0}x")
    } else if a >= 10.0 {
        format!("{r:.1}x")
    } else if a >= 1.0 {
        format!("{r:.2}x")
    } else if a >= 0.01 {
        format!("{r:.3}x")
    } else {
        format!("{r:.4}x")
    }
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".into()
    }
}

/// One result as a JSON object on one line (`run` None = median over runs).
pub fn json_line(plan: &Plan, peer: &str, phase: Phase, run: Option<usize>, s: &Sample) -> String {
    format!(
        "{{\"bench\":\"slotline\",\"kind\":\"{}\",\"run\":{},\"peer\":\"{}\",\"phase\":\"{}\",\
\"value_size\":{},\"batch\":{},\"batches\":{},\"runs\":{},\"concurrency\":{},\"layout\":\"{}\",\
\"mode\":\"{}\",\"keys_per_s\":{},\"mb_per_s\":{},\"p50_ms\":{},\"p95_ms\":{},\"p99_ms\":{},\
\"cpu_us_per_key\":{},\"frames_per_batch\":{}}}",
        if run.is_some() { "run" } else { "median" },
        run.map_or("null".to_string(), |r| r.to_string()),
        json_escape(peer),
        phase.name(),
        plan.value_size,
        plan.batch,
        plan.batches,
        plan.runs,
        plan.concurrency,
        plan.layout,
        plan.mode,
        json_num(s.keys_per_s),
        json_num(s.mb_per_s),
        json_num(s.p50_ms),
        json_num(s.p95_ms),
        json_num(s.p99_ms),
        json_num(s.cpu_us_per_key),
        s.frames_per_batch.map_or("null".to_string(), json_num),
    )
}

/// Prints the median table of both phases; `ratios` lists (numerator, denominator) row
/// indices to print as ratio rows below each phase.
pub fn print_report(plan: &Plan, results: &[PeerResult], ratios: &[(usize, usize)]) {
    let ratio_label = |a: usize, b: usize| format!("{} / {}", results[a].name, results[b].name);
    let width = results
        .iter()
        .map(|r| r.name.len())
        .chain(ratios.iter().map(|&(a, b)| ratio_label(a, b).len() + 2))
        .max()
        .unwrap_or(8)
        .max(8);
    for phase in [Phase::Put, Phase::Get] {
        let med: Vec<Sample> = results
            .iter()
            .map(|r| {
                Sample::median_of(match phase {
                    Phase::Put => &r.put,
                    Phase::Get => &r.get,
                })
            })
            .collect();
        println!();
        println!(
            "{:<width$} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>14}",
            phase.name().to_uppercase(),
            "keys/s",
            "MB/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "CPU us/key",
            "requests/batch"
        );
        for (r, s) in results.iter().zip(&med) {
            println!(
                "{:<width$} {:>10} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>11.2} {:>14}",
                r.name,
                fmt_rate(s.keys_per_s),
                s.mb_per_s,
                s.p50_ms,
                s.p95_ms,
                s.p99_ms,
                s.cpu_us_per_key,
                s.frames_per_batch.map_or("-".into(), |f| format!("{f:.1}"))
            );
        }
        for &(a, b) in ratios {
            let (x, y) = (&med[a], &med[b]);
            let q = |p: f64, q: f64| fmt_ratio(p / q);
            println!(
                "{:<width$} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>14}",
                format!("  {}", ratio_label(a, b)),
                q(x.keys_per_s, y.keys_per_s),
                q(x.mb_per_s, y.mb_per_s),
                q(x.p50_ms, y.p50_ms),
                q(x.p95_ms, y.p95_ms),
                q(x.p99_ms, y.p99_ms),
                q(x.cpu_us_per_key, y.cpu_us_per_key),
                match (x.frames_per_batch, y.frames_per_batch) {
                    (Some(f), Some(g)) => q(f, g),
                    _ => "-".into(),
                }
            );
        }
        if plan.json {
            for (r, s) in results.iter().zip(&med) {
                println!("{}", json_line(plan, &r.name, phase, None, s));
            }
        }
    }
    println!();
    println!(
        "Medians over {} runs. keys = LMCache chunks; MB = 10^6 payload bytes; latency per \
         batch of {}; CPU = this process (callers + slotline shard threads), server excluded.",
        plan.runs, plan.batch
    );
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
                    peers.push(Box::new(SlotlinePeer::new(cfg, a.get_into, optional)));
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
         {} in flight, layout {}, {mode}, {} run(s){}",
        plan.concurrency,
        plan.layout,
        plan.runs,
        if a.get_into {
            ", slotline reads with get_into"
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
    let naive = results.iter().position(|r| r.name == "naive");
    let ratios: Vec<(usize, usize)> = match naive {
        Some(n) => (0..results.len())
            .filter(|&i| i != n)
            .map(|i| (i, n))
            .collect(),
        None => Vec::new(),
    };
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

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn ratios_and_json() {
        assert_eq!(fmt_ratio(134.2), "134x");
        assert_eq!(fmt_ratio(0.5), "0.500x");
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn verifier_catches_wrong_values() {
        let data = Data::new(100, 4).unwrap();
        let wl = Workload::new(&data, "t", 0, 2, 2, KeyLayout::Lmcache);
        let mut v = Verifier::new(&wl);
        v.batch = 1;
        v.check(0, Some(wl.value(1, 0)), Some(&data.meta));
        assert_eq!((v.misses, v.mismatches), (0, 0));
        v.check(1, Some(wl.value(1, 0)), Some(&data.meta));
        assert_eq!(v.mismatches, 1);
        v.check(1, None, None);
        assert_eq!(v.misses, 1);
        assert!(v.first.unwrap().contains("mismatch"));
    }
}
