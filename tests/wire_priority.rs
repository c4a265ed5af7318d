//! Priority on the wire: a PEEK issued while megabytes of PUT are in flight to the
//! same server must not queue behind them on the same connection.
//!
//! Timing ratios are too noisy on a shared machine, so a real redis-server makes the
//! effect absolute: `CLIENT PAUSE <ms> WRITE` holds every write it receives (the
//! connection carrying it serves nothing else until the pause ends) while it still
//! answers EXISTS. A PEEK sent behind those writes would wait for the pause; it must be
//! answered while the server still holds them.

use std::time::Duration;

mod common;

use common::{blocked_clients, wait_until, TestServer};
use slotline::IoBackend;
use slotline::{Config, Engine, KeyLayout, PutChunk};

const MIB: usize = 1 << 20;

fn peek_under_put_backlog(b: IoBackend) {
    let srv = TestServer::start();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    // One shard: the PUTs and the PEEK share its connections to the server.
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(60);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    e.put(vec![PutChunk::new("probe", vec![1u8; 16], None)])
        .wait()
        .unwrap();
    srv.cmd(&["CLIENT", "PAUSE", "30000", "WRITE"]);
    let value = bytes::Bytes::from(vec![7u8; MIB]);
    // 32 MiB of PUT, each chunk its own request; none can finish while paused.
    let puts: Vec<_> = (0..32)
        .map(|i| {
            e.put(vec![PutChunk::new(format!("big-{i}"), value.clone(), None)])
                .submit()
        })
        .collect();
    wait_until(
        Duration::from_secs(20),
        "the server to hold the PUTs",
        || blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
    );
    let r = e.exists(&["probe"]).wait();
    assert_eq!(r.unwrap(), vec![true], "the PEEK failed");
    // Answered while the writes are still held: it did not queue behind them (a PEEK
    // behind them would have waited for the 30 s pause to end).
    assert!(
        blocked_clients(&srv.cmd(&["INFO", "clients"])) > 0,
        "the PEEK was answered only once the server released the PUTs"
    );
    assert_eq!(srv.cmd(&["EXISTS", "big-31"]), "0", "a PUT went through");
    srv.cmd(&["CLIENT", "UNPAUSE"]);
    for t in puts {
        t.wait()
            .expect("every PUT completes once the server takes writes");
    }
    assert_eq!(srv.cmd(&["EXISTS", "big-0", "big-31"]), "2");
}
both_backends!(peek_does_not_queue_behind_puts, peek_under_put_backlog);
