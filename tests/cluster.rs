//! Redis Cluster integration tests: slot hashing against the server, every key layout
//! across masters, frames per batch, live resharding, failover, a master added at run
//! time, replica reads, and seed errors.
//!
//! Every engine test runs on both backends (io_uring and epoll), each with its own local
//! cluster (3 masters + 3 replicas, cluster-node-timeout 2000 ms) that is stopped when
//! the test ends. Nothing is mocked: every byte goes through real redis-server nodes.
//!
//! Run: `cargo test --test cluster -- --test-threads=2` (add `--nocapture` for timings).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chunks::{chunks_for, meta_for, value_for, Rng};
use common::{blocked_clients, cmd_calls, test_options, wait_until, TestCluster, TestServer};
use slotline::hash_slot;
use slotline::MasterView;
use slotline::{Config, Engine, Error, KeyLayout, PutChunk};
use slotline::{IoBackend, Mode, ServerAddr};
use slotline_testkit as servers;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An LMCache-style chunk key.
fn lm_key(tag: &str, i: u64) -> Vec<u8> {
    format!("meta-llama/Llama-3.1-8B-Instruct@1@{tag}@{i:x}@bfloat16").into_bytes()
}

/// The Redis key (payload) whose slot decides where the chunk's payload lives.
fn payload_key(layout: KeyLayout, k: &[u8]) -> Vec<u8> {
    layout.payload_key(k)
}

fn cluster_cfg(c: &TestCluster, backend: IoBackend, layout: KeyLayout) -> Config {
    let mut cfg = Config::from_url(&c.seed_url()).expect("seed URL parses");
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    cfg.key_layout = layout;
    cfg.request_timeout = Duration::from_secs(15);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    cfg
}

fn engine(c: &TestCluster, backend: IoBackend, layout: KeyLayout) -> Engine {
    Engine::new(cluster_cfg(c, backend, layout))
        .unwrap_or_else(|e| panic!("Engine::new on {} failed: {e}", c.seed_url()))
}

fn port_of(a: &ServerAddr) -> u16 {
    match a {
        ServerAddr::Tcp { port, .. } => *port,
        other => panic!("unexpected non-TCP address {other}"),
    }
}

/// Index in `c.cluster.nodes` of the node listening on `port`.
fn node_index(c: &TestCluster, port: u16) -> usize {
    c.cluster
        .nodes
        .iter()
        .position(|n| n.port() == port)
        .unwrap_or_else(|| panic!("no node of the test cluster listens on port {port}"))
}

/// Checks what `Engine::topology` reports: `masters` masters, distinct addresses, ids
/// matching CLUSTER MYID, every slot covered exactly once, each master owned by a valid
/// shard and masters spread evenly over the shards (max - min <= 1). Returns the view.
fn check_topology(c: &TestCluster, e: &Engine, masters: usize) -> Vec<MasterView> {
    let topo = e.topology();
    assert_eq!(topo.len(), masters, "engine topology: {topo:#?}");
    let nshards = e.stats().shards;
    let mut per_shard = vec![0usize; nshards];
    let mut covered = vec![false; 16384];
    let mut addrs = HashSet::new();
    for m in &topo {
        assert!(
            addrs.insert(m.addr.clone()),
            "master {} listed twice",
            m.addr
        );
        assert!(
            m.shard < nshards,
            "master {} owned by shard {} of {nshards}",
            m.addr,
            m.shard
        );
        per_shard[m.shard] += 1;
        let idx = node_index(c, port_of(&m.addr));
        let id = c.cluster.node_id(idx).expect("CLUSTER MYID");
        assert_eq!(m.id, id, "node id of master {}", m.addr);
        for &(a, b) in &m.slots {
            assert!(a <= b && b < 16384, "bad range {a}-{b} of {}", m.addr);
            for s in a..=b {
                assert!(!covered[s as usize], "slot {s} owned twice");
                covered[s as usize] = true;
            }
        }
    }
    let missing = covered.iter().filter(|&&b| !b).count();
    assert_eq!(
        missing, 0,
        "{missing} slots not covered by the engine topology"
    );
    let (max, min) = (
        per_shard.iter().max().copied().unwrap_or(0),
        per_shard.iter().min().copied().unwrap_or(0),
    );
    if masters >= nshards {
        assert!(
            max - min <= 1,
            "masters per shard {per_shard:?}: not spread evenly"
        );
    } else {
        assert!(
            max <= 1,
            "masters per shard {per_shard:?}: two masters share a shard while others are idle"
        );
    }
    // The engine's slot map agrees with the server on a sample of slots.
    let mut r = Rng::new(0x5107);
    for _ in 0..48 {
        let slot = r.below(16384) as u16;
        let owner = c.cluster.slot_owner(slot).expect("slot owner");
        let eng = topo
            .iter()
            .find(|m| m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("covered");
        assert_eq!(
            port_of(&eng.addr),
            c.cluster.nodes[owner].port(),
            "slot {slot}: engine says {}, server says {}",
            eng.addr,
            c.cluster.nodes[owner].addr()
        );
    }
    topo
}

/// Master index (initial node index) owning `slot`, as the server says.
fn owner(c: &TestCluster, slot: u16) -> usize {
    c.cluster.slot_owner(slot).expect("slot owner")
}

fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|s| s.trim().to_string())
}

/// Prints the engine's stats once a test is done (visible with --nocapture).
fn show_stats(what: &str, e: &Engine) {
    println!("--- {what}: {}", e.stats());
}

// ---------------------------------------------------------------------------------------
// 1. Slot hashing against the server
// ---------------------------------------------------------------------------------------

/// Sends `CLUSTER KEYSLOT key` for every key, pipelined on one connection, and returns
/// the slots the server computed.
fn server_keyslots(addr: &str, keys: &[Vec<u8>]) -> Vec<u16> {
    let stream = TcpStream::connect(addr).expect("connect for KEYSLOT");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut frame = Vec::new();
    for k in keys {
        frame.extend_from_slice(b"*3\r\n$7\r\nCLUSTER\r\n$7\r\nKEYSLOT\r\n");
        frame.extend_from_slice(format!("${}\r\n", k.len()).as_bytes());
        frame.extend_from_slice(k);
        frame.extend_from_slice(b"\r\n");
    }
    // Redis buffers replies for a client that is not reading, so writing everything
    // first cannot deadlock at this size (replies are a few bytes each).
    (&stream).write_all(&frame).expect("write KEYSLOT pipeline");
    let mut r = BufReader::new(&stream);
    let mut out = Vec::with_capacity(keys.len());
    let mut line = String::new();
    for (i, k) in keys.iter().enumerate() {
        line.clear();
        r.read_line(&mut line).expect("read KEYSLOT reply");
        let n = line
            .strip_prefix(':')
            .and_then(|s| s.trim_end().parse::<u16>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "CLUSTER KEYSLOT {:?} (key #{i}) answered {line:?}",
                    k.escape_ascii().to_string()
                )
            });
        out.push(n);
    }
    out
}

fn random_slot_key(r: &mut Rng) -> Vec<u8> {
    let len = r.below(300);
    let mut k = Vec::with_capacity(len);
    for _ in 0..len {
        let b = match r.below(10) {
            0 | 1 => b'{',
            2 | 3 => b'}',
            4 => b'@',
            _ => r.next() as u8, // any byte, including 0x80.. and NUL
        };
        k.push(b);
    }
    // Splice in some shapes that exercise the tag rule.
    match r.below(8) {
        0 => k.splice(0..0, b"{}".iter().copied()).for_each(drop),
        1 => k.splice(0..0, b"{{".iter().copied()).for_each(drop),
        2 => {
            let at = r.below(k.len() + 1);
            k.splice(at..at, b"}{".iter().copied()).for_each(drop)
        }
        3 => k.extend_from_slice(b"{a}"),
        _ => {}
    }
    k
}

#[test]
fn slot_hashing_matches_server() {
    let mut opts = test_options();
    opts.cluster = true;
    let srv = TestServer::start_with(opts);
    let mut r = Rng::new(0xC0FFEE);
    let mut keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"{}".to_vec(),
        b"}{".to_vec(),
        b"{}{}".to_vec(),
        b"{a}".to_vec(),
        b"{{a}}".to_vec(),
        b"foo{}{bar}".to_vec(),
        b"foo{{bar}}zap".to_vec(),
        b"foo{bar}{zap}".to_vec(),
        b"{user1000}.following".to_vec(),
        b"123456789".to_vec(),
        b"\xff{\x00}\xfe".to_vec(),
        b"{\xc3\x28}".to_vec(),
    ];
    while keys.len() < 5000 {
        keys.push(random_slot_key(&mut r));
    }
    let t0 = Instant::now();
    let server = server_keyslots(&srv.addr(), &keys);
    let mut mismatches = Vec::new();
    for (k, &s) in keys.iter().zip(&server) {
        let ours = hash_slot(k);
        if ours != s {
            mismatches.push(format!(
                "{:?}: hash_slot {ours}, server {s}",
                k.escape_ascii().to_string()
            ));
        }
    }
    // The admin helper with binary arguments agrees as well (one connection per key).
    for k in keys.iter().take(40) {
        let v = servers::command(&srv.addr(), None, &[b"CLUSTER", b"KEYSLOT", k]).unwrap();
        let s = match v {
            redis_protocol::resp2::types::OwnedFrame::Integer(n) => n,
            other => panic!("CLUSTER KEYSLOT returned {other:?}"),
        };
        assert_eq!(hash_slot(k) as i64, s, "{:?}", k.escape_ascii().to_string());
    }
    println!(
        "compared {} keys with CLUSTER KEYSLOT in {:?}",
        keys.len(),
        t0.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} keys hash differently:\n{}",
        mismatches.len(),
        keys.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 2. Every layout, a batch spanning all masters
// ---------------------------------------------------------------------------------------

/// Writes every chunk with `i % 3 != 2` of a ~600-chunk batch, then checks get (order,
/// misses, bytes), get_into, exists, contains_prefix, prefetch and delete.
fn exercise_layout(c: &TestCluster, e: &Engine, layout: KeyLayout, tag: &str) {
    let n = 600u64;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| lm_key(tag, i * 7919 + 11)).collect();
    let present = |i: usize| i % 3 != 2;
    let len_of = |i: usize| 64 + (i * 37) % 4000;
    // The batch spans every master.
    let masters: HashSet<usize> = keys
        .iter()
        .map(|k| owner(c, hash_slot(&payload_key(layout, k))))
        .collect();
    assert_eq!(
        masters.len(),
        3,
        "{layout}: batch should span all 3 masters"
    );

    let chunks: Vec<PutChunk> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| present(*i))
        .map(|(i, k)| {
            let data = value_for(k, len_of(i));
            let meta = (layout != KeyLayout::Raw).then(|| meta_for(data.len()));
            PutChunk::new(k.clone(), data, meta)
        })
        .collect();
    e.put(chunks)
        .wait()
        .unwrap_or_else(|err| panic!("{layout}: put failed: {err}"));

    let got = e
        .get(&keys)
        .wait()
        .unwrap_or_else(|err| panic!("{layout}: get failed: {err}"));
    assert_eq!(got.len(), keys.len());
    for (i, (k, g)) in keys.iter().zip(&got).enumerate() {
        if present(i) {
            let g = g
                .as_ref()
                .unwrap_or_else(|| panic!("{layout}: chunk {i} written but read as a miss"));
            assert!(
                g.data == value_for(k, len_of(i)),
                "{layout}: chunk {i}: {} bytes differ from the {} written",
                g.data.len(),
                len_of(i)
            );
            match layout {
                KeyLayout::Raw => assert_eq!(g.meta, None),
                _ => assert_eq!(g.meta.as_ref(), Some(&meta_for(len_of(i))), "chunk {i}"),
            }
        } else {
            assert!(
                g.is_none(),
                "{layout}: chunk {i} was never written but was read"
            );
        }
    }

    // The bytes are where the cluster says they are, under the layout's key names.
    for i in (0..keys.len()).filter(|&i| present(i)).step_by(50) {
        let pk = payload_key(layout, &keys[i]);
        let idx = owner(c, hash_slot(&pk));
        let v = servers::command(&c.addr(idx), None, &[b"GET", &pk]).unwrap();
        match v {
            redis_protocol::resp2::types::OwnedFrame::BulkString(b) => {
                assert!(
                    b == value_for(&keys[i], len_of(i)),
                    "{layout}: raw GET of chunk {i}"
                )
            }
            other => panic!(
                "{layout}: GET {:?} on its owner returned {other:?}",
                pk.escape_ascii().to_string()
            ),
        }
        if let Some(mk) = layout.metadata_key(&keys[i]) {
            let idx = owner(c, hash_slot(&mk));
            let v = servers::command(&c.addr(idx), None, &[b"GET", &mk]).unwrap();
            match v {
                redis_protocol::resp2::types::OwnedFrame::BulkString(b) => {
                    assert_eq!(
                        b,
                        meta_for(len_of(i)).encode(),
                        "{layout}: metadata of chunk {i}"
                    )
                }
                other => panic!("{layout}: GET metadata returned {other:?}"),
            }
        }
    }

    // get_into: buffers large enough for every value (raw: exactly the value size, as
    // LMCache's native client expects; any other size is a miss).
    let sub: Vec<Vec<u8>> = keys[..60].to_vec();
    let buf_len = |i: usize| {
        if layout == KeyLayout::Raw {
            len_of(i)
        } else {
            4096
        }
    };
    let bufs = (0..sub.len()).map(|i| vec![0u8; buf_len(i)]).collect();
    let (bufs, infos) = e.get(&sub).into_vecs(bufs).wait().unwrap();
    for (i, (b, info)) in bufs.iter().zip(&infos).enumerate() {
        match info {
            Some(info) => {
                assert!(present(i), "{layout}: get_into hit on missing chunk {i}");
                assert_eq!(info.len, len_of(i));
                assert!(
                    b[..info.len] == value_for(&sub[i], len_of(i))[..],
                    "get_into chunk {i}"
                );
            }
            None => assert!(!present(i), "{layout}: get_into missed chunk {i}"),
        }
    }
    if layout == KeyLayout::Raw {
        let (_, infos) = e
            .get(&keys[..1])
            .into_vecs(vec![vec![0u8; len_of(0) + 1]])
            .wait()
            .unwrap();
        assert_eq!(
            infos,
            vec![None],
            "raw: a value shorter than the buffer is a miss"
        );
    }

    let ex = e.exists(&keys).wait().unwrap();
    let want: Vec<bool> = (0..keys.len()).map(present).collect();
    assert_eq!(ex, want, "{layout}: exists");

    // contains_prefix / prefetch: the first miss is chunk 2.
    assert_eq!(
        e.contains_prefix(&keys).wait().unwrap(),
        2,
        "{layout}: contains_prefix"
    );
    let hits: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| present(*i))
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(
        e.contains_prefix(&hits).wait().unwrap(),
        hits.len(),
        "{layout}: full prefix"
    );
    let pf = e.prefetch(&keys).wait().unwrap();
    assert_eq!(pf.len(), 2, "{layout}: prefetch stops at the first miss");
    assert!(pf[0].data == value_for(&keys[0], len_of(0)));
    assert!(pf[1].data == value_for(&keys[1], len_of(1)));
    let pf = e.prefetch(&hits).wait().unwrap();
    assert_eq!(pf.len(), hits.len(), "{layout}: prefetch of hits only");
    let hit_idx: Vec<usize> = (0..keys.len()).filter(|&i| present(i)).collect();
    for (c2, &i) in pf.iter().zip(&hit_idx) {
        assert!(
            c2.data == value_for(&keys[i], len_of(i)),
            "{layout}: prefetch chunk {i}"
        );
    }
    let mut empty: Vec<Vec<u8>> = Vec::new();
    assert_eq!(e.contains_prefix(&empty).wait().unwrap(), 0);
    assert!(e.get(&empty).wait().unwrap().is_empty());
    empty.push(lm_key("never", 1));
    assert_eq!(e.contains_prefix(&empty).wait().unwrap(), 0);

    // delete: the first 150 chunks, of which 100 exist.
    let del = &keys[..150];
    let existed = (0..150).filter(|&i| present(i)).count();
    assert_eq!(
        e.delete(del).wait().unwrap(),
        existed,
        "{layout}: delete count"
    );
    let after = e.exists(&keys).wait().unwrap();
    for (i, &x) in after.iter().enumerate() {
        assert_eq!(
            x,
            i >= 150 && present(i),
            "{layout}: exists after delete, chunk {i}"
        );
    }
    let got = e.get(del).wait().unwrap();
    assert!(
        got.iter().all(Option::is_none),
        "{layout}: deleted chunks still readable"
    );
    for i in (0..150).filter(|&i| present(i)).step_by(25) {
        let pk = payload_key(layout, &keys[i]);
        let idx = owner(c, hash_slot(&pk));
        let v = servers::command(&c.addr(idx), None, &[b"EXISTS", &pk]).unwrap();
        assert_eq!(
            v,
            redis_protocol::resp2::types::OwnedFrame::Integer(0),
            "{layout}: payload key of deleted chunk {i} remains"
        );
    }
    assert_eq!(e.delete(del).wait().unwrap(), 0, "{layout}: second delete");
    assert_eq!(e.contains_prefix(&keys[150..]).wait().unwrap(), 2);

    // Chunk keys that contain braces or are not UTF-8: the layout is applied as written
    // and each Redis key is routed by the Redis rule on the final key. (With the hashtag
    // layout a K starting with `}` gives `{}...`: an empty tag, so metadata and payload
    // may land in different slots.)
    let weird: Vec<Vec<u8>> = vec![
        format!("{{user1000}}{tag}").into_bytes(),
        format!("}}{tag}x").into_bytes(),
        format!("}}{{{tag}}}").into_bytes(),
        format!("{{}}{tag}{{x}}").into_bytes(),
        format!("{{{{{tag}}}}}").into_bytes(),
        [b"\xff\xfe{".as_slice(), tag.as_bytes(), b"}\x00\x80"].concat(),
        [tag.as_bytes(), b"\xc3\x28@\x00".as_slice()].concat(),
        format!("{tag}@{{}}").into_bytes(),
    ];
    let chunks: Vec<PutChunk> = weird
        .iter()
        .map(|k| {
            let data = value_for(k, 300);
            let meta = (layout != KeyLayout::Raw).then(|| meta_for(300));
            PutChunk::new(k.clone(), data, meta)
        })
        .collect();
    e.put(chunks)
        .wait()
        .unwrap_or_else(|err| panic!("{layout}: put of brace/binary keys: {err}"));
    let got = e.get(&weird).wait().unwrap();
    for (k, g) in weird.iter().zip(&got) {
        let shown = k.escape_ascii().to_string();
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("{layout}: key {shown} missed"));
        assert!(g.data == value_for(k, 300), "{layout}: key {shown} differs");
        let pk = layout.payload_key(k);
        let idx = owner(c, hash_slot(&pk));
        let v = servers::command(&c.addr(idx), None, &[b"STRLEN", &pk]).unwrap();
        assert_eq!(
            v,
            redis_protocol::resp2::types::OwnedFrame::Integer(300),
            "{layout}: payload of {shown} on node {idx}"
        );
        if let Some(mk) = layout.metadata_key(k) {
            let idx = owner(c, hash_slot(&mk));
            let v = servers::command(&c.addr(idx), None, &[b"EXISTS", &mk]).unwrap();
            assert_eq!(
                v,
                redis_protocol::resp2::types::OwnedFrame::Integer(1),
                "{layout}: metadata of {shown}"
            );
        }
    }
    assert_eq!(e.exists(&weird).wait().unwrap(), vec![true; weird.len()]);
    assert_eq!(e.contains_prefix(&weird).wait().unwrap(), weird.len());
    assert_eq!(e.prefetch(&weird).wait().unwrap().len(), weird.len());
    assert_eq!(e.delete(&weird).wait().unwrap(), weird.len());
    assert_eq!(e.exists(&weird).wait().unwrap(), vec![false; weird.len()]);
}

fn layouts_span_all_masters(backend: IoBackend) {
    let c = TestCluster::start();
    println!("cluster started in {:?}", c.startup);
    for (layout, shards) in [
        (KeyLayout::Lmcache, None),
        (KeyLayout::Hashtag, None),
        (KeyLayout::Raw, Some(3)),
    ] {
        let mut cfg = cluster_cfg(&c, backend, layout);
        cfg.shards = shards;
        let e = Engine::new(cfg).unwrap();
        assert_eq!(e.backend().to_string(), backend.to_string());
        let topo = check_topology(&c, &e, 3);
        exercise_layout(&c, &e, layout, &format!("{layout}"));
        // Plain commands go to the owner of their first key; command_at to a chosen node.
        for i in 0..30 {
            let k = format!("cmd-{layout}-{i}");
            let v = format!("v{i}");
            let r = e.command(&[b"SET", k.as_bytes(), v.as_bytes()]).unwrap();
            assert!(r.as_error().is_none(), "SET {k}: {r:?}");
            let r = e.command(&[b"GET", k.as_bytes()]).unwrap();
            assert_eq!(r, slotline::Value::Bulk(v.into_bytes()), "GET {k}");
            assert_eq!(owner(&c, hash_slot(k.as_bytes())), owner(&c, c.keyslot(&k)));
        }
        for m in &topo {
            let r = e.command_at(&m.addr, &[b"CLUSTER", b"MYID"]).unwrap();
            assert_eq!(
                r,
                slotline::Value::Bulk(m.id.clone().into_bytes()),
                "MYID of {}",
                m.addr
            );
        }
        assert_eq!(
            e.stats().metrics.error_count("redirect"),
            0,
            "{layout}: no redirects on a stable cluster"
        );
        show_stats(&format!("{backend} {layout}"), &e);
    }
}
both_backends!(layouts_span_all_masters);

// ---------------------------------------------------------------------------------------
// 3. Frames per batch
// ---------------------------------------------------------------------------------------

fn frames(e: &Engine) -> u64 {
    e.stats().metrics.frames_sent
}

fn frames_per_batch(backend: IoBackend) {
    let c = TestCluster::start();
    let e = engine(&c, backend, KeyLayout::Hashtag);
    let topo = check_topology(&c, &e, 3);
    let master_of = |slot: u16| -> u16 {
        let m = topo
            .iter()
            .find(|m| m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("covered");
        port_of(&m.addr)
    };

    // 100 chunks `{tag}...`: with the hashtag layout every key hashes to slot("{tag").
    let tagged: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("{{tag}}model@1@0@{i:x}@bfloat16").into_bytes())
        .collect();
    let slot = hash_slot(&KeyLayout::Hashtag.payload_key(&tagged[0]));
    for k in &tagged {
        assert_eq!(hash_slot(&KeyLayout::Hashtag.payload_key(k)), slot);
        assert_eq!(
            hash_slot(&KeyLayout::Hashtag.metadata_key(k).unwrap()),
            slot
        );
    }
    let chunks: Vec<PutChunk> = tagged
        .iter()
        .map(|k| PutChunk::new(k.clone(), value_for(k, 1024), None))
        .collect();
    let f0 = frames(&e);
    e.put(chunks).wait().unwrap();
    let put_frames = frames(&e) - f0;
    // Warm-up read (connections are open after the put anyway).
    assert!(e.get(&tagged).wait().unwrap().iter().all(Option::is_some));

    let f0 = frames(&e);
    let got = e.get(&tagged).wait().unwrap();
    let get_frames = frames(&e) - f0;
    for (k, g) in tagged.iter().zip(&got) {
        assert!(g.as_ref().unwrap().data == value_for(k, 1024));
    }
    let f0 = frames(&e);
    assert!(e.exists(&tagged).wait().unwrap().iter().all(|&b| b));
    let exists_frames = frames(&e) - f0;
    println!(
        "one slot, 100 chunks: put {put_frames} frame(s), get {get_frames}, exists {exists_frames}"
    );
    assert_eq!(
        get_frames, 1,
        "a get of 100 chunks in one slot must be one MGET frame"
    );
    assert_eq!(
        put_frames, 1,
        "a put of 100 small chunks to one master should be one frame"
    );
    assert_eq!(
        exists_frames, 1,
        "exists of 100 chunks on one master should be one frame"
    );

    // Distinct tags spread over the 3 masters, at most chunk_size keys per master.
    let spread: Vec<Vec<u8>> = (0..90).map(|i| lm_key("spread", i)).collect();
    let mut keys_per_master: HashMap<u16, usize> = HashMap::new();
    for k in &spread {
        *keys_per_master
            .entry(master_of(hash_slot(&KeyLayout::Hashtag.payload_key(k))))
            .or_default() += 2;
    }
    assert_eq!(
        keys_per_master.len(),
        3,
        "the batch should touch all masters"
    );
    assert!(keys_per_master
        .values()
        .all(|&n| n <= e.config().chunk_size));
    let chunks: Vec<PutChunk> = spread
        .iter()
        .map(|k| PutChunk::new(k.clone(), value_for(k, 2048), None))
        .collect();
    e.put(chunks).wait().unwrap();
    assert!(e.get(&spread).wait().unwrap().iter().all(Option::is_some));
    let f0 = frames(&e);
    let got = e.get(&spread).wait().unwrap();
    let spread_frames = frames(&e) - f0;
    for (k, g) in spread.iter().zip(&got) {
        assert!(g.as_ref().unwrap().data == value_for(k, 2048));
    }
    println!(
        "90 chunks over {} masters ({keys_per_master:?} keys): get {spread_frames} frame(s)",
        keys_per_master.len()
    );
    assert!(
        spread_frames as usize <= keys_per_master.len(),
        "get spanning {} masters cost {spread_frames} frames; expected one per master",
        keys_per_master.len()
    );
    assert_eq!(spread_frames as usize, keys_per_master.len());

    // A smaller chunk_size splits one slot's 200 keys into ceil(200 / 16) frames.
    let mut cfg = cluster_cfg(&c, backend, KeyLayout::Hashtag);
    cfg.chunk_size = 16;
    let small = Engine::new(cfg).unwrap();
    assert!(small
        .get(&tagged)
        .wait()
        .unwrap()
        .iter()
        .all(Option::is_some));
    let f0 = frames(&small);
    let got = small.get(&tagged).wait().unwrap();
    let split_frames = frames(&small) - f0;
    assert!(got.iter().all(Option::is_some));
    println!("chunk_size 16: get of 200 keys in one slot cost {split_frames} frames");
    assert_eq!(split_frames, 200u64.div_ceil(16));
    show_stats(&format!("{backend} frames"), &e);
}
both_backends!(frames_per_batch);

// ---------------------------------------------------------------------------------------
// Load generator shared by the resharding and failover tests
// ---------------------------------------------------------------------------------------

/// What one load thread did.
#[derive(Default)]
struct LoadReport {
    /// Keys whose put was acknowledged (value = value_for(key, VALUE_LEN)).
    acked: Vec<Vec<u8>>,
    /// Keys whose put failed (may or may not be stored).
    failed_puts: Vec<Vec<u8>>,
    ops: usize,
    /// Errors returned to the caller: (elapsed since start, text).
    errors: Vec<(Duration, String)>,
    /// Reads that returned bytes other than what was written: a correctness failure.
    wrong: Vec<String>,
    /// Acknowledged keys read back as None.
    misses: usize,
}

const VALUE_LEN: usize = 2048;

struct LoadSpec {
    engine: Engine,
    thread: usize,
    /// Chunk keys are drawn so that about half of them land in these slots (by payload key).
    hot: Vec<Range<u16>>,
    /// Reads of acknowledged keys must hit (resharding) or may miss (failover).
    must_hit: bool,
    max_ops: usize,
    max_time: Duration,
}

fn in_ranges(slot: u16, ranges: &[Range<u16>]) -> bool {
    ranges.iter().any(|r| r.contains(&slot))
}

fn run_load(spec: LoadSpec, stop: Arc<AtomicBool>, t0: Instant) -> LoadReport {
    let layout = spec.engine.config().key_layout;
    let mut rep = LoadReport::default();
    let mut r = Rng::new(0x1000 + spec.thread as u64);
    let mut counter = 0u64;
    let tag = format!("load{}{}", spec.thread, layout);
    let mut next_key = |r: &mut Rng| loop {
        counter += 1;
        let k = lm_key(&tag, counter);
        let hot = in_ranges(hash_slot(&layout.payload_key(&k)), &spec.hot);
        if spec.hot.is_empty() || hot || r.below(2) == 0 {
            return k;
        }
    };
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && rep.ops < spec.max_ops
        && started.elapsed() < spec.max_time
    {
        // A put of 8 new chunks.
        let keys: Vec<Vec<u8>> = (0..8).map(|_| next_key(&mut r)).collect();
        let chunks: Vec<PutChunk> = keys
            .iter()
            .map(|k| {
                let data = value_for(k, VALUE_LEN);
                let meta = (layout != KeyLayout::Raw).then(|| meta_for(VALUE_LEN));
                PutChunk::new(k.clone(), data, meta)
            })
            .collect();
        rep.ops += 1;
        match spec.engine.put(chunks).wait() {
            Ok(()) => rep.acked.extend(keys),
            Err(e) => {
                rep.errors.push((t0.elapsed(), format!("put: {e}")));
                rep.failed_puts.extend(keys);
            }
        }
        // A get of 8 acknowledged chunks (some recent, some old).
        if rep.acked.is_empty() {
            continue;
        }
        let reads: Vec<Vec<u8>> = (0..8)
            .map(|i| {
                let n = rep.acked.len();
                let j = if i % 2 == 0 {
                    n - 1 - r.below(n.min(32))
                } else {
                    r.below(n)
                };
                rep.acked[j].clone()
            })
            .collect();
        rep.ops += 1;
        match spec.engine.get(&reads).wait() {
            Ok(got) => {
                for (k, g) in reads.iter().zip(got) {
                    match g {
                        Some(ch) => {
                            if ch.data != value_for(k, VALUE_LEN) {
                                rep.wrong.push(format!(
                                    "{}: {} bytes, not the value written",
                                    k.escape_ascii(),
                                    ch.data.len()
                                ));
                            }
                        }
                        None => {
                            rep.misses += 1;
                            if spec.must_hit {
                                rep.errors.push((
                                    t0.elapsed(),
                                    format!(
                                        "get: acknowledged chunk {} read as a miss",
                                        k.escape_ascii()
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
            Err(e) => rep.errors.push((t0.elapsed(), format!("get: {e}"))),
        }
        // Now and then an existence check of acknowledged chunks.
        if rep.ops % 8 == 0 {
            rep.ops += 1;
            match spec.engine.exists(&reads).wait() {
                Ok(found) => {
                    if spec.must_hit && found.iter().any(|&f| !f) {
                        rep.errors.push((
                            t0.elapsed(),
                            format!("exists: {found:?} for acknowledged chunks"),
                        ));
                    }
                }
                Err(e) => rep.errors.push((t0.elapsed(), format!("exists: {e}"))),
            }
        }
    }
    rep
}

// ---------------------------------------------------------------------------------------
// 4. Live resharding under load
// ---------------------------------------------------------------------------------------

fn live_resharding(backend: IoBackend) {
    let c = TestCluster::start();
    println!("cluster started in {:?}", c.startup);
    // Two engines on the cluster: LMCache's layout (metadata and payload in different
    // slots) and the hash-tag layout (multi-key MGETs per slot, so TRYAGAIN happens).
    let lm = engine(&c, backend, KeyLayout::Lmcache);
    let ht = engine(&c, backend, KeyLayout::Hashtag);
    // And the hash-tag layout with a TTL (SET .. EX instead of MSET).
    let mut cfg = cluster_cfg(&c, backend, KeyLayout::Hashtag);
    cfg.ttl = Some(600);
    let ttl = Engine::new(cfg).unwrap();
    // Moves: 0 -> 1 slots 0..300, 0 -> 2 slots 300..600, then 1 -> 0 slots 0..100.
    let to1: Range<u16> = 0..300;
    let to2: Range<u16> = 300..600;
    let back: Range<u16> = 0..100;
    for s in [0u16, 299, 300, 599] {
        assert_eq!(owner(&c, s), 0, "slot {s} starts on master 0");
    }
    let hot: Vec<Range<u16>> = std::iter::once(0u16..600).collect();

    // Pre-populate so that the moved slots hold keys before the load starts.
    for (e, tag) in [(&lm, "pre-lm"), (&ht, "pre-ht")] {
        let layout = e.config().key_layout;
        let mut keys = Vec::new();
        let mut i = 0u64;
        while keys.len() < 600 {
            i += 1;
            let k = lm_key(tag, i);
            if in_ranges(hash_slot(&layout.payload_key(&k)), &hot) {
                keys.push(k);
            }
        }
        e.put(chunks_for(&keys, VALUE_LEN)).wait().unwrap();
    }
    let in_moved: u64 = (0u16..600)
        .step_by(7)
        .map(|s| {
            c.cmd(0, &["CLUSTER", "COUNTKEYSINSLOT", &s.to_string()])
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(
        in_moved > 50,
        "moved slots should hold keys (sampled {in_moved})"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (thread, e) in [(0, &lm), (1, &ht), (2, &ttl)] {
        let spec = LoadSpec {
            engine: e.clone(),
            thread,
            hot: hot.clone(),
            must_hit: true,
            max_ops: 200_000,
            max_time: Duration::from_secs(60),
        };
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || run_load(spec, stop, t0)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let m0 = Instant::now();
    c.cluster
        .move_slots(0, 1, to1.clone())
        .expect("move 0 -> 1");
    let m1 = m0.elapsed();
    c.cluster
        .move_slots(0, 2, to2.clone())
        .expect("move 0 -> 2");
    let m2 = m0.elapsed();
    c.cluster
        .move_slots(1, 0, back.clone())
        .expect("move 1 -> 0");
    let m3 = m0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    println!(
        "moves done at {m1:?} / {m2:?} / {m3:?} after start; load ran {:?}",
        t0.elapsed()
    );
    c.cluster.wait_ok(Duration::from_secs(20)).unwrap();
    assert_eq!(owner(&c, 0), 0);
    assert_eq!(owner(&c, 150), 1);
    assert_eq!(owner(&c, 450), 2);

    let ops: usize = reports.iter().map(|r| r.ops).sum();
    let errors: Vec<&(Duration, String)> = reports.iter().flat_map(|r| &r.errors).collect();
    let wrong: Vec<&String> = reports.iter().flat_map(|r| &r.wrong).collect();
    let redirects: u64 = [&lm, &ht, &ttl]
        .iter()
        .map(|e| e.stats().metrics.error_count("redirect"))
        .sum();
    println!(
        "{ops} ops by {} threads, {} errors, {} wrong reads, {redirects} redirects followed",
        reports.len(),
        errors.len(),
        wrong.len()
    );
    for (t, e) in errors.iter().take(10) {
        println!("  error at {t:?}: {e}");
    }
    assert!(wrong.is_empty(), "reads returned wrong data: {wrong:?}");
    assert!(
        errors.is_empty(),
        "{} errors reached callers during resharding; first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        redirects > 0,
        "the engine followed no redirect: were the moved slots used?"
    );

    // Every acknowledged write is readable and byte-identical afterwards.
    for (rep, e) in reports.iter().zip([&lm, &ht, &ttl]) {
        for batch in rep.acked.chunks(200) {
            let got = e.get(batch).wait().unwrap();
            for (k, g) in batch.iter().zip(got) {
                let g = g.unwrap_or_else(|| panic!("acknowledged chunk {} lost", k.escape_ascii()));
                assert!(
                    g.data == value_for(k, VALUE_LEN),
                    "chunk {} differs",
                    k.escape_ascii()
                );
                assert_eq!(g.meta, Some(meta_for(VALUE_LEN)));
            }
        }
    }
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    println!("{acked} acknowledged chunks verified");
    // Chunks written with a TTL kept it through the moves (MIGRATE carries it).
    for k in reports[2].acked.iter().step_by(97).take(20) {
        let pk = KeyLayout::Hashtag.payload_key(k);
        let idx = owner(&c, hash_slot(&pk));
        let v = servers::command(&c.addr(idx), None, &[b"TTL", &pk]).unwrap();
        match v {
            redis_protocol::resp2::types::OwnedFrame::Integer(t) => {
                assert!((1..=600).contains(&t), "TTL of {} is {t}", k.escape_ascii())
            }
            other => panic!("TTL returned {other:?}"),
        }
    }

    // The engines' slot tables follow the moves (MOVED-triggered refresh).
    for e in [&lm, &ht, &ttl] {
        wait_until(
            Duration::from_secs(5),
            "engine topology to show the moves",
            || {
                let topo = e.topology();
                let port_for = |slot: u16| {
                    topo.iter()
                        .find(|m| m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                        .map(|m| port_of(&m.addr))
                };
                port_for(150) == Some(c.cluster.nodes[1].port())
                    && port_for(450) == Some(c.cluster.nodes[2].port())
                    && port_for(50) == Some(c.cluster.nodes[0].port())
            },
        );
        check_topology(&c, e, 3);
    }
    show_stats(&format!("{backend} resharding lmcache"), &lm);
    show_stats(&format!("{backend} resharding hashtag"), &ht);
}
both_backends!(live_resharding);

/// `errorstat_<prefix>` count of node `idx` (INFO errorstats; 0 if never replied).
fn error_replies(c: &TestCluster, idx: usize, prefix: &str) -> u64 {
    let info = c.cmd(idx, &["INFO", "errorstats"]);
    info_field(&info, &format!("errorstat_{prefix}"))
        .and_then(|v| v.strip_prefix("count=")?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// A slot half migrated (the chunk's metadata moved, its payload not yet): the
/// source answers the chunk's MGET with TRYAGAIN, which the engine retries until the
/// move completes; the caller sees only the chunk.
fn tryagain_is_retried_unseen(backend: IoBackend) {
    let c = TestCluster::start_with(3, 0, test_options());
    let e = engine(&c, backend, KeyLayout::Hashtag);
    let layout = KeyLayout::Hashtag;
    let (src, dst) = (0usize, 1usize);
    let k = (0u64..)
        .map(|i| lm_key("tryagain", i))
        .find(|k| owner(&c, hash_slot(&layout.payload_key(k))) == src)
        .unwrap();
    let (pk, mk) = (layout.payload_key(&k), layout.metadata_key(&k).unwrap());
    let slot = hash_slot(&pk).to_string();
    e.put(chunks_for(std::slice::from_ref(&k), 4096))
        .wait()
        .unwrap();
    let id = |i: usize| c.cmd(i, &["CLUSTER", "MYID"]);
    let (src_id, dst_id) = (id(src), id(dst));
    c.cmd(dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
    c.cmd(src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
    let dst_port = c.cluster.nodes[dst].port().to_string();
    let migrate = |key: &[u8]| {
        let r = servers::command(
            &c.addr(src),
            None,
            &[
                b"MIGRATE",
                b"127.0.0.1",
                dst_port.as_bytes(),
                key,
                b"0",
                b"10000",
            ],
        );
        assert!(
            matches!(r, Ok(redis_protocol::resp2::types::OwnedFrame::SimpleString(ref s)) if s == b"OK"),
            "MIGRATE {}: {r:?}",
            key.escape_ascii()
        );
    };
    migrate(&mk);
    let tryagain0 = error_replies(&c, src, "TRYAGAIN");
    let reader = {
        let (e, k) = (e.clone(), k.clone());
        std::thread::spawn(move || e.get(&[&k]).wait())
    };
    wait_until(
        Duration::from_secs(20),
        "the source to answer the half-migrated chunk's MGET with TRYAGAIN",
        || error_replies(&c, src, "TRYAGAIN") > tryagain0,
    );
    assert!(
        !reader.is_finished(),
        "the read returned during the TRYAGAIN phase"
    );
    // One command ends the TRYAGAIN phase (the engine retries TRYAGAIN for well under
    // a second): with both keys moved, the source answers ASK and the target serves.
    migrate(&pk);
    let got = reader
        .join()
        .unwrap()
        .unwrap_or_else(|err| panic!("the caller saw the migration: {err}"));
    for i in [dst, src, 2] {
        c.cmd(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
    }
    let chunk = got[0].as_ref().expect("the chunk after the move");
    assert!(chunk.data == value_for(&k, 4096));
    assert_eq!(chunk.meta, Some(meta_for(4096)));
    assert!(e.stats().metrics.error_count("redirect") > 0);
}
both_backends!(tryagain_is_retried_unseen);

// ---------------------------------------------------------------------------------------
// 5. Failover of a SIGKILLed master
// ---------------------------------------------------------------------------------------

fn role_of(addr: &str) -> String {
    servers::command_str(addr, None, &["ROLE"])
        .map(|r| r.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// Whether an error seen during a failover names what failed: a cluster, I/O or time-out
/// error (possibly inside PutFailed) that mentions a slot or a node address.
fn is_clear_failover_error(e: &Error, victim_addr: &str) -> bool {
    let text = e.to_string();
    let names = text.contains("slot") || text.contains(victim_addr) || text.contains("127.0.0.1:");
    match e {
        Error::Cluster(_) | Error::Io { .. } | Error::Timeout { .. } => names,
        Error::PutFailed { first_error, .. } => {
            names
                && ["cluster:", "I/O error", "timed out"]
                    .iter()
                    .any(|p| first_error.contains(p))
        }
        _ => false,
    }
}

fn failover(backend: IoBackend) {
    let mut c = TestCluster::start();
    println!("cluster started in {:?}", c.startup);
    let node_timeout = Duration::from_millis(c.cluster.nodes[0].options().cluster_node_timeout_ms);
    let mut cfg = cluster_cfg(&c, backend, KeyLayout::Lmcache);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    check_topology(&c, &e, 3);
    let victim = 0usize;
    let heir = 3usize; // nodes[3] replicates nodes[0]
    let victim_addr = c.addr(victim);
    let heir_addr = c.addr(heir);
    assert_eq!(role_of(&heir_addr), "slave");
    let victim_slots: Range<u16> = 0..5461;
    assert_eq!(owner(&c, 0), victim);
    assert_eq!(owner(&c, 5460), victim);

    // Probe chunks whose payload key lives on the victim. (In the lmcache layout the
    // metadata key cannot live there too: CRC16 is linear, so for keys of one length
    // slot(K + "kv_bytes") XOR slot(K + "metadata") is a constant, which here puts
    // the two keys in different thirds of the slot space.)
    let probe_key = |i: u64| -> Vec<u8> {
        let mut j = i * 1000;
        loop {
            j += 1;
            assert!(j < i * 1000 + 1000, "no probe key found");
            let k = lm_key("probe", j);
            if victim_slots.contains(&hash_slot(&KeyLayout::Lmcache.payload_key(&k))) {
                return k;
            }
        }
    };
    let k = probe_key(0);
    e.put(vec![PutChunk::new(k.clone(), value_for(&k, 512), None)])
        .wait()
        .unwrap();
    assert!(e.get(&[&k]).wait().unwrap()[0].is_some());

    // Bounded load in two threads over all masters.
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|thread| {
            let spec = LoadSpec {
                engine: e.clone(),
                thread,
                hot: Vec::new(),
                must_hit: false,
                max_ops: 200_000,
                max_time: Duration::from_secs(60),
            };
            let stop = stop.clone();
            std::thread::spawn(move || run_load(spec, stop, t0))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let pid = c.cluster.nodes[victim].pid();
    let kill_at = Instant::now();
    c.cluster.nodes[victim].kill();
    println!(
        "SIGKILLed master {victim_addr} (pid {pid}) at {:?}",
        kill_at - t0
    );

    // Probe: a put then a get of a fresh chunk in the victim's slots, until both work.
    let mut promoted: Option<Duration> = None;
    let mut recovered: Option<Duration> = None;
    let mut probe_errors: Vec<(Duration, String)> = Vec::new();
    let mut unclear: Vec<String> = Vec::new();
    let mut i = 1u64;
    while kill_at.elapsed() < node_timeout + Duration::from_secs(25) {
        if promoted.is_none() && role_of(&heir_addr) == "master" {
            promoted = Some(kill_at.elapsed());
        }
        let k = probe_key(i);
        i += 1;
        let v = value_for(&k, 512);
        let r = e
            .put(vec![PutChunk::new(k.clone(), v.clone(), None)])
            .wait()
            .and_then(|_| e.get(&[&k]).wait());
        match r {
            Ok(got) => match &got[0] {
                Some(ch) if ch.data == v => {
                    recovered = Some(kill_at.elapsed());
                    break;
                }
                Some(ch) => panic!(
                    "probe {} read back wrong data ({} bytes)",
                    k.escape_ascii(),
                    ch.data.len()
                ),
                None => probe_errors.push((
                    kill_at.elapsed(),
                    "acknowledged probe read as a miss".into(),
                )),
            },
            Err(err) => {
                if !is_clear_failover_error(&err, &victim_addr) {
                    unclear.push(err.to_string());
                }
                probe_errors.push((kill_at.elapsed(), err.to_string()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if promoted.is_none() {
        wait_until(Duration::from_secs(20), "replica promotion", || {
            role_of(&heir_addr) == "master"
        });
        promoted = Some(kill_at.elapsed());
    }
    // Keep the load running a little after recovery, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoadReport> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    println!(
        "{backend}: replica {heir_addr} promoted {:?} after the kill; engine recovered after {:?} \
         (cluster-node-timeout {node_timeout:?}); {} probe failures",
        promoted.unwrap(),
        recovered,
        probe_errors.len()
    );
    if let Some((t, first)) = probe_errors.first() {
        println!("  first probe error at {t:?}: {first}");
    }
    if let Some((t, last)) = probe_errors.last() {
        println!("  last probe error at {t:?}: {last}");
    }
    let recovered = recovered.expect("the engine never served the failed master's slots again");
    assert!(
        recovered < node_timeout + Duration::from_secs(5),
        "recovery took {recovered:?}, more than cluster-node-timeout {node_timeout:?} + 5 s"
    );

    let ops: usize = reports.iter().map(|r| r.ops).sum();
    let errors: Vec<&(Duration, String)> = reports.iter().flat_map(|r| &r.errors).collect();
    let wrong: Vec<&String> = reports.iter().flat_map(|r| &r.wrong).collect();
    let misses: usize = reports.iter().map(|r| r.misses).sum();
    println!(
        "load: {ops} ops, {} errors (first {:?}, last {:?}), {misses} misses of acknowledged chunks, {} wrong reads",
        errors.len(),
        errors.first().map(|e| e.0.saturating_sub(kill_at - t0)),
        errors.last().map(|e| e.0.saturating_sub(kill_at - t0)),
        wrong.len()
    );
    if let Some((_, e)) = errors.first() {
        println!("  example error: {e}");
    }
    assert!(wrong.is_empty(), "wrong data returned: {wrong:?}");
    assert!(
        unclear.is_empty(),
        "unclear errors during the failover: {unclear:?}"
    );
    // Load errors must also be clear, and must stop once the engine recovered.
    for (t, text) in &errors {
        assert!(
            text.contains("slot") || text.contains("127.0.0.1:"),
            "load error at {t:?} names neither slot nor node: {text}"
        );
        let since_kill = t.saturating_sub(kill_at - t0);
        assert!(
            since_kill < recovered + Duration::from_secs(2),
            "load error {since_kill:?} after the kill, long after recovery at {recovered:?}: {text}"
        );
    }

    c.cluster.wait_ok(Duration::from_secs(30)).unwrap();
    // Every acknowledged chunk reads back as written or as a miss (lost with the master);
    // the engine now routes the victim's slots to the promoted replica.
    let mut lost = 0;
    let mut total = 0;
    for rep in &reports {
        for batch in rep.acked.chunks(200) {
            let got = e.get(batch).wait().expect("reads after failover");
            for (k, g) in batch.iter().zip(got) {
                total += 1;
                match g {
                    Some(ch) => assert!(
                        ch.data == value_for(k, VALUE_LEN),
                        "{} differs",
                        k.escape_ascii()
                    ),
                    None => lost += 1,
                }
            }
        }
    }
    println!(
        "{total} acknowledged chunks checked after failover; {lost} lost with the killed master"
    );
    wait_until(
        Duration::from_secs(5),
        "engine topology without the killed master",
        || {
            e.topology()
                .iter()
                .all(|m| port_of(&m.addr) != c.cluster.nodes[victim].port())
        },
    );
    let topo = check_topology(&c, &e, 3);
    assert!(
        topo.iter()
            .any(|m| port_of(&m.addr) == c.cluster.nodes[heir].port()),
        "the promoted replica {heir_addr} is not a master in {topo:#?}"
    );
    show_stats(&format!("{backend} failover"), &e);
}
both_backends!(failover);

// ---------------------------------------------------------------------------------------
// 6. A master added at run time
// ---------------------------------------------------------------------------------------

fn added_master_is_picked_up(backend: IoBackend) {
    let mut c = TestCluster::start();
    let e = engine(&c, backend, KeyLayout::Lmcache);
    check_topology(&c, &e, 3);
    let from0: Range<u16> = 0..200;
    let from1: Range<u16> = 5461..5661;
    assert_eq!(owner(&c, from0.start), 0);
    assert_eq!(owner(&c, from1.start), 1);
    let moved = [from0.clone(), from1.clone()];
    // Chunks whose payload lives in the slots that will move, plus others.
    let mut before = Vec::new();
    let mut i = 0u64;
    while before.len() < 300 {
        i += 1;
        let k = lm_key("before-add", i);
        if in_ranges(hash_slot(&KeyLayout::Lmcache.payload_key(&k)), &moved) || i % 50 == 0 {
            before.push(k);
        }
    }
    let put = |keys: &[Vec<u8>]| {
        e.put(
            keys.iter()
                .map(|k| {
                    PutChunk::new(
                        k.clone(),
                        value_for(k, VALUE_LEN),
                        Some(meta_for(VALUE_LEN)),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .wait()
    };
    put(&before).unwrap();

    let t = Instant::now();
    let dir = c.dir.path().to_path_buf();
    let new = c.cluster.add_master(&dir).expect("add_master");
    let added = t.elapsed();
    c.cluster
        .move_slots(0, new, from0.clone())
        .expect("move 0 -> new");
    c.cluster
        .move_slots(1, new, from1.clone())
        .expect("move 1 -> new");
    println!(
        "master {} added in {added:?}, 400 slots moved onto it in {:?}",
        c.addr(new),
        t.elapsed() - added
    );
    assert_eq!(owner(&c, from0.start), new);
    assert_eq!(owner(&c, from1.end - 1), new);
    let on_new: u64 = c.cmd(new, &["DBSIZE"]).parse().unwrap();
    assert!(
        on_new > 100,
        "the new master holds {on_new} keys after the moves"
    );

    // Without a restart: old chunks read back, new chunks in the moved slots write and read.
    let got = e.get(&before).wait().expect("get after adding a master");
    for (k, g) in before.iter().zip(&got) {
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("{} lost after the move", k.escape_ascii()));
        assert!(g.data == value_for(k, VALUE_LEN));
    }
    let mut after = Vec::new();
    while after.len() < 100 {
        i += 1;
        let k = lm_key("after-add", i);
        if in_ranges(hash_slot(&KeyLayout::Lmcache.payload_key(&k)), &moved) {
            after.push(k);
        }
    }
    put(&after).expect("put into slots on the new master");
    let got = e.get(&after).wait().unwrap();
    for (k, g) in after.iter().zip(&got) {
        assert!(g.as_ref().expect("hit").data == value_for(k, VALUE_LEN));
    }
    assert_eq!(e.exists(&after).wait().unwrap(), vec![true; after.len()]);
    let on_new2: u64 = c.cmd(new, &["DBSIZE"]).parse().unwrap();
    assert!(
        on_new2 >= on_new + 100,
        "new chunks went to the new master ({on_new} -> {on_new2} keys)"
    );
    let redirects = e.stats().metrics.error_count("redirect");
    println!("{redirects} redirects followed");
    assert!(redirects > 0);

    // The MOVED-triggered refresh installs the 4-master topology by itself...
    let waited = wait_until(
        Duration::from_secs(5),
        "engine topology with 4 masters",
        || e.topology().len() == 4,
    );
    println!("MOVED-triggered refresh showed 4 masters {waited:?} after the reads");
    // ...and an explicit refresh agrees.
    e.refresh_topology().unwrap();
    let topo = check_topology(&c, &e, 4);
    let m = topo
        .iter()
        .find(|m| port_of(&m.addr) == c.cluster.nodes[new].port())
        .expect("the new master is listed");
    let mut slots = m.slots.clone();
    slots.sort_unstable();
    assert_eq!(slots, vec![(0, 199), (5461, 5660)]);
    assert!(m.replicas.is_empty());
    // Traffic after the explicit refresh needs no redirect.
    let r0 = e.stats().metrics.error_count("redirect");
    assert!(e.get(&after).wait().unwrap().iter().all(Option::is_some));
    assert_eq!(
        e.stats().metrics.error_count("redirect"),
        r0,
        "redirects after refresh"
    );
    show_stats(&format!("{backend} add master"), &e);
}
both_backends!(added_master_is_picked_up);

// ---------------------------------------------------------------------------------------
// 7. Reads from replicas
// ---------------------------------------------------------------------------------------

fn replica_reads(backend: IoBackend) {
    // A node timeout long enough that the cluster cannot mark the replica killed below
    // as failed before the reads that follow return: they must fall back on their own.
    let c = TestCluster::start_with(
        3,
        1,
        servers::ServerOptions {
            cluster_node_timeout_ms: 30_000,
            ..test_options()
        },
    );
    let mut cfg = cluster_cfg(&c, backend, KeyLayout::Lmcache);
    cfg.read_from_replicas = true;
    let e = Engine::new(cfg).unwrap();
    let topo = check_topology(&c, &e, 3);
    for m in &topo {
        assert_eq!(
            m.replicas.len(),
            1,
            "master {} replicas {:?}",
            m.addr,
            m.replicas
        );
    }
    let keys: Vec<Vec<u8>> = (0..300).map(|i| lm_key("replica", i)).collect();
    e.put(
        keys.iter()
            .map(|k| PutChunk::new(k.clone(), value_for(k, 1000), None))
            .collect::<Vec<_>>(),
    )
    .wait()
    .unwrap();
    // Wait until every replica holds what its master holds.
    for i in 0..3 {
        wait_until(
            Duration::from_secs(10),
            "replication of the written keys",
            || c.cmd(i, &["DBSIZE"]) == c.cmd(3 + i, &["DBSIZE"]),
        );
        let repl = c.cmd(3 + i, &["INFO", "replication"]);
        assert_eq!(info_field(&repl, "role").as_deref(), Some("slave"));
    }
    // Redis 7.0 reports a replica whose replication offset is still 0 (a fresh cluster
    // before any write) as `health: loading` in CLUSTER SHARDS, and the engine rightly
    // skips such replicas. Once the writes above have replicated, every node reports its
    // replicas online; a refresh then makes them eligible.
    let t = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "replicas reported online by CLUSTER SHARDS",
        || (0..6).all(|i| !c.cmd(i, &["CLUSTER", "SHARDS"]).contains("loading")),
    );
    println!(
        "replicas online in CLUSTER SHARDS {:?} after the writes replicated",
        t.elapsed()
    );
    e.refresh_topology().unwrap();
    let stats = |cmd: &str| -> Vec<u64> { (0..6).map(|i| cmd_calls(&c, i, cmd)).collect() };

    let ex0 = stats("exists");
    assert_eq!(e.exists(&keys).wait().unwrap(), vec![true; keys.len()]);
    let ex1 = stats("exists");
    let m0 = stats("mget");
    let pf = e.prefetch(&keys).wait().unwrap();
    assert_eq!(pf.len(), keys.len());
    for (k, ch) in keys.iter().zip(&pf) {
        assert!(ch.data == value_for(k, 1000));
    }
    let m1 = stats("mget");
    let got = e.get(&keys).wait().unwrap();
    assert!(keys
        .iter()
        .zip(&got)
        .all(|(k, g)| g.as_ref().unwrap().data == value_for(k, 1000)));
    let m2 = stats("mget");
    let diff = |a: &[u64], b: &[u64]| -> Vec<u64> { a.iter().zip(b).map(|(x, y)| y - x).collect() };
    let (dex, dpf, dget) = (diff(&ex0, &ex1), diff(&m0, &m1), diff(&m1, &m2));
    println!("per node [m0 m1 m2 r0 r1 r2]: EXISTS by exists {dex:?}, MGET by prefetch {dpf:?}, MGET by get {dget:?}");
    assert!(
        dex[3..].iter().all(|&n| n > 0),
        "exists (PEEK) should be served by every replica: {dex:?}"
    );
    assert!(
        dpf[3..].iter().all(|&n| n > 0),
        "prefetch (PREFETCH) should be served by every replica: {dpf:?}"
    );
    assert!(
        dget[..3].iter().all(|&n| n > 0),
        "get should read every master: {dget:?}"
    );
    assert_eq!(
        &dget[3..],
        &[0, 0, 0],
        "get (GET class) must only hit masters"
    );
    // contains_prefix is PEEK too.
    let e0 = stats("exists");
    assert_eq!(e.contains_prefix(&keys).wait().unwrap(), keys.len());
    let e1 = stats("exists");
    assert!(diff(&e0, &e1)[3..].iter().sum::<u64>() > 0);
    // Writes never go to replicas (a replica would answer MOVED; no redirect was needed).
    assert_eq!(e.stats().metrics.error_count("redirect"), 0);

    // A replica dies: PEEK and PREFETCH reads of its slots fall back to the master
    // instead of failing, right away (before the cluster even marks it failed).
    let mut c = c;
    let dead = c.addr(3);
    c.cluster.nodes[3].kill();
    let t = Instant::now();
    let timeouts = e.stats().metrics.error_count("timeout");
    let ex = e.exists(&keys).wait();
    let pf = e.prefetch(&keys).wait();
    let cp = e.contains_prefix(&keys).wait();
    println!(
        "after killing replica {dead}: exists/prefetch/contains_prefix took {:?}",
        t.elapsed()
    );
    // Right away: no read waited for its deadline, and the cluster had not yet marked
    // the replica failed (so no topology change told the engine).
    assert_eq!(e.stats().metrics.error_count("timeout"), timeouts);
    let nodes = c.cmd(0, &["CLUSTER", "NODES"]);
    let line = nodes
        .lines()
        .find(|l| l.split(' ').nth(1).and_then(|a| a.split('@').next()) == Some(dead.as_str()))
        .unwrap_or_else(|| panic!("replica {dead} not in CLUSTER NODES: {nodes}"));
    assert!(
        !line.split(' ').nth(2).unwrap_or("").contains("fail"),
        "the cluster already marked the replica failed: the reads did not fall back on their own ({line})"
    );
    assert_eq!(
        ex.unwrap_or_else(|err| panic!("exists with a dead replica: {err}")),
        vec![true; keys.len()]
    );
    assert_eq!(
        pf.unwrap_or_else(|err| panic!("prefetch with a dead replica: {err}"))
            .len(),
        keys.len()
    );
    assert_eq!(
        cp.unwrap_or_else(|err| panic!("contains_prefix with a dead replica: {err}")),
        keys.len()
    );
    assert!(e.get(&keys).wait().unwrap().iter().all(Option::is_some));
    show_stats(&format!("{backend} replica reads"), &e);
}
both_backends!(replica_reads);

// ---------------------------------------------------------------------------------------
// 8. Seed errors
// ---------------------------------------------------------------------------------------

fn dead_port() -> u16 {
    let p = servers::free_port().unwrap();
    assert!(servers::port_is_free(p));
    p
}

fn dead_seed_fails_fast(backend: IoBackend) {
    let port = dead_port();
    let mut cfg = Config::from_url(&format!("redis://127.0.0.1:{port}")).unwrap();
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    let t = Instant::now();
    let r = Engine::new(cfg);
    let took = t.elapsed();
    let err = r.expect_err("Engine::new with a dead cluster seed must fail");
    println!("dead seed: Engine::new failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let text = err.to_string();
    assert!(
        text.contains(&port.to_string()),
        "error should name the seed: {text}"
    );
    assert!(
        matches!(
            err,
            Error::Io { .. } | Error::Cluster(_) | Error::Timeout { .. }
        ),
        "unexpected error kind: {err:?}"
    );
}
both_backends!(dead_seed_fails_fast);

/// LMCache users list several seeds (`redis://h1:p1,h2:p2,h3:p3`); the engine must start
/// as long as one of them answers.
fn first_seed_dead_others_alive(backend: IoBackend) {
    let c = TestCluster::start();
    let port = dead_port();
    let url = format!("redis://127.0.0.1:{port},{},{}", c.addr(1), c.addr(2));
    let mut cfg = Config::from_url(&url).unwrap();
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    assert_eq!(cfg.seeds.len(), 3);
    let t = Instant::now();
    let e = Engine::new(cfg).unwrap_or_else(|err| {
        panic!("Engine::new({url}) failed although 2 of 3 seeds answer: {err}")
    });
    println!("started with a dead first seed in {:?}", t.elapsed());
    check_topology(&c, &e, 3);
    let k = lm_key("seeds", 1);
    e.put(vec![PutChunk::new(k.clone(), value_for(&k, 100), None)])
        .wait()
        .unwrap();
    assert!(e.get(&[&k]).wait().unwrap()[0].is_some());
}
both_backends!(first_seed_dead_others_alive);

// ---------------------------------------------------------------------------------------
// Engine teardown right after a call
// ---------------------------------------------------------------------------------------

static SHARD_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PANIC_HOOK: std::sync::Once = std::sync::Once::new();

/// Counts panics on the engine's own threads (shards, topology refresh): they never
/// reach a test result by themselves.
fn count_engine_thread_panics() {
    PANIC_HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("slotline-"))
            {
                SHARD_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info)
        }));
    });
}

/// Dropping the engine right after a call returns must shut it down cleanly: no engine
/// thread may panic (a batch still held by a shard keeps the engine alive through its
/// follow-up handle, and the engine must then not be torn down on that shard's thread).
fn drop_right_after_a_call(backend: IoBackend) {
    count_engine_thread_panics();
    let c = TestCluster::start_with(3, 0, test_options());
    let keys: Vec<Vec<u8>> = (0..64).map(|i| lm_key("drop", i)).collect();
    let e = engine(&c, backend, KeyLayout::Lmcache);
    e.put(
        keys.iter()
            .map(|k| PutChunk::new(k.clone(), value_for(k, 256), None))
            .collect::<Vec<_>>(),
    )
    .wait()
    .unwrap();
    drop(e);
    let before = SHARD_PANICS.load(Ordering::SeqCst);
    let t = Instant::now();
    let rounds = 60;
    for _ in 0..rounds {
        let e = engine(&c, backend, KeyLayout::Lmcache);
        let got = e.get(&keys).wait().unwrap();
        assert!(got.iter().all(Option::is_some));
        drop(e);
    }
    let panics = SHARD_PANICS.load(Ordering::SeqCst) - before;
    println!(
        "{rounds} engines created, used and dropped in {:?}; {panics} engine-thread panics",
        t.elapsed()
    );
    assert_eq!(
        panics, 0,
        "engine threads panicked while engines were dropped"
    );
}
both_backends!(drop_right_after_a_call);

/// A chunk key whose payload (`lmcache` layout) lives on master `payload_on` and whose
/// metadata lives on another master; returns the key and that other master.
fn split_chunk(c: &TestCluster, tag: &str, payload_on: usize) -> (Vec<u8>, usize) {
    let layout = KeyLayout::Lmcache;
    for i in 0u64.. {
        let k = format!("order@1@{tag}@{i:x}@bfloat16").into_bytes();
        let p = owner(c, hash_slot(&layout.payload_key(&k)));
        let m = owner(c, hash_slot(&layout.metadata_key(&k).unwrap()));
        if p == payload_on && m != p {
            return (k, m);
        }
    }
    unreachable!()
}

/// Whether `key` exists on node `idx` (asked of that node alone).
fn exists_on(c: &TestCluster, idx: usize, key: &[u8]) -> bool {
    match servers::command(&c.addr(idx), None, &[b"EXISTS", key]) {
        Ok(redis_protocol::resp2::types::OwnedFrame::Integer(n)) => n > 0,
        other => panic!("EXISTS {} on node {idx}: {other:?}", key.escape_ascii()),
    }
}

/// The two-phase put of the `lmcache` layout, watched on the servers: while the master
/// of a chunk's payload holds the payload's write (`CLIENT PAUSE .. WRITE`), the other
/// master never receives the chunk's metadata; once the payload is acknowledged, the
/// metadata follows. And a put whose payload is refused writes no metadata at all.
fn lmcache_metadata_never_precedes_payload(backend: IoBackend) {
    let c = TestCluster::start_with(3, 0, test_options());
    let e = engine(&c, backend, KeyLayout::Lmcache);
    let layout = KeyLayout::Lmcache;
    let len = 64 * 1024;

    // 1. The payload's master stalls its writes: the metadata waits for it.
    let (k, m) = split_chunk(&c, "stall", 0);
    let (pk, mk) = (layout.payload_key(&k), layout.metadata_key(&k).unwrap());
    let sets_before = cmd_calls(&c, m, "set") + cmd_calls(&c, m, "mset");
    c.cmd(0, &["CLIENT", "PAUSE", "60000", "WRITE"]);
    let put = {
        let (e, k) = (e.clone(), k.clone());
        std::thread::spawn(move || {
            e.put(vec![PutChunk::new(
                k.clone(),
                value_for(&k, len),
                Some(meta_for(len)),
            )])
            .wait()
        })
    };
    wait_until(
        Duration::from_secs(20),
        "the payload's write held by its paused master",
        || blocked_clients(&c.cmd(0, &["INFO", "clients"])) > 0,
    );
    // The payload is on its way and held: for a while (the metadata would have been
    // written within milliseconds if it went out beside the payload), the metadata's
    // master sees no write and the put is not acknowledged.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert!(
            !exists_on(&c, m, &mk),
            "metadata of {} written while its payload is held",
            k.escape_ascii()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        cmd_calls(&c, m, "set") + cmd_calls(&c, m, "mset"),
        sets_before,
        "the metadata's master received a write while the payload was held"
    );
    assert!(
        !put.is_finished(),
        "the put returned before its payload was acknowledged"
    );
    assert!(
        !exists_on(&c, 0, &pk),
        "the paused master ran the payload's write"
    );
    c.cmd(0, &["CLIENT", "UNPAUSE"]);
    put.join()
        .unwrap()
        .expect("the put completes once the payload is acknowledged");
    assert!(exists_on(&c, 0, &pk) && exists_on(&c, m, &mk));
    let got = e
        .get(&[&k])
        .wait()
        .unwrap()
        .remove(0)
        .expect("the chunk reads back");
    assert!(got.data == value_for(&k, len));

    // 2. A payload refused by its master (out of memory): no metadata is ever written,
    // neither the refused chunk's nor its batch-mates'.
    let (bad, bad_m) = split_chunk(&c, "refused", 1);
    let (good, good_m) = split_chunk(&c, "accepted", 2);
    c.cmd(1, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    c.cmd(1, &["CONFIG", "SET", "maxmemory", "1"]);
    let r = e.put(chunks_for(&[bad.clone(), good.clone()], len)).wait();
    c.cmd(1, &["CONFIG", "SET", "maxmemory", "0"]);
    match r {
        Err(ref err) if err.to_string().contains("OOM") => {}
        other => {
            panic!("a put whose payload is refused must fail with the server's OOM, got {other:?}")
        }
    }
    // A later put through the same engine runs its metadata phase after any the failed
    // put could have queued: once it is acknowledged, nothing of the failed one is
    // pending.
    let (later, _) = split_chunk(&c, "later", 1);
    e.put(chunks_for(std::slice::from_ref(&later), len))
        .wait()
        .expect("a put after the failed one");
    assert!(
        !exists_on(&c, bad_m, &layout.metadata_key(&bad).unwrap()),
        "the metadata of a refused payload was written"
    );
    assert!(!exists_on(&c, 1, &layout.payload_key(&bad)));
    assert!(
        !exists_on(&c, good_m, &layout.metadata_key(&good).unwrap()),
        "metadata written although a payload of its put failed"
    );
    assert!(e.get(&[&bad]).wait().unwrap()[0].is_none());
}
both_backends!(lmcache_metadata_never_precedes_payload);
