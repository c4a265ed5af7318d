//! The `slotline` command as a library: command-line parsing and dispatch ([`Cli`],
//! [`run`]), the chunk commands, the benchmark harness ([`bench`](mod@bench)) and the naive
//! one-round-trip-per-key baseline ([`naive`]) it measures slotline against. The
//! binary (`src/main.rs`) and `benches/engine.rs` are thin users of this crate.
//!
//!
//! Exit codes: 0 success, 1 a runtime failure (server unreachable, miss on `get`, bench
//! verification failed), 2 bad usage (clap's own code, and invalid values we reject
//! before touching a server).

pub mod bench;
pub mod chunks;
pub mod host;
pub mod metrics;
pub mod naive;
pub mod tune;

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use slotline::IoBackend;
use slotline::{Config, KeyLayout};

/// Thread-per-core engine that stores and fetches LMCache KV-cache chunks in Redis and
/// Redis Cluster.
#[derive(Debug, Parser)]
#[command(
    name = "slotline",
    version,
    about,
    long_about = "Thread-per-core engine that stores and fetches LMCache KV-cache chunks in \
Redis and Redis Cluster.\n\n\
Chunks are written in LMCache's own byte format (RemoteMetadata + payload, in the \
lmcache, hashtag or raw key layout), so LMCache's connectors read what slotline writes \
and the other way round.\n\n\
Logging goes to stderr; set SLOTLINE_LOG (or RUST_LOG), e.g. SLOTLINE_LOG=slotline=debug.",
    after_help = "Examples:\n  \
slotline servers up --port 6400 --state-dir /tmp/sl\n  \
slotline put 'model@1@0@3f9a@bfloat16' --file chunk.bin --url redis://127.0.0.1:6400\n  \
slotline get 'model@1@0@3f9a@bfloat16' --out chunk.out --url redis://127.0.0.1:6400\n  \
slotline bench --batches 50 --runs 3"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop or inspect local redis-server processes (standalone or a 3+3 cluster).
    #[command(subcommand)]
    Servers(ServersCmd),
    /// Store one chunk: payload from a file (or stdin), RemoteMetadata from flags.
    Put(chunks::PutArgs),
    /// Fetch one chunk: print its metadata and length, optionally save the payload.
    Get(chunks::GetArgs),
    /// Print `KEY true|false` for each chunk key.
    Exists(chunks::KeysArgs),
    /// Delete chunks (both Redis keys in the two-key layouts); prints how many existed.
    Del(chunks::KeysArgs),
    /// Print a cluster's topology: each master with its slot ranges, replicas and the
    /// shard that owns its connections.
    Topology(chunks::TopologyArgs),
    /// Benchmark slotline against the naive one-round-trip-per-key client.
    ///
    /// The naive client is the seed's baseline: one blocking GET or SET per Redis key.
    /// Both write LMCache's byte format to the same server: the bench's own temporary
    /// redis-server unless --url is given.
    Bench(bench::BenchArgs),
    /// Draw throughput.svg (GB/s by value size) and latency.svg (batch latency
    /// percentiles) from saved `slotline bench --format json` output.
    Plot(bench::PlotArgs),
    /// Print the engine's Prometheus metrics, or serve them on a loopback /metrics
    /// endpoint (--serve 127.0.0.1:9464), optionally under a load (--load SECS: it
    /// writes keys with a TTL into the server and deletes them when it ends).
    Metrics(metrics::MetricsArgs),
    /// Read this host (NUMA, cores, NIC IRQs, memlock, io_uring, socket buffers, THP)
    /// and recommend a shard-to-core map and settings, each with its reason.
    Tune(tune::TuneArgs),
    /// Print every configuration key under `extra_config` (type, default, bounds,
    /// LMCache adapter parameter, meaning) as the README's Markdown table.
    Config {
        /// Markdown table (the only format so far).
        #[arg(long)]
        keys_markdown: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ServersCmd {
    /// Start daemonized servers and record them in the state directory.
    Up {
        /// Start a 3-master + 3-replica Redis Cluster instead of one standalone server.
        #[arg(long)]
        cluster: bool,
        /// First port (default 6379 standalone, 7000 cluster; a cluster uses 6 ports).
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        /// Also serve TLS: on port + 1 (standalone) or + 100 (cluster nodes, whose bus
        /// and replication use TLS too), with certificates made in <state-dir>/tls/.
        /// Prints the rediss:// URL and the CA file to trust.
        #[arg(long)]
        tls: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Write a test CA, a server certificate (127.0.0.1, ::1, localhost) and a client
    /// certificate into DIR, as PEM: ca.pem, server.pem/.key, client.pem/.key (for
    /// docker-compose's TLS node, which reads ./tls, or any redis-server --tls-port).
    /// A CA of its own: `servers up --tls` makes and uses another, in
    /// <state-dir>/tls. The .key files are private keys (mode 600): a warning says so
    /// when DIR is inside a git work tree that does not ignore them.
    Certs {
        /// Where to write them (created if missing; existing files are replaced).
        dir: PathBuf,
    },
    /// Stop the servers recorded in the state directory (by pid).
    Down {
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Show the recorded servers: address, pid, running or not, role.
    Status {
        #[command(flatten)]
        state: StateDirArg,
    },
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// Where the server record, logs and data live [default: $SLOTLINE_STATE_DIR, else
    /// ./.slotline].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StateDirArg {
    fn resolve(self) -> PathBuf {
        self.state_dir
            .unwrap_or_else(slotline_testkit::default_state_dir)
    }
}

/// `slotline servers certs DIR`: the files, what they are for, and a warning on stderr
/// when a private key landed in a git work tree that would not ignore it.
fn certs(dir: &std::path::Path) -> Result<Vec<String>, CliError> {
    let c = slotline_testkit::TlsCerts::generate(dir)?;
    // A .gitignore line for DIR: its last component (`tls/`), ignored wherever it is.
    let pattern = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    for key in [&c.server_key, &c.client_key] {
        if git_would_track(key) {
            eprintln!(
                "warning: {} is a private key inside a git work tree that does not ignore \
                 it: add `{pattern}/` to .gitignore (or write the certificates elsewhere)",
                key.display(),
            );
        }
    }
    Ok(vec![
        format!("CA certificate:     {}", c.ca.display()),
        format!(
            "server certificate: {} (key {})",
            c.server_cert.display(),
            c.server_key.display()
        ),
        format!(
            "client certificate: {} (key {})",
            c.client_cert.display(),
            c.client_key.display()
        ),
        format!(
            "for a redis-server with --tls-cert-file/--tls-key-file from here (docker \
             compose's redis-tls reads ./tls); clients trust {} (extra_config.tls_ca_file)",
            c.ca.display()
        ),
        "this CA is not the one of `slotline servers up --tls`, which makes its own in \
         <state-dir>/tls and prints it"
            .to_string(),
        "the .key files are private keys (mode 600): keep them out of version control".to_string(),
    ])
}

/// Whether `path` lies in a git work tree that does not ignore it (`git check-ignore`
/// answers 1). No git, or not a work tree: false.
fn git_would_track(path: &std::path::Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["check-ignore", "-q", "--"])
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.code() == Some(1))
}

/// How the chunk commands reach Redis.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], rediss://..., unix:///path, or
    /// redis://h1:p1,h2:p2 (cluster seeds).
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    url: Option<String>,
    /// LMCache YAML config file (remote_url and extra_config are read).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Key layout: lmcache (K+"metadata", K+"kv_bytes"), hashtag ({K}:metadata,
    /// {K}:kv_bytes) or raw (payload alone under K). Overrides the config file.
    #[arg(long, value_name = "LAYOUT", value_parser = parse_layout)]
    layout: Option<KeyLayout>,
    /// I/O driver of the engine's shards: auto, io_uring or epoll.
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    backend: Option<IoBackend>,
}

/// The default server of the chunk commands.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

impl ConnArgs {
    /// The engine configuration these flags describe.
    pub fn config(&self) -> Result<Config, CliError> {
        let mut cfg = match (&self.config, &self.url) {
            (Some(path), _) => Config::from_yaml_file(path)?,
            (None, Some(url)) => Config::from_url(url)?,
            (None, None) => Config::from_url(DEFAULT_URL)?,
        };
        if let Some(l) = self.layout {
            cfg.key_layout = l;
        }
        if let Some(b) = self.backend {
            cfg.io_backend = b;
        }
        // A one-shot command has no use for a shard per core.
        if cfg.cores.is_none() && cfg.shards.is_none() {
            cfg.shards = Some(1);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// clap value parser for `--layout`.
pub fn parse_layout(s: &str) -> Result<KeyLayout, String> {
    s.parse::<KeyLayout>()
        .map_err(|_| format!("unknown layout {s:?}: expected lmcache, hashtag or raw"))
}

/// clap value parser for `--backend` (single backend).
pub fn parse_backend(s: &str) -> Result<IoBackend, String> {
    s.parse::<IoBackend>()
        .map_err(|_| format!("unknown backend {s:?}: expected auto, io_uring or epoll"))
}

/// A failure the binary reports on stderr before exiting with `code`.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code (1 runtime failure, 2 bad usage).
    pub code: u8,
    msg: String,
}

impl CliError {
    /// A runtime failure (exit code 1).
    pub fn failed(msg: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            msg: msg.into(),
        }
    }

    /// Writes `error: ...` to stderr.
    pub fn print(&self) {
        eprintln!("error: {}", self.msg);
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<slotline::Error> for CliError {
    fn from(e: slotline::Error) -> Self {
        // Config and URL errors are the user's input: same class as a clap usage error.
        let code = match e {
            slotline::Error::Config { .. } | slotline::Error::Url { .. } => 2,
            _ => 1,
        };
        CliError {
            code,
            msg: e.to_string(),
        }
    }
}

impl From<slotline_testkit::Error> for CliError {
    fn from(e: slotline_testkit::Error) -> Self {
        CliError::failed(e.to_string())
    }
}

impl From<bench::BenchError> for CliError {
    fn from(e: bench::BenchError) -> Self {
        CliError {
            code: e.code,
            msg: e.msg,
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Servers(cmd) => servers(cmd),
        Command::Put(a) => chunks::put(a),
        Command::Get(a) => chunks::get(a),
        Command::Exists(a) => chunks::exists(a),
        Command::Del(a) => chunks::del(a),
        Command::Topology(a) => chunks::topology(a),
        Command::Bench(a) => Ok(bench::run_cli(a)?),
        Command::Plot(a) => Ok(bench::plot_cli(a)?),
        Command::Metrics(a) => metrics::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Config { keys_markdown: _ } => {
            print!("{}", slotline::keys_markdown());
            Ok(())
        }
    }
}

fn servers(cmd: ServersCmd) -> Result<(), CliError> {
    let lines = match cmd {
        ServersCmd::Up {
            cluster,
            port,
            tls,
            state,
        } => slotline_testkit::up_with(&state.resolve(), cluster, port, tls)?,
        ServersCmd::Certs { dir } => certs(&dir)?,
        ServersCmd::Down { state } => slotline_testkit::down(&state.resolve())?,
        ServersCmd::Status { state } => slotline_testkit::status(&state.resolve())?,
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
