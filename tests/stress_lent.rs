//! Randomized stress of the lent-memory contract: several threads read into and write
//! from canary memory (pages sealed `PROT_NONE` the moment a request is reported
//! finished) with mixed sizes, 2 KiB to 4 MiB, blocking and async, while a fault proxy
//! in front of the real server stalls, cuts and resets connections and the test drops
//! engines (requests still in flight) and opens new ones.
//!
//! It holds when: no late write (a shard thread touching a sealed page crashes the
//! test; the kernel's EFAULT fails the op), no hang (each request returns within
//! `request_timeout` + 2 s, watched from outside the worker), and every acknowledged
//! put reads back afterwards, straight from the server.
//!
//! `SLOTLINE_STRESS_OPS` sets the operations per worker (default 500; four workers),
//! `SLOTLINE_STRESS_SEED` the seed (printed, to replay a failure). Sealed canaries stay
//! mapped for the rest of the process, so the sizes are skewed small: about 300 MiB in
//! all at the default.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use common::canary::Canary;
use common::TestServer;
use slotline::IoBackend;
use slotline::{CallerBuf, CallerBufMut, Config, Engine, PutOwned, PutRef};
use slotline_testkit::FaultProxy;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const WORKERS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(2);
/// Every request returns within its timeout plus this.
const GRACE: Duration = Duration::from_secs(2);

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// 2 KiB .. 4 MiB, mostly small: 75% up to 32 KiB, 21% up to 512 KiB, 4% 1-4 MiB.
    fn size(&mut self) -> usize {
        let r = self.below(100);
        let (lo, hi) = match r {
            0..=74 => (2 * KIB, 32 * KIB),
            75..=95 => (32 * KIB, 512 * KIB),
            _ => (MIB, 4 * MIB),
        };
        lo + self.below((hi - lo) as u64 + 1) as usize
    }
}

fn engine(url: &str, backend: IoBackend) -> slotline::Result<Engine> {
    let mut cfg = Config::from_url(url).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(2);
    cfg.request_timeout = TIMEOUT;
    cfg.deadlines = slotline::Deadlines::uniform(TIMEOUT);
    cfg.connect_timeout = Duration::from_secs(1);
    Engine::new(cfg)
}

/// What every worker shares: the engine of the moment and the watchdog's view.
struct World {
    engine: RwLock<Option<Engine>>,
    /// Per worker: when its current request started (ms since `t0`, 0 when idle).
    started: Vec<AtomicU64>,
    t0: Instant,
    stop: AtomicBool,
    /// Requests that took longer than the bound (should stay 0).
    late: AtomicUsize,
    ops: AtomicUsize,
    failures: AtomicUsize,
    /// Canary bytes sealed (they stay mapped).
    sealed: AtomicU64,
}

impl World {
    fn engine(&self) -> Option<Engine> {
        self.engine.read().unwrap().clone()
    }
    fn begin(&self, w: usize) -> Instant {
        let ms = self.t0.elapsed().as_millis() as u64 + 1;
        self.started[w].store(ms, Ordering::SeqCst);
        Instant::now()
    }
    fn end(&self, w: usize, since: Instant, what: &str) {
        self.started[w].store(0, Ordering::SeqCst);
        let took = since.elapsed();
        if took > TIMEOUT + GRACE {
            eprintln!("worker {w}: {what} took {took:?}");
            self.late.fetch_add(1, Ordering::SeqCst);
        }
        self.ops.fetch_add(1, Ordering::SeqCst);
    }
    fn seal(&self, c: &Canary) {
        c.seal();
        self.sealed
            .fetch_add(c.addr_range().len() as u64, Ordering::Relaxed);
    }
}

/// A put acknowledged by the engine: its key, length and fill byte.
#[derive(Clone)]
struct Acked {
    key: String,
    len: usize,
    fill: u8,
}

fn fill_of(key_no: u64) -> u8 {
    (key_no % 251) as u8 + 1
}

/// One worker: random puts and gets on canary memory, blocking and async.
fn worker(w: usize, world: &World, ops: usize, seed: u64) -> Vec<Acked> {
    let mut rng = Rng(seed ^ ((w as u64 + 1) * 0x9E37_79B9_7F4A_7C15));
    let mut acked: Vec<Acked> = Vec::new();
    let mut next_key = 0u64;
    for _ in 0..ops {
        let Some(e) = world.engine() else { break };
        let get = !acked.is_empty() && rng.below(2) == 0;
        let blocking = rng.below(2) == 0;
        if get {
            let a = acked[rng.below(acked.len() as u64) as usize].clone();
            let c = Canary::new(a.len, 0);
            let since = world.begin(w);
            let (r, back) = if blocking {
                let mut c = c;
                let r = {
                    let mut s = [CallerBufMut::as_mut_slice(&mut c)];
                    e.get(&[&a.key]).into_slices(&mut s).wait()
                };
                drop(e);
                (r, Some(Box::new(c)))
            } else {
                let t = e.get(&[&a.key]).into_bufs(vec![Box::new(c)]).submit();
                // The engine may be dropped (by the controller) while this is in flight.
                drop(e);
                let back = t.wait();
                assert_eq!(back.bufs.len(), 1, "a buffer did not come back");
                // The request is finished; only our own reads below may touch it.
                let b: Box<dyn CallerBufMut> = back.bufs.into_iter().next().unwrap();
                let c: &[u8] = CallerBufMut::as_slice(&*b);
                let ok = c.iter().all(|&x| x == a.fill);
                world.end(w, since, "get_into_bufs_async");
                check_get(&back.result, &a, ok, world);
                // A trait object: sealed by its drop (Canary's Drop seals and keeps the
                // pages mapped).
                drop(b);
                world.sealed.fetch_add(a.len as u64, Ordering::Relaxed);
                continue;
            };
            world.end(w, since, "get_into_slices");
            let c = back.unwrap();
            let ok = c.bytes().iter().all(|&x| x == a.fill);
            check_get(&r, &a, ok, world);
            world.seal(&c);
            std::mem::forget(c);
        } else {
            let len = rng.size();
            let key_no = next_key;
            next_key += 1;
            let key = format!("s{w}-{seed:x}-{key_no}");
            let fill = fill_of(key_no);
            let c = Canary::new(len, fill);
            let since = world.begin(w);
            let r = if blocking {
                let r = e
                    .put(&[PutRef {
                        key: key.as_bytes(),
                        data: CallerBuf::as_slice(&c),
                        meta: None,
                    }])
                    .wait();
                drop(e);
                world.end(w, since, "put_slices");
                world.seal(&c);
                std::mem::forget(c);
                r
            } else {
                let t = e
                    .put(vec![PutOwned {
                        key: key.clone().into_bytes(),
                        data: Box::new(c),
                        meta: None,
                    }])
                    .submit();
                drop(e);
                let back = t.wait();
                world.end(w, since, "put_from_async");
                assert_eq!(back.bufs.len(), 1, "a buffer did not come back");
                drop(back.bufs);
                world.sealed.fetch_add(len as u64, Ordering::Relaxed);
                back.result
            };
            match r {
                Ok(()) => acked.push(Acked { key, len, fill }),
                Err(_) => {
                    world.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    acked
}

/// A get of an acknowledged key either fails (a fault) or finds the value whole.
fn check_get(
    r: &slotline::Result<Vec<Option<slotline::ChunkInfo>>>,
    a: &Acked,
    bytes_ok: bool,
    world: &World,
) {
    match r {
        Ok(info) => {
            assert!(
                info[0].is_some(),
                "acknowledged put {} read as a miss",
                a.key
            );
            assert!(bytes_ok, "acknowledged put {} read back wrong", a.key);
        }
        Err(_) => {
            world.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn stress(backend: IoBackend) {
    let ops: usize = std::env::var("SLOTLINE_STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed: u64 = std::env::var("SLOTLINE_STRESS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!(
        "stress_lent: {backend:?}, {WORKERS} workers x {ops} ops, SLOTLINE_STRESS_SEED={seed}"
    );
    let srv = TestServer::start();
    let proxy = FaultProxy::start(&srv.addr()).expect("fault proxy");
    let world = Arc::new(World {
        engine: RwLock::new(Some(engine(&proxy.url(), backend).expect("engine"))),
        started: (0..WORKERS).map(|_| AtomicU64::new(0)).collect(),
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        late: AtomicUsize::new(0),
        ops: AtomicUsize::new(0),
        failures: AtomicUsize::new(0),
        sealed: AtomicU64::new(0),
    });
    let acked = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (world, acked) = (world.clone(), acked.clone());
            thread::spawn(move || {
                let mine = worker(w, &world, ops, seed);
                acked.lock().unwrap().extend(mine);
            })
        })
        .collect();

    // The fault schedule, with the watchdog: runs until every worker is done. A fault
    // every 10 to 70 ms; stalls last 0.05 to 2.5 s (past the request timeout, so some values time out mid-way);
    // cuts and resets also hit stalled connections.
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut faults = [0usize; 4];
    let mut closing = Vec::new();
    let bound = (TIMEOUT + GRACE + Duration::from_secs(1)).as_millis() as u64;
    let mut stall_until: Option<Instant> = None;
    let mut next_fault = Instant::now();
    while !workers.iter().all(|t| t.is_finished()) {
        thread::sleep(Duration::from_millis(10));
        // No request may run past its bound (a hang fails here, not in CI's limit).
        let now_ms = world.t0.elapsed().as_millis() as u64 + 1;
        for (w, s) in world.started.iter().enumerate() {
            let s = s.load(Ordering::SeqCst);
            assert!(
                s == 0 || now_ms.saturating_sub(s) < bound,
                "worker {w}: a request has run for {} ms (a hang; seed {seed})",
                now_ms - s
            );
        }
        let now = Instant::now();
        if stall_until.is_some_and(|u| now >= u) {
            proxy.pass();
            stall_until = None;
        }
        if now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(10 + rng.below(60));
        match rng.below(10) {
            0 | 1 if stall_until.is_none() => {
                faults[0] += 1;
                proxy.stall();
                stall_until = Some(now + Duration::from_millis(50 + rng.below(2500)));
            }
            2 | 3 => faults[1] += proxy.cut(),
            4 | 5 => faults[2] += proxy.reset(),
            6 if stall_until.is_none() => {
                // Close the engine (requests may be in flight: its drop waits for them,
                // on a thread of its own) and open a new one.
                match engine(&proxy.url(), backend) {
                    Ok(fresh) => {
                        faults[3] += 1;
                        let old = world.engine.write().unwrap().replace(fresh);
                        closing.push(thread::spawn(move || drop(old)));
                    }
                    Err(e) => eprintln!("reopen failed: {e}"),
                }
            }
            _ => {}
        }
    }
    for t in closing {
        t.join().expect("an engine drop panicked");
    }
    proxy.pass();
    for t in workers {
        t.join().expect("a worker panicked");
    }
    world.stop.store(true, Ordering::SeqCst);
    let last = world.engine.write().unwrap().take();
    drop(last);
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "stress_lent: {} ops, {} failed under faults, {} puts acknowledged; {} stalls, {} connections cut, {} reset, {} engines reopened; {} MiB of canaries sealed",
        world.ops.load(Ordering::SeqCst),
        world.failures.load(Ordering::SeqCst),
        acked.len(),
        faults[0],
        faults[1],
        faults[2],
        faults[3],
        world.sealed.load(Ordering::SeqCst) >> 20,
    );
    assert_eq!(
        world.late.load(Ordering::SeqCst),
        0,
        "requests ran past their bound (seed {seed})"
    );
    assert!(!acked.is_empty(), "no put was acknowledged (seed {seed})");

    // Every acknowledged put reads back, straight from the server.
    let direct = engine(&srv.url(), backend).expect("direct engine");
    for a in &acked {
        let mut buf = vec![0u8; a.len];
        let info = {
            let mut s = [&mut buf[..]];
            direct
                .get(&[&a.key])
                .into_slices(&mut s)
                .wait()
                .unwrap_or_else(|e| panic!("reading back {}: {e}", a.key))
        };
        assert!(
            info[0].is_some(),
            "acknowledged put {} is missing (seed {seed})",
            a.key
        );
        assert!(
            buf.iter().all(|&x| x == a.fill),
            "acknowledged put {} reads back wrong (seed {seed})",
            a.key
        );
    }
}
both_backends!(stress);
