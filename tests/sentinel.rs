//! Redis Sentinel (issue 18 item 5): `redis-sentinel://` finds the master through real
//! `redis-sentinel` processes, and a failover after the master is SIGKILLed is followed
//! with no more failures than the calls made before the new master is known.
//!
//! Every wait is bounded (a bug fails the test, never hangs it); nothing is mocked.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chunks::{chunks_for, value_for};
use common::{test_options, wait_until, TestDir, TestServer};
use slotline::IoBackend;
use slotline::{Config, Engine};
use slotline_testkit::{
    command_str, wait_sentinels_ready, RedisProcess, SentinelOptions, SentinelProcess,
};

const NAME: &str = "cache";
const PW: &str = "s3cret";
const LEN: usize = 1024;
/// Bounds every wait for the servers (sentinels find each other through the master
/// every 2 s; a failover takes down-after + an election).
const WATCHDOG: Duration = Duration::from_secs(60);

fn sentinel_opts(master: &str) -> SentinelOptions {
    SentinelOptions {
        name: NAME.into(),
        master: master.into(),
        quorum: 2,
        down_after_ms: 1000,
        failover_timeout_ms: 3000,
        auth_pass: Some(PW.into()),
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("model@1@0@{i:x}@bfloat16").into_bytes()
}

fn engine(url: &str, backend: IoBackend) -> Engine {
    let mut cfg = Config::from_url(url).expect("sentinel URL parses");
    cfg.io_backend = backend;
    cfg.shards = Some(2);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_secs(10);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    Engine::new(cfg).expect("engine through the sentinels")
}

/// The master is found through the sentinels (a dead one listed first is skipped),
/// with the data nodes' password; an unknown name fails with a message naming it.
fn discovery(backend: IoBackend) {
    let master = TestServer::start_with(slotline_testkit::ServerOptions {
        password: Some(PW.into()),
        ..test_options()
    });
    let dir = TestDir::new();
    let s = SentinelProcess::start(
        dir.path(),
        &SentinelOptions {
            quorum: 1,
            ..sentinel_opts(&master.addr())
        },
    )
    .expect("sentinel");
    let dead = slotline_testkit::free_port().expect("port");
    let url = format!(
        "redis-sentinel://:{PW}@127.0.0.1:{dead},{}/{NAME}",
        s.addr()
    );
    let e = engine(&url, backend);
    e.put(chunks_for(&[key(1)], LEN)).wait().expect("put");
    let got = e.get(&[key(1)]).wait().expect("get");
    assert_eq!(
        got[0].as_ref().map(|c| &c.data),
        Some(&value_for(&key(1), LEN))
    );
    // It really went to the master the sentinel named.
    assert_eq!(master.cmd(&["EXISTS", "model@1@0@1@bfloat16kv_bytes"]), "1");
    drop(e);

    let mut cfg = Config::from_url(&format!("redis-sentinel://:{PW}@{}/nosuch", s.addr()))
        .expect("URL parses");
    cfg.io_backend = backend;
    let err = Engine::new(cfg)
        .expect_err("unknown master name")
        .to_string();
    assert!(err.contains("nosuch"), "{err}");
}
both_backends!(discovery);

/// One master (with a password), its replica in sync, and three sentinels (quorum 2)
/// watching it and ready; `list` is the sentinels' addresses.
struct Group {
    master: TestServer,
    replica: RedisProcess,
    raddr: String,
    sentinels: Vec<SentinelProcess>,
    list: Vec<String>,
    _dirs: (TestDir, TestDir),
}

fn group() -> Group {
    let opts = slotline_testkit::ServerOptions {
        password: Some(PW.into()),
        ..test_options()
    };
    let master = TestServer::start_with(opts.clone());
    let rdir = TestDir::new();
    let mut ropts = opts.clone();
    ropts.extra_args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.proc.port().to_string(),
    ]);
    let replica = RedisProcess::start(rdir.path(), &ropts).expect("replica");
    let raddr = replica.addr();
    wait_until(WATCHDOG, "the replica to sync", || {
        command_str(&raddr, Some(PW), &["INFO", "replication"])
            .is_ok_and(|i| i.contains("master_link_status:up"))
    });
    let sdir = TestDir::new();
    let sentinels: Vec<SentinelProcess> = (0..3)
        .map(|_| {
            SentinelProcess::start(sdir.path(), &sentinel_opts(&master.addr())).expect("sentinel")
        })
        .collect();
    wait_sentinels_ready(&sentinels, NAME, 1, WATCHDOG).expect("sentinels ready");
    let list: Vec<String> = sentinels.iter().map(|s| s.addr()).collect();
    Group {
        master,
        replica,
        raddr,
        sentinels,
        list,
        _dirs: (rdir, sdir),
    }
}

/// What the client loop saw.
#[derive(Default)]
struct Log {
    /// (start, ok) of every call, in order.
    calls: Vec<(Instant, bool, String)>,
    /// Keys whose put was acknowledged, with when the put started.
    acked: Vec<(usize, Instant)>,
}

/// One master, one replica, three sentinels (quorum 2); a client loop puts and gets
/// while the master is SIGKILLed. After the first call that succeeds following the
/// kill, every call succeeds; before it only the call in flight at the kill and calls
/// made before the new master was known may fail. Every put acknowledged before a
/// fence write that `WAIT` saw replicated reads back from the new master; puts
/// acknowledged after the fence may be lost (acknowledged, not yet replicated: Redis
/// replication is asynchronous), and are not checked.
fn failover(backend: IoBackend) {
    let Group {
        mut master,
        replica: _replica,
        raddr,
        sentinels,
        list,
        _dirs,
    } = group();
    let url = format!("redis-sentinel://:{PW}@{}/{NAME}", list.join(","));
    let e = Arc::new(engine(&url, backend));

    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (e, log, stop) = (e.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let t = Instant::now();
                let r = e.put(chunks_for(&[key(i)], LEN)).wait();
                let mut l = log.lock().unwrap();
                l.calls.push((t, r.is_ok(), format!("put {i}: {r:?}")));
                if r.is_ok() {
                    l.acked.push((i, t));
                }
                drop(l);
                let t = Instant::now();
                let r = e.get(&[key(i)]).wait();
                let ok = match &r {
                    // A put acknowledged by the old master may be lost (see above).
                    Ok(v) => v[0]
                        .as_ref()
                        .is_none_or(|c| c.data == value_for(&key(i), LEN)),
                    Err(_) => false,
                };
                let what = format!("get {i}: {:?}", r.map(|v| v[0].is_some()));
                log.lock().unwrap().calls.push((t, ok, what));
            }
        })
    };
    let acked = || log.lock().unwrap().acked.len();
    wait_until(WATCHDOG, "100 puts before the kill", || acked() >= 100);
    // Fence: everything acknowledged before it is on the replica once WAIT says so.
    let fence = Instant::now();
    let waited = slotline_testkit::command_strs(
        &master.addr(),
        Some(PW),
        &[&["SET", "fence", "1"], &["WAIT", "1", "10000"]],
    )
    .expect("fence");
    assert_eq!(waited[1], "1", "the replica did not acknowledge the fence");
    let killing = Instant::now();
    master.proc.kill();
    // Calls that start after this cannot have reached the old master.
    let killed = Instant::now();

    // The sentinels promote the replica; the engine follows and calls succeed again.
    wait_until(WATCHDOG, "the sentinels to name the replica", || {
        sentinels[0].master_addr(NAME).is_ok_and(|a| a == raddr)
    });
    let ok_after = |l: &Log| l.calls.iter().filter(|c| c.0 > killed && c.1).count();
    wait_until(WATCHDOG, "100 successful calls after the failover", || {
        ok_after(&log.lock().unwrap()) >= 100
    });
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client loop");

    let l = log.lock().unwrap();
    let first_ok = l
        .calls
        .iter()
        .position(|c| c.0 > killed && c.1)
        .expect("a call succeeded after the kill");
    let late: Vec<&String> = l.calls[first_ok..]
        .iter()
        .filter(|c| !c.1)
        .map(|c| &c.2)
        .collect();
    assert!(
        late.is_empty(),
        "{} calls failed after the new master was in use: {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
    // Before the kill only the one call in flight at the kill may have failed.
    let early: Vec<&String> = l
        .calls
        .iter()
        .filter(|c| c.0 < killing && !c.1)
        .map(|c| &c.2)
        .collect();
    assert!(
        early.len() <= 1,
        "{} calls failed before the kill (at most the one in flight may): {:?}",
        early.len(),
        &early[..early.len().min(3)]
    );
    let must: Vec<Vec<u8>> = l
        .acked
        .iter()
        .filter(|(_, t)| *t < fence)
        .map(|(i, _)| key(*i))
        .collect();
    assert!(must.len() >= 100);
    let got = e.get(&must).wait().expect("read back after the failover");
    for (k, g) in must.iter().zip(&got) {
        let k_s = String::from_utf8_lossy(k);
        assert_eq!(
            g.as_ref().map(|c| &c.data),
            Some(&value_for(k, LEN)),
            "{k_s}: acknowledged and replicated put lost"
        );
    }
    // Read directly from the promoted replica too.
    let direct = command_str(
        &raddr,
        Some(PW),
        &["EXISTS", "model@1@0@1@bfloat16kv_bytes"],
    )
    .expect("EXISTS on the new master");
    assert_eq!(direct, "1");
    eprintln!(
        "failover: {} calls failed between the kill and the first success ({:?} later)",
        l.calls.iter().filter(|c| c.0 >= killed && !c.1).count(),
        l.calls[first_ok].0 - killed
    );
}
both_backends!(failover);

/// A manual failover (`SENTINEL FAILOVER`): the old master stays up and is demoted to
/// a replica, so no connection fails; its writes get READONLY (which asks the
/// sentinels again, as the periodic check also does). Once it is a replica, puts keep
/// succeeding on the new master: after the first success, none fails.
fn demoted_master(backend: IoBackend) {
    let Group {
        master,
        replica: _replica,
        raddr,
        sentinels,
        list,
        _dirs,
    } = group();
    let e = engine(
        &format!("redis-sentinel://:{PW}@{}/{NAME}", list.join(",")),
        backend,
    );
    e.put(chunks_for(&[key(0)], LEN))
        .wait()
        .expect("put before the failover");
    let r = command_str(&sentinels[0].addr(), None, &["SENTINEL", "FAILOVER", NAME]);
    assert_eq!(r.expect("SENTINEL FAILOVER"), "OK");
    // Puts run through the failover; every 10th turn looks whether the old master is
    // a replica yet.
    let t0 = Instant::now();
    let mut demoted: Option<usize> = None;
    let mut results: Vec<Result<(), String>> = Vec::new();
    let mut i = 0;
    while demoted.is_none() || results.iter().rev().take_while(|r| r.is_ok()).count() < 50 {
        assert!(
            t0.elapsed() < WATCHDOG,
            "no recovery after the demotion (demoted: {demoted:?}): {:?}",
            results.last()
        );
        if demoted.is_none()
            && i % 10 == 0
            && command_str(&master.addr(), Some(PW), &["ROLE"]).is_ok_and(|r| r.contains("slave"))
        {
            demoted = Some(results.len());
        }
        i += 1;
        results.push(
            e.put(chunks_for(&[key(i)], LEN))
                .wait()
                .map_err(|e| e.to_string()),
        );
    }
    let from = demoted.unwrap_or(0);
    let first_ok = from
        + results[from..]
            .iter()
            .position(|r| r.is_ok())
            .expect("a success after the demotion");
    let late: Vec<_> = results[first_ok..].iter().filter(|r| r.is_err()).collect();
    assert!(
        late.is_empty(),
        "{} puts failed after the switch: {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
    // The last one landed on the new master (the demoted one refuses writes).
    let k = format!("{}kv_bytes", String::from_utf8_lossy(&key(i)));
    assert_eq!(
        command_str(&raddr, Some(PW), &["EXISTS", &k]).expect("EXISTS"),
        "1"
    );
    let fails: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!(
        "demotion: {} of {} puts failed during the failover, first: {:?}",
        fails.len(),
        results.len(),
        fails.first()
    );
}
both_backends!(demoted_master);
