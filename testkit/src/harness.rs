//! The integration-test harness: every test gets its own temporary directory and its own
//! redis-server processes on free ports, all stopped and removed when the test ends,
//! including when it panics.
//!
//! Set `SLOTLINE_KEEP_TEST_DIRS=1` to keep the directories (server logs, `nodes.conf`);
//! they are also kept, and their path printed, when a test fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{command_str as servers_command_str, LocalCluster, RedisProcess, ServerOptions};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A unique directory `<tmp>/slotline-tests/<pid>-<n>`, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates a fresh, empty directory.
    pub fn new() -> TestDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("slotline-tests")
            .join(format!("{}-{n}", std::process::id()));
        // A directory left by an earlier run whose pid has been reused would mix logs.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create test directory {}: {e}", path.display()));
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("SLOTLINE_KEEP_TEST_DIRS").is_some_and(|v| v == "1") {
            eprintln!("kept test directory {}", self.path.display());
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "test failed: kept {} for inspection (server logs in <port>/redis.log)",
                self.path.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Options every test server starts with: as `ServerOptions::default()`, plus DEBUG
/// allowed from loopback so tests can stall a server (`DEBUG SLEEP`).
pub fn test_options() -> ServerOptions {
    ServerOptions {
        extra_args: vec!["--enable-debug-command".into(), "local".into()],
        ..ServerOptions::default()
    }
}

/// A standalone redis-server for one test.
///
/// Field order matters: the server is stopped before its directory is removed.
pub struct TestServer {
    /// The process, for `kill()`, `restart()`, `port()`...
    pub proc: RedisProcess,
    /// Where its files live.
    pub dir: TestDir,
}

impl TestServer {
    /// A server with [`test_options`].
    pub fn start() -> TestServer {
        TestServer::start_with(test_options())
    }

    /// A server with the given options (`port` 0 picks a free one; `daemonize` is
    /// forced off so the server dies with the test process).
    pub fn start_with(mut opts: ServerOptions) -> TestServer {
        opts.daemonize = false;
        let dir = TestDir::new();
        let proc = RedisProcess::start(dir.path(), &opts)
            .unwrap_or_else(|e| panic!("cannot start a test redis-server: {e}"));
        TestServer { proc, dir }
    }

    /// `redis://127.0.0.1:PORT`, with the password as `redis://:PASS@...` if one is set.
    pub fn url(&self) -> String {
        match &self.proc.options().password {
            Some(pw) => format!("redis://:{pw}@{}", self.proc.addr()),
            None => self.proc.url(),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.proc.addr()
    }

    /// Runs a command on the server (authenticated if it has a password); panics on
    /// failure.
    pub fn cmd(&self, args: &[&str]) -> String {
        let pw = self.proc.options().password.clone();
        servers_command_str(&self.addr(), pw.as_deref(), args)
            .unwrap_or_else(|e| panic!("{args:?} on {} failed: {e}", self.addr()))
    }
}

/// A local Redis Cluster for one test: 3 masters + 3 replicas, node timeout 2000 ms,
/// unless started with other parameters.
pub struct TestCluster {
    /// The nodes; `cluster.nodes[0..3]` are the initial masters, `[3..6]` their replicas
    /// (`nodes[3 + i]` replicates `nodes[i]`).
    pub cluster: LocalCluster,
    /// Where the node directories live.
    pub dir: TestDir,
    /// How long `start` took to get a ready cluster.
    pub startup: Duration,
}

impl TestCluster {
    /// 3 masters + 3 replicas with [`test_options`].
    pub fn start() -> TestCluster {
        TestCluster::start_with(3, 1, test_options())
    }

    /// Any shape; `opts.cluster` is implied, `daemonize` forced off.
    pub fn start_with(
        masters: usize,
        replicas_per_master: usize,
        mut opts: ServerOptions,
    ) -> TestCluster {
        opts.daemonize = false;
        let dir = TestDir::new();
        let t0 = Instant::now();
        let cluster = LocalCluster::start(dir.path(), masters, replicas_per_master, &opts)
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
        TestCluster {
            cluster,
            dir,
            startup: t0.elapsed(),
        }
    }

    /// `redis://h:p,h:p,h:p` of the current masters, as `redis://:PASS@h:p,...` if the
    /// nodes have a password.
    pub fn seed_url(&self) -> String {
        let url = self.cluster.seed_url();
        match self
            .cluster
            .nodes
            .first()
            .and_then(|n| n.options().password.clone())
        {
            Some(pw) => url.replacen("redis://", &format!("redis://:{pw}@"), 1),
            None => url,
        }
    }

    /// Address of node `idx`.
    pub fn addr(&self, idx: usize) -> String {
        self.cluster.nodes[idx].addr()
    }

    /// Runs a command on node `idx`; panics on failure.
    pub fn cmd(&self, idx: usize, args: &[&str]) -> String {
        let node = &self.cluster.nodes[idx];
        let pw = node.options().password.clone();
        servers_command_str(&node.addr(), pw.as_deref(), args)
            .unwrap_or_else(|e| panic!("{args:?} on {} failed: {e}", node.addr()))
    }

    /// Hash slot of `key`, computed by the server (CLUSTER KEYSLOT).
    pub fn keyslot(&self, key: &str) -> u16 {
        let idx = self.any_running();
        self.cmd(idx, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT returns an integer")
    }

    /// Index of the node owning `key`'s slot.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot = self.keyslot(key);
        self.cluster
            .slot_owner(slot)
            .unwrap_or_else(|e| panic!("owner of slot {slot}: {e}"))
    }

    /// Index of some running node.
    pub fn any_running(&self) -> usize {
        self.cluster
            .nodes
            .iter()
            .position(|n| n.is_running())
            .expect("no node of the test cluster is running")
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`. Returns
/// how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// The environment variable naming the file every skipped test is recorded in (one
/// `binary::test<TAB>reason` line per skip); `.ci/run` checks it against `.ci/allowed-skips`.
pub const SKIP_LOG_ENV: &str = "SLOTLINE_SKIP_LOG";

/// `binary::test` of the running test: the test binary's name without cargo's hash and
/// the name libtest gives the test's thread.
pub fn current_test_name() -> String {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => s,
        })
        .unwrap_or_else(|| "unknown".into());
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(n) if n != "main" => n.to_owned(),
        // libtest runs the test on the main thread with --test-threads=1: its name is
        // then the first free argument (what `--exact NAME` runs), if any.
        _ => std::env::args()
            .skip(1)
            .find(|a| !a.starts_with('-'))
            .unwrap_or_else(|| "unknown".into()),
    };
    format!("{bin}::{test}")
}

/// Records that the running test skips what it is for: prints `SKIPPED <test>: <reason>`
/// on stderr and appends it to the file named by `SLOTLINE_SKIP_LOG` (when set), so a
/// skip never passes as a plain "ok". Use it through [`skip!`](crate::skip).
///
/// Panics if the log is set but cannot be written: an unrecorded skip would be silent.
pub fn record_skip(reason: &str) {
    use std::io::Write;
    let test = current_test_name();
    let reason = reason.replace(['\n', '\t'], " ");
    eprintln!("SKIPPED {test}: {reason}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{test}\t{reason}\n").as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record the skip of {test} in {}: {e}",
            Path::new(&path).display()
        );
    }
}

/// Skips the rest of the running test, loudly: `skip!("reason {}", x)` records the skip
/// (see [`harness::record_skip`](crate::harness::record_skip)) and returns from the
/// enclosing function (which must return `()`).
#[macro_export]
macro_rules! skip {
    ($($arg:tt)+) => {{
        $crate::harness::record_skip(&format!($($arg)+));
        return;
    }};
}
