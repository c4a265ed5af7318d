//! Integration tests of the slotline engine ("slotline core") against real redis-server
//! processes. Every test body takes the I/O backend and runs twice, once on io_uring and
//! once on epoll (see the `both!` macro).
//!
//! Nothing here mocks the server: data written with plain RESP commands (LMCache's own
//! format, `lmcache-format.md`) must be read back by the engine byte for byte, and what
//! the engine writes must decode by hand per the same document.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::{test_options, wait_until, TestServer};
use redis_protocol::resp2::types::OwnedFrame;
use slotline::IoBackend;
use slotline::MetaGroup;
use slotline::{
    BackendKind, Chunk, Config, Engine, Error, KeyLayout, Priority, PutChunk, RemoteMetadata,
};
use slotline_testkit::{self as servers, ServerOptions};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

const LAYOUTS: [KeyLayout; 3] = [KeyLayout::Lmcache, KeyLayout::Hashtag, KeyLayout::Raw];
const MIB: usize = 1 << 20;
/// The LMCache key of section 3.
const LLAMA_KEY: &str = "meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16";

fn cfg_for(url: &str, backend: IoBackend) -> Config {
    let mut cfg = Config::from_url(url).unwrap_or_else(|e| panic!("Config::from_url({url}): {e}"));
    cfg.io_backend = backend;
    cfg.request_timeout = Duration::from_secs(20);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    cfg
}

fn engine_with(srv: &TestServer, backend: IoBackend, f: impl FnOnce(&mut Config)) -> Engine {
    let mut cfg = cfg_for(&srv.url(), backend);
    f(&mut cfg);
    let e = Engine::new(cfg).unwrap_or_else(|e| panic!("Engine::new: {e}"));
    assert_eq!(e.backend(), expected_kind(backend));
    e
}

fn engine(srv: &TestServer, backend: IoBackend, layout: KeyLayout) -> Engine {
    engine_with(srv, backend, |c| c.key_layout = layout)
}

fn expected_kind(b: IoBackend) -> BackendKind {
    match b {
        IoBackend::IoUring => BackendKind::IoUring,
        IoBackend::Epoll => BackendKind::Epoll,
        IoBackend::Auto => panic!("tests pick a backend explicitly"),
    }
}

/// xorshift64: fast enough in debug builds for tens of MiB.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let mut it = v.chunks_exact_mut(8);
        for c in &mut it {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = it.into_remainder();
        let r = self.next().to_le_bytes();
        let k = rest.len();
        rest.copy_from_slice(&r[..k]);
        v
    }
}

/// Metadata LMCache would write for a payload of `len` bytes (bf16, KV_2LTD).
fn meta_for(len: usize) -> RemoteMetadata {
    RemoteMetadata::new(len, 1, 3, &[2, 1, len / 4, 2]).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Section 2's Llama-3.1-8B example: exactly these 28 bytes.
fn llama_meta_bytes() -> Vec<u8> {
    hex("00000002 01000000 03000000 02000000 20000000 00010000 00040000")
}

/// A G=2 example (48 bytes), written by hand: length 4096, fmt KV_MLA_FMT (6),
/// group 0 bf16 [1, 32, 256, 576], group 1 fp8_e4m3fn [1, 32, 256, 64].
fn g2_meta_bytes() -> Vec<u8> {
    hex("00100000 06000000 \
         03000000 01000000 20000000 00010000 40020000 \
         07000000 01000000 20000000 00010000 40000000")
}

fn g2_meta() -> RemoteMetadata {
    RemoteMetadata {
        length: 4096,
        fmt: 6,
        groups: vec![
            MetaGroup {
                dtype: 3,
                shape: [1, 32, 256, 576],
            },
            MetaGroup {
                dtype: 7,
                shape: [1, 32, 256, 64],
            },
        ],
    }
}

fn le_ints(b: &[u8]) -> Vec<i32> {
    assert_eq!(b.len() % 4, 0, "metadata is a packed i32 array");
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn admin(srv: &TestServer, args: &[&[u8]]) -> OwnedFrame {
    let pw = srv.proc.options().password.clone();
    servers::command(&srv.addr(), pw.as_deref(), args).unwrap_or_else(|e| {
        let shown: Vec<String> = args.iter().map(|a| a.escape_ascii().to_string()).collect();
        panic!("admin {shown:?} failed: {e}")
    })
}

fn admin_set(srv: &TestServer, key: &[u8], value: &[u8]) {
    match admin(srv, &[b"SET", key, value]) {
        OwnedFrame::SimpleString(s) if s == b"OK" => {}
        other => panic!("SET {} -> {other:?}", key.escape_ascii()),
    }
}

fn admin_get(srv: &TestServer, key: &[u8]) -> Option<Vec<u8>> {
    match admin(srv, &[b"GET", key]) {
        OwnedFrame::BulkString(b) => Some(b),
        OwnedFrame::Null => None,
        other => panic!("GET {} -> {other:?}", key.escape_ascii()),
    }
}

fn admin_int(srv: &TestServer, args: &[&[u8]]) -> i64 {
    match admin(srv, args) {
        OwnedFrame::Integer(i) => i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn admin_exists(srv: &TestServer, key: &[u8]) -> bool {
    admin_int(srv, &[b"EXISTS", key]) == 1
}

fn admin_keys(srv: &TestServer) -> BTreeSet<Vec<u8>> {
    match admin(srv, &[b"KEYS", b"*"]) {
        OwnedFrame::Array(items) => items
            .into_iter()
            .map(|f| match f {
                OwnedFrame::BulkString(b) => b,
                other => panic!("KEYS element {other:?}"),
            })
            .collect(),
        other => panic!("KEYS -> {other:?}"),
    }
}

fn dbsize(srv: &TestServer) -> i64 {
    admin_int(srv, &[b"DBSIZE"])
}

/// Several commands on ONE connection (for SELECT + EXISTS), decoded by redis-protocol.
fn session(addr: &str, cmds: &[&[&[u8]]]) -> Vec<OwnedFrame> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    for c in cmds {
        slotline_testkit::client::encode_command(&mut out, c);
    }
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut tmp = [0u8; 4096];
    while replies.len() < cmds.len() {
        match redis_protocol::resp2::decode::decode(&buf).unwrap() {
            Some((f, used)) => {
                buf.drain(..used);
                replies.push(f);
            }
            None => {
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0, "server closed the admin session");
                buf.extend_from_slice(&tmp[..n]);
            }
        }
    }
    replies
}

/// Redis keys of chunk `k` in `layout`, per section 1 (written out literally here, not
/// through `KeyLayout`).
fn expected_keys(layout: KeyLayout, k: &[u8]) -> Vec<Vec<u8>> {
    let cat = |parts: &[&[u8]]| parts.concat();
    match layout {
        KeyLayout::Lmcache => vec![cat(&[k, b"metadata"]), cat(&[k, b"kv_bytes"])],
        KeyLayout::Hashtag => vec![
            cat(&[b"{", k, b"}:metadata"]),
            cat(&[b"{", k, b"}:kv_bytes"]),
        ],
        KeyLayout::Raw => vec![k.to_vec()],
    }
}

fn payload_key(layout: KeyLayout, k: &[u8]) -> Vec<u8> {
    expected_keys(layout, k).pop().unwrap()
}

fn metadata_key(layout: KeyLayout, k: &[u8]) -> Option<Vec<u8>> {
    match layout {
        KeyLayout::Raw => None,
        _ => Some(expected_keys(layout, k).remove(0)),
    }
}

/// Writes one chunk as LMCache would, with plain SETs: payload first, then metadata.
fn lmcache_write(srv: &TestServer, layout: KeyLayout, k: &[u8], payload: &[u8], meta: &[u8]) {
    admin_set(srv, &payload_key(layout, k), payload);
    if let Some(mk) = metadata_key(layout, k) {
        admin_set(srv, &mk, meta);
    }
}

fn assert_chunk(got: &Option<Chunk>, data: &[u8], meta: Option<&RemoteMetadata>, what: &str) {
    let c = got
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: expected a hit, got a miss"));
    assert!(
        c.data == data,
        "{what}: payload differs ({} vs {} bytes)",
        c.data.len(),
        data.len()
    );
    assert_eq!(c.meta.as_ref(), meta, "{what}: metadata");
}

fn err_count(e: &Engine, kind: &str) -> u64 {
    e.stats().metrics.error_count(kind)
}

// ---------------------------------------------------------------------------------------
// order, empty batches, frames
// ---------------------------------------------------------------------------------------

fn order_kept_with_mixed_hits_and_misses(b: IoBackend) {
    let srv = TestServer::start();
    for layout in LAYOUTS {
        let e = engine(&srv, b, layout);
        let n = 1000;
        let keys: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("{LLAMA_KEY}-{layout}-{i:x}").into_bytes())
            .collect();
        let data = |i: usize| -> Vec<u8> {
            let mut v = format!("value {i} of {layout}|").into_bytes();
            v.resize(16 + (i * 37) % 300, (i % 251) as u8);
            v
        };
        let mut chunks = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if i % 3 == 2 {
                continue; // every third key missing
            }
            let d = data(i);
            let meta = (layout != KeyLayout::Raw).then(|| meta_for(d.len()));
            chunks.push(PutChunk::new(k.clone(), d, meta));
        }
        e.put(chunks).wait().unwrap();
        let got = e.get(&keys).wait().unwrap();
        assert_eq!(got.len(), n, "{layout}: one answer per key");
        for (i, g) in got.iter().enumerate() {
            if i % 3 == 2 {
                assert!(g.is_none(), "{layout}: key {i} must be a miss");
            } else {
                let d = data(i);
                let meta = (layout != KeyLayout::Raw).then(|| meta_for(d.len()));
                assert_chunk(g, &d, meta.as_ref(), &format!("{layout} key {i}"));
            }
        }
        // Reversed order: answers follow the caller's order, not the server's.
        let rev: Vec<&Vec<u8>> = keys.iter().rev().collect();
        let got = e.get(&rev).wait().unwrap();
        for (j, g) in got.iter().enumerate() {
            let i = n - 1 - j;
            assert_eq!(g.is_some(), i % 3 != 2, "{layout}: reversed key {i}");
            if let Some(c) = g {
                assert_eq!(c.data, data(i), "{layout}: reversed key {i}");
            }
        }
        let ex = e.exists(&keys).wait().unwrap();
        for (i, x) in ex.iter().enumerate() {
            assert_eq!(*x, i % 3 != 2, "{layout}: exists {i}");
        }
    }
}
both_backends!(
    order_mixed_hits_misses,
    order_kept_with_mixed_hits_and_misses
);

fn empty_batches(b: IoBackend) {
    let srv = TestServer::start();
    for layout in LAYOUTS {
        let e = engine(&srv, b, layout);
        let none: &[&[u8]] = &[];
        let t0 = Instant::now();
        assert!(e.get(none).wait().unwrap().is_empty());
        e.put(Vec::<PutChunk>::new()).wait().unwrap();
        assert!(e.exists(none).wait().unwrap().is_empty());
        assert_eq!(e.contains_prefix(none).wait().unwrap(), 0);
        assert_eq!(e.delete(none).wait().unwrap(), 0);
        assert!(e.prefetch(none).wait().unwrap().is_empty());
        let (bufs, infos) = e.get(none).into_vecs(Vec::new()).wait().unwrap();
        assert!(bufs.is_empty() && infos.is_empty());
        // async forms too
        assert!(e.get(none).submit().wait().unwrap().is_empty());
        e.put(Vec::<PutChunk>::new()).submit().wait().unwrap();
        e.put(Vec::<PutChunk>::new())
            .try_submit()
            .unwrap()
            .wait()
            .unwrap();
        assert!(e.exists(none).submit().wait().unwrap().is_empty());
        assert_eq!(e.contains_prefix(none).submit().wait().unwrap(), 0);
        assert_eq!(e.delete(none).submit().wait().unwrap(), 0);
        assert!(e.prefetch(none).submit().wait().unwrap().is_empty());
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{layout}: empty calls must not wait"
        );
        // get_into with mismatched keys and buffers is refused, not a hang
        assert!(matches!(
            e.get(&["a"]).into_vecs(Vec::new()).wait(),
            Err(Error::Invalid(_))
        ));
    }
    assert_eq!(dbsize(&srv), 0);
}
both_backends!(empty_batch_every_call, empty_batches);

fn batch_larger_than_chunk_size(b: IoBackend) {
    let srv = TestServer::start();
    for layout in [KeyLayout::Lmcache, KeyLayout::Raw] {
        let e = engine_with(&srv, b, |c| {
            c.key_layout = layout;
            c.chunk_size = 16;
        });
        let n = 1000usize;
        let keys: Vec<String> = (0..n).map(|i| format!("frames-{layout}-{i}")).collect();
        let chunks = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let d = vec![(i % 256) as u8; 64];
                let m = (layout != KeyLayout::Raw).then(|| meta_for(64));
                PutChunk::new(k.as_bytes(), d, m)
            })
            .collect::<Vec<_>>();
        e.put(chunks).wait().unwrap();
        let before = e.stats().metrics.frames_sent;
        let got = e.get(&keys).wait().unwrap();
        let frames = e.stats().metrics.frames_sent - before;
        assert!(got.iter().all(|g| g.is_some()), "{layout}: all 1000 hit");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.as_ref().unwrap().data, vec![(i % 256) as u8; 64]);
        }
        let min = (n * layout.keys_per_chunk()).div_ceil(16) as u64;
        eprintln!("{b}/{layout}: {n} chunks read in {frames} frames (minimum {min})");
        assert!(
            frames >= min && frames <= 3 * min,
            "{layout}: a read of {n} chunks with chunk_size 16 used {frames} frames; expected {min}..={}",
            3 * min
        );
    }
}
both_backends!(
    batch_larger_than_chunk_size_splits,
    batch_larger_than_chunk_size
);

// ---------------------------------------------------------------------------------------
// 32 MiB values
// ---------------------------------------------------------------------------------------

fn values_32mib(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, b, KeyLayout::Lmcache);
    let size = 32 * MIB;
    let mut rng = Rng::new(32);
    let keys: Vec<String> = (0..3).map(|i| format!("{LLAMA_KEY}-big{i}")).collect();
    let datas: Vec<Vec<u8>> = (0..3).map(|_| rng.bytes(size)).collect();
    let meta = RemoteMetadata::decode(&llama_meta_bytes()).unwrap();
    assert_eq!(meta.payload_len(), size);
    let chunks = keys
        .iter()
        .zip(&datas)
        .map(|(k, d)| PutChunk::new(k.as_bytes(), d.clone(), Some(meta.clone())))
        .collect::<Vec<_>>();
    e.put(chunks).wait().unwrap();
    for k in &keys {
        assert_eq!(
            admin_int(
                &srv,
                &[b"STRLEN", &payload_key(KeyLayout::Lmcache, k.as_bytes())]
            ),
            size as i64
        );
    }

    let got = e.get(&keys).wait().unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_chunk(g, &datas[i], Some(&meta), &format!("32 MiB chunk {i}"));
    }

    // get_into: buffers of exactly 32 MiB.
    let bufs = vec![vec![0u8; size]; 3];
    let (bufs, infos) = e.get(&keys).into_vecs(bufs).wait().unwrap();
    assert_eq!(bufs.len(), 3);
    for i in 0..3 {
        let info = infos[i]
            .as_ref()
            .unwrap_or_else(|| panic!("get_into {i} missed"));
        assert_eq!(info.len, size);
        assert_eq!(info.meta.as_ref(), Some(&meta));
        assert!(
            bufs[i][..size] == datas[i][..],
            "get_into {i}: bytes differ"
        );
    }

    // One buffer one byte short: that key misses, the others are served.
    let bufs = vec![vec![0u8; size], vec![0u8; size - 1], vec![0u8; size]];
    let (bufs, infos) = e.get(&keys).into_vecs(bufs).wait().unwrap();
    assert!(
        infos[1].is_none(),
        "a buffer smaller than the value is a miss"
    );
    for i in [0, 2] {
        let info = infos[i]
            .as_ref()
            .unwrap_or_else(|| panic!("get_into {i} missed"));
        assert_eq!(info.len, size);
        assert!(
            bufs[i][..size] == datas[i][..],
            "get_into {i}: bytes differ"
        );
    }
    // A larger buffer is fine (len tells how much was written).
    let (bufs, infos) = e
        .get(&keys[..1])
        .into_vecs(vec![vec![0u8; size + 4096]])
        .wait()
        .unwrap();
    assert_eq!(infos[0].as_ref().map(|i| i.len), Some(size));
    assert!(bufs[0][..size] == datas[0][..]);
}
both_backends!(values_32mib_round_trip, values_32mib);

// ---------------------------------------------------------------------------------------
// byte compatibility with LMCache
// ---------------------------------------------------------------------------------------

fn compat_reads_what_lmcache_wrote(b: IoBackend) {
    let srv = TestServer::start();
    let mut rng = Rng::new(7);

    // lmcache layout: the Llama example, metadata exactly the documented 28 bytes, and a
    // G=2 chunk with the 48-byte metadata.
    let llama_payload = rng.bytes(32 * MIB);
    lmcache_write(
        &srv,
        KeyLayout::Lmcache,
        LLAMA_KEY.as_bytes(),
        &llama_payload,
        &llama_meta_bytes(),
    );
    assert!(admin_exists(
        &srv,
        b"meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16metadata"
    ));
    assert!(admin_exists(
        &srv,
        b"meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16kv_bytes"
    ));
    let g2_key = "meta-llama/Llama-3.1-8B-Instruct@1@0@77e@bfloat16@lora%abc";
    let g2_payload = rng.bytes(4096);
    lmcache_write(
        &srv,
        KeyLayout::Lmcache,
        g2_key.as_bytes(),
        &g2_payload,
        &g2_meta_bytes(),
    );

    let llama_meta = RemoteMetadata {
        length: 33554432,
        fmt: 1,
        groups: vec![MetaGroup {
            dtype: 3,
            shape: [2, 32, 256, 1024],
        }],
    };
    {
        let e = engine(&srv, b, KeyLayout::Lmcache);
        let got = e
            .get(&[LLAMA_KEY, g2_key, "absent@1@0@1@half"])
            .wait()
            .unwrap();
        assert_chunk(
            &got[0],
            &llama_payload,
            Some(&llama_meta),
            "llama (lmcache)",
        );
        assert_chunk(&got[1], &g2_payload, Some(&g2_meta()), "G=2 (lmcache)");
        assert!(got[2].is_none());
        let (bufs, infos) = e
            .get(&[LLAMA_KEY, g2_key])
            .into_vecs(vec![vec![0u8; 32 * MIB], vec![0u8; 4096]])
            .wait()
            .unwrap();
        assert_eq!(infos[0].as_ref().unwrap().len, 32 * MIB);
        assert_eq!(infos[0].as_ref().unwrap().meta.as_ref(), Some(&llama_meta));
        assert!(bufs[0] == llama_payload);
        assert_eq!(infos[1].as_ref().unwrap().meta.as_ref(), Some(&g2_meta()));
        assert!(bufs[1] == g2_payload);
        assert_eq!(
            e.exists(&[LLAMA_KEY, g2_key, "absent"]).wait().unwrap(),
            vec![true, true, false]
        );
        assert_eq!(
            e.contains_prefix(&[g2_key, LLAMA_KEY, "absent", g2_key])
                .wait()
                .unwrap(),
            2
        );
    }

    // hashtag layout: `{K}:metadata` / `{K}:kv_bytes`, G=2 and G=1 metadata.
    let h1 = "vllm@meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1";
    let h1_payload = rng.bytes(1000);
    let h1_meta = RemoteMetadata::new(1000, 4, 6, &[1000]).unwrap();
    // written by hand: [1000, 4, 6, 1000, 0, 0, 0]
    let h1_meta_bytes = hex("e8030000 04000000 06000000 e8030000 00000000 00000000 00000000");
    lmcache_write(
        &srv,
        KeyLayout::Hashtag,
        h1.as_bytes(),
        &h1_payload,
        &h1_meta_bytes,
    );
    lmcache_write(
        &srv,
        KeyLayout::Hashtag,
        g2_key.as_bytes(),
        &g2_payload,
        &g2_meta_bytes(),
    );
    assert!(admin_exists(&srv, format!("{{{h1}}}:metadata").as_bytes()));
    {
        let e = engine(&srv, b, KeyLayout::Hashtag);
        let got = e.get(&[h1, g2_key, LLAMA_KEY]).wait().unwrap();
        assert_chunk(&got[0], &h1_payload, Some(&h1_meta), "G=1 (hashtag)");
        assert_chunk(&got[1], &g2_payload, Some(&g2_meta()), "G=2 (hashtag)");
        assert!(
            got[2].is_none(),
            "lmcache-layout keys are not visible in hashtag layout"
        );
        let pre = e.prefetch(&[h1, g2_key, LLAMA_KEY, h1]).wait().unwrap();
        assert_eq!(pre.len(), 2);
        assert_eq!(pre[1].data, g2_payload);
    }

    // raw layout: the payload alone under K (multiprocess-mode key form).
    let r1 = format!("meta-llama/Llama-3.1-8B-Instruct@{:08x}@3f9a0c1", 3);
    let r1_payload = rng.bytes(5000);
    lmcache_write(&srv, KeyLayout::Raw, r1.as_bytes(), &r1_payload, &[]);
    {
        let e = engine(&srv, b, KeyLayout::Raw);
        let got = e.get(&[r1.as_str(), "nope"]).wait().unwrap();
        assert_chunk(&got[0], &r1_payload, None, "raw");
        assert!(got[1].is_none());
        assert_eq!(
            e.exists(&[r1.as_str(), "nope"]).wait().unwrap(),
            vec![true, false]
        );
    }
}
both_backends!(compat_read_lmcache_written, compat_reads_what_lmcache_wrote);

fn compat_writes_what_lmcache_reads(b: IoBackend) {
    let srv = TestServer::start();
    let mut rng = Rng::new(9);

    // lmcache layout, the Llama example: metadata bytes must be exactly section 2's.
    {
        let e = engine(&srv, b, KeyLayout::Lmcache);
        let payload = rng.bytes(32 * MIB);
        let meta = RemoteMetadata::new(33554432, 1, 3, &[2, 32, 256, 1024]).unwrap();
        e.put(vec![PutChunk::new(LLAMA_KEY, payload.clone(), Some(meta))])
            .wait()
            .unwrap();
        let mk = format!("{LLAMA_KEY}metadata");
        let pk = format!("{LLAMA_KEY}kv_bytes");
        let raw_meta = admin_get(&srv, mk.as_bytes()).expect("metadata key written");
        assert_eq!(
            raw_meta,
            llama_meta_bytes(),
            "metadata bytes (section 2 example)"
        );
        assert_eq!(le_ints(&raw_meta), vec![33554432, 1, 3, 2, 32, 256, 1024]);
        assert!(admin_get(&srv, pk.as_bytes()).expect("payload key written") == payload);
        assert_eq!(
            admin_keys(&srv),
            BTreeSet::from([mk.into_bytes(), pk.into_bytes()]),
            "exactly the two LMCache keys"
        );
        admin(&srv, &[b"FLUSHALL"]);
    }

    for layout in LAYOUTS {
        let e = engine(&srv, b, layout);
        let k1 = format!("{LLAMA_KEY}@{layout}");
        let k2 = format!("vllm@model@1@0@abc@half@{layout}");
        let k3 = format!("g2@{layout}");
        let d1 = rng.bytes(777);
        let d2 = rng.bytes(10);
        let d3 = rng.bytes(4096);
        let m1 = RemoteMetadata::new(777, 2, 2, &[7, 111]).unwrap(); // shape padded with zeros
        e.put(vec![
            PutChunk::new(k1.as_bytes(), d1.clone(), Some(m1)),
            PutChunk::new(k2.as_bytes(), d2.clone(), None), // BINARY metadata
            PutChunk::new(k3.as_bytes(), d3.clone(), Some(g2_meta())),
        ])
        .wait()
        .unwrap();

        let mut want_keys = BTreeSet::new();
        for k in [&k1, &k2, &k3] {
            want_keys.extend(expected_keys(layout, k.as_bytes()));
        }
        assert_eq!(admin_keys(&srv), want_keys, "{layout}: key strings");

        assert_eq!(
            admin_get(&srv, &payload_key(layout, k1.as_bytes())).unwrap(),
            d1
        );
        assert_eq!(
            admin_get(&srv, &payload_key(layout, k2.as_bytes())).unwrap(),
            d2
        );
        assert_eq!(
            admin_get(&srv, &payload_key(layout, k3.as_bytes())).unwrap(),
            d3
        );
        if layout != KeyLayout::Raw {
            let m =
                |k: &str| admin_get(&srv, &metadata_key(layout, k.as_bytes()).unwrap()).unwrap();
            let b1 = m(&k1);
            assert_eq!(b1.len(), 28);
            // [length, fmt, dtype, s0, s1, s2, s3], little-endian i32
            assert_eq!(
                le_ints(&b1),
                vec![777, 2, 2, 7, 111, 0, 0],
                "{layout}: k1 metadata"
            );
            let b2 = m(&k2);
            assert_eq!(b2.len(), 28);
            let i2 = le_ints(&b2);
            assert_eq!(i2[0], 10, "{layout}: metadata length = payload length");
            assert_eq!(i2[1], 4, "{layout}: no metadata given -> fmt BINARY");
            assert_eq!(i2[2], 6, "{layout}: no metadata given -> dtype uint8");
            let b3 = m(&k3);
            assert_eq!(b3, g2_meta_bytes(), "{layout}: G=2 metadata, 48 bytes");
        }
        admin(&srv, &[b"FLUSHALL"]);
    }
}
both_backends!(
    compat_write_read_by_plain_get,
    compat_writes_what_lmcache_reads
);

// ---------------------------------------------------------------------------------------
// read rules
// ---------------------------------------------------------------------------------------

fn read_rule_stale_metadata(b: IoBackend) {
    let srv = TestServer::start();
    for layout in [KeyLayout::Lmcache, KeyLayout::Hashtag] {
        let e = engine(&srv, b, layout);
        let k = format!("{LLAMA_KEY}-stale-{layout}");
        let mk = metadata_key(layout, k.as_bytes()).unwrap();
        // metadata present, payload evicted
        admin_set(&srv, &mk, &meta_for(16).encode());
        let before = err_count(&e, "stale_metadata");
        let got = e.get(&[k.as_str()]).wait().unwrap();
        assert!(
            got[0].is_none(),
            "{layout}: metadata without payload is a miss"
        );
        wait_until(
            Duration::from_secs(2),
            "the stale metadata key to be deleted",
            || !admin_exists(&srv, &mk),
        );
        assert!(
            err_count(&e, "stale_metadata") > before,
            "{layout}: stale_metadata counted"
        );
        // prefetch and get_into apply the same rule
        admin_set(&srv, &mk, &meta_for(16).encode());
        assert!(e.prefetch(&[k.as_str()]).wait().unwrap().is_empty());
        let (_, infos) = e
            .get(&[k.as_str()])
            .into_vecs(vec![vec![0; 16]])
            .wait()
            .unwrap();
        assert!(infos[0].is_none());
        wait_until(
            Duration::from_secs(2),
            "the stale metadata key to be deleted",
            || !admin_exists(&srv, &mk),
        );
        // payload present, metadata missing -> plain miss, payload left alone
        let pk = payload_key(layout, k.as_bytes());
        admin_set(&srv, &pk, &[1u8; 16]);
        assert!(e.get(&[k.as_str()]).wait().unwrap()[0].is_none());
        assert!(admin_exists(&srv, &pk));
    }
}
both_backends!(read_rule_metadata_without_payload, read_rule_stale_metadata);

fn read_rule_corrupt(b: IoBackend) {
    let srv = TestServer::start();
    for layout in [KeyLayout::Lmcache, KeyLayout::Hashtag] {
        let e = engine(&srv, b, layout);
        let good = format!("good-{layout}");
        e.put(vec![PutChunk::new(
            good.as_bytes(),
            vec![5u8; 16],
            Some(meta_for(16)),
        )])
        .wait()
        .unwrap();

        // payload length differs from metadata.length
        let bad = format!("badlen-{layout}");
        lmcache_write(
            &srv,
            layout,
            bad.as_bytes(),
            &[9u8; 20],
            &meta_for(16).encode(),
        );
        let c0 = err_count(&e, "corrupt");
        let got = e
            .get(&[good.as_str(), bad.as_str(), good.as_str()])
            .wait()
            .unwrap();
        assert!(got[0].is_some() && got[2].is_some());
        assert!(got[1].is_none(), "{layout}: length mismatch is a miss");
        let c1 = err_count(&e, "corrupt");
        assert!(c1 > c0, "{layout}: length mismatch counted as corrupt");
        let (_, infos) = e
            .get(&[bad.as_str()])
            .into_vecs(vec![vec![0u8; 64]])
            .wait()
            .unwrap();
        assert!(
            infos[0].is_none(),
            "{layout}: get_into applies the length rule"
        );
        assert_eq!(
            e.prefetch(&[good.as_str(), bad.as_str(), good.as_str()])
                .wait()
                .unwrap()
                .len(),
            1
        );

        // undecodable metadata: 5 bytes
        let junk = format!("junkmeta-{layout}");
        lmcache_write(&srv, layout, junk.as_bytes(), &[1u8; 16], b"abcde");
        let got = e.get(&[junk.as_str(), good.as_str()]).wait().unwrap();
        assert!(got[0].is_none(), "{layout}: undecodable metadata is a miss");
        assert!(got[1].is_some());
        let c2 = err_count(&e, "corrupt");
        assert!(c2 > c1, "{layout}: undecodable metadata counted as corrupt");

        // negative length in otherwise well-formed metadata
        let neg = format!("negmeta-{layout}");
        let mut m = meta_for(16).encode();
        m[..4].copy_from_slice(&(-16i32).to_le_bytes());
        lmcache_write(&srv, layout, neg.as_bytes(), &[1u8; 16], &m);
        assert!(e.get(&[neg.as_str()]).wait().unwrap()[0].is_none());
        assert!(err_count(&e, "corrupt") > c2);
        // corrupt chunks are not "stale": their keys stay
        assert!(admin_exists(
            &srv,
            &metadata_key(layout, bad.as_bytes()).unwrap()
        ));
    }

    // raw layout + get_into: value length != buffer length -> corrupt miss.
    let e = engine(&srv, b, KeyLayout::Raw);
    admin_set(&srv, b"raw-short", &[3u8; 100]);
    let c0 = err_count(&e, "corrupt");
    let (_, infos) = e
        .get(&["raw-short"])
        .into_vecs(vec![vec![0u8; 128]])
        .wait()
        .unwrap();
    assert!(
        infos[0].is_none(),
        "raw: a value shorter than the expected chunk size is a miss"
    );
    assert!(err_count(&e, "corrupt") > c0, "raw: counted as corrupt");
}
both_backends!(read_rule_corrupt_is_a_counted_miss, read_rule_corrupt);

/// raw layout + get_into with a value of exactly the buffer's length must be a hit
/// (the check of the rule above must not reject good chunks).
fn raw_get_into_exact(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, b, KeyLayout::Raw);
    let d = Rng::new(3).bytes(4096);
    e.put(vec![PutChunk::new("raw-exact", d.clone(), None)])
        .wait()
        .unwrap();
    admin_set(&srv, b"raw-short", &[3u8; 100]);
    let c0 = err_count(&e, "corrupt");
    let (bufs, infos) = e
        .get(&["raw-exact", "raw-short", "raw-missing"])
        .into_vecs(vec![vec![0u8; 4096]; 3])
        .wait()
        .unwrap();
    assert_eq!(
        infos[0].as_ref().map(|i| i.len),
        Some(4096),
        "raw get_into of a value exactly the buffer size must hit (corrupt count went {} -> {})",
        c0,
        err_count(&e, "corrupt")
    );
    assert_eq!(infos[0].as_ref().unwrap().meta, None);
    assert!(bufs[0] == d);
    assert!(infos[1].is_none());
    assert!(infos[2].is_none());
}
both_backends!(raw_get_into_exact_length_hits, raw_get_into_exact);

/// get_into hands every buffer back, also those of misses ("Returns the buffers").
fn get_into_returns_all_buffers(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, b, KeyLayout::Lmcache);
    e.put(vec![PutChunk::new("hit", vec![1u8; 100], None)])
        .wait()
        .unwrap();
    let (bufs, infos) = e
        .get(&["hit", "miss", "hit"])
        .into_vecs(vec![vec![0u8; 128], vec![7u8; 256], vec![0u8; 50]])
        .wait()
        .unwrap();
    assert_eq!(infos[0].as_ref().map(|i| i.len), Some(100));
    assert!(infos[1].is_none());
    assert!(
        infos[2].is_none(),
        "buffer of 50 bytes is too small for 100"
    );
    assert_eq!(bufs.len(), 3);
    assert_eq!(bufs[0].len(), 128);
    assert_eq!(&bufs[0][..100], &[1u8; 100][..]);
    assert_eq!(
        bufs[1].len(),
        256,
        "the buffer of a miss comes back to the caller"
    );
    assert_eq!(
        bufs[2].len(),
        50,
        "the buffer of a too-small miss comes back to the caller"
    );
}
both_backends!(
    get_into_returns_buffers_of_misses,
    get_into_returns_all_buffers
);

// ---------------------------------------------------------------------------------------
// contains_prefix / prefetch / exists / delete
// ---------------------------------------------------------------------------------------

fn prefix_semantics(b: IoBackend) {
    let srv = TestServer::start();
    for layout in LAYOUTS {
        let e = engine(&srv, b, layout);
        let k = |s: &str| format!("{s}-{layout}");
        let (a, bb, c, d) = (k("a"), k("b"), k("c"), k("d"));
        let put = |key: &str, v: u8| {
            e.put(vec![PutChunk::new(key.as_bytes(), vec![v; 32], None)])
                .wait()
                .unwrap()
        };
        put(&a, 1);
        put(&bb, 2);
        put(&d, 4);
        // hit, hit, miss, hit
        let keys = [&a, &bb, &c, &d];
        assert_eq!(e.contains_prefix(&keys).wait().unwrap(), 2, "{layout}");
        assert_eq!(e.contains_prefix(&[&c, &a]).wait().unwrap(), 0, "{layout}");
        assert_eq!(
            e.contains_prefix(&[&a, &bb, &d]).wait().unwrap(),
            3,
            "{layout}"
        );
        assert_eq!(
            e.exists(&keys).wait().unwrap(),
            vec![true, true, false, true],
            "{layout}"
        );
        let pre = e.prefetch(&keys).wait().unwrap();
        assert_eq!(pre.len(), 2, "{layout}: prefetch stops at the first miss");
        assert_eq!(pre[0].data, vec![1u8; 32]);
        assert_eq!(pre[1].data, vec![2u8; 32]);
        assert!(e.prefetch(&[&c, &a]).wait().unwrap().is_empty());
        // the same key twice in one batch
        let dup = e.get(&[&a, &a, &c, &a]).wait().unwrap();
        assert!(dup[0].is_some() && dup[1].is_some() && dup[2].is_none() && dup[3].is_some());
        assert_eq!(e.exists(&[&a, &a]).wait().unwrap(), vec![true, true]);
        let all = e.prefetch(&[&d, &a, &bb]).wait().unwrap();
        assert_eq!(
            all.iter().map(|c| c.data[0]).collect::<Vec<_>>(),
            vec![4, 1, 2]
        );
    }
}
both_backends!(contains_prefix_prefetch_exists, prefix_semantics);

fn delete_counts(b: IoBackend) {
    let srv = TestServer::start();
    for layout in LAYOUTS {
        let e = engine(&srv, b, layout);
        let keys: Vec<String> = (0..5).map(|i| format!("del-{layout}-{i}")).collect();
        e.put(
            keys[..4]
                .iter()
                .map(|k| PutChunk::new(k.as_bytes(), vec![1u8; 10], None))
                .collect::<Vec<_>>(),
        )
        .wait()
        .unwrap();
        assert_eq!(dbsize(&srv), 4 * layout.keys_per_chunk() as i64);
        // 3 present, 1 absent (keys[4]) -> 3
        let n = e
            .delete(&[&keys[0], &keys[1], &keys[4], &keys[2]])
            .wait()
            .unwrap();
        assert_eq!(n, 3, "{layout}: delete returns how many chunks existed");
        for k in &keys[..3] {
            for rk in expected_keys(layout, k.as_bytes()) {
                assert!(
                    !admin_exists(&srv, &rk),
                    "{layout}: {} still there",
                    rk.escape_ascii()
                );
            }
        }
        assert_eq!(
            dbsize(&srv),
            layout.keys_per_chunk() as i64,
            "{layout}: keys[3] untouched"
        );
        assert_eq!(
            e.exists(&keys).wait().unwrap(),
            vec![false, false, false, true, false]
        );
        assert_eq!(e.delete(&[&keys[0]]).wait().unwrap(), 0);
        // A chunk with only its metadata left (payload evicted) still counts and goes.
        if let Some(mk) = metadata_key(layout, b"half") {
            admin_set(&srv, &mk, &meta_for(8).encode());
            assert_eq!(e.delete(&["half"]).wait().unwrap(), 1);
            assert!(!admin_exists(&srv, &mk));
        }
        assert_eq!(e.delete(&[&keys[3]]).wait().unwrap(), 1);
        assert_eq!(dbsize(&srv), 0);
    }
}
both_backends!(delete_returns_count_and_removes_keys, delete_counts);

fn ttl_on_both_keys(b: IoBackend) {
    let srv = TestServer::start();
    for layout in LAYOUTS {
        let e = engine_with(&srv, b, |c| {
            c.key_layout = layout;
            c.ttl = Some(100);
        });
        let k = format!("ttl-{layout}");
        e.put(vec![PutChunk::new(k.as_bytes(), vec![1u8; 1000], None)])
            .wait()
            .unwrap();
        for rk in expected_keys(layout, k.as_bytes()) {
            let ttl = admin_int(&srv, &[b"TTL", &rk]);
            assert!(
                ttl > 0 && ttl <= 100,
                "{layout}: TTL {} = {ttl}",
                rk.escape_ascii()
            );
        }
    }
    // without a TTL, keys do not expire
    let e = engine(&srv, b, KeyLayout::Lmcache);
    e.put(vec![PutChunk::new("no-ttl", vec![1u8; 10], None)])
        .wait()
        .unwrap();
    assert_eq!(admin_int(&srv, &[b"TTL", b"no-ttlkv_bytes"]), -1);
    assert_eq!(admin_int(&srv, &[b"TTL", b"no-ttlmetadata"]), -1);
}
both_backends!(ttl_applies_to_payload_and_metadata, ttl_on_both_keys);

fn key_shapes(b: IoBackend) {
    let srv = TestServer::start();
    let long: Vec<u8> = (0..300)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789/@%.-_"[i % 42])
        .collect();
    let keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"x".to_vec(),
        long,
        b"{".to_vec(),
        b"}".to_vec(),
        b"{}".to_vec(),
        b"a{b}c".to_vec(),
        b"{tag}rest".to_vec(),
        b"foo{{bar}}zap".to_vec(),
        b"with space and  two".to_vec(),
        b"cr\r\nlf\r\n".to_vec(),
        b"\r\n".to_vec(),
        b"nul\0byte\0".to_vec(),
        vec![0u8],
        vec![0xff, 0xfe, 0x80, 0xc3, 0x28],
        b"/@%.-_".to_vec(),
        b"$3\r\nSET\r\n*1".to_vec(),
        format!("{LLAMA_KEY}@tag%value@7").into_bytes(),
    ];
    for layout in LAYOUTS {
        let e = engine(&srv, b, layout);
        let data = |i: usize| -> Vec<u8> { format!("payload #{i} {layout}\r\n\0").into_bytes() };
        e.put(
            keys.iter()
                .enumerate()
                .map(|(i, k)| PutChunk::new(k.clone(), data(i), None))
                .collect::<Vec<_>>(),
        )
        .wait()
        .unwrap();
        let got = e.get(&keys).wait().unwrap();
        for (i, g) in got.iter().enumerate() {
            let c = g
                .as_ref()
                .unwrap_or_else(|| panic!("{layout}: key {} missed", keys[i].escape_ascii()));
            assert_eq!(c.data, data(i), "{layout}: key {}", keys[i].escape_ascii());
        }
        // exactly the documented Redis keys, nothing else
        let mut want = BTreeSet::new();
        for k in &keys {
            want.extend(expected_keys(layout, k));
        }
        assert_eq!(admin_keys(&srv), want, "{layout}: Redis key strings");
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(admin_get(&srv, &payload_key(layout, k)), Some(data(i)));
        }
        assert!(e.exists(&keys).wait().unwrap().iter().all(|&x| x));
        assert_eq!(e.contains_prefix(&keys).wait().unwrap(), keys.len());
        let bufs = keys
            .iter()
            .enumerate()
            .map(|(i, _)| vec![0u8; data(i).len()])
            .collect();
        let (bufs, infos) = e.get(&keys).into_vecs(bufs).wait().unwrap();
        for (i, info) in infos.iter().enumerate() {
            if layout == KeyLayout::Raw && info.is_none() {
                // Known engine bug: every raw get_into hit is judged corrupt. It is covered
                // (and reported) by raw_get_into_exact_length_hits; do not let it hide the
                // rest of this test.
                continue;
            }
            let info = info
                .as_ref()
                .unwrap_or_else(|| panic!("{layout}: get_into {i} missed"));
            assert_eq!(&bufs[i][..info.len], &data(i)[..]);
        }
        assert_eq!(e.delete(&keys).wait().unwrap(), keys.len());
        assert_eq!(dbsize(&srv), 0);
    }
}
both_backends!(keys_of_every_shape_round_trip, key_shapes);

// ---------------------------------------------------------------------------------------
// priority
// ---------------------------------------------------------------------------------------

fn peek_before_queued_puts(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_with(&srv, b, |c| {
        c.shards = Some(1);
        c.max_inflight_bytes = 64 * 1024;
        c.lane_capacity = 4096;
        // One connection, so that the backlog really waits inside the engine.
        c.max_connections = 1;
    });
    e.put(vec![PutChunk::new("probe", vec![1u8; 8], None)])
        .wait()
        .unwrap();
    let n = 64;
    let chunks: Vec<PutChunk> = (0..n)
        .map(|i| PutChunk::new(format!("bulk-{i}"), vec![i as u8; MIB], None))
        .collect();
    let mut puts = Vec::with_capacity(n);
    for c in chunks {
        puts.push(e.put(vec![c]).submit());
    }
    let peek = e.exists(&["probe"]).submit();

    let mut put_done: Vec<Option<u64>> = vec![None; n];
    let mut peek_done: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pass = 0u64;
    while put_done.iter().any(|d| d.is_none()) || peek_done.is_none() {
        pass += 1;
        if peek_done.is_none() && peek.is_done() {
            peek_done = Some(pass);
        }
        for (i, t) in puts.iter().enumerate() {
            if put_done[i].is_none() && t.is_done() {
                put_done[i] = Some(pass);
            }
        }
        assert!(Instant::now() < deadline, "puts did not complete in 30 s");
        thread::sleep(Duration::from_micros(100));
    }
    let peek_at = peek_done.unwrap();
    assert_eq!(peek.wait().unwrap(), vec![true]);
    for t in puts {
        t.wait().unwrap();
    }
    let before = put_done.iter().filter(|d| d.unwrap() < peek_at).count();
    let after = put_done.iter().filter(|d| d.unwrap() > peek_at).count();
    eprintln!("{b}: PEEK completed after {before} PUTs, before {after} (of {n})");
    assert!(
        before <= n / 2 && after >= n / 2,
        "PEEK finished after {before} of {n} queued PUTs ({after} after it); it must overtake at least the last half"
    );
    // all puts landed
    assert_eq!(dbsize(&srv), 2 * (n as i64 + 1));
}
both_backends!(priority_peek_overtakes_put_backlog, peek_before_queued_puts);

// ---------------------------------------------------------------------------------------
// failures: outage, auth, dead server, invalid input
// ---------------------------------------------------------------------------------------

fn server_outage_and_restart(b: IoBackend) {
    let mut srv = TestServer::start();
    let addr = srv.addr();
    let e = engine_with(&srv, b, |c| {
        c.request_timeout = Duration::from_secs(3);
        c.deadlines = slotline::Deadlines::uniform(c.request_timeout);
        c.connect_timeout = Duration::from_secs(1);
    });
    e.put(vec![PutChunk::new("before", vec![1u8; 100], None)])
        .wait()
        .unwrap();
    assert!(e.get(&["before"]).wait().unwrap()[0].is_some());

    srv.proc.kill();
    let bound = Duration::from_secs(6);
    let is_io_naming = |err: &Error| matches!(err, Error::Io { node, .. } if node.contains(&addr));

    let t0 = Instant::now();
    let r = e.get(&["before"]).wait();
    assert!(
        t0.elapsed() < bound,
        "get during the outage took {:?}",
        t0.elapsed()
    );
    match r {
        Err(ref err) if is_io_naming(err) => {}
        other => panic!("get during the outage: expected Error::Io naming {addr}, got {other:?}"),
    }
    let t0 = Instant::now();
    match e.exists(&["before"]).wait() {
        Err(ref err) if is_io_naming(err) => {}
        other => {
            panic!("exists during the outage: expected Error::Io naming {addr}, got {other:?}")
        }
    }
    match e
        .put(vec![PutChunk::new("during", vec![2u8; 100], None)])
        .wait()
    {
        Err(Error::PutFailed { first_error, .. })
            if first_error.contains("I/O") && first_error.contains(&addr) => {}
        Err(ref err) if is_io_naming(err) => {}
        other => {
            panic!("put during the outage: expected an I/O failure naming {addr}, got {other:?}")
        }
    }
    // A failed key ends the prefix like a miss (LMCache recomputes): Ok(0), with the
    // failure counted, not an error and not a hit.
    let failures = e.stats().metrics.errors.values().sum::<u64>();
    assert_eq!(
        e.contains_prefix(&["before"])
            .wait()
            .unwrap_or_else(|err| panic!("contains_prefix during the outage: {err}")),
        0
    );
    assert!(
        e.stats().metrics.errors.values().sum::<u64>() > failures,
        "the failed key was not counted"
    );
    assert!(
        t0.elapsed() < bound * 3,
        "calls during the outage took {:?}",
        t0.elapsed()
    );
    assert!(err_count(&e, "io") + err_count(&e, "put_failed") > 0);

    srv.proc.restart().unwrap();
    let t0 = Instant::now();
    loop {
        let ok = e
            .put(vec![PutChunk::new("after", vec![3u8; 100], None)])
            .wait()
            .is_ok()
            && e.get(&["after"])
                .wait()
                .ok()
                .and_then(|g| g[0].clone())
                .map(|c| c.into_data())
                == Some(vec![3u8; 100]);
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the engine did not recover within 20 s of the restart"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // and stays healthy
    assert_eq!(
        e.exists(&["after", "before"]).wait().unwrap(),
        vec![true, false]
    );
}
both_backends!(server_killed_and_restarted, server_outage_and_restart);

fn auth(b: IoBackend) {
    let srv = TestServer::start_with(ServerOptions {
        password: Some("secret".into()),
        acl_users: vec![("alice".into(), "wonderland".into())],
        ..test_options()
    });
    let addr = srv.addr();
    let bound = Duration::from_secs(5);

    // wrong password
    let t0 = Instant::now();
    let r = Engine::new(cfg_for(&format!("redis://:wrong@{addr}"), b));
    assert!(t0.elapsed() < bound, "refusal took {:?}", t0.elapsed());
    match r {
        Err(Error::Auth {
            ref node,
            ref message,
        }) => {
            assert!(node.contains(&addr), "auth error names the server: {node}");
            assert!(!message.is_empty());
            let shown = r.as_ref().unwrap_err().to_string();
            assert!(
                shown.contains(&addr),
                "message mentions the server: {shown}"
            );
            assert!(
                !shown.contains("wrong"),
                "the password must not leak into errors: {shown}"
            );
        }
        other => panic!("wrong password: expected Error::Auth, got {other:?}"),
    }
    // wrong ACL password
    match Engine::new(cfg_for(&format!("redis://alice:nope@{addr}"), b)) {
        Err(Error::Auth { ref node, .. }) => assert!(node.contains(&addr)),
        other => panic!("wrong ACL password: expected Error::Auth, got {other:?}"),
    }
    // no password at all: must fail clearly (NOAUTH)
    match Engine::new(cfg_for(&format!("redis://{addr}"), b)) {
        Err(Error::Auth { .. }) => {}
        Err(Error::Server { ref message, .. }) if message.contains("NOAUTH") => {}
        other => panic!("no password: expected an authentication error, got {other:?}"),
    }

    // right password (URL form and config field form)
    let e = Engine::new(cfg_for(&format!("redis://:secret@{addr}"), b)).unwrap();
    e.put(vec![PutChunk::new("pw", vec![1u8; 10], None)])
        .wait()
        .unwrap();
    assert!(e.get(&["pw"]).wait().unwrap()[0].is_some());
    let mut cfg = cfg_for(&format!("redis://{addr}"), b);
    cfg.password = Some("secret".into());
    let e = Engine::new(cfg).unwrap();
    assert!(e.get(&["pw"]).wait().unwrap()[0].is_some());

    // ACL user + password
    let e = Engine::new(cfg_for(&format!("redis://alice:wonderland@{addr}"), b)).unwrap();
    e.put(vec![PutChunk::new("acl", vec![2u8; 10], None)])
        .wait()
        .unwrap();
    assert_eq!(
        e.get(&["acl"]).wait().unwrap()[0].as_ref().unwrap().data,
        vec![2u8; 10]
    );
    match e.command(&[b"ACL", b"WHOAMI"]).unwrap() {
        slotline::Value::Bulk(w) => assert_eq!(w, b"alice"),
        other => panic!("ACL WHOAMI -> {other:?}"),
    }
    let mut cfg = cfg_for(&format!("redis://{addr}"), b);
    cfg.username = Some("alice".into());
    cfg.password = Some("wonderland".into());
    assert!(Engine::new(cfg).unwrap().get(&["acl"]).wait().unwrap()[0].is_some());
}
both_backends!(authentication, auth);

fn database_selection(b: IoBackend) {
    let srv = TestServer::start();
    let url = format!("redis://{}/3", srv.addr());
    let e = Engine::new(cfg_for(&url, b)).unwrap();
    assert_eq!(e.config().database, 3);
    e.put(vec![PutChunk::new("in-db3", vec![1u8; 10], None)])
        .wait()
        .unwrap();
    let r = session(
        &srv.addr(),
        &[
            &[b"SELECT", b"3"],
            &[b"EXISTS", b"in-db3kv_bytes"],
            &[b"EXISTS", b"in-db3metadata"],
        ],
    );
    assert_eq!(r[0], OwnedFrame::SimpleString(b"OK".to_vec()));
    assert_eq!(r[1], OwnedFrame::Integer(1), "payload key in db 3");
    assert_eq!(r[2], OwnedFrame::Integer(1), "metadata key in db 3");
    assert!(!admin_exists(&srv, b"in-db3kv_bytes"), "nothing in db 0");
    assert_eq!(dbsize(&srv), 0);
    // a key in db 0 is not seen by the db-3 engine
    admin_set(&srv, b"db0kv_bytes", b"x");
    admin_set(&srv, b"db0metadata", &meta_for(1).encode());
    assert_eq!(
        e.exists(&["db0", "in-db3"]).wait().unwrap(),
        vec![false, true]
    );
    // ?db=N form
    let e2 = Engine::new(cfg_for(&format!("redis://{}?db=3", srv.addr()), b)).unwrap();
    assert!(e2.get(&["in-db3"]).wait().unwrap()[0].is_some());
}
both_backends!(database_from_url, database_selection);

fn unix_socket(b: IoBackend) {
    let srv = TestServer::start_with(ServerOptions {
        unix_socket: Some("redis.sock".into()),
        ..test_options()
    });
    let path = srv.proc.unix_socket().expect("socket path");
    assert!(path.is_absolute());
    let url = format!("unix://{}", path.display());
    let e = Engine::new(cfg_for(&url, b)).unwrap_or_else(|e| panic!("{url}: {e}"));
    let d = Rng::new(5).bytes(3 * MIB);
    e.put(vec![PutChunk::new("via-unix", d.clone(), None)])
        .wait()
        .unwrap();
    assert!(
        e.get(&["via-unix"]).wait().unwrap()[0]
            .as_ref()
            .unwrap()
            .data
            == d
    );
    assert_eq!(
        admin_int(&srv, &[b"STRLEN", b"via-unixkv_bytes"]),
        3 * MIB as i64
    );
}
both_backends!(unix_socket_url, unix_socket);

fn dead_server(b: IoBackend) {
    let port = servers::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    let r = Engine::new(cfg_for(&format!("redis://{addr}"), b));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "Engine::new on a dead server took {took:?}"
    );
    match r {
        Err(Error::Io { ref node, .. }) => {
            assert!(node.contains(&addr), "error names {addr}: {node}");
            assert!(r.as_ref().unwrap_err().to_string().contains(&addr));
        }
        other => panic!("expected Error::Io naming {addr}, got {other:?}"),
    }
}
both_backends!(dead_server_fails_fast, dead_server);

fn oversized_put(b: IoBackend) {
    let srv = TestServer::start();
    for layout in LAYOUTS {
        let e = engine_with(&srv, b, |c| {
            c.key_layout = layout;
            c.max_value_size = 1000;
        });
        let r = e
            .put(vec![
                PutChunk::new("fits", vec![0u8; 1000], None),
                PutChunk::new("too-big-key", vec![0u8; 1001], None),
            ])
            .wait();
        match r {
            Err(Error::TooLarge {
                ref key,
                len,
                limit,
            }) => {
                assert!(key.contains("too-big-key"), "names the key: {key}");
                assert_eq!((len, limit), (1001, 1000));
            }
            other => panic!("{layout}: expected Error::TooLarge, got {other:?}"),
        }
        assert_eq!(dbsize(&srv), 0, "{layout}: nothing written");
        assert!(matches!(
            e.put(vec![PutChunk::new("k", vec![0u8; 5000], None)])
                .submit()
                .wait(),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            e.put(vec![PutChunk::new("k", vec![0u8; 5000], None)])
                .try_submit(),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(dbsize(&srv), 0, "{layout}: nothing written");
    }
}
both_backends!(oversized_put_is_refused, oversized_put);

fn meta_mismatch_put(b: IoBackend) {
    let srv = TestServer::start();
    for layout in [KeyLayout::Lmcache, KeyLayout::Hashtag] {
        let e = engine(&srv, b, layout);
        let r = e
            .put(vec![
                PutChunk::new("ok", vec![0u8; 20], Some(meta_for(20))),
                PutChunk::new("mismatch", vec![0u8; 20], Some(meta_for(16))),
            ])
            .wait();
        match r {
            Err(Error::Invalid(msg)) => assert!(msg.contains("mismatch"), "names the key: {msg}"),
            other => panic!("{layout}: expected Error::Invalid, got {other:?}"),
        }
        assert_eq!(dbsize(&srv), 0, "{layout}: nothing written");
    }
}
both_backends!(metadata_length_mismatch_on_put, meta_mismatch_put);

// ---------------------------------------------------------------------------------------
// concurrency, async, stats
// ---------------------------------------------------------------------------------------

fn concurrency(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, b, KeyLayout::Lmcache);
    let stop_at = Instant::now() + Duration::from_millis(800);
    let data = |t: usize, i: usize| -> Vec<u8> {
        let mut v = format!("t{t}i{i}:").into_bytes();
        v.resize(32 + (t * 131 + i * 17) % 6000, (t * 7 + i) as u8);
        v
    };
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let e = e.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 100);
                let mut i = 0usize;
                while Instant::now() < stop_at && i < 3000 {
                    let k = format!("c{t}-{i}");
                    let d = data(t, i);
                    match rng.below(3) {
                        0 => e
                            .put(vec![PutChunk::new(
                                k.as_bytes(),
                                d.clone(),
                                Some(meta_for(d.len())),
                            )])
                            .wait()
                            .unwrap(),
                        1 => e
                            .put(vec![PutChunk::new(k.as_bytes(), d.clone(), None)])
                            .submit()
                            .wait()
                            .unwrap(),
                        _ => {
                            let tk = e
                                .put(vec![PutChunk::new(k.as_bytes(), d.clone(), None)])
                                .try_submit();
                            match tk {
                                Ok(tk) => tk.wait().unwrap(),
                                Err(Error::Busy { .. }) => e
                                    .put(vec![PutChunk::new(k.as_bytes(), d.clone(), None)])
                                    .wait()
                                    .unwrap(),
                                Err(other) => panic!("try_put: {other}"),
                            }
                        }
                    }
                    let missing = format!("c{t}-missing-{i}");
                    let prev = if i > 0 {
                        format!("c{t}-{}", rng.below(i as u64))
                    } else {
                        k.clone()
                    };
                    let got = e.get(&[&k, &missing, &prev]).wait().unwrap();
                    assert_eq!(got[0].as_ref().unwrap().data, d, "thread {t} key {i}");
                    assert!(got[1].is_none());
                    let pi: usize = prev.rsplit('-').next().unwrap().parse().unwrap();
                    assert_eq!(got[2].as_ref().unwrap().data, data(t, pi));
                    assert_eq!(e.exists(&[&k, &missing]).wait().unwrap(), vec![true, false]);
                    if i % 8 == 0 {
                        assert_eq!(e.contains_prefix(&[&k, &prev, &missing]).wait().unwrap(), 2);
                        assert_eq!(
                            e.prefetch(&[&prev, &k, &missing, &k]).wait().unwrap().len(),
                            2
                        );
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    let counts: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(counts.iter().all(|&c| c > 0));
    // final check: everything written is there, in one big batch
    let mut keys = Vec::new();
    let mut want = Vec::new();
    for (t, &n) in counts.iter().enumerate() {
        for i in 0..n {
            keys.push(format!("c{t}-{i}"));
            want.push(data(t, i));
        }
    }
    let got = e.get(&keys).wait().unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_ref().map(|c| &c.data), Some(&want[i]), "{}", keys[i]);
    }
    assert_eq!(dbsize(&srv), 2 * keys.len() as i64);
    assert_eq!(err_count(&e, "corrupt"), 0);
}
both_backends!(concurrent_mixed_threads, concurrency);

/// A minimal executor: the waker unparks the blocked thread. No tokio, no futures crate.
struct ThreadWaker {
    thread: thread::Thread,
    wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let w = Arc::new(ThreadWaker {
        thread: thread::current(),
        wakes: AtomicUsize::new(0),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    let t0 = Instant::now();
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let before = w.wakes.load(Ordering::SeqCst);
        let p0 = Instant::now();
        thread::park_timeout(Duration::from_secs(5));
        if w.wakes.load(Ordering::SeqCst) == before && p0.elapsed() >= Duration::from_secs(5) {
            // Nobody woke us in 5 s: either a lost wake-up or a hang.
            if f.as_mut().poll(&mut cx).is_ready() {
                panic!("lost wake-up: the future was ready but its waker was never called");
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "future did not complete in 30 s"
        );
    }
}

/// Polls all futures until every one is ready (a hand-written join_all).
struct JoinAll<F: Future> {
    futs: Vec<Option<Pin<Box<F>>>>,
    out: Vec<Option<F::Output>>,
}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut pending = false;
        for (i, slot) in this.futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        this.out[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(this.out.iter_mut().map(|o| o.take().unwrap()).collect())
        }
    }
}

// The futures are boxed, so nothing in JoinAll is structurally pinned.
impl<F: Future> Unpin for JoinAll<F> {}

fn join_all<F: Future>(futs: Vec<F>) -> JoinAll<F> {
    let n = futs.len();
    JoinAll {
        futs: futs.into_iter().map(|f| Some(Box::pin(f))).collect(),
        out: (0..n).map(|_| None).collect(),
    }
}

fn async_trivial_executor(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, b, KeyLayout::Lmcache);
    block_on(async {
        e.put(vec![
            PutChunk::new("a1", vec![1u8; 100], Some(meta_for(100))),
            PutChunk::new("a2", vec![2u8; 3 * MIB], None),
        ])
        .submit()
        .await
        .unwrap();
        let got = e.get(&["a1", "zz", "a2"]).submit().await.unwrap();
        assert_eq!(got[0].as_ref().unwrap().data, vec![1u8; 100]);
        assert_eq!(got[0].as_ref().unwrap().meta, Some(meta_for(100)));
        assert!(got[1].is_none());
        assert_eq!(got[2].as_ref().unwrap().data.len(), 3 * MIB);
        assert_eq!(
            e.exists(&["a1", "zz"]).submit().await.unwrap(),
            vec![true, false]
        );
        assert_eq!(
            e.contains_prefix(&["a1", "a2", "zz"])
                .submit()
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            e.prefetch(&["a2", "zz", "a1"])
                .submit()
                .await
                .unwrap()
                .len(),
            1
        );
        let (bufs, infos) = e
            .get(&["a1"])
            .into_vecs(vec![vec![0u8; 100]])
            .submit()
            .await
            .unwrap();
        assert_eq!(infos[0].as_ref().unwrap().len, 100);
        assert_eq!(bufs[0], vec![1u8; 100]);
        e.put(vec![PutChunk::new("a3", vec![3u8; 10], None)])
            .try_submit()
            .unwrap()
            .await
            .unwrap();
        assert_eq!(e.delete(&["a3", "nope"]).submit().await.unwrap(), 1);
    });

    // Many tickets in flight at once, joined by hand, from several shards.
    let puts: Vec<_> = (0..32)
        .map(|i| {
            e.put(vec![PutChunk::new(
                format!("j{i}"),
                vec![i as u8; 1000 + i],
                None,
            )])
            .submit()
        })
        .collect();
    for r in block_on(join_all(puts)) {
        r.unwrap();
    }
    let gets: Vec<_> = (0..32)
        .map(|i| e.get(&[format!("j{i}")]).submit())
        .collect();
    for (i, r) in block_on(join_all(gets)).into_iter().enumerate() {
        let g = r.unwrap();
        assert_eq!(g[0].as_ref().unwrap().data, vec![i as u8; 1000 + i]);
    }
    // A ticket polled once, then waited on blocking, still yields its answer.
    let mut t = e.get(&["a1"]).submit();
    let w = Waker::from(Arc::new(ThreadWaker {
        thread: thread::current(),
        wakes: AtomicUsize::new(0),
    }));
    let first = Pin::new(&mut t).poll(&mut Context::from_waker(&w));
    match first {
        Poll::Ready(r) => assert!(r.unwrap()[0].is_some()),
        Poll::Pending => assert!(t.wait().unwrap()[0].is_some()),
    }
    // Futures are Send: a ticket can be awaited on another thread.
    let t = e.get(&["a1"]).submit();
    let r = thread::spawn(move || block_on(t)).join().unwrap();
    assert!(r.unwrap()[0].is_some());
}
both_backends!(async_under_trivial_executor, async_trivial_executor);

fn stats(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine(&srv, b, KeyLayout::Lmcache);
    let s0 = e.stats();
    assert_eq!(s0.backend, expected_kind(b), "backend reported");
    assert!(s0.shards >= 1);
    let ops = |s: &slotline::Stats, p: Priority| s.metrics.classes[p.index()].ops;
    for i in 0..5 {
        e.put(vec![PutChunk::new(format!("s{i}"), vec![1u8; 4096], None)])
            .wait()
            .unwrap();
    }
    for _ in 0..10 {
        e.get(&["s0", "s1", "none"]).wait().unwrap();
    }
    for _ in 0..3 {
        e.exists(&["s0"]).wait().unwrap();
        e.contains_prefix(&["s0", "s1"]).wait().unwrap();
    }
    for _ in 0..4 {
        e.prefetch(&["s0", "none"]).wait().unwrap();
    }
    e.get(&["s0"])
        .into_vecs(vec![vec![0u8; 4096]])
        .wait()
        .unwrap();
    e.delete(&["s4"]).wait().unwrap();
    let s = e.stats();
    assert_eq!(
        ops(&s, Priority::Get) - ops(&s0, Priority::Get),
        11,
        "GET ops (10 get + 1 get_into)"
    );
    assert_eq!(
        ops(&s, Priority::Put) - ops(&s0, Priority::Put),
        6,
        "PUT ops (5 puts + 1 delete)"
    );
    assert_eq!(
        ops(&s, Priority::Peek) - ops(&s0, Priority::Peek),
        6,
        "PEEK ops"
    );
    assert_eq!(
        ops(&s, Priority::Prefetch) - ops(&s0, Priority::Prefetch),
        4,
        "PREFETCH ops"
    );
    let g = &s.metrics.classes[Priority::Get.index()];
    assert_eq!(g.class, Priority::Get);
    assert!(
        g.keys - s0.metrics.classes[Priority::Get.index()].keys == 31,
        "keys: 10*3 + 1"
    );
    assert!(g.p50 > Duration::ZERO, "p50 after gets");
    assert!(g.max >= g.p50);
    assert!(s.metrics.hits >= 10 * 2, "hits counted");
    assert!(s.metrics.misses >= 10, "misses counted");
    assert!(s.metrics.frames_sent > s0.metrics.frames_sent);
    assert!(s.metrics.bytes_sent > 5 * 4096);
    assert!(s.metrics.bytes_received > 10 * 2 * 4096);
    assert!(
        s.metrics.errors.is_empty(),
        "no errors: {:?}",
        s.metrics.errors
    );
    let shown = s.to_string();
    assert!(
        shown.contains(match b {
            IoBackend::IoUring => "io_uring",
            _ => "epoll",
        }),
        "Display names the backend: {shown}"
    );
}
both_backends!(stats_counts_and_backend, stats);

// ---------------------------------------------------------------------------------------
// stalls and shutdown
// ---------------------------------------------------------------------------------------

fn stalled_server_times_out(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_with(&srv, b, |c| c.request_timeout = Duration::from_millis(500));
    e.put(vec![PutChunk::new("k", vec![1u8; 10], None)])
        .wait()
        .unwrap();
    // CLIENT PAUSE ALL holds every command, this engine's reads included, and is in
    // force once it has answered: no guess about when a stall began.
    let pause = Duration::from_secs(5);
    srv.cmd(&["CLIENT", "PAUSE", &pause.as_millis().to_string(), "ALL"]);
    let paused_at = Instant::now();
    let r = e.get(&["k"]).wait();
    let returned = paused_at.elapsed();
    assert!(
        returned < pause,
        "the call returned after {returned:?}, when the paused server could answer"
    );
    match r {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected a time-out while the server is paused, got {other:?}"),
    }
    assert!(err_count(&e, "timeout") > 0);
    // Once the pause ends, reads succeed again.
    wait_until(
        pause + Duration::from_secs(20),
        "a read to succeed after the pause",
        || {
            e.get(&["k"])
                .wait()
                .ok()
                .and_then(|g| g[0].clone())
                .is_some()
        },
    );
}
both_backends!(stalled_server_gives_timeout, stalled_server_times_out);

static SHARD_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on shard threads (they do not fail the test thread by themselves).
fn watch_shard_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if thread::current()
                .name()
                .is_some_and(|n| n.starts_with("slotline-shard"))
            {
                SHARD_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

/// Dropping the engine right after a call returns must shut the shards down cleanly:
/// no shard thread may end up dropping the engine (and joining itself).
fn drop_right_after_call(b: IoBackend) {
    watch_shard_panics();
    let srv = TestServer::start();
    {
        let e = engine(&srv, b, KeyLayout::Lmcache);
        e.put(vec![PutChunk::new("k", vec![1u8; 100], None)])
            .wait()
            .unwrap();
    }
    let before = SHARD_PANICS.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let mut rounds = 0;
    while rounds < 300 && t0.elapsed() < Duration::from_secs(4) {
        let e = engine_with(&srv, b, |c| c.shards = Some(1));
        assert!(e.get(&["k"]).wait().unwrap()[0].is_some());
        drop(e);
        rounds += 1;
    }
    thread::sleep(Duration::from_millis(100));
    let panics = SHARD_PANICS.load(Ordering::SeqCst) - before;
    assert_eq!(
        panics, 0,
        "{panics} shard thread(s) panicked in {rounds} create/get/drop rounds (see 'failed to join thread' above)"
    );
}
both_backends!(engine_drop_after_call_is_clean, drop_right_after_call);

/// A full lane is backpressure, not unbounded memory: while the server is stalled the
/// shard holds a bounded number of requests, the one-slot lane fills, and try-variants
/// answer `Busy` at once. Everything accepted still completes once the server wakes.
fn full_lane_gives_busy(b: IoBackend) {
    let srv = TestServer::start();
    let e = engine_with(&srv, b, |c| {
        c.shards = Some(1);
        c.lane_capacity = 1;
        c.max_connections = 1;
    });
    e.put(vec![PutChunk::new("warm", vec![1u8; 16], None)])
        .wait()
        .unwrap();
    // The server answers nothing for 5 s (in force once CLIENT PAUSE has answered).
    srv.cmd(&["CLIENT", "PAUSE", "5000", "ALL"]);
    let ends = Instant::now() + Duration::from_secs(5);
    let mut accepted = Vec::new();
    let mut busy_get = false;
    let mut busy_put = false;
    let mut puts = Vec::new();
    while !(busy_get && busy_put) && Instant::now() < ends {
        match e.get(&["warm"]).try_submit() {
            Ok(t) => accepted.push(t),
            Err(Error::Busy { class }) => {
                assert_eq!(class, "get");
                busy_get = true;
            }
            Err(other) => panic!("try_get: {other}"),
        }
        match e
            .put(vec![PutChunk::new("p", vec![2u8; 16], None)])
            .try_submit()
        {
            Ok(t) => puts.push(t),
            Err(Error::Busy { class }) => {
                assert_eq!(class, "put");
                busy_put = true;
            }
            Err(other) => panic!("try_put: {other}"),
        }
    }
    assert!(busy_get, "no Busy after {} accepted gets", accepted.len());
    assert!(busy_put, "no Busy after {} accepted puts", puts.len());
    for t in puts {
        t.wait().unwrap();
    }
    for t in accepted {
        let got = t.wait().unwrap();
        assert_eq!(got[0].as_ref().unwrap().data, vec![1u8; 16]);
    }
    assert!(e.stats().metrics.error_count("busy") >= 1);
}
both_backends!(full_lane_busy, full_lane_gives_busy);
