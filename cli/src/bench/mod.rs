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

mod error;
mod interrupt;
mod measure;
mod parallel;
mod peers;
mod plot;
mod progress;
mod record;
mod report;
mod server;
mod sizes;
mod topology;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};

use slotline::{Config, Engine, KeyLayout, PutChunk, RemoteMetadata};
use slotline::{IoBackend, Mode};
use slotline_testkit::{LocalCluster, RedisProcess, ServerOptions};

use crate::naive::NaiveClient;
use slotline_testkit::Resp2Frame;

pub use error::*;
use interrupt::{check_interrupted, INTERRUPTED};
pub use interrupt::{install_signal_handlers, interrupted};
pub use measure::*;
pub use parallel::*;
pub use peers::*;
pub use plot::*;
pub use record::*;
pub use report::*;
pub use server::*;
pub use sizes::*;
pub use topology::*;
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
preallocated buffers (against a cluster: one connection per master in each thread, \
each key to its slot's master).

Topology (issue 19): --masters 1,2,4,8 starts a cluster of each size in turn (replicas: \
--replicas, default 0 then) and runs every size and peer against it; the JSON records \
carry masters, replicas and io_threads, and a scaling table (GB/s and keys/s against \
masters) ends the output. --server-cores pins node i to its own CPU of the list \
(round-robin, masters first; --io-threads K: K CPUs each), --client-cores pins this \
process (slotline's shards one per CPU). server_cpu_us_per_key in the records is the \
CPU time of the bench's own servers per chunk (/proc), beside cpu_us_per_key (this \
process). --reads get,get-into measures slotline's get and get_into_slices in one \
invocation, interleaved, with the ratio get / get-into.

Key patterns (--keys): fresh = every timed PUT writes a key never written before in the \
run (the server pays first-touch page faults, about half the speed of overwrites for \
large values); overwrite = the keys are written once untimed, then the timed PUTs \
overwrite them. The default, both, times a fresh pass and then an overwrite pass over \
the same keys (the fresh pass is the pre-population), so it costs one PUT phase more \
per run than either alone; GET reads what the PUTs wrote.

Output: --format table (default) prints the tables; --format json or csv prints one \
record per (run, peer, phase, key pattern, size) and the medians on stdout, the tables \
on stderr. Every result names the git commit of the binary and its build profile. \
--plot DIR also writes DIR/bench.jsonl, DIR/throughput.svg (GB/s against value size, \
a panel per phase, at most five rows, slotline's best row over the best other at each \
size) and DIR/latency.svg (batch latency percentiles); throughput-MODE.svg and \
latency-MODE.svg when the records have several topologies; `slotline plot \
FILE.jsonl... --out DIR` draws the same from saved JSON (and from `python -m \
slotline.bench --records`). A progress bar is drawn on \
stderr when it is a terminal (SLOTLINE_NO_PROGRESS=1 turns it off).

Sizes: --sizes 1m,4m,32m runs each size in turn, each against a fresh server of its own \
(or, with --url, after deleting the previous size's keys). Without --batch, the batch is \
16 chunks of 1 MiB, 8 of 4 MiB, 4 of 32 MiB or more, 128 below 1 MiB. Without \
--batches, 200 batches per phase, fewer when one run would store more than --max-data \
(a note says so; p99 is then marked where it equals the slowest batch).

Examples:
  slotline bench --batches 50 --runs 3
  slotline bench --mode cluster --sizes 1m,4m,32m --peers slotline --plot plots/
  slotline bench --format csv > results.csv
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
    /// Several payload sizes, comma-separated, run one after the other (e.g.
    /// 1m,4m,32m); replaces --value-size.
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_parser = parse_size, conflicts_with = "value_size")]
    sizes: Option<Vec<usize>>,
    /// Chunks (LMCache keys) per batch [default: by size, see below].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch: Option<u32>,
    /// Batches per phase and run [default: 200, see below].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batches: Option<u32>,
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
    /// instead of get (the same as --reads get-into). The parallel peer always reads
    /// into preallocated buffers.
    #[arg(long, conflicts_with = "reads")]
    get_into: bool,
    /// slotline's read modes, comma-separated: get (buffers the engine allocates, or
    /// reuses from its pool) and get-into (caller buffers, get_into_slices); with both,
    /// one slotline row per mode and backend (the get-into one labelled +into), in one
    /// invocation, and the ratio get / get-into [default: get].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODES")]
    reads: Option<Vec<ReadMode>>,
    /// Cluster sizes, comma-separated (e.g. 1,2,4,8): one cluster of each size started
    /// in turn, every size and peer run against it; a scaling series (GB/s and keys/s
    /// against masters). Implies --mode cluster.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=512), conflicts_with = "url")]
    masters: Option<Vec<u32>>,
    /// Replicas per master of the bench's own cluster [default: 1 (3+3) without
    /// --masters, 0 with it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=4), conflicts_with = "url")]
    replicas: Option<u32>,
    /// CPUs of the bench's own servers (e.g. 8-15 or 8,10,12): node i gets its own
    /// CPU (--io-threads K: K of them), round-robin over the list, masters first.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus, conflicts_with = "url")]
    server_cores: Option<CpuList>,
    /// CPUs of this process: slotline's shards one per CPU (--shards N: the first N),
    /// the peers' threads anywhere in the list. The servers then run on
    /// --server-cores or, without it, on every CPU this process was allowed at start.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    client_cores: Option<CpuList>,
    /// --io-threads of the bench's own servers (redis-server's threads that read and
    /// write client sockets).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=128), conflicts_with = "url")]
    io_threads: Option<u32>,
    /// Server binary of the bench's own servers: any redis-server build, or
    /// valkey-server [default: $SLOTLINE_REDIS_SERVER, else redis-server on PATH].
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    server_bin: Option<PathBuf>,
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
    /// The tables and, on stdout with them, the JSON lines of --format json (what
    /// scripts/ab_bench.py reads).
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Start the bench's server with TLS too and add a slotline row over TLS beside
    /// each plain one (same workload, same server): the cost of TLS.
    #[arg(long, conflicts_with = "url")]
    tls: bool,
    /// Output: table, json (one object per line) or csv.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write bench.jsonl, throughput.svg and latency.svg into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

/// Arguments of `slotline plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// JSON-lines files written by `slotline bench --format json` (or `--plot`), or by
    /// `python -m slotline.bench --records`.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Directory for throughput.svg and latency.svg (throughput-MODE.svg, ... per
    /// topology when the records have several).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

/// `slotline plot`.
pub fn plot_cli(a: PlotArgs) -> Result<(), BenchError> {
    plot_files(&a.files, &a.out)
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

fn parse_layout(s: &str) -> Result<KeyLayout, String> {
    s.parse::<KeyLayout>()
        .map_err(|_| format!("unknown layout {s:?}: expected lmcache, hashtag or raw"))
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

/// `cfg` pointed at the TLS side of the bench's own server.
fn tls_config(cfg: &Config, url: &str, ca: &Path) -> Result<Config, BenchError> {
    let t = Config::from_url(url).map_err(|e| BenchError::usage(e.to_string()))?;
    Ok(Config {
        seeds: t.seeds,
        tls: true,
        tls_ca_file: Some(ca.to_path_buf()),
        ..cfg.clone()
    })
}

/// `slotline bench`.
pub fn run_cli(a: BenchArgs) -> Result<(), BenchError> {
    if a.peers.is_empty() {
        return Err(BenchError::usage("--peers lists no client"));
    }
    let sizes = a.sizes.clone().unwrap_or_else(|| vec![a.value_size]);
    if sizes.is_empty() {
        return Err(BenchError::usage("--sizes lists no size"));
    }
    // Every size is checked before any server starts.
    let jobs = sizes
        .iter()
        .map(|&s| size_job(&a, s))
        .collect::<Result<Vec<_>, _>>()?;
    let masters: Vec<Option<usize>> = match &a.masters {
        Some(m) if m.is_empty() => return Err(BenchError::usage("--masters lists no size")),
        Some(m) => m.iter().map(|&n| Some(n as usize)).collect(),
        None => vec![None],
    };
    let mut out = if a.json {
        Output::mixed_json()
    } else {
        Output::new(a.format)
    };
    let cluster = a.mode == ModeArg::Cluster || a.masters.is_some();
    let reads = a.read_modes().len();
    let mut rows = 0;
    let mut seen = Vec::new();
    for p in a.peers.iter().filter(|p| {
        let new = !seen.contains(*p);
        seen.push(**p);
        new
    }) {
        rows += match (p, a.backend) {
            (PeerKind::Slotline, BackendChoice::Both) => 2 * reads,
            (PeerKind::Slotline, _) => reads,
            _ => 1,
        };
    }
    for j in &jobs {
        let plan_batches = (a.keys.put_passes().len() + 1) * j.batches;
        progress::add_total(masters.len() * rows * a.runs as usize * plan_batches);
    }
    install_signal_handlers();
    // Servers started from here on get CPUs of their own (--server-cores, else every
    // CPU this process may use now), not the client's.
    let all_cpus = allowed_cpus();
    if let Some(c) = &a.client_cores {
        pin_process(&c.0)
            .map_err(|e| BenchError::usage(format!("--client-cores {:?}: {e}", c.0)))?;
    }
    for &m in &masters {
        let topo = a.url.is_none().then(|| ServerTopology {
            mode: if cluster {
                Mode::Cluster
            } else {
                Mode::Standalone
            },
            masters: m.unwrap_or(if cluster { 3 } else { 1 }),
            replicas: match (cluster, a.replicas) {
                (false, _) => 0,
                (true, Some(r)) => r as usize,
                (true, None) => usize::from(m.is_none()),
            },
            cores: match (&a.server_cores, &a.client_cores) {
                (Some(s), _) => s.0.clone(),
                (None, Some(_)) => all_cpus.clone(),
                (None, None) => Vec::new(),
            },
            io_threads: a.io_threads,
            binary: a.server_bin.clone(),
            tls: a.tls,
        });
        for job in &jobs {
            run_size(&a, job, topo.as_ref(), &mut out)?;
        }
    }
    let scaling = scaling_table(&out.records);
    if !scaling.is_empty() {
        out.say(&scaling);
    }
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::failed(format!("creating {}: {e}", dir.display())))?;
        let jsonl = dir.join("bench.jsonl");
        out.write_jsonl(&jsonl)?;
        let mut files = vec![jsonl];
        files.extend(write_plots(&out.records, dir)?);
        for f in files {
            out.say(&format!("wrote {}", f.display()));
        }
    }
    Ok(())
}

impl BenchArgs {
    /// slotline's read modes (`--reads`, `--get-into`), each once.
    fn read_modes(&self) -> Vec<ReadMode> {
        let mut v = match (&self.reads, self.get_into) {
            (Some(r), _) => r.clone(),
            (None, true) => vec![ReadMode::GetInto],
            (None, false) => vec![ReadMode::Get],
        };
        v.dedup();
        if v.len() > 1 && v[0] == v[1] {
            v.truncate(1);
        }
        v
    }
}

/// One size on one topology: its own servers (unless --url), every peer and run, the
/// report.
fn run_size(
    a: &BenchArgs,
    job: &SizeJob,
    topo: Option<&ServerTopology>,
    out: &mut Output,
) -> Result<(), BenchError> {
    let (value_size, batch, batches) = (job.value_size, job.batch, job.batches);
    let mode: Mode = match topo {
        Some(t) => t.mode,
        None => a.mode.into(),
    };

    let owned = match topo {
        None => None,
        Some(t) => {
            progress::clear();
            eprintln!("starting the bench's servers: {}...", t.describe());
            let s = OwnedServer::start_topology(t)?;
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
    match (&a.client_cores, a.shards) {
        // One shard per client CPU (the first N with --shards N).
        (Some(c), n) => {
            let take = n.map_or(c.0.len(), |n| n as usize);
            base.cores = Some(c.0.iter().copied().cycle().take(take).collect());
            base.shards = None;
        }
        (None, Some(n)) => {
            base.cores = None;
            base.shards = Some(n as usize);
        }
        (None, None) => {}
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
                let reads = a.read_modes();
                for &(b, optional) in backends {
                    for &r in &reads {
                        let into = r == ReadMode::GetInto;
                        // With both modes the get-into row is labelled apart.
                        let suffix = if into && reads.len() > 1 { "+into" } else { "" };
                        let mut cfg = base.clone();
                        cfg.io_backend = b;
                        let tls_cfg = owned
                            .as_ref()
                            .and_then(|s| s.tls())
                            .map(|(u, ca)| tls_config(&cfg, u, ca))
                            .transpose()?;
                        peers.push(Box::new(
                            SlotlinePeer::new(cfg, into, optional)
                                .with_regions(a.region)
                                .with_suffix(suffix)
                                .count_commands_at(&url, mode),
                        ));
                        if let Some(t) = tls_cfg {
                            peers.push(Box::new(
                                SlotlinePeer::new(t, into, optional)
                                    .with_suffix(suffix)
                                    .count_commands_at(&url, mode),
                            ));
                        }
                    }
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
        format: out.format(),
        server: ServerInfo {
            masters: match (topo, mode) {
                (Some(t), _) => Some(t.masters),
                (None, Mode::Standalone) => Some(1),
                (None, Mode::Cluster) => None,
            },
            replicas: topo.map(|t| t.replicas),
            io_threads: topo.and_then(|t| t.io_threads.map(|k| k as usize)),
            pids: owned.as_ref().map(|s| s.pids()).unwrap_or_default(),
        },
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
                e.delete(chunk).wait()?;
            }
        }
        Ok(())
    };

    out.say(&format!(
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
    ));
    out.say(&format!(
        "build: commit {GIT_COMMIT}, profile {BUILD_PROFILE}; runs rotate the peer order \
         (run i starts with peer i mod n); ratios are taken within each run, then the \
         median over runs"
    ));
    if let Some(n) = &job.note {
        out.say(n);
    }
    out.say(&format!(
        "server: {} at {}{}; client machine: {} CPUs",
        server_version(&url, mode),
        slotline::mask_url(&url),
        if owned.is_some() {
            " (started for this bench)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));

    let results = run_plan(&plan, &mut peers, &mut cleanup, out)?;
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
    // Both read modes measured: get / get-into per backend (issue 19: within 0.8x).
    for (i, r) in results.iter().enumerate() {
        if let Some(j) = row(&format!("{}+into", r.name)) {
            ratios.push((i, j));
        }
    }
    for note in peers.iter().filter_map(|p| p.note()) {
        out.say(&note);
    }
    let has = |prefix: &str| peers.iter().any(|p| p.name().starts_with(prefix));
    if a.read_modes() == [ReadMode::Get] && has("parallel") && has("slotline") {
        out.say(
            "note: parallel reads into preallocated buffers, slotline with get (engine \
             buffers, pooled from 64 KiB); --reads get,get-into adds slotline rows with \
             caller buffers",
        );
    }
    print_report(&plan, &results, &ratios, out);
    drop(owned);
    Ok(())
}
