//! Exactly-once writes through a cut during a cluster redirect (issue 16): a put whose
//! key's slot has moved (MOVED) or is migrating (ASK) is redirected to the target
//! master; the redirected SET is held there (`CLIENT PAUSE .. WRITE`), the engine's
//! connections to the target are cut (`CLIENT KILL TYPE normal`, which the pause lets
//! run), and the pause is lifted. The redirected SET was wholly sent, so the engine must
//! not resend it: the caller sees an outcome-unknown failure, the target never ran the
//! killed SET (Redis drops a killed client's held command), and a later put of the same
//! key is applied exactly once with its value.
//!
//! Nothing is mocked: a real 3-master cluster. Every wait is bounded.
//! Run: `cargo test --release --test redirect_cut`.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{blocked_clients, cmd_calls, test_options, wait_until, TestCluster};
use slotline::hash_slot;
use slotline::{Config, Engine, Error, KeyLayout, PutChunk};
use slotline::{IoBackend, Mode};

const WAIT: Duration = Duration::from_secs(30);
const SRC: usize = 0;
const DST: usize = 1;

#[derive(Clone, Copy)]
enum Redirect {
    /// The slot is migrating from SRC to DST: SRC answers ASK for a key it lacks.
    Ask,
    /// The slot moved to DST after the engine learned the topology: SRC answers MOVED.
    Moved,
}

fn engine(c: &TestCluster, backend: IoBackend) -> Engine {
    let mut cfg = Config::from_url(&c.seed_url()).expect("seed URL parses");
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    cfg.key_layout = KeyLayout::Raw;
    cfg.ttl = None;
    cfg.request_timeout = Duration::from_secs(20);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).expect("engine starts")
}

/// Writes a node ran (SET and MSET calls in INFO commandstats).
fn writes(c: &TestCluster, idx: usize) -> u64 {
    cmd_calls(c, idx, "set") + cmd_calls(c, idx, "mset")
}

fn cut_during_redirect(backend: IoBackend, how: Redirect) {
    let c = TestCluster::start_with(3, 0, test_options());
    let key = (0u64..)
        .map(|i| format!("askcut-{i}"))
        .find(|k| {
            let slot = hash_slot(&KeyLayout::Raw.payload_key(k.as_bytes()));
            c.cluster.slot_owner(slot).expect("slot owner") == SRC
        })
        .unwrap();
    let slot = c.keyslot(&key).to_string();
    let e = engine(&c, backend);
    // The engine knows the topology (SRC owns the slot) before the slot goes anywhere.
    e.put(vec![PutChunk::new("warm-up", b"w".to_vec(), None)])
        .wait()
        .expect("warm-up put");
    let (src_id, dst_id) = (
        c.cluster.node_id(SRC).unwrap(),
        c.cluster.node_id(DST).unwrap(),
    );
    match how {
        Redirect::Ask => {
            c.cmd(DST, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
            c.cmd(SRC, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        }
        Redirect::Moved => {
            // The slot is empty: it moves without MIGRATE.
            for i in [DST, SRC, 2] {
                c.cmd(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
            }
        }
    }
    let writes0 = writes(&c, DST);
    c.cmd(DST, &["CLIENT", "PAUSE", "60000", "WRITE"]);
    let (tx, rx) = mpsc::channel();
    {
        let (e, key) = (e.clone(), key.clone());
        std::thread::spawn(move || {
            let _ = tx.send(
                e.put(vec![PutChunk::new(key, b"one".to_vec(), None)])
                    .wait(),
            );
        });
    }
    wait_until(WAIT, "the target to hold the redirected SET", || {
        blocked_clients(&c.cmd(DST, &["INFO", "clients"])) > 0
    });
    // CLIENT KILL is no write: the pause lets it run (SKIPME: not this connection).
    let killed: u64 = c
        .cmd(DST, &["CLIENT", "KILL", "TYPE", "normal"])
        .parse()
        .expect("CLIENT KILL answers a count");
    assert!(killed >= 1, "CLIENT KILL killed {killed} clients");
    let r = rx
        .recv_timeout(WAIT)
        .expect("the put returned after its connection was cut");
    c.cmd(DST, &["CLIENT", "UNPAUSE"]);
    assert!(
        matches!(
            r,
            Err(Error::PutFailed {
                failed: 1,
                outcome_unknown: 1,
                ..
            })
        ),
        "a redirected SET cut after it was sent: {r:?}"
    );
    assert_eq!(
        writes(&c, DST),
        writes0,
        "the target never ran the killed SET (nor a resend of it)"
    );
    assert_eq!(c.cmd(DST, &["CLUSTER", "COUNTKEYSINSLOT", &slot]), "0");
    assert!(
        e.stats().metrics.error_count("redirect") > 0,
        "the put was redirected"
    );
    // The same key again: redirected the same way, applied once, with its value.
    e.put(vec![PutChunk::new(key.clone(), b"two".to_vec(), None)])
        .wait()
        .expect("a later put of the same key");
    assert_eq!(writes(&c, DST), writes0 + 1, "the later put applied once");
    let got = e.get(&[&key]).wait().expect("get");
    assert_eq!(
        got[0].as_ref().map(|v| v.data.clone()),
        Some(b"two".to_vec())
    );
}

fn ask_cut(backend: IoBackend) {
    cut_during_redirect(backend, Redirect::Ask)
}
both_backends!(ask_cut);

fn moved_cut(backend: IoBackend) {
    cut_during_redirect(backend, Redirect::Moved)
}
both_backends!(moved_cut);
