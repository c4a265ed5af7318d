//! Prometheus text exposition (format 0.0.4) of an engine's [`Stats`], served by
//! [`Engine::prometheus_text`](crate::Engine::prometheus_text).
//!
//! Every family carries `# HELP` and `# TYPE` lines and the `slotline_` prefix; units are
//! in the names (`_bytes`, `_seconds`). Plain counters come from one table
//! ([`COUNTERS`]), so a new field of `MetricsSnapshot` is one line there.
//!
//! Per-shard families (`slotline_shard_*`, label `shard`) carry what tells an operator
//! that one shard is the bottleneck: its lane depth and its bytes per I/O path. Their
//! cardinality is bounded by the shard count (one per core), times 4 at most.

use std::fmt::Write as _;

use super::{LatencyHistogram, MetricsSnapshot, ShardIoStats, Stats, ERROR_KINDS};
use crate::priority::Priority;

/// The content type a scrape response carries.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing counter read from a snapshot: name (with `_total`),
/// help text, accessor.
type Counter = (&'static str, &'static str, fn(&MetricsSnapshot) -> u64);

/// Engine-wide counters, one line each.
const COUNTERS: &[Counter] = &[
    (
        "slotline_frames_sent_total",
        "Frames written (one round trip's worth of pipelined commands each).",
        |m| m.frames_sent,
    ),
    (
        "slotline_sent_bytes_total",
        "Request bytes written to servers.",
        |m| m.bytes_sent,
    ),
    (
        "slotline_received_bytes_total",
        "Reply bytes read from servers.",
        |m| m.bytes_received,
    ),
    ("slotline_hits_total", "Chunks found.", |m| m.hits),
    (
        "slotline_misses_total",
        "Chunks not found (including corrupt and evicted ones).",
        |m| m.misses,
    ),
    (
        "slotline_redirects_total",
        "MOVED/ASK/TRYAGAIN-style redirects followed.",
        |m| m.error_count("redirect"),
    ),
    (
        "slotline_reconnects_total",
        "Connections re-opened after a failure.",
        |m| m.error_count("reconnect"),
    ),
    (
        "slotline_kernel_late_releases_total",
        "io_uring: payload destinations held past their connection's close until the kernel returned the receive.",
        |m| m.kernel_late_releases,
    ),
    (
        "slotline_kernel_drained_total",
        "io_uring: operations cancelled and returned by the kernel when shards stopped.",
        |m| m.kernel_drained,
    ),
    (
        "slotline_kernel_leaks_total",
        "io_uring: operations the kernel never returned when shards stopped (memory leaked on purpose).",
        |m| m.kernel_leaks,
    ),
    (
        "slotline_efault_ops_total",
        "Socket operations that failed with EFAULT (memory no longer valid); zero unless a caller broke the lending rules.",
        |m| m.efault_ops,
    ),
    (
        "slotline_leaked_buffers_total",
        "Caller buffers never handed back by the kernel within their bound (kept allocated, never freed).",
        |m| m.leaked_buffers,
    ),
    (
        "slotline_received_direct_bytes_total",
        "Payload bytes received straight into their destination (no user-space copy).",
        |m| m.recv_direct_bytes,
    ),
    (
        "slotline_received_staged_bytes_total",
        "Payload bytes copied out of a connection's receive buffer.",
        |m| m.recv_staged_bytes,
    ),
    (
        "slotline_sent_by_reference_bytes_total",
        "Payload bytes sent from the caller's memory (no user-space copy).",
        |m| m.sent_by_reference_bytes,
    ),
    (
        "slotline_sent_copied_bytes_total",
        "Payload bytes copied into a frame before sending (small values).",
        |m| m.sent_copied_bytes,
    ),
    (
        "slotline_syscalls_io_uring_enter_total",
        "io_uring_enter calls of the shard loops.",
        |m| m.syscalls.enter,
    ),
    (
        "slotline_syscalls_epoll_wait_total",
        "epoll_wait calls of the shard loops.",
        |m| m.syscalls.epoll_wait,
    ),
    (
        "slotline_syscalls_epoll_ctl_total",
        "epoll_ctl calls of the shard loops.",
        |m| m.syscalls.epoll_ctl,
    ),
    (
        "slotline_syscalls_socket_read_total",
        "Socket read calls (epoll backend).",
        |m| m.syscalls.sock_read,
    ),
    (
        "slotline_syscalls_socket_write_total",
        "Socket sendmsg calls (epoll backend).",
        |m| m.syscalls.sock_write,
    ),
    (
        "slotline_syscalls_doorbell_read_total",
        "Doorbell eventfd reads by the shards.",
        |m| m.syscalls.doorbell_read,
    ),
    (
        "slotline_syscalls_doorbell_write_total",
        "Doorbell eventfd writes by callers waking a shard.",
        |m| m.syscalls.doorbell_write,
    ),
    (
        "slotline_tls_handshakes_total",
        "TLS handshakes completed.",
        |m| m.tls_handshakes,
    ),
    (
        "slotline_tls_handshake_failures_total",
        "TLS handshakes that failed (certificate refused either way, timeout).",
        |m| m.tls_handshake_failures,
    ),
    (
        "slotline_sent_fixed_bytes_total",
        "Of the by-reference payload bytes, those sent from a registered region (io_uring fixed buffer).",
        |m| m.sent_fixed_bytes,
    ),
    (
        "slotline_received_fixed_bytes_total",
        "Of the directly received bytes, those received into a registered region (READ_FIXED).",
        |m| m.recv_fixed_bytes,
    ),
    (
        "slotline_region_fallbacks_total",
        "Region registrations a shard ring refused (locked-memory limit); those payloads take the plain path.",
        |m| m.region_fallbacks,
    ),
];

/// Per-shard counters: name, help, accessor.
type ShardCounter = (&'static str, &'static str, ShardField);

/// Per-shard I/O counters, one family each.
const SHARD_COUNTERS: &[ShardCounter] = &[
    (
        "slotline_shard_frames_sent_total",
        "Frames written, by shard.",
        |s| s.frames_sent,
    ),
    (
        "slotline_shard_sent_bytes_total",
        "Request bytes written to servers, by shard.",
        |s| s.bytes_sent,
    ),
    (
        "slotline_shard_received_bytes_total",
        "Reply bytes read from servers, by shard.",
        |s| s.bytes_received,
    ),
];

/// A per-shard accessor.
type ShardField = fn(&ShardIoStats) -> u64;

/// Payload bytes per I/O path: the `path` label's value and the accessor.
const IO_PATHS: &[(&str, ShardField)] = &[
    ("received_direct", |s| s.recv_direct_bytes),
    ("received_staged", |s| s.recv_staged_bytes),
    ("sent_by_reference", |s| s.sent_by_reference_bytes),
    ("sent_copied", |s| s.sent_copied_bytes),
];

/// Upper bounds (seconds) of the latency histogram buckets: 50 us .. 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Writes families: a HELP and TYPE header, then samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `stats` and the per-class latency histograms (microseconds, indexed by
/// [`Priority::index`]) as Prometheus text.
pub(crate) fn render(stats: &Stats, latency_us: &[LatencyHistogram]) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    let m = &stats.metrics;

    o.family(
        "slotline_engine_info",
        "gauge",
        "The engine's I/O backend and shard count (value is always 1).",
    );
    let shards = stats.shards.to_string();
    let backend = stats.backend.to_string();
    o.sample(
        "slotline_engine_info",
        &[("backend", &backend), ("shards", &shards)],
        1,
    );
    o.family("slotline_shards", "gauge", "Shard threads running.");
    o.sample("slotline_shards", &[], stats.shards);
    o.family("slotline_regions", "gauge", "Registered regions alive.");
    o.sample("slotline_regions", &[], m.regions);
    o.family(
        "slotline_regions_registered",
        "gauge",
        "Region registrations active on shard rings (one per region and io_uring shard).",
    );
    o.sample("slotline_regions_registered", &[], m.regions_registered);
    o.family(
        "slotline_zombie_connections",
        "gauge",
        "Closed connections whose socket operations the kernel has not returned yet.",
    );
    o.sample("slotline_zombie_connections", &[], m.zombie_conns);
    o.family(
        "slotline_shard_core",
        "gauge",
        "The CPU each shard is pinned to (-1: not pinned).",
    );
    for (i, core) in stats.cores.iter().enumerate() {
        let v = core.map_or(-1, |c| c as i64);
        o.sample("slotline_shard_core", &[("shard", &i.to_string())], v);
    }

    o.family(
        "slotline_operations_total",
        "counter",
        "Completed operations (caller batches) by priority class.",
    );
    for c in &m.classes {
        o.sample(
            "slotline_operations_total",
            &[("class", c.class.name())],
            c.ops,
        );
    }
    o.family(
        "slotline_keys_total",
        "counter",
        "Chunks carried by completed operations, by priority class.",
    );
    for c in &m.classes {
        o.sample("slotline_keys_total", &[("class", c.class.name())], c.keys);
    }

    for (name, help, get) in COUNTERS {
        o.family(name, "counter", help);
        o.sample(name, &[], get(m));
    }

    o.family(
        "slotline_errors_total",
        "counter",
        "Errors and read-rule events by kind.",
    );
    for kind in ERROR_KINDS {
        o.sample(
            "slotline_errors_total",
            &[("kind", kind)],
            m.error_count(kind),
        );
    }
    // Kinds the table above does not know (none today) are still exported.
    for (kind, v) in m
        .errors
        .iter()
        .filter(|(k, _)| !ERROR_KINDS.contains(&k.as_str()))
    {
        o.sample("slotline_errors_total", &[("kind", kind)], v);
    }

    o.family(
        "slotline_shard_lane_depth",
        "gauge",
        "Submissions queued in a shard's lanes, by shard and priority class.",
    );
    for (i, depth) in stats.lane_depth.iter().enumerate() {
        let shard = i.to_string();
        for p in Priority::ALL {
            o.sample(
                "slotline_shard_lane_depth",
                &[("shard", &shard), ("class", p.name())],
                depth[p.index()],
            );
        }
    }
    for (name, help, get) in SHARD_COUNTERS {
        o.family(name, "counter", help);
        for (i, s) in m.per_shard.iter().enumerate() {
            o.sample(name, &[("shard", &i.to_string())], get(s));
        }
    }
    o.family(
        "slotline_shard_payload_bytes_total",
        "counter",
        "Payload bytes by shard and I/O path (received direct or staged, sent by reference or copied).",
    );
    for (i, s) in m.per_shard.iter().enumerate() {
        let shard = i.to_string();
        for (path, get) in IO_PATHS {
            o.sample(
                "slotline_shard_payload_bytes_total",
                &[("shard", &shard), ("path", path)],
                get(s),
            );
        }
    }

    o.family(
        "slotline_operation_duration_seconds",
        "histogram",
        "Latency of whole operations, submission to completion, by priority class.",
    );
    for p in Priority::ALL {
        if let Some(h) = latency_us.get(p.index()) {
            histogram(&mut o, "slotline_operation_duration_seconds", p.name(), h);
        }
    }
    o.0
}

/// One class's histogram: cumulative buckets, `+Inf`, `_sum` and `_count`.
fn histogram(o: &mut Out, name: &str, class: &str, h: &LatencyHistogram) {
    let mut counts = vec![0u64; LATENCY_BUCKETS.len()];
    let mut total = 0u64;
    for (low_us, n) in h.buckets() {
        // Bucket by the lowest value the recorded bin holds (a value recorded as exactly
        // 50 ms is `le="0.05"`); values above the last bound only reach `+Inf`.
        total += n;
        let secs = low_us as f64 / 1e6;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            counts[i] += n;
        }
    }
    let bucket = format!("{name}_bucket");
    let mut cum = 0u64;
    for (le, n) in LATENCY_BUCKETS.iter().zip(&counts) {
        cum += n;
        o.sample(&bucket, &[("class", class), ("le", &le.to_string())], cum);
    }
    // `+Inf` and `_count` from the same walk, so they agree with the buckets even
    // while shards keep recording.
    o.sample(&bucket, &[("class", class), ("le", "+Inf")], total);
    o.sample(
        &format!("{name}_sum"),
        &[("class", class)],
        h.sum_us() as f64 / 1e6,
    );
    o.sample(&format!("{name}_count"), &[("class", class)], total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BackendKind;
    use crate::metrics::Metrics;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    /// A strict line-by-line reader of the 0.0.4 text format: every sample belongs to a
    /// family declared by a preceding TYPE line (histogram samples by their
    /// `_bucket`/`_sum`/`_count` suffix), names and labels are well formed, values
    /// parse, no (name, labels) repeats, each family appears in one block. Returns
    /// samples as `name{labels}` -> value.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut samples = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut closed = BTreeSet::new();
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(valid_name(name), "{line}");
                assert!(helped.insert(name.to_string()), "second HELP: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert!(it.next().is_none(), "{line}");
                assert!(valid_name(name) && name.starts_with("slotline_"), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
                if let Some(prev) = current.replace(name.into()) {
                    closed.insert(prev);
                }
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').unwrap();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, Some(l.strip_suffix('}').expect("closing brace"))),
                None => (series, None),
            };
            assert!(valid_name(name), "{line}");
            let fam = family_of(name, &types);
            assert_eq!(
                current.as_deref(),
                Some(fam.as_str()),
                "sample outside its family: {line}"
            );
            assert!(!closed.contains(&fam));
            if let Some(l) = labels {
                check_labels(l, line);
            }
            assert!(
                samples
                    .insert(series.to_string(), value.parse().unwrap())
                    .is_none(),
                "duplicate {line}"
            );
        }
        samples
    }

    fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
        if types.contains_key(name) {
            return name.into();
        }
        for suf in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suf) {
                if types.get(base).map(String::as_str) == Some("histogram") {
                    return base.into();
                }
            }
        }
        panic!("sample {name} has no TYPE'd family");
    }

    fn valid_name(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }

    /// `k="v",k2="v2"` with escapes `\\`, `\"`, `\n` only; no repeated label name.
    fn check_labels(l: &str, line: &str) {
        let mut seen = BTreeSet::new();
        let mut rest = l;
        while !rest.is_empty() {
            let (k, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label in {line}"));
            assert!(valid_name(k) && !k.starts_with("__"), "{line}");
            assert!(seen.insert(k), "repeated label in {line}");
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        let e = chars.next().map(|(_, c)| c);
                        assert!(matches!(e, Some('\\' | '"' | 'n')), "escape in {line}");
                    }
                    Some((i, '"')) => break i,
                    Some((_, '\n')) | None => panic!("unterminated label in {line}"),
                    Some(_) => {}
                }
            };
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                assert!(rest.is_empty(), "{line}");
            }
        }
    }

    fn stats_of(m: &Metrics) -> Stats {
        Stats {
            backend: BackendKind::Epoll,
            shards: 2,
            cores: vec![Some(0), None],
            metrics: m.snapshot(),
            lane_depth: vec![[0, 0, 0, 1], [0; 4]],
            value_pool: Default::default(),
        }
    }

    #[test]
    fn output_is_valid_exposition_with_every_field() {
        let m = Metrics::with_shards(2);
        for ms in 1..=100 {
            m.op_done(Priority::Get, 3, Duration::from_millis(ms));
        }
        m.op_done(Priority::Peek, 1, Duration::from_micros(20));
        // Socket I/O is recorded by shard threads, into their own stripes.
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::metrics::set_current_shard(1);
                m.frame_sent(100);
                m.received(40);
                m.recv_direct(30);
            });
        });
        m.hits_misses(5, 2);
        m.error("timeout");
        m.error("redirect");
        m.kernel_teardown(3, 0);
        let text = render(&stats_of(&m), &m.latency_histograms());
        let s = parse(&text);
        assert_eq!(s["slotline_operations_total{class=\"get\"}"], 100.0);
        assert_eq!(s["slotline_keys_total{class=\"get\"}"], 300.0);
        assert_eq!(s["slotline_sent_bytes_total"], 100.0);
        assert_eq!(s["slotline_received_bytes_total"], 40.0);
        assert_eq!(s["slotline_frames_sent_total"], 1.0);
        assert_eq!(s["slotline_hits_total"], 5.0);
        assert_eq!(s["slotline_misses_total"], 2.0);
        assert_eq!(s["slotline_errors_total{kind=\"timeout\"}"], 1.0);
        assert_eq!(s["slotline_errors_total{kind=\"io\"}"], 0.0);
        assert_eq!(s["slotline_redirects_total"], 1.0);
        assert_eq!(s["slotline_kernel_drained_total"], 3.0);
        assert_eq!(
            s["slotline_engine_info{backend=\"epoll\",shards=\"2\"}"],
            1.0
        );
        assert_eq!(s["slotline_shard_core{shard=\"1\"}"], -1.0);
        assert_eq!(s["slotline_shard_sent_bytes_total{shard=\"1\"}"], 100.0);
        assert_eq!(s["slotline_shard_sent_bytes_total{shard=\"0\"}"], 0.0);
        assert_eq!(s["slotline_shard_frames_sent_total{shard=\"1\"}"], 1.0);
        assert_eq!(s["slotline_shard_received_bytes_total{shard=\"1\"}"], 40.0);
        assert_eq!(
            s["slotline_shard_payload_bytes_total{shard=\"1\",path=\"received_direct\"}"],
            30.0
        );
        assert_eq!(
            s["slotline_shard_lane_depth{shard=\"0\",class=\"put\"}"],
            1.0
        );
        // Histogram: cumulative, +Inf = count = ops, the 50 ms bucket holds about half.
        let b = |le: &str| {
            s[&format!("slotline_operation_duration_seconds_bucket{{class=\"get\",le=\"{le}\"}}")]
        };
        assert_eq!(b("+Inf"), 100.0);
        assert_eq!(
            s["slotline_operation_duration_seconds_count{class=\"get\"}"],
            100.0
        );
        assert!((49.0..=51.0).contains(&b("0.05")), "{}", b("0.05"));
        assert_eq!(b("0.001"), 1.0); // the 1 ms operation: le is inclusive
        assert_eq!(b("0.0005"), 0.0);
        let mut prev = 0.0;
        for le in LATENCY_BUCKETS {
            let v = b(&le.to_string());
            assert!(v >= prev);
            prev = v;
        }
        let sum = s["slotline_operation_duration_seconds_sum{class=\"get\"}"];
        assert!((5.0..5.2).contains(&sum), "sum {sum}");
        assert_eq!(
            s["slotline_operation_duration_seconds_bucket{class=\"peek\",le=\"0.00005\"}"],
            1.0
        );
        // Every class has a full histogram even when idle.
        assert_eq!(
            s["slotline_operation_duration_seconds_count{class=\"put\"}"],
            0.0
        );
    }

    #[test]
    fn labels_are_escaped() {
        let mut o = Out(String::new());
        o.family("slotline_x", "gauge", "a \\ help\nline");
        o.sample("slotline_x", &[("v", "a\"b\\c\nd")], 1);
        let s = parse(&o.0);
        assert_eq!(s.len(), 1);
        assert!(o.0.contains(r#"v="a\"b\\c\nd""#), "{}", o.0);
    }
}
