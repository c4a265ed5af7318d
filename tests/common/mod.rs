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

pub mod chunks;
pub mod fake;

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
                super::$body(slotline::config::IoBackend::IoUring)
            }
            #[test]
            fn epoll() {
                super::$body(slotline::config::IoBackend::Epoll)
            }
        }
    };
}
