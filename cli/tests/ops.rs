//! The operator commands end to end: `slotline metrics` (printed and served over HTTP)
//! against a test server, and `slotline tune` on this machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use slotline_testkit::harness::TestServer;

fn slotline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slotline"));
    c.env("SLOTLINE_LOG", "warn").env_remove("RUST_LOG");
    c
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[test]
fn metrics_printed_after_load() {
    let srv = TestServer::start();
    let out = slotline()
        .args(["metrics", "--url", &srv.url(), "--load", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sample(&text, "slotline_operations_total{class=\"put\"}") >= 1.0);
    assert!(sample(&text, "slotline_hits_total") >= 8.0);
    assert!(text.contains("# TYPE slotline_operation_duration_seconds histogram"));
}

#[test]
fn metrics_served_on_loopback() {
    let srv = TestServer::start();
    let mut child = slotline()
        .args([
            "metrics",
            "--url",
            &srv.url(),
            "--serve",
            "127.0.0.1:0",
            "--load",
            "2",
            "--duration",
            "4",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("serving http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_string();
    let get = |path: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    std::thread::sleep(Duration::from_millis(1500));
    let r = get("/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
    let body = r.split("\r\n\r\n").nth(1).unwrap();
    assert!(sample(body, "slotline_operations_total{class=\"get\"}") >= 1.0);
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    assert!(child.wait().unwrap().success());
}

/// The keys a `--load` left on the server (the layout's two keys per chunk included).
fn load_keys(addr: &str) -> Vec<String> {
    let keys = slotline_testkit::command_str(addr, None, &["KEYS", "slotline-metrics@*"])
        .expect("KEYS on the test server");
    keys.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits (at most `bound`) for `cond`, re-checking every 50 ms; panics naming `what`.
fn wait_for(bound: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + bound;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to the child and waits (at most 30 s) for it to exit.
fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success(), "kill -TERM {pid}");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("slotline metrics exits within 30 s of SIGTERM")
        .unwrap()
}

/// `--load` writes into the server: its keys carry a TTL while it runs, and SIGTERM
/// (what a service manager or `kill` sends) deletes them before the process exits,
/// whether it serves (exit 0) or loads before printing (exit 130).
#[test]
fn metrics_load_keys_have_a_ttl_and_go_on_sigterm() {
    let srv = TestServer::start();
    let addr = srv.addr();
    for serve in [true, false] {
        let mut cmd = slotline();
        cmd.args(["metrics", "--url", &srv.url(), "--load", "600"]);
        if serve {
            cmd.args(["--serve", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if serve {
            let mut first = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut first)
                .unwrap();
            assert!(first.starts_with("serving http://"), "{first:?}");
        }
        // Keys appear once the first put is applied (8 chunks, each a payload and a
        // metadata key in the lmcache layout).
        wait_for(Duration::from_secs(30), "the load's keys", || {
            load_keys(&addr).len() >= 8
        });
        let keys = load_keys(&addr);
        assert!(
            keys.iter()
                .all(|k| k.starts_with(&format!("slotline-metrics@{}@", child.id()))),
            "{keys:?}"
        );
        for k in &keys {
            let ttl: i64 = slotline_testkit::command_str(&addr, None, &["TTL", k])
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&ttl), "{k}: TTL {ttl}");
        }
        let status = terminate(child);
        if serve {
            assert!(status.success(), "{status:?}");
        } else {
            assert_eq!(status.code(), Some(130), "{status:?}");
        }
        let left = load_keys(&addr);
        assert!(left.is_empty(), "serve={serve}: keys left {left:?}");
    }
}

#[test]
fn metrics_refuses_non_loopback() {
    let out = slotline()
        .args([
            "metrics",
            "--url",
            "redis://127.0.0.1:1",
            "--serve",
            "0.0.0.0:9464",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only loopback"));
}

#[test]
fn tune_prints_a_plan_and_json() {
    let out = slotline().arg("tune").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shard 0 -> cpu "), "{text}");
    assert!(text.contains("because "), "{text}");
    let out = slotline().args(["tune", "--json"]).output().unwrap();
    assert!(out.status.success());
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.trim_start().starts_with('{') && json.contains("\"shard_cores\":["),
        "{json}"
    );
}
