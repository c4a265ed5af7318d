//! `slotline bench`'s topology flags end to end (issue 19): clusters of 1 and 2 masters
//! started in turn, pinned servers with I/O threads from a chosen binary, a pinned
//! client, both read modes in one invocation, every peer against the clusters, and
//! JSON records naming masters and read mode.

use std::process::{Command, Stdio};

fn cpus_allowed() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    slotline::host::parse_cpu_list(&list).unwrap_or_else(|_| vec![0])
}

/// `"key":value` of a flat JSON line, as text.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

#[test]
fn bench_masters_series_with_pinning_and_both_read_modes() {
    let cpus = cpus_allowed();
    let (server, client) = (cpus[cpus.len() - 1], cpus[0]);
    let bin = slotline_testkit::redis_server_binary().expect("redis-server");
    let args = [
        "bench",
        "--masters",
        "1,2",
        "--value-size",
        "128k",
        "--batch",
        "4",
        "--batches",
        "3",
        "--runs",
        "1",
        "--keys",
        "overwrite",
        "--backend",
        "epoll",
        "--reads",
        "get,get-into",
        "--server-cores",
        &server.to_string(),
        "--client-cores",
        &client.to_string(),
        "--io-threads",
        "2",
        "--server-bin",
        bin.to_str().expect("utf-8 path"),
        "--format",
        "json",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_slotline"))
        .args(args)
        .env("SLOTLINE_LOG", "warn")
        .env("SLOTLINE_NO_PROGRESS", "1")
        .stdin(Stdio::null())
        .output()
        .expect("the slotline binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "bench failed\n{stdout}\n{stderr}");
    let recs: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    // 2 cluster sizes x 4 rows (naive, parallel, get, get-into) x 2 phases x (run +
    // median).
    assert_eq!(recs.len(), 32, "{stdout}");
    let mut seen = std::collections::BTreeSet::new();
    for r in &recs {
        let masters = field(r, "masters").unwrap_or("?");
        let read = field(r, "read").unwrap_or("?");
        let peer = field(r, "peer").unwrap_or("?");
        assert!(["1", "2"].contains(&masters), "{r}");
        assert!(["get", "get-into"].contains(&read), "{r}");
        assert_eq!(field(r, "mode"), Some("cluster"), "{r}");
        assert_eq!(field(r, "replicas"), Some("0"), "{r}");
        assert_eq!(field(r, "io_threads"), Some("2"), "{r}");
        let srv_cpu = field(r, "server_cpu_us_per_key").unwrap_or("null");
        assert!(srv_cpu != "null", "no server CPU in {r}");
        seen.insert((masters.to_string(), peer.to_string(), read.to_string()));
    }
    for m in ["1", "2"] {
        for (peer, read) in [
            ("naive", "get"),
            ("parallel", "get-into"),
            ("slotline[epoll]", "get"),
            ("slotline[epoll]+into", "get-into"),
        ] {
            assert!(
                seen.contains(&(m.to_string(), peer.to_string(), read.to_string())),
                "no {peer} ({read}) at {m} master(s): {seen:?}"
            );
        }
    }
    for want in [
        "slotline[epoll] / slotline[epoll]+into",
        "scaling: GB/s (keys/s) against masters",
        "2 master(s)",
        &format!("node CPUs [{server} {server}]"),
    ] {
        assert!(stderr.contains(want), "no {want:?} in\n{stderr}");
    }
}
