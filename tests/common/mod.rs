//! Integration test harness: every test gets its own temporary directory and its own
//! redis-server processes on free ports, all stopped and removed when the test ends,
//! including when it panics.
//!
//! Set `SLOTLINE_KEEP_TEST_DIRS=1` to keep the directories (server logs, `nodes.conf`);
//! they are also kept, and their path printed, when a test fails.
//!
//! The harness itself lives in the test kit (`slotline_testkit::harness`), shared with
//! the CLI's tests; the `both_backends!` macro stays here, with the engine tests.

#![allow(dead_code, unused_imports)]

pub use slotline_testkit::harness::*;
pub use slotline_testkit::skip;

pub mod canary;
pub mod chunks;
pub mod fake;

/// `calls` of `cmdstat_<cmd>` in INFO commandstats of node `idx` (0 if never called).
pub fn cmd_calls(c: &TestCluster, idx: usize, cmd: &str) -> u64 {
    let info = c.cmd(idx, &["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs `f` on a thread of its own and returns its result; fails the test (instead of
/// hanging) if it has not finished within `limit`.
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {limit:?} (a hang)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// `blocked_clients` in the text of `INFO clients`: a write held by `CLIENT PAUSE ..
/// WRITE` counts, so a test can wait for the pause to hold what it sent.
pub fn blocked_clients(info_clients: &str) -> u64 {
    info_clients
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO clients has blocked_clients")
}

/// Runs one test body on both backends: `both_backends!(name)` for a body fn `name`, or
/// `both_backends!(name, body)`; generates `mod name { fn io_uring(); fn epoll(); }`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        $crate::both_backends!($name, $name);
    };
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn io_uring() {
                super::$body(slotline::IoBackend::IoUring)
            }
            #[test]
            fn epoll() {
                super::$body(slotline::IoBackend::Epoll)
            }
        }
    };
}
