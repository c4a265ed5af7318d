//! The Prometheus exposition against a real redis-server: counters move with traffic.

mod common;

use std::time::Duration;

use common::TestServer;
use slotline::IoBackend;
use slotline::{Config, Engine, PutChunk};

/// The value of the sample whose series (`name{labels}`) is exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn counters_move(backend: IoBackend) {
    let srv = TestServer::start();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(1);
    cfg.request_timeout = Duration::from_secs(20);
    cfg.deadlines = slotline::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    let before = e.prometheus_text();
    assert_eq!(
        sample(&before, "slotline_operations_total{class=\"put\"}"),
        0.0
    );

    let data = vec![7u8; 100_000];
    e.put(vec![PutChunk::new("m@1@0@aa@bfloat16", data, None)])
        .wait()
        .unwrap();
    let got = e
        .get(&["m@1@0@aa@bfloat16", "m@1@0@missing@bfloat16"])
        .wait()
        .unwrap();
    assert!(got[0].is_some() && got[1].is_none());

    let after = e.prometheus_text();
    assert_eq!(
        sample(&after, "slotline_operations_total{class=\"put\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "slotline_operations_total{class=\"get\"}"),
        1.0
    );
    assert_eq!(sample(&after, "slotline_keys_total{class=\"get\"}"), 2.0);
    assert_eq!(sample(&after, "slotline_hits_total"), 1.0);
    assert_eq!(sample(&after, "slotline_misses_total"), 1.0);
    assert!(sample(&after, "slotline_sent_bytes_total") >= 100_000.0);
    assert!(sample(&after, "slotline_received_bytes_total") >= 100_000.0);
    assert!(sample(&after, "slotline_frames_sent_total") >= 2.0);
    assert_eq!(
        sample(
            &after,
            "slotline_operation_duration_seconds_count{class=\"get\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "slotline_operation_duration_seconds_bucket{class=\"get\",le=\"+Inf\"}"
        ),
        1.0
    );
    let backend = e.backend().to_string();
    assert_eq!(
        sample(
            &after,
            &format!("slotline_engine_info{{backend=\"{backend}\",shards=\"1\"}}")
        ),
        1.0
    );
}

both_backends!(counters_move);

/// Many caller threads on a multi-shard engine: the per-shard stripes add up to
/// exactly what was done (no update lost), and the exposition agrees with `stats()`.
fn many_threads_consistent_totals(backend: IoBackend) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 25;
    const KEYS: usize = 4;
    let srv = TestServer::start();
    let mut cfg = Config::from_url(&srv.url()).unwrap();
    cfg.io_backend = backend;
    cfg.shards = Some(3);
    cfg.cores = None;
    cfg.request_timeout = Duration::from_secs(30);
    let e = Engine::new(cfg).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let e = &e;
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let keys: Vec<String> = (0..KEYS)
                        .map(|k| format!("m@1@0@t{t}r{r}k{k}@bfloat16"))
                        .collect();
                    let chunks = keys
                        .iter()
                        .map(|k| PutChunk::new(k.as_str(), vec![t as u8; 1000], None))
                        .collect::<Vec<_>>();
                    e.put(chunks).wait().unwrap();
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let got = e.get(&refs).wait().unwrap();
                    assert!(got.iter().all(Option::is_some));
                }
            });
        }
    });
    let st = e.stats();
    let m = &st.metrics;
    let class = |name: &str| m.classes.iter().find(|c| c.class.name() == name).unwrap();
    let ops = (THREADS * ROUNDS) as u64;
    assert_eq!(class("put").ops, ops);
    assert_eq!(class("put").keys, ops * KEYS as u64);
    assert_eq!(class("get").ops, ops);
    assert_eq!(m.hits, ops * KEYS as u64);
    assert_eq!(m.misses, 0);
    assert_eq!(m.per_shard.len(), 3);
    let sum = |f: fn(&slotline::ShardIoStats) -> u64| -> u64 { m.per_shard.iter().map(f).sum() };
    assert_eq!(sum(|s| s.bytes_sent), m.bytes_sent);
    assert_eq!(sum(|s| s.bytes_received), m.bytes_received);
    assert_eq!(sum(|s| s.frames_sent), m.frames_sent);
    assert!(m.bytes_sent >= ops * KEYS as u64 * 1000);
    assert_eq!(st.lane_depth.len(), 3);

    let text = e.prometheus_text();
    assert_eq!(
        sample(&text, "slotline_operations_total{class=\"put\"}"),
        ops as f64
    );
    assert_eq!(
        sample(
            &text,
            "slotline_operation_duration_seconds_count{class=\"get\"}"
        ),
        ops as f64
    );
    assert_eq!(
        sample(
            &text,
            "slotline_operation_duration_seconds_bucket{class=\"put\",le=\"+Inf\"}"
        ),
        ops as f64
    );
    let per_shard: f64 = (0..3)
        .map(|i| {
            sample(
                &text,
                &format!("slotline_shard_sent_bytes_total{{shard=\"{i}\"}}"),
            )
        })
        .sum();
    assert_eq!(per_shard, sample(&text, "slotline_sent_bytes_total"));
    // Each family is declared once.
    for fam in [
        "slotline_shard_lane_depth",
        "slotline_shard_payload_bytes_total",
        "slotline_operation_duration_seconds",
    ] {
        assert_eq!(text.matches(&format!("# TYPE {fam} ")).count(), 1, "{fam}");
    }
}

both_backends!(many_threads_consistent_totals);
