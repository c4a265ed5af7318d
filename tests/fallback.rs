//! The epoll fallback when io_uring is refused, as under Docker's default seccomp
//! profile. Refusal is produced for real by `kernel.io_uring_disabled = 2` (io_uring_setup
//! then fails with EPERM). That sysctl is global, so this file holds a single test (cargo
//! runs test binaries one at a time) and restores the old value even if the test fails.
//! Without root the test records a skip (`skip!`), which CI fails on unless allowed.

mod common;

use slotline::IoBackend;
use slotline::{BackendKind, Config, Engine, PutChunk};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

#[test]
fn epoll_fallback_when_io_uring_is_refused() {
    let Ok(old) = std::fs::read_to_string(SYSCTL) else {
        common::skip!("{SYSCTL} missing: kernel without io_uring controls");
    };
    if std::fs::write(SYSCTL, "2").is_err() {
        common::skip!("cannot write {SYSCTL} (not root?)");
    }
    let _restore = Restore(old.trim().to_string());
    let srv = common::TestServer::start();

    let engine = Engine::new(Config::from_url(&srv.url()).unwrap()).unwrap();
    assert_eq!(engine.backend(), BackendKind::Epoll);
    assert_eq!(engine.stats().backend, BackendKind::Epoll);
    engine
        .put(vec![PutChunk::new("fallback", vec![5u8; 100], None)])
        .wait()
        .unwrap();
    let got = engine.get(&["fallback"]).wait().unwrap();
    assert_eq!(got[0].as_ref().unwrap().data, vec![5u8; 100]);

    // Asking for io_uring explicitly is an error that says what to do.
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = IoBackend::IoUring;
    let err = Engine::new(cfg).unwrap_err().to_string();
    assert!(err.contains("io_uring") && err.contains("epoll"), "{err}");
}
