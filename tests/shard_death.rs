//! A shard thread that dies (test hook: it panics, as a bug would) costs capacity, not
//! availability, and strands nothing: every part pushed to it, before or after it
//! closed its lanes, fails with the panic's message and hands its caller buffers back
//! (canary memory, sealed the moment they come back); new work goes to the live shards,
//! standalone and in a cluster (the dead shard's masters move to live shards).
//!
//! The window between the panic and the thread's end is held open with
//! `Engine::debug_crash_shard_held`, so each case is deterministic, not a lucky race.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::canary::Canary;
use common::{wait_until, within, TestCluster, TestServer};
use slotline::DeathStage;
use slotline::IoBackend;
use slotline::{CallerBufMut, Config, Engine, KeyLayout, PutChunk, PutOwned};

/// What the test hook's panic says; every failure caused by the crash carries it.
const PANIC: &str = "crashed on request (test hook)";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Every request ends within its timeout plus this.
const GRACE: Duration = Duration::from_secs(2);
/// Watchdog of the setup steps (events the test waits for).
const SETUP: Duration = Duration::from_secs(20);

fn engine(url: &str, backend: IoBackend, shards: usize, layout: KeyLayout) -> Engine {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(shards);
    cfg.key_layout = layout;
    cfg.request_timeout = TIMEOUT;
    cfg.deadlines = slotline::Deadlines::uniform(TIMEOUT);
    Engine::new(cfg).unwrap_or_else(|e| panic!("Engine::new: {e}"))
}

/// `get_into_slices` of `key` into a canary of `len` bytes, sealed when the call
/// returns; the result, and the bytes when it was a hit.
fn get_into_canary(e: &Engine, key: &str, len: usize) -> Result<Option<Vec<u8>>, String> {
    let mut c = Canary::new(len, 0xA5);
    let r = {
        let mut slices = [CallerBufMut::as_mut_slice(&mut c)];
        e.get(&[key]).into_slices(&mut slices).wait()
    };
    let out = match r {
        Ok(info) => Ok(info[0].as_ref().map(|_| c.bytes().to_vec())),
        Err(e) => Err(e.to_string()),
    };
    // The call returned: nothing may touch the buffer from here on.
    c.seal();
    std::mem::forget(c);
    out
}

fn assert_panic_error(r: Result<impl std::fmt::Debug, String>, what: &str) {
    match r {
        Err(msg) => assert!(
            msg.contains(PANIC),
            "{what}: not the panic's message: {msg}"
        ),
        Ok(v) => panic!("{what}: succeeded on a dead shard: {v:?}"),
    }
}

fn lane_depth(e: &Engine) -> usize {
    e.stats().lane_depth.iter().flatten().sum()
}

/// A part pushed after the panic but before the lanes close lands in the dying
/// shard's lane: the closing drain fails it with the panic's message and hands its
/// caller buffer back (before: nobody drained the lane, `get_into_slices` hung).
fn pushed_while_dying(backend: IoBackend) {
    let srv = TestServer::start();
    let value = "v".repeat(64 * 1024);
    srv.cmd(&["SET", "k", &value]);
    let e = engine(&srv.url(), backend, 1, KeyLayout::Raw);
    assert_eq!(
        get_into_canary(&e, "k", value.len()),
        Ok(Some(value.clone().into_bytes()))
    );
    let hold = e
        .debug_crash_shard_held(0, DeathStage::Panicked)
        .expect("shard 0");
    assert!(
        hold.wait_reached(SETUP),
        "the shard never reached its death"
    );
    assert!(e.dead_shards().is_empty(), "lanes closed before the hold");
    let e2 = e.clone();
    let len = value.len();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(get_into_canary(&e2, "k", len));
    });
    // The part is in the dead shard's lane before the shard goes on.
    wait_until(SETUP, "the part in the dying shard's lane", || {
        lane_depth(&e) > 0
    });
    hold.release();
    let r = rx
        .recv_timeout(TIMEOUT + GRACE)
        .expect("get_into_slices on a dying shard hung");
    assert_panic_error(r, "a part queued on the dying shard");
    wait_until(SETUP, "the shard to be dead", || e.dead_shards() == [0]);
    assert_eq!(lane_depth(&e), 0, "parts left in a dead shard's lanes");
}
both_backends!(pushed_while_dying);

/// Once the lanes are closed (the thread still running) every push is refused at once:
/// blocking, async and owned-buffer calls fail with the panic's message and get their
/// buffers back (before: a push that raced `is_alive()` stayed in a lane nobody drained).
fn pushed_after_close(backend: IoBackend) {
    let srv = TestServer::start();
    srv.cmd(&["SET", "k", &"w".repeat(8192)]);
    let e = engine(&srv.url(), backend, 1, KeyLayout::Raw);
    let hold = e
        .debug_crash_shard_held(0, DeathStage::Closed)
        .expect("shard 0");
    assert!(hold.wait_reached(SETUP), "the shard never closed its lanes");
    assert_eq!(e.dead_shards(), [0]);
    let bound = TIMEOUT + GRACE;
    let e2 = e.clone();
    let r = within(bound, "get_into_slices after close", move || {
        get_into_canary(&e2, "k", 8192)
    });
    assert_panic_error(r, "get_into_slices after close");
    let e2 = e.clone();
    let r = within(bound, "get_into_bufs_async after close", move || {
        let t = e2
            .get(&["k"])
            .into_bufs(vec![Box::new(Canary::new(8192, 1))])
            .submit();
        let back = t.wait();
        assert_eq!(back.bufs.len(), 1, "the buffer did not come back");
        let r = back.result.map_err(|e| e.to_string());
        let cs: Vec<Box<dyn CallerBufMut>> = back.bufs;
        drop(cs);
        r
    });
    assert_panic_error(r, "get_into_bufs_async after close");
    let e2 = e.clone();
    let r = within(bound, "put_from_async after close", move || {
        let back = e2
            .put(vec![PutOwned {
                key: b"p".to_vec(),
                data: Box::new(Canary::new(4096, 2)),
                meta: None,
            }])
            .submit()
            .wait();
        assert_eq!(back.bufs.len(), 1, "the buffer did not come back");
        back.result.map_err(|e| e.to_string())
    });
    assert_panic_error(r, "put_from_async after close");
    let e2 = e.clone();
    let r = within(bound, "get after close", move || {
        e2.get(&["k"]).wait().map_err(|e| e.to_string())
    });
    assert_panic_error(r, "get after close");
    assert_eq!(lane_depth(&e), 0, "a refused part stayed in a closed lane");
    hold.release();
    // After the thread ended too.
    let e2 = e.clone();
    let r = within(bound, "get after the thread ended", move || {
        e2.get(&["k"]).wait().map_err(|e| e.to_string())
    });
    assert_panic_error(r, "get after the thread ended");
}
both_backends!(pushed_after_close);

/// Phases of the load test, as each operation saw them when it started.
const BEFORE: u8 = 0;
const CRASHING: u8 = 1;
const AFTER: u8 = 2;

#[derive(Default)]
struct Record {
    /// Failures by the phase their operation started in.
    failures: Vec<(u8, String)>,
    /// Operations that started after the dead shard closed its lanes.
    after_ok: usize,
    /// Keys whose put was acknowledged, with their fill byte.
    acked: Vec<(String, u8)>,
}

/// Puts, gets and caller-memory reads from several threads while shard 0 of two dies:
/// only operations started before its lanes closed may fail, and only with the panic's
/// message; every operation started after succeeds, and every acknowledged put reads
/// back (before: about half of all calls failed for as long as the engine lived).
fn load_through_crash(e: &Engine, tag: &str) {
    const THREADS: usize = 3;
    const AFTER_OPS: usize = 40;
    const LEN: usize = 8192;
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let record = Arc::new(Mutex::new(Record::default()));
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let (e, phase, stop, done, record) = (
            e.clone(),
            phase.clone(),
            stop.clone(),
            done.clone(),
            record.clone(),
        );
        let tag = tag.to_string();
        threads.push(thread::spawn(move || {
            let mut after = 0;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) || after < AFTER_OPS {
                let p = phase.load(Ordering::SeqCst);
                let key = format!("{tag}-{t}-{i}");
                let fill = (i % 251) as u8;
                let r = e
                    .put(vec![PutChunk::new(key.clone(), vec![fill; LEN], None)])
                    .wait()
                    .map_err(|e| format!("put {key}: {e}"))
                    .and_then(|()| {
                        record.lock().unwrap().acked.push((key.clone(), fill));
                        match e.get(&[&key]).wait() {
                            Ok(got)
                                if got[0].as_ref().is_some_and(|c| c.data == vec![fill; LEN]) =>
                            {
                                Ok(())
                            }
                            Ok(got) => {
                                Err(format!("get {key}: wrong answer {:?}", got[0].is_some()))
                            }
                            Err(err) => Err(format!("get {key}: {err}")),
                        }
                    })
                    .and_then(|()| match get_into_canary(&e, &key, LEN) {
                        Ok(Some(b)) if b == vec![fill; LEN] => Ok(()),
                        Ok(other) => Err(format!(
                            "get_into {key}: wrong answer {:?}",
                            other.is_some()
                        )),
                        Err(err) => Err(format!("get_into {key}: {err}")),
                    });
                let mut rec = record.lock().unwrap();
                match r {
                    Ok(()) if p == AFTER => {
                        rec.after_ok += 1;
                        after += 1;
                    }
                    Ok(()) => {}
                    Err(msg) => {
                        rec.failures.push((p, msg));
                        if p == AFTER {
                            after += 1;
                        }
                    }
                }
                drop(rec);
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    wait_until(SETUP, "some load before the crash", || {
        done.load(Ordering::SeqCst) >= 3 * THREADS
    });
    phase.store(CRASHING, Ordering::SeqCst);
    let hold = e
        .debug_crash_shard_held(0, DeathStage::Closed)
        .expect("shard 0");
    assert!(hold.wait_reached(SETUP), "shard 0 never closed its lanes");
    phase.store(AFTER, Ordering::SeqCst);
    hold.release();
    stop.store(true, Ordering::SeqCst);
    // Each thread finishes its AFTER_OPS operations, each bounded by its deadline.
    let bound = (TIMEOUT + GRACE) * 3 * AFTER_OPS as u32;
    let joined = within(bound, "the load threads", move || {
        threads.into_iter().all(|t| t.join().is_ok())
    });
    assert!(joined, "a load thread panicked");
    let rec = record.lock().unwrap();
    eprintln!(
        "{tag}: {} failures during the crash, {} operations after it, {} puts acknowledged",
        rec.failures.len(),
        rec.after_ok,
        rec.acked.len()
    );
    for (p, msg) in &rec.failures {
        assert!(
            *p != AFTER,
            "an operation started after the crash failed: {msg}"
        );
        assert!(
            msg.contains(PANIC),
            "a failure without the panic's message: {msg}"
        );
    }
    assert_eq!(rec.after_ok, THREADS * AFTER_OPS);
    assert_eq!(e.dead_shards(), [0]);
    // Every acknowledged put reads back, through the surviving shard.
    for chunk in rec.acked.chunks(64) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let got = e.get(&keys).wait().expect("read back");
        for ((k, fill), g) in chunk.iter().zip(got) {
            let g = g.unwrap_or_else(|| panic!("acknowledged put {k} is missing"));
            assert_eq!(g.data, vec![*fill; LEN], "{k}");
        }
    }
}

fn crash_costs_capacity_standalone(backend: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv.url(), backend, 2, KeyLayout::Lmcache);
    load_through_crash(&e, "sa");
    // Round-robin over the live shard only: a run of calls all succeed.
    for i in 0..20 {
        e.exists(&[format!("sa-0-{i}")])
            .wait()
            .expect("exists after the crash");
    }
}
both_backends!(crash_costs_capacity_standalone);

fn crash_costs_capacity_cluster(backend: IoBackend) {
    let c = TestCluster::start_with(3, 0, common::test_options());
    let e = engine(&c.seed_url(), backend, 2, KeyLayout::Lmcache);
    assert!(
        e.topology().iter().any(|m| m.shard == 0),
        "shard 0 owns no master to lose"
    );
    load_through_crash(&e, "cl");
    let owners: Vec<usize> = e.topology().iter().map(|m| m.shard).collect();
    assert!(
        owners.iter().all(|&s| s == 1),
        "masters of the dead shard: {owners:?}"
    );
    // A topology refresh keeps the dead shard out.
    e.refresh_topology().expect("refresh");
    let owners: Vec<usize> = e.topology().iter().map(|m| m.shard).collect();
    assert!(
        owners.iter().all(|&s| s == 1),
        "after a refresh: {owners:?}"
    );
}
both_backends!(crash_costs_capacity_cluster);
