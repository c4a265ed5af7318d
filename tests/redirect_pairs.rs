//! A chunk's payload and metadata stay together through redirects (`hashtag` layout).
//! A slot holding 4 MiB chunks is migrated live from one master to another while two
//! engines (without a TTL: MSET; with one: SET .. EX) keep writing new chunks into it:
//! before the move, while the slot is migrating (ASK: new keys go to the importing
//! node), and after it moved (MOVED, until the engines' slot tables catch up). A watcher
//! reads the nodes directly (following ASK / MOVED like a reader would) and checks that
//! the metadata of a chunk being written never exists without its payload; keyspace
//! notifications (SET events, in the order each node runs them) check that no node
//! writes a chunk's metadata before its payload. Afterwards every acknowledged chunk
//! reads back intact.
//!
//! Nothing is mocked: a real 3-master cluster (no replicas, to keep memory down).
//! Run: `cargo test --release --test redirect_pairs -- --nocapture`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chunks::{chunks_for, meta_for, value_for};
use common::{cmd_calls, test_options, wait_until, TestCluster};
use slotline::hash_slot;
use slotline::{Config, Engine, KeyLayout};
use slotline::{IoBackend, Mode};
use slotline_testkit::{Client, OwnedFrame};

const VALUE_LEN: usize = 4 << 20;
const CHUNKS_PER_PUT: usize = 2;
/// Puts per writer before the move (they give the slot keys to migrate), while the
/// slot is migrating, and after it moved.
const PUTS_BEFORE: usize = 2;
const PUTS_MIGRATING: usize = 4;
const PUTS_AFTER: usize = 3;
const PUTS: usize = PUTS_BEFORE + PUTS_MIGRATING + PUTS_AFTER;
/// The slot that moves.
const SLOT: u16 = 0;
const WAIT: Duration = Duration::from_secs(90);

/// `n` LMCache-style chunk keys whose keys (both, hash-tagged) hash to `slot`.
fn keys_in_slot(tag: &str, slot: u16, n: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("meta-llama/Llama-3.1-8B@1@{tag}@{i:x}@bfloat16").into_bytes())
        .filter(|k| hash_slot(&KeyLayout::Hashtag.payload_key(k)) == slot)
        .take(n)
        .collect()
}

fn engine(c: &TestCluster, backend: IoBackend, ttl: Option<u64>) -> Engine {
    let mut cfg = Config::from_url(&c.seed_url()).expect("seed URL parses");
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    cfg.key_layout = KeyLayout::Hashtag;
    cfg.ttl = ttl;
    cfg.request_timeout = Duration::from_secs(15);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).expect("engine starts")
}

/// What the writers and the mover share.
struct Progress {
    /// Puts each writer may make by now (the mover raises it phase by phase).
    allowed: AtomicUsize,
    /// Per writer: puts started (their chunks are being written) and acknowledged.
    started: [AtomicUsize; 2],
    done: [AtomicUsize; 2],
    stop: AtomicBool,
}

impl Progress {
    fn all_done(&self, n: usize) -> bool {
        self.done.iter().all(|d| d.load(Ordering::SeqCst) >= n)
    }
}

/// Writes `keys` CHUNKS_PER_PUT at a time, as far as the mover allows. Returns the
/// errors callers saw.
fn writer(e: Engine, w: usize, keys: Arc<Vec<Vec<u8>>>, p: Arc<Progress>) -> Vec<String> {
    let mut errors = Vec::new();
    for i in 0..PUTS {
        while i >= p.allowed.load(Ordering::SeqCst) {
            if p.stop.load(Ordering::SeqCst) {
                return errors;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let batch = &keys[i * CHUNKS_PER_PUT..(i + 1) * CHUNKS_PER_PUT];
        let chunks = chunks_for(batch, VALUE_LEN);
        p.started[w].store(i + 1, Ordering::SeqCst);
        if let Err(e) = e.put(chunks).wait() {
            errors.push(format!("put {i} of writer {w}: {e}"));
        }
        p.done[w].store(i + 1, Ordering::SeqCst);
    }
    errors
}

/// Reads keys straight from the nodes, following ASK and MOVED as a cluster reader
/// does (starting at the slot's source).
struct Watcher {
    clients: HashMap<String, Client>,
    first: String,
    askings: u64,
    checks: u64,
}

impl Watcher {
    fn exists(&mut self, key: &[u8]) -> bool {
        let mut addr = self.first.clone();
        let mut asking = false;
        for _ in 0..5 {
            let c = self
                .clients
                .entry(addr.clone())
                .or_insert_with(|| Client::open(&addr, None).expect("watcher connects"));
            if asking {
                c.call(&[b"ASKING"]).expect("ASKING");
                self.askings += 1;
            }
            self.checks += 1;
            match c.call_raw(&[b"EXISTS", key]).expect("EXISTS") {
                OwnedFrame::Integer(n) => return n > 0,
                OwnedFrame::Error(msg) => {
                    let mut words = msg.split(' ');
                    match (words.next(), words.nth(1)) {
                        (Some("ASK"), Some(to)) => {
                            addr = to.to_string();
                            asking = true;
                        }
                        (Some("MOVED"), Some(to)) => {
                            addr = to.to_string();
                            asking = false;
                            // The slot moved: start there from now on.
                            self.first = addr.clone();
                        }
                        _ => panic!("EXISTS {} answered {msg}", key.escape_ascii()),
                    }
                }
                other => panic!("EXISTS {} answered {other:?}", key.escape_ascii()),
            }
        }
        panic!("EXISTS {}: too many redirects", key.escape_ascii())
    }

    /// Until `stop`: for every chunk whose put started and is not yet seen whole,
    /// metadata first, then the payload; metadata without payload is a violation.
    fn run(mut self, keys: [Arc<Vec<Vec<u8>>>; 2], p: Arc<Progress>) -> (Watcher, Vec<String>) {
        let mut whole = [
            vec![false; PUTS * CHUNKS_PER_PUT],
            vec![false; PUTS * CHUNKS_PER_PUT],
        ];
        let mut violations = Vec::new();
        while !p.stop.load(Ordering::SeqCst) {
            for w in 0..2 {
                let started = p.started[w].load(Ordering::SeqCst) * CHUNKS_PER_PUT;
                for j in 0..started {
                    if whole[w][j] {
                        continue;
                    }
                    let k = &keys[w][j];
                    let meta = KeyLayout::Hashtag
                        .metadata_key(k)
                        .expect("hashtag metadata key");
                    if !self.exists(&meta) {
                        continue;
                    }
                    // The payload, once written, stays (MIGRATE moves it atomically).
                    if self.exists(&KeyLayout::Hashtag.payload_key(k)) {
                        whole[w][j] = true;
                    } else {
                        violations.push(format!(
                            "writer {w}: metadata of {} exists without its payload",
                            k.escape_ascii()
                        ));
                        whole[w][j] = true;
                    }
                }
            }
        }
        (self, violations)
    }
}

/// The keyspace channel of SET / MSET: the keys a node writes, in the order it runs them.
const SET_EVENTS: &[u8] = b"__keyevent@0__:set";
/// Published once every put is acknowledged: the listeners stop.
const END: &[u8] = b"--end--";

/// Subscribes to the SET events of node `addr` (notifications switched on there);
/// the returned thread yields the keys written, in order, until [`END`].
fn listen(addr: String) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let mut c = Client::connect(&addr, WAIT).expect("listener connects");
    c.call(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"E$"])
        .expect("notifications on");
    c.call(&[b"SUBSCRIBE", SET_EVENTS]).expect("SUBSCRIBE");
    std::thread::spawn(move || {
        let mut keys = Vec::new();
        loop {
            let frame = c
                .read_reply("set event")
                .expect("set event")
                .to_owned_frame();
            let OwnedFrame::Array(parts) = frame else {
                panic!("{addr}: not a pubsub message: {frame:?}");
            };
            match parts.last() {
                Some(OwnedFrame::BulkString(k)) if k == END => return keys,
                Some(OwnedFrame::BulkString(k)) => keys.push(k.clone()),
                other => panic!("{addr}: unexpected pubsub message {other:?}"),
            }
        }
    })
}

/// Chunks of `keys` whose metadata a node wrote before their payload (`events`: the
/// keys it wrote, in order).
fn meta_first(events: &[Vec<u8>], keys: &[Vec<u8>]) -> Vec<String> {
    let mut bad = Vec::new();
    for k in keys {
        let (pk, mk) = (
            KeyLayout::Hashtag.payload_key(k),
            KeyLayout::Hashtag.metadata_key(k).unwrap(),
        );
        let first_p = events.iter().position(|e| *e == pk);
        let first_m = events.iter().position(|e| *e == mk);
        if let Some(m) = first_m {
            if first_p.is_none_or(|p| p > m) {
                bad.push(format!(
                    "{}: metadata written at event {m}, payload at {first_p:?}",
                    k.escape_ascii()
                ));
            }
        }
    }
    bad
}

/// MIGRATE one key of `slot` from `src` to `dst`; `false` when none is left.
fn migrate_one(c: &TestCluster, src: usize, dst: usize, slot: u16) -> bool {
    let mut conn = Client::open(&c.addr(src), None).expect("source connects");
    let keys = match conn
        .call(&[
            b"CLUSTER",
            b"GETKEYSINSLOT",
            slot.to_string().as_bytes(),
            b"1",
        ])
        .expect("GETKEYSINSLOT")
    {
        OwnedFrame::Array(keys) => keys,
        other => panic!("GETKEYSINSLOT returned {other:?}"),
    };
    let Some(OwnedFrame::BulkString(key)) = keys.into_iter().next() else {
        return false;
    };
    let dst_addr = c.addr(dst);
    let (host, port) = dst_addr.rsplit_once(':').expect("host:port");
    conn.call(&[
        b"MIGRATE",
        host.as_bytes(),
        port.as_bytes(),
        b"",
        b"0",
        b"10000",
        b"KEYS",
        &key,
    ])
    .expect("MIGRATE");
    true
}

fn pairs_survive_live_reshard(backend: IoBackend) {
    let c = TestCluster::start_with(3, 0, test_options());
    let src = c.cluster.slot_owner(SLOT).expect("slot owner");
    let dst = (src + 1) % 3;
    let other = 3 - src - dst;
    let (src_id, dst_id) = (
        c.cluster.node_id(src).unwrap(),
        c.cluster.node_id(dst).unwrap(),
    );
    let listeners = [listen(c.addr(src)), listen(c.addr(dst))];
    let engines = [engine(&c, backend, None), engine(&c, backend, Some(600))];
    let keys: [Arc<Vec<Vec<u8>>>; 2] = [
        Arc::new(keys_in_slot(
            &format!("pairs-{backend}-mset"),
            SLOT,
            PUTS * CHUNKS_PER_PUT,
        )),
        Arc::new(keys_in_slot(
            &format!("pairs-{backend}-ttl"),
            SLOT,
            PUTS * CHUNKS_PER_PUT,
        )),
    ];
    let p = Arc::new(Progress {
        allowed: AtomicUsize::new(0),
        started: Default::default(),
        done: Default::default(),
        stop: AtomicBool::new(false),
    });
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (e, k, p) = (engines[w].clone(), keys[w].clone(), p.clone());
            std::thread::spawn(move || writer(e, w, k, p))
        })
        .collect();
    let watcher = Watcher {
        clients: HashMap::new(),
        first: c.addr(src),
        askings: 0,
        checks: 0,
    };
    let watch = {
        let (k, p) = (keys.clone(), p.clone());
        std::thread::spawn(move || watcher.run(k, p))
    };
    let t0 = Instant::now();

    // Before the move: the slot gets 4 MiB chunks to migrate.
    p.allowed.store(PUTS_BEFORE, Ordering::SeqCst);
    wait_until(WAIT, "the puts before the move", || p.all_done(PUTS_BEFORE));
    let before_move = t0.elapsed();
    // Migrating: new keys are ASKed to the target while the old ones move, one by one.
    c.cmd(
        dst,
        &[
            "CLUSTER",
            "SETSLOT",
            &SLOT.to_string(),
            "IMPORTING",
            &src_id,
        ],
    );
    c.cmd(
        src,
        &[
            "CLUSTER",
            "SETSLOT",
            &SLOT.to_string(),
            "MIGRATING",
            &dst_id,
        ],
    );
    p.allowed
        .store(PUTS_BEFORE + PUTS_MIGRATING, Ordering::SeqCst);
    let mut migrated = 0usize;
    let deadline = Instant::now() + WAIT;
    loop {
        if migrate_one(&c, src, dst, SLOT) {
            migrated += 1;
        } else if p.all_done(PUTS_BEFORE + PUTS_MIGRATING) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "puts while migrating took too long"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(migrated > 0, "the slot held no keys to migrate");
    for idx in [dst, src, other] {
        c.cmd(
            idx,
            &["CLUSTER", "SETSLOT", &SLOT.to_string(), "NODE", &dst_id],
        );
    }
    let moved_at = t0.elapsed();
    // Moved: the engines still send to the source until MOVED tells them.
    p.allowed.store(PUTS, Ordering::SeqCst);
    wait_until(WAIT, "the puts after the move", || p.all_done(PUTS));
    p.stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = writers
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect();
    let (watcher, violations) = watch.join().expect("watcher thread");
    // Every key is written once: on each node, a chunk's metadata never runs first.
    for idx in [src, dst] {
        c.cmd(idx, &["PUBLISH", "__keyevent@0__:set", "--end--"]);
    }
    let events: Vec<Vec<Vec<u8>>> = listeners
        .into_iter()
        .map(|h| h.join().expect("listener thread"))
        .collect();
    let ordering: Vec<String> = events
        .iter()
        .flat_map(|ev| keys.iter().flat_map(|k| meta_first(ev, k)))
        .collect();
    let seen: usize = events.iter().map(Vec::len).sum();
    println!(
        "{backend}: move began at {before_move:?}, slot moved at {moved_at:?}, done at {:?}; \
         {migrated} keys migrated one by one; watcher: {} EXISTS, {} ASKING",
        t0.elapsed(),
        watcher.checks,
        watcher.askings
    );
    assert!(errors.is_empty(), "puts failed: {errors:?}");
    println!("{backend}: {seen} SET events on source and target");
    assert!(
        violations.is_empty(),
        "metadata before payload: {violations:?}"
    );
    assert!(
        ordering.is_empty(),
        "metadata ran before its payload: {ordering:?}"
    );
    assert!(
        seen >= 2 * 2 * PUTS * CHUNKS_PER_PUT,
        "only {seen} SET events seen"
    );
    assert!(watcher.checks > 0, "the watcher never looked");
    assert_eq!(c.cluster.slot_owner(SLOT).unwrap(), dst);
    // Both engines followed redirects, and the ASK path was taken (ASKING beyond the
    // watcher's own on the target).
    for (e, what) in engines.iter().zip(["MSET", "SET EX"]) {
        let redirects = e.stats().metrics.error_count("redirect");
        println!("{backend} {what}: {redirects} redirects followed");
        assert!(redirects > 0, "{what}: no redirect followed");
    }
    let askings = cmd_calls(&c, dst, "asking");
    assert!(
        askings > watcher.askings,
        "the engines sent no ASKING ({askings} on the target, {} by the watcher)",
        watcher.askings
    );

    // Every acknowledged chunk reads back intact, metadata included.
    for (e, keys) in engines.iter().zip(&keys) {
        for batch in keys.chunks(4) {
            let got = e.get(batch).wait().expect("get after the move");
            for (k, g) in batch.iter().zip(got) {
                let g = g.unwrap_or_else(|| panic!("chunk {} lost", k.escape_ascii()));
                assert!(
                    g.data == value_for(k, VALUE_LEN),
                    "chunk {} differs",
                    k.escape_ascii()
                );
                assert_eq!(g.meta, Some(meta_for(VALUE_LEN)), "{}", k.escape_ascii());
            }
        }
    }
    // The TTL engine's keys kept their TTL, both of them.
    let k = &keys[1][PUTS_BEFORE * CHUNKS_PER_PUT];
    for key in [
        KeyLayout::Hashtag.payload_key(k),
        KeyLayout::Hashtag.metadata_key(k).unwrap(),
    ] {
        let ttl: i64 = c
            .cmd(dst, &["TTL", std::str::from_utf8(&key).unwrap()])
            .parse()
            .expect("TTL is an integer");
        assert!(
            (1..=600).contains(&ttl),
            "TTL of {} is {ttl}",
            key.escape_ascii()
        );
    }
}
both_backends!(pairs_survive_live_reshard);
