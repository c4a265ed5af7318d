//! The Prometheus exposition against a real redis-server: counters move with traffic.

mod common;

use std::time::Duration;

use common::TestServer;
use slotline::config::IoBackend;
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
    cfg.deadlines = slotline::config::Deadlines::uniform(cfg.request_timeout);
    let e = Engine::new(cfg).unwrap();
    let before = e.prometheus_text();
    assert_eq!(
        sample(&before, "slotline_operations_total{class=\"put\"}"),
        0.0
    );

    let data = vec![7u8; 100_000];
    e.put(vec![PutChunk::new("m@1@0@aa@bfloat16", data, None)])
        .unwrap();
    let got = e
        .get(&["m@1@0@aa@bfloat16", "m@1@0@missing@bfloat16"])
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
