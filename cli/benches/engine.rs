//! slotline against the clients a Rust user would otherwise reach for, in one process, on
//! one server, with the same keys, values and LMCache byte format:
//!
//! - `naive`: the seed's baseline, one blocking GET/SET round trip per Redis key;
//! - `parallel`: LMCache's native client modelled, 8 blocking connections, one GET/SET
//!   per Redis key, reads into preallocated buffers;
//! - `redis-rs`: the `redis` crate's sync connection; puts are MSETs (as slotline's,
//!   without a TTL) and gets MGETs, at most `chunk_size` chunks / keys each, pipelined in
//!   one write per batch;
//! - `fred`: async, one current-thread tokio runtime per caller thread, the same MSET /
//!   MGET pipelines;
//! - `slotline[io_uring]`, `slotline[epoll]`, reading with `get_into_slices` into caller
//!   buffers allocated once per run, as the parallel peer does (`SLOTLINE_BENCH_GET_INTO=0`
//!   reads with `get`).
//!
//! Two regimes: 2 KiB values in batches of 128 chunks (the seed's benchmark) and 4 MiB
//! values in batches of 8 (LMCache's large chunks), PUTs on fresh keys and overwriting.
//! Each table cell is the median over runs; ratio rows are slotline / peer, computed
//! within each run and then the median. `SLOTLINE_BENCH_JSON=1` prints JSON lines on
//! stdout (the tables on stderr).
//!
//! ```text
//! cargo bench --bench engine                 # both regimes
//! cargo bench --bench engine -- small        # only the 2 KiB regime ("large" for 4 MiB)
//! SLOTLINE_BENCH_QUICK=1 cargo bench --bench engine
//! SLOTLINE_BENCH_URL=redis://127.0.0.1:6400 cargo bench --bench engine
//! ```
//!
//! Without `SLOTLINE_BENCH_URL` a redis-server is started on a free port and stopped at the
//! end. With it, the server is FLUSHALLed between clients: point it at a scratch server.
//!
//! The measurement code is the CLI's (`slotline bench`, the `slotline_cli::bench`
//! module), so both report the same numbers the same way.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fred::prelude::{ClientLike, KeysInterface};
use slotline::{Config, KeyLayout, RemoteMetadata};
use slotline::{IoBackend, Mode};
use slotline_cli::bench::{
    self, BenchError, Format, Keys, NaivePeer, Output, OwnedServer, ParallelPeer, Peer, Plan,
    SlotlinePeer, Verifier, Worker, Workload,
};

/// Chunks per MSET and keys per MGET of the redis-rs and fred peers: slotline's default
/// `chunk_size`, so that all three send commands of the same size.
fn group() -> usize {
    Config::default().chunk_size.max(1)
}

/// Frames and commands one worker sent (a pipeline is one frame).
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    commands: AtomicU64,
}

impl Counts {
    fn add(&self, frames: u64, commands: u64) {
        self.frames.fetch_add(frames, Ordering::Relaxed);
        self.commands.fetch_add(commands, Ordering::Relaxed);
    }
}

/// Redis keys of one batch in MGET order: per chunk metadata then payload (two-key
/// layouts) or the payload alone.
fn read_keys(wl: &Workload<'_>, b: usize) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(wl.batch * wl.layout.keys_per_chunk());
    for k in wl.batch_keys(b) {
        if let Some(m) = wl.layout.metadata_key(k) {
            keys.push(m);
        }
        keys.push(wl.layout.payload_key(k));
    }
    keys
}

/// Checks one batch's MGET values (in [`read_keys`] order, `keys` of them expected)
/// chunk by chunk; `bytes` reads a value (`None`: nil).
fn check_values<T>(
    v: &mut Verifier<'_, '_>,
    wl: &Workload<'_>,
    keys: usize,
    vals: &[T],
    bytes: impl Fn(&T) -> Option<&[u8]>,
) -> Result<(), String> {
    if vals.len() != keys {
        return Err(format!(
            "MGET returned {} values for {keys} keys",
            vals.len()
        ));
    }
    let per = wl.layout.keys_per_chunk();
    for (i, c) in vals.chunks(per).enumerate() {
        let payload = bytes(&c[per - 1]);
        let meta = (per == 2).then(|| bytes(&c[0]));
        check_chunk(v, i, meta, payload);
    }
    Ok(())
}

/// Applies LMCache's read rules to one chunk's MGET values and reports it.
fn check_chunk(
    v: &mut Verifier<'_, '_>,
    i: usize,
    meta: Option<Option<&[u8]>>,
    payload: Option<&[u8]>,
) {
    let Some(meta) = meta else {
        // raw layout: the payload alone.
        v.check(i, payload, None);
        return;
    };
    let decoded = meta.and_then(|m| RemoteMetadata::decode(m).ok());
    match (decoded, payload) {
        (Some(md), Some(p)) if md.payload_len() == p.len() => v.check(i, Some(p), Some(&md)),
        _ => v.check(i, None, None),
    }
}

// ---------------------------------------------------------------------------------------
// redis-rs
// ---------------------------------------------------------------------------------------

struct RedisRsPeer {
    url: String,
}

struct RedisRsWorker {
    con: redis::Connection,
    counts: Arc<Counts>,
}

impl Peer for RedisRsPeer {
    fn name(&self) -> String {
        "redis-rs".into()
    }

    fn tag(&self) -> String {
        "redis-rs".into()
    }

    fn open(&mut self, n: usize, _wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        (0..n)
            .map(|_| {
                client
                    .get_connection()
                    .map(|con| {
                        Box::new(RedisRsWorker {
                            con,
                            counts: Arc::default(),
                        }) as Box<dyn Worker>
                    })
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

impl Worker for RedisRsWorker {
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String> {
        let mut pipe = redis::pipe();
        let keys = wl.batch_keys(b);
        let mut commands = 0;
        for (g, ks) in keys.chunks(group()).enumerate() {
            let mset = pipe.cmd("MSET");
            for (j, k) in ks.iter().enumerate() {
                mset.arg(wl.layout.payload_key(k))
                    .arg(wl.value(b, g * group() + j).as_ref());
                if let Some(m) = wl.layout.metadata_key(k) {
                    mset.arg(m).arg(wl.data.meta_bytes.as_slice());
                }
            }
            mset.ignore();
            commands += 1;
        }
        self.counts.add(1, commands);
        pipe.exec(&mut self.con).map_err(|e| e.to_string())
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        let keys = read_keys(wl, b);
        let mut pipe = redis::pipe();
        for ks in keys.chunks(group()) {
            pipe.cmd("MGET").arg(ks);
        }
        let groups: Vec<Vec<Option<Vec<u8>>>> =
            pipe.query(&mut self.con).map_err(|e| e.to_string())?;
        self.counts.add(1, groups.len() as u64);
        let vals: Vec<Option<Vec<u8>>> = groups.into_iter().flatten().collect();
        check_values(v, wl, keys.len(), &vals, |x| x.as_deref())
    }

    fn round_trips(&self) -> Option<u64> {
        Some(self.counts.frames.load(Ordering::Relaxed))
    }

    fn commands(&self) -> Option<u64> {
        Some(self.counts.commands.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------
// fred
// ---------------------------------------------------------------------------------------

fn key(k: Vec<u8>) -> fred::types::Key {
    bytes::Bytes::from(k).into()
}

struct FredPeer {
    url: String,
}

struct FredWorker {
    rt: tokio::runtime::Runtime,
    client: fred::prelude::Client,
    counts: Arc<Counts>,
}

impl Peer for FredPeer {
    fn name(&self) -> String {
        "fred".into()
    }

    fn tag(&self) -> String {
        "fred".into()
    }

    fn open(&mut self, n: usize, _wl: &Workload<'_>) -> Result<Vec<Box<dyn Worker>>, String> {
        (0..n)
            .map(|_| {
                // One runtime per caller thread: the connection task runs on the caller's
                // thread during block_on, as in a current-thread tokio application.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let cfg = fred::prelude::Config::from_url(&self.url).map_err(|e| e.to_string())?;
                let client = fred::prelude::Builder::from_config(cfg)
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(client.init()).map_err(|e| e.to_string())?;
                Ok(Box::new(FredWorker {
                    rt,
                    client,
                    counts: Arc::default(),
                }) as Box<dyn Worker>)
            })
            .collect()
    }

    fn close(&mut self) {}
}

impl Drop for FredWorker {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.client.quit());
    }
}

impl Worker for FredWorker {
    fn put(&mut self, wl: &Workload<'_>, b: usize) -> Result<(), String> {
        let client = &self.client;
        let keys = wl.batch_keys(b);
        let meta = bytes::Bytes::from(wl.data.meta_bytes.clone());
        let commands = keys.chunks(group()).len() as u64;
        self.counts.add(1, commands);
        self.rt
            .block_on(async {
                let p = client.pipeline();
                for (g, ks) in keys.chunks(group()).enumerate() {
                    let mut pairs = Vec::with_capacity(ks.len() * wl.layout.keys_per_chunk());
                    for (j, k) in ks.iter().enumerate() {
                        let value = wl.value(b, g * group() + j).clone();
                        pairs.push((
                            key(wl.layout.payload_key(k)),
                            fred::types::Value::Bytes(value),
                        ));
                        if let Some(m) = wl.layout.metadata_key(k) {
                            pairs.push((key(m), fred::types::Value::Bytes(meta.clone())));
                        }
                    }
                    let () = p.mset(pairs).await?;
                }
                p.all::<fred::types::Value>().await.map(|_| ())
            })
            .map_err(|e| e.to_string())
    }

    fn get(&mut self, wl: &Workload<'_>, b: usize, v: &mut Verifier<'_, '_>) -> Result<(), String> {
        let keys: Vec<fred::types::Key> = read_keys(wl, b).into_iter().map(key).collect();
        let n = keys.len();
        let client = &self.client;
        let groups: Vec<Vec<fred::types::Key>> = keys.chunks(group()).map(|c| c.to_vec()).collect();
        self.counts.add(1, groups.len() as u64);
        let replies: Vec<fred::types::Value> = self
            .rt
            .block_on(async {
                let p = client.pipeline();
                for ks in groups {
                    let () = p.mget(ks).await?;
                }
                p.all::<Vec<fred::types::Value>>().await
            })
            .map_err(|e| e.to_string())?;
        let mut vals: Vec<fred::types::Value> = Vec::with_capacity(n);
        for r in replies {
            match r {
                fred::types::Value::Array(a) => vals.extend(a),
                other => vals.push(other),
            }
        }
        check_values(v, wl, n, &vals, |x| x.as_bytes())
    }

    fn round_trips(&self) -> Option<u64> {
        Some(self.counts.frames.load(Ordering::Relaxed))
    }

    fn commands(&self) -> Option<u64> {
        Some(self.counts.commands.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn regime(
    url: &str,
    name: &str,
    value_size: usize,
    batch: usize,
    batches: usize,
    runs: usize,
) -> Result<(), BenchError> {
    let layout = KeyLayout::Lmcache;
    let plan = Plan {
        value_size,
        batch,
        batches,
        runs,
        concurrency: 1,
        layout,
        keys: Keys::Both,
        mode: Mode::Standalone,
        server: bench::ServerInfo::default(),
        format: if env_flag("SLOTLINE_BENCH_JSON") {
            Format::Json
        } else {
            Format::Table
        },
    };
    let mut out = Output::new(plan.format);
    println!();
    println!(
        "== {name}: {value_size}-byte values, {batch} chunks/batch, {batches} batches, \
         layout {layout}, {runs} runs, server {url}"
    );
    let base = Config::from_url(url)?;
    // Caller buffers, as the parallel peer reads (redis-rs and fred have none): every
    // peer that can read into preallocated memory does. SLOTLINE_BENCH_GET_INTO=0 reads
    // with `get` (a fresh allocation per value) instead.
    let get_into = std::env::var("SLOTLINE_BENCH_GET_INTO").map_or(true, |v| v != "0");
    let mut peers: Vec<Box<dyn Peer>> = vec![
        Box::new(NaivePeer::new(url, Mode::Standalone, layout)),
        Box::new(ParallelPeer::new(url, Mode::Standalone, 8)),
        Box::new(RedisRsPeer { url: url.into() }),
        Box::new(FredPeer { url: url.into() }),
    ];
    for (backend, optional) in [(IoBackend::IoUring, true), (IoBackend::Epoll, false)] {
        let mut cfg = base.clone();
        cfg.io_backend = backend;
        cfg.key_layout = layout;
        peers.push(Box::new(
            SlotlinePeer::new(cfg, get_into, optional).count_commands_at(url, Mode::Standalone),
        ));
    }
    let mut cleanup = |_: &[Vec<u8>]| -> Result<(), BenchError> {
        slotline_cli::naive::NaiveClient::connect(url, Mode::Standalone, layout)?.flush_all()?;
        Ok(())
    };
    let results = bench::run_plan(&plan, &mut peers, &mut cleanup, &mut out)?;
    let ratios: Vec<(usize, usize)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.name.starts_with("slotline"))
        .flat_map(|(s, _)| {
            results
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.name.starts_with("slotline"))
                .map(move |(o, _)| (s, o))
        })
        .collect();
    for note in peers.iter().filter_map(|p| p.note()) {
        out.say(&note);
    }
    bench::print_report(&plan, &results, &ratios, &mut out);
    Ok(())
}

fn run() -> Result<(), BenchError> {
    bench::install_signal_handlers();
    let quick = env_flag("SLOTLINE_BENCH_QUICK");
    // `cargo bench` passes `--bench`; anything else is a regime filter.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |r: &str| filters.is_empty() || filters.iter().any(|f| r.contains(f.as_str()));

    let owned = match std::env::var("SLOTLINE_BENCH_URL") {
        Ok(u) if !u.is_empty() => {
            eprintln!("using SLOTLINE_BENCH_URL={u} (it is flushed between clients)");
            None
        }
        _ => Some(OwnedServer::start(Mode::Standalone, false)?),
    };
    let url = match (&owned, std::env::var("SLOTLINE_BENCH_URL")) {
        (Some(s), _) => s.url().to_string(),
        (None, Ok(u)) => u,
        (None, Err(_)) => return Err(BenchError::failed("no server")),
    };
    println!(
        "slotline engine bench ({}): server {} at {url}; {} CPUs",
        if quick { "quick" } else { "full" },
        bench::server_version(&url, Mode::Standalone),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if wanted("small") {
        let (batches, runs) = if quick { (30, 3) } else { (200, 5) };
        regime(&url, "small (2 KiB x 128)", 2048, 128, batches, runs)?;
    }
    if wanted("large") {
        let (batches, runs) = if quick { (6, 3) } else { (40, 5) };
        regime(&url, "large (4 MiB x 8)", 4 << 20, 8, batches, runs)?;
    }
    drop(owned);
    Ok(())
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLOTLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("slotline=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code)
        }
    }
}
