//! Fair priorities end to end: with all four classes backlogged in one shard, every
//! class is served from the start, in proportion to its configured weight.
//!
//! The server is held with `CLIENT PAUSE` while a few thousand single-key calls of
//! every class are queued, interleaved, far beyond what the shard works on at once
//! (its active-part limit), so requests wait both in the shard's lanes and in its
//! per-class queues of active parts. When the pause ends, the order in which the calls
//! complete shows what the pickers chose. The bounds are wide (half to twice the
//! weighted share): the test is about shares, not timing.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::{wait_until, TestServer};
use slotline::IoBackend;
use slotline::{Config, Engine, KeyLayout, Priority, PriorityWeights, PutChunk, Ticket};

/// Calls queued per class. Four lanes of this many (under the default lane capacity of
/// 1024) are several times the shard's active-part limit (512).
const PER_CLASS: usize = 600;
/// Completions looked at: the first third of the run, while every class still has a
/// backlog even at its full share.
const WINDOW: usize = 800;
/// How long the server holds every command: long enough that queueing every call
/// finishes within it on a loaded 2-core machine (the test fails, not guesses, if not).
const PAUSE_MS: u64 = 6000;

/// Completion order, one entry per call.
type Log = Arc<Mutex<Vec<Priority>>>;

/// Records its class in the log the first time the call completes.
struct Recorder {
    class: Priority,
    log: Log,
    fired: AtomicBool,
}

impl Recorder {
    fn record(&self) {
        if !self.fired.swap(true, Ordering::SeqCst) {
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.class);
        }
    }
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.record();
    }
}

/// The outcome of a tracked call, collected at the end.
type Outcome = Box<dyn FnOnce() -> Result<(), slotline::Error>>;

/// Polls the ticket once with a waker that logs its completion.
fn track<T: 'static>(mut t: Ticket<T>, class: Priority, log: &Log) -> Outcome {
    let rec = Arc::new(Recorder {
        class,
        log: log.clone(),
        fired: AtomicBool::new(false),
    });
    let waker = Waker::from(rec.clone());
    let mut cx = Context::from_waker(&waker);
    match Pin::new(&mut t).poll(&mut cx) {
        Poll::Ready(r) => {
            rec.record();
            Box::new(move || r.map(drop))
        }
        Poll::Pending => Box::new(move || t.wait().map(drop)),
    }
}

fn weighted_shares(b: IoBackend, weights: PriorityWeights) {
    let srv = TestServer::start();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    cfg.key_layout = KeyLayout::Raw;
    cfg.request_timeout = Duration::from_secs(30);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    cfg.priority_weights = weights;
    let e = Engine::new(cfg).unwrap();
    // Connected and warm before the pause.
    e.put(vec![PutChunk::new("warm", vec![1u8; 16], None)])
        .wait()
        .unwrap();
    assert!(e.get(&["warm"]).wait().unwrap()[0].is_some());

    let log: Log = Arc::default();
    let mut outcomes = Vec::with_capacity(4 * PER_CLASS);
    srv.cmd(&["CLIENT", "PAUSE", &PAUSE_MS.to_string(), "ALL"]);
    let t0 = Instant::now();
    for i in 0..PER_CLASS {
        let key = format!("k{i}");
        let keys = [key.as_str()];
        outcomes.push(track(e.exists(&keys).submit(), Priority::Peek, &log));
        outcomes.push(track(e.prefetch(&keys).submit(), Priority::Prefetch, &log));
        outcomes.push(track(e.get(&keys).submit(), Priority::Get, &log));
        let put = PutChunk::new(format!("p{i}"), vec![2u8; 64], None);
        outcomes.push(track(e.put(vec![put]).submit(), Priority::Put, &log));
    }
    let queued_in = t0.elapsed();
    let early = log.lock().unwrap().len();
    assert_eq!(
        early, 0,
        "{early} calls completed while the server was paused (queueing took {queued_in:?}); \
         the test did not build a backlog"
    );
    for (i, outcome) in outcomes.into_iter().enumerate() {
        outcome().unwrap_or_else(|err| panic!("call {i} failed: {err}"));
    }
    // A batch wakes its waker just after its answer is visible to `wait`, so the last
    // few records may trail the last `wait` by a moment.
    wait_until(Duration::from_secs(5), "every completion recorded", || {
        log.lock().unwrap().len() == 4 * PER_CLASS
    });
    let order = log.lock().unwrap().clone();
    assert_eq!(order.len(), 4 * PER_CLASS, "every call completes once");

    let mut counts = [0usize; 4];
    for c in &order[..WINDOW] {
        counts[c.index()] += 1;
    }
    let total: u32 = Priority::ALL.iter().map(|&c| weights.of(c)).sum();
    for c in Priority::ALL {
        let share = WINDOW as f64 * f64::from(weights.of(c)) / f64::from(total);
        let got = counts[c.index()] as f64;
        assert!(
            got >= share / 2.0 && got <= share * 2.0,
            "weights {weights}: {c} completed {got} of the first {WINDOW} calls, \
             expected about {share:.0} (all counts, peek..put: {counts:?})"
        );
    }
}

fn default_weights(b: IoBackend) {
    weighted_shares(b, PriorityWeights::default())
}
both_backends!(default_weights_share_by_class, default_weights);

/// The weights come from the configuration: reversed, PUT gets the largest share.
fn reversed_weights(b: IoBackend) {
    weighted_shares(
        b,
        PriorityWeights {
            peek: 1,
            prefetch: 2,
            get: 4,
            put: 8,
        },
    )
}
both_backends!(configured_weights_share_by_class, reversed_weights);

/// A request's `.priority(..)` is the class it is sent and counted at, for every
/// operation and memory form; without it each operation keeps its own class.
fn request_priority(b: IoBackend) {
    let srv = TestServer::start();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = b;
    cfg.shards = Some(1);
    let e = Engine::new(cfg).unwrap();
    let ops = |p: Priority| e.stats().metrics.classes[p.index()].ops;
    let before: Vec<u64> = Priority::ALL.iter().map(|&p| ops(p)).collect();
    let delta = |p: Priority| ops(p) - before[p.index()];
    e.put(vec![PutChunk::new("k", vec![7u8; 64], None)])
        .priority(Priority::Peek)
        .wait()
        .unwrap();
    assert_eq!((delta(Priority::Peek), delta(Priority::Put)), (1, 0));
    let got = e.get(&["k"]).priority(Priority::Prefetch).wait().unwrap();
    assert_eq!(got[0].as_ref().map(|c| c.data.len()), Some(64));
    assert_eq!((delta(Priority::Prefetch), delta(Priority::Get)), (1, 0));
    let (bufs, infos) = e
        .get(&["k"])
        .into_vecs(vec![vec![0u8; 64]])
        .priority(Priority::Put)
        .try_submit()
        .unwrap()
        .wait()
        .unwrap();
    assert!(infos[0].is_some() && bufs[0] == vec![7u8; 64]);
    assert_eq!((delta(Priority::Put), delta(Priority::Get)), (1, 0));
    assert_eq!(
        e.exists(&["k"]).priority(Priority::Get).wait().unwrap(),
        vec![true]
    );
    assert_eq!((delta(Priority::Get), delta(Priority::Peek)), (1, 1));
    // Defaults: exists PEEK, get GET.
    e.exists(&["k"]).wait().unwrap();
    e.get(&["k"]).wait().unwrap();
    assert_eq!((delta(Priority::Peek), delta(Priority::Get)), (2, 2));
}
both_backends!(a_request_is_sent_at_its_priority, request_priority);
