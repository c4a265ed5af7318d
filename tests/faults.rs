//! Fault paths (issue 9): a dropped two-phase put still writes its metadata.
//!
//! Every test runs on both backends against real redis-server processes started by the
//! harness; nothing is mocked.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use slotline::config::{IoBackend, Mode};
use slotline::{Config, Engine, KeyLayout, PutChunk, RemoteMetadata, Value};

/// A cluster `put_async` in the `lmcache` layout whose ticket is dropped at once: the
/// engine drives the metadata phase itself, so both keys of every chunk appear.
fn dropped_two_phase_put_completes(backend: IoBackend) {
    let c = TestCluster::start();
    let mut cfg = Config::from_url(&c.seed_url()).expect("seed URL parses");
    cfg.mode = Mode::Cluster;
    cfg.io_backend = backend;
    cfg.key_layout = KeyLayout::Lmcache;
    cfg.request_timeout = Duration::from_secs(10);
    let e = Engine::new(cfg).expect("engine");
    let layout = KeyLayout::Lmcache;
    let keys: Vec<Vec<u8>> = (0..64)
        .map(|i| format!("model@1@0@{i:x}@bfloat16").into_bytes())
        .collect();
    let len = 4096;
    let chunks: Vec<PutChunk> = keys
        .iter()
        .map(|k| {
            let meta = RemoteMetadata::new(len, 1, 3, &[2, 1, len / 2, 1]).unwrap();
            PutChunk::new(k.clone(), vec![7u8; len], Some(meta))
        })
        .collect();
    drop(e.put_async(chunks));
    let exists = |k: &[u8]| e.command(&[b"EXISTS", k]).unwrap() == Value::Int(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut missing: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        missing = keys
            .iter()
            .flat_map(|k| [layout.metadata_key(k).unwrap(), layout.payload_key(k)])
            .filter(|rk| !exists(rk))
            .map(|rk| String::from_utf8_lossy(&rk).into_owned())
            .collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        missing.is_empty(),
        "{} keys never written after a dropped put_async, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(4)]
    );
    // A ticket that is kept completes as before, and is_done() turns true.
    let k = b"model@1@0@kept@bfloat16".to_vec();
    let meta = RemoteMetadata::new(len, 1, 3, &[2, 1, len / 2, 1]).unwrap();
    let t = e.put_async(vec![PutChunk::new(k.clone(), vec![1u8; len], Some(meta))]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.is_done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(t.is_done(), "is_done() never became true");
    t.wait().expect("kept put");
    assert!(exists(&layout.metadata_key(&k).unwrap()) && exists(&layout.payload_key(&k)));
}
both_backends!(dropped_two_phase_put_completes);
