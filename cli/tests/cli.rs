//! The `slotline` binary end to end: chunk commands against a test server, the bytes they
//! leave in Redis, error messages and exit codes, `servers up/status/down`, and a short
//! `bench` that starts and stops its own server.

use std::process::{Command, Output, Stdio};

use slotline_testkit::harness::{TestCluster, TestDir, TestServer};
use slotline_testkit::OwnedFrame;

fn slotline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slotline"))
        .args(args)
        .env("SLOTLINE_LOG", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the slotline binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns stdout.
fn ok(args: &[&str]) -> String {
    let out = slotline(args);
    assert!(
        out.status.success(),
        "slotline {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts failure with a clean error (no panic) and returns (exit code, stderr).
fn fails(args: &[&str]) -> (i32, String) {
    let out = slotline(args);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "slotline {args:?} should fail\nstdout:\n{}",
        text(&out.stdout)
    );
    assert!(
        !err.contains("panicked"),
        "slotline {args:?} panicked:\n{err}"
    );
    (out.status.code().unwrap_or(-1), err)
}

/// A raw GET, to look at the bytes slotline stored.
fn raw_get(addr: &str, key: &[u8]) -> Option<Vec<u8>> {
    match slotline_testkit::command(addr, None, &[b"GET", key]).expect("GET on the test server") {
        OwnedFrame::BulkString(b) => Some(b),
        OwnedFrame::Null => None,
        other => panic!("GET replied {other:?}"),
    }
}

#[test]
fn put_get_exists_del_round_trip() {
    let srv = TestServer::start();
    let url = srv.url();
    let dir = TestDir::new();
    let key = "meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16";
    let payload: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let input = dir.join("chunk.bin");
    std::fs::write(&input, &payload).unwrap();
    let input = input.to_str().unwrap();

    let out = ok(&[
        "put",
        key,
        "--file",
        input,
        "--url",
        &url,
        "--shape",
        "2,1,32,512",
        "--dtype",
        "bfloat16",
        "--fmt",
        "KV_2LTD",
    ]);
    assert!(out.contains("65536 bytes"), "{out}");

    // LMCache's layout and byte format, readable by LMCache's own connector.
    let meta = raw_get(&srv.addr(), format!("{key}metadata").as_bytes()).expect("metadata key");
    let want: Vec<u8> = [65536i32, 1, 3, 2, 1, 32, 512]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(meta, want);
    assert_eq!(
        raw_get(&srv.addr(), format!("{key}kv_bytes").as_bytes()).as_deref(),
        Some(&payload[..])
    );

    let saved = dir.join("out.bin");
    let out = ok(&["get", key, "--url", &url, "--out", saved.to_str().unwrap()]);
    assert!(
        out.contains("length=65536 fmt=KV_2LTD dtype=bfloat16 shape=[2, 1, 32, 512]"),
        "{out}"
    );
    assert!(out.contains("payload 65536 bytes"), "{out}");
    assert_eq!(std::fs::read(&saved).unwrap(), payload);

    let out = ok(&["exists", key, "absent@1@0@1@half", "--url", &url]);
    assert_eq!(out, format!("{key} true\nabsent@1@0@1@half false\n"));

    assert_eq!(
        ok(&["del", key, "absent@1@0@1@half", "--url", &url]).trim(),
        "1"
    );
    let (code, err) = fails(&["get", key, "--url", &url]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("miss: {key}")), "{err}");
    assert_eq!(
        ok(&["exists", key, "--url", &url]).trim(),
        format!("{key} false")
    );
}

#[test]
fn raw_layout_and_stdout() {
    let srv = TestServer::start();
    let url = srv.url();
    let dir = TestDir::new();
    let input = dir.join("p");
    std::fs::write(&input, b"hello chunk").unwrap();
    ok(&[
        "put",
        "k@1",
        "--file",
        input.to_str().unwrap(),
        "--url",
        &url,
        "--layout",
        "raw",
    ]);
    assert_eq!(
        raw_get(&srv.addr(), b"k@1").as_deref(),
        Some(&b"hello chunk"[..])
    );
    let out = slotline(&["get", "k@1", "--url", &url, "--layout", "raw", "--out", "-"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hello chunk");
    // In the lmcache layout the same key has no metadata: a miss.
    let (code, _) = fails(&["get", "k@1", "--url", &url]);
    assert_eq!(code, 1);
}

#[test]
fn bad_url_and_config_give_clear_errors() {
    let (code, err) = fails(&["get", "k", "--url", "foo://nowhere"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid URL") && err.contains("scheme"),
        "{err}"
    );

    let dir = TestDir::new();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "remote_url: [\n").unwrap();
    let (code, err) = fails(&["exists", "k", "--config", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("bad.yaml"), "{err}");

    let missing = dir.join("missing.yaml");
    let (code, err) = fails(&["exists", "k", "--config", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.yaml"), "{err}");

    // A port nothing listens on: refused, reported, exit 1.
    let port = slotline_testkit::free_port().unwrap();
    let (code, err) = fails(&["exists", "k", "--url", &format!("redis://127.0.0.1:{port}")]);
    assert_eq!(code, 1);
    assert!(err.contains(&port.to_string()), "{err}");

    let (code, err) = fails(&["put", "k", "--file", "/nonexistent/chunk"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/chunk"), "{err}");

    let (code, err) = fails(&["bench", "--value-size", "2q"]);
    assert_eq!(code, 2);
    assert!(err.contains("2q"), "{err}");
}

#[test]
fn servers_up_status_down() {
    let dir = TestDir::new();
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let port = slotline_testkit::free_port().unwrap().to_string();
    let up = ok(&["servers", "up", "--port", &port, "--state-dir", state]);
    let url = format!("redis://127.0.0.1:{port}");
    // Stop the server even if an assertion below fails.
    struct Down<'a>(&'a str);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = slotline(&["servers", "down", "--state-dir", self.0]);
        }
    }
    let _down = Down(state);
    assert!(up.contains(&url), "{up}");
    let status = ok(&["servers", "status", "--state-dir", state]);
    assert!(status.contains("running"), "{status}");
    assert_eq!(
        ok(&["exists", "nothing", "--url", &url]).trim(),
        "nothing false"
    );
    let (code, err) = fails(&["servers", "up", "--port", &port, "--state-dir", state]);
    assert_eq!(code, 1);
    assert!(err.contains("already up"), "{err}");
    let down = ok(&["servers", "down", "--state-dir", state]);
    assert!(down.contains("stopped"), "{down}");
    let status = ok(&["servers", "status", "--state-dir", state]);
    assert!(status.contains("no servers recorded"), "{status}");
}

#[test]
fn servers_up_tls_prints_rediss_url_and_ca() {
    let dir = TestDir::new();
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let port = slotline_testkit::free_port_block(2, false).unwrap();
    let up = ok(&[
        "servers",
        "up",
        "--tls",
        "--port",
        &port.to_string(),
        "--state-dir",
        state,
    ]);
    struct Down<'a>(&'a str);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = slotline(&["servers", "down", "--state-dir", self.0]);
        }
    }
    let _down = Down(state);
    let url = format!("rediss://127.0.0.1:{}", port + 1);
    assert!(up.contains(&format!("TLS URL: {url}")), "{up}");
    let ca = up
        .lines()
        .find_map(|l| l.strip_prefix("TLS CA file: "))
        .unwrap_or_else(|| panic!("no CA file in\n{up}"));
    assert!(std::path::Path::new(ca).exists(), "{ca}");
    assert!(
        up.contains("servers certs DIR` makes a separate one"),
        "{up}"
    );
    let cfg = dir.join("tls.yaml");
    std::fs::write(
        &cfg,
        format!("remote_url: {url}\nextra_config:\n  tls_ca_file: {ca}\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    assert_eq!(
        ok(&["exists", "nothing", "--config", cfg]).trim(),
        "nothing false"
    );
    let down = ok(&["servers", "down", "--state-dir", state]);
    assert!(down.contains("stopped"), "{down}");
}

/// `servers certs` says what its CA is for (and that `servers up --tls` has another),
/// and warns on stderr when its private keys land in a git work tree that would track
/// them; once the directory is ignored, no warning.
#[test]
fn servers_certs_name_their_use_and_warn_about_unignored_keys() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = Command::new("git")
        .args(["init", "-q"])
        .arg(&repo)
        .status()
        .expect("git runs");
    assert!(git.success());
    let tls = repo.join("tls");
    let tls = tls.to_str().unwrap();
    let out = slotline(&["servers", "certs", tls]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("docker compose's redis-tls"), "{stdout}");
    assert!(
        stdout.contains("not the one of `slotline servers up --tls`"),
        "{stdout}"
    );
    assert!(stdout.contains("private keys"), "{stdout}");
    for key in ["server.key", "client.key"] {
        assert!(
            stderr.contains(&format!("warning: {tls}/{key} is a private key")),
            "{key}: {stderr}"
        );
    }
    assert!(stderr.contains("add `tls/` to .gitignore"), "{stderr}");
    std::fs::write(repo.join(".gitignore"), "tls/\n").unwrap();
    let out = slotline(&["servers", "certs", tls]);
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_tls_adds_a_tls_row() {
    let out = slotline(&[
        "bench",
        "--tls",
        "--batches",
        "3",
        "--runs",
        "1",
        "--peers",
        "slotline",
        "--backend",
        "epoll",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for row in ["slotline[epoll]", "slotline[epoll+tls]"] {
        assert!(stdout.contains(row), "no {row:?} in\n{stdout}");
    }
}

#[test]
fn bench_starts_and_stops_its_own_server() {
    let out = slotline(&["bench", "--batches", "5", "--runs", "1", "--json"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for row in ["naive", "slotline[epoll]", "PUT", "GET", "/ naive"] {
        assert!(stdout.contains(row), "no {row:?} in\n{stdout}");
    }
    let json: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    // 2 phases x (1 run + median) x (naive + 2 backends, io_uring may be skipped).
    assert!(json.len() >= 8, "{json:?}");
    assert!(json
        .iter()
        .all(|l| l.ends_with('}') && l.contains("\"keys_per_s\":")));

    // The server it started ("(pids [N], ...") is gone.
    let pids = stderr
        .split("(pids [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("the bench reports the pid of its server");
    for pid in pids.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        assert!(
            stat.is_empty() || state.starts_with(['Z', 'X']),
            "redis-server {pid} still runs after the bench"
        );
    }
}

#[test]
fn bench_parallel_peer_reports_both_key_patterns() {
    let srv = TestServer::start();
    let out = ok(&[
        "bench",
        "--url",
        &srv.url(),
        "--peers",
        "parallel",
        "--batches",
        "2",
        "--runs",
        "1",
        "--batch",
        "5",
        "--parallel-conns",
        "3",
        "--json",
    ]);
    for row in ["parallel", "fresh", "overwrite", "cmds/b", "frames/b"] {
        assert!(out.contains(row), "no {row:?} in\n{out}");
    }
    let json: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    // (put fresh + put overwrite + get) x (1 run + median).
    assert_eq!(json.len(), 6, "{json:?}");
    let put_fresh = json
        .iter()
        .find(|l| l.contains("\"kind\":\"median\"") && l.contains("\"keys\":\"fresh\""))
        .expect("a median fresh PUT row");
    // lmcache layout: payload and metadata SET per chunk, one command and frame each.
    assert!(
        put_fresh.contains("\"commands_per_batch\":10.0"),
        "{put_fresh}"
    );
    assert!(
        put_fresh.contains("\"frames_per_batch\":10.0"),
        "{put_fresh}"
    );
    assert_eq!(srv.cmd(&["DBSIZE"]), "0");
}

#[test]
fn bench_against_a_given_server_leaves_no_keys() {
    let srv = TestServer::start();
    ok(&[
        "bench",
        "--url",
        &srv.url(),
        "--batches",
        "3",
        "--batch",
        "16",
        "--runs",
        "1",
        "--backend",
        "epoll",
        "--layout",
        "hashtag",
        "--concurrency",
        "2",
    ]);
    assert_eq!(srv.cmd(&["DBSIZE"]), "0");
}

#[test]
fn bench_csv_has_one_row_per_run_peer_phase_and_size_and_names_the_build() {
    let srv = TestServer::start();
    let out = slotline(&[
        "bench",
        "--url",
        &srv.url(),
        "--peers",
        "naive,slotline",
        "--backend",
        "epoll",
        "--sizes",
        "1k,4k",
        "--batches",
        "3",
        "--batch",
        "4",
        "--runs",
        "2",
        "--keys",
        "fresh",
        "--format",
        "csv",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // 2 sizes x 2 peers x 2 phases x (2 runs + median).
    assert_eq!(rows.len(), 24, "{stdout}");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{r:?}");
        assert!(!r[col("commit")].is_empty(), "{r:?}");
        assert!(["release", "debug"].contains(&r[col("profile")]), "{r:?}");
    }
    for size in ["1024", "4096"] {
        assert_eq!(
            rows.iter().filter(|r| r[col("value_size")] == size).count(),
            12
        );
    }
    // The tables and the build line went to stderr, clear of the CSV.
    assert!(stderr.contains("build: commit"), "{stderr}");
    assert!(stderr.contains("ratio rows are computed within each run"));
    // Run 2 starts with the second peer.
    let firsts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("run "))
        .map(|l| l.split_whitespace().nth(2).unwrap_or(""))
        .collect();
    assert_eq!(
        &firsts[..4],
        &["naive", "slotline[epoll]", "slotline[epoll]", "naive"],
        "{stderr}"
    );
    assert_eq!(srv.cmd(&["DBSIZE"]), "0");
}

#[test]
fn bench_plot_and_plot_command_write_svgs() {
    let srv = TestServer::start();
    let dir = TestDir::new();
    let plots = dir.join("plots");
    let plots = plots.to_str().unwrap();
    let out = ok(&[
        "bench",
        "--url",
        &srv.url(),
        "--peers",
        "slotline",
        "--backend",
        "epoll",
        "--sizes",
        "2k,8k",
        "--batches",
        "2",
        "--batch",
        "2",
        "--runs",
        "1",
        "--plot",
        plots,
    ]);
    assert!(out.contains("throughput.svg"), "{out}");
    let jsonl = std::fs::read_to_string(dir.join("plots/bench.jsonl")).unwrap();
    assert!(jsonl.lines().all(|l| l.contains("\"commit\":")));
    for f in ["throughput.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("slotline[epoll]"),
            "{f}"
        );
    }
    let again = dir.join("again");
    let again = again.to_str().unwrap();
    let out = ok(&["plot", &format!("{plots}/bench.jsonl"), "--out", again]);
    assert!(out.contains("latency.svg"), "{out}");
    let svg = std::fs::read_to_string(dir.join("again/throughput.svg")).unwrap();
    let texts = svg_texts(&svg);
    // One panel per phase the records have.
    let mut phases: Vec<String> = jsonl
        .lines()
        .map(|l| match field(l, "keys").filter(|k| k != "null") {
            Some(k) => format!("{} {}", field(l, "phase").unwrap().to_uppercase(), k),
            None => field(l, "phase").unwrap().to_uppercase(),
        })
        .collect();
    phases.sort();
    phases.dedup();
    let mut titles: Vec<String> = texts
        .iter()
        .filter(|t| phases.contains(t))
        .cloned()
        .collect();
    titles.sort();
    assert_eq!(titles, phases, "one panel per phase: {texts:?}");
    assert!(phases.len() >= 2, "{phases:?}");
    // x from the smallest to the largest size, nothing past them.
    let sizes: Vec<&String> = texts.iter().filter(|t| is_size_label(t)).collect();
    assert!(!sizes.is_empty());
    assert!(
        sizes
            .iter()
            .all(|t| ["2k", "4k", "8k"].contains(&t.as_str())),
        "{sizes:?}"
    );
    assert!(sizes.iter().any(|t| *t == "2k") && sizes.iter().any(|t| *t == "8k"));
    // y from 0 to at most 1.1 x the largest median.
    let top = jsonl
        .lines()
        .filter(|l| l.contains("\"kind\":\"median\""))
        .filter_map(|l| field(l, "mb_per_s")?.parse::<f64>().ok())
        .fold(0f64, f64::max)
        / 1e3;
    let ticks: Vec<f64> = texts.iter().filter_map(|t| t.parse::<f64>().ok()).collect();
    assert!(ticks.contains(&0.0), "{ticks:?}");
    let max_tick = ticks.iter().cloned().fold(0f64, f64::max);
    assert!(
        max_tick <= top * 1.1 + 1e-9,
        "y axis to {max_tick}, data to {top}"
    );
    let (code, err) = fails(&["plot", "/nonexistent/x.jsonl"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/x.jsonl"), "{err}");
}

/// The text elements of an SVG that plotters wrote (one per label, legend entry,
/// caption), trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// A value of a flat JSON line: a string's text, or a number / null as written.
fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[at..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_string());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

fn is_size_label(t: &str) -> bool {
    let digits = t.trim_end_matches(['k', 'm', 'g']);
    digits.len() < t.len() && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// Distinct stroke colours of the 2-pixel lines (the rows; grid lines are thinner).
fn row_colours(svg: &str) -> Vec<String> {
    let mut c: Vec<String> = svg
        .split("<polyline")
        .skip(1)
        .filter(|p| p.contains("stroke-width=\"2\""))
        .filter_map(|p| {
            let at = p.find("stroke=\"")? + 8;
            Some(p[at..at + p[at..].find('"')?].to_string())
        })
        .collect();
    c.sort();
    c.dedup();
    c
}

/// The Python bench's records (`python -m slotline.bench --records`, written by
/// python/slotline/bench/records.py): seven rows on a standalone server and two on a
/// cluster; a figure per topology, at most five rows each, slotline's kept and the
/// rest named.
#[test]
fn plot_reads_python_bench_records_one_figure_per_topology() {
    let dir = TestDir::new();
    let mut lines = String::new();
    let rows: [(&str, &str, f64); 9] = [
        ("standalone", "slotline[native]", 2.0),
        ("standalone", "slotline[connector]", 1.5),
        ("standalone", "lmcache[resp]", 1.0),
        ("standalone", "lmcache[valkey]", 0.5),
        ("standalone", "lmcache[redis]", 0.25),
        ("standalone", "other-a", 0.2),
        ("standalone", "other-b", 0.1),
        ("cluster", "slotline[native]", 3.0),
        ("cluster", "lmcache[valkey]", 1.0),
    ];
    for (mode, peer, gb) in rows {
        for size in [2048usize, 4 << 20] {
            for (phase, keys) in [
                ("put", "\"fresh\""),
                ("put", "\"overwrite\""),
                ("get", "null"),
            ] {
                let masters = if mode == "cluster" { 3 } else { 1 };
                lines.push_str(&format!(
                    "{{\"bench\":\"slotline\",\"kind\":\"median\",\"run\":null,\"peer\":\"{peer}\",\
                     \"phase\":\"{phase}\",\"keys\":{keys},\"value_size\":{size},\"batch\":8,\
                     \"batches\":4,\"runs\":3,\"concurrency\":1,\"layout\":\"\",\"mode\":\"{mode}\",\
                     \"masters\":{masters},\"read\":\"\",\"via\":\"NativeConnectorL2Adapter\",\
                     \"keys_per_s\":1000.0,\"mb_per_s\":{},\"gb_per_s\":{gb},\"p50_ms\":null,\
                     \"p95_ms\":null,\"p99_ms\":null,\"max_ms\":null,\"cpu_us_per_key\":1.0,\
                     \"server_cpu_us_per_key\":null,\"commit\":\"abc\",\"profile\":\"python\"}}\n",
                    gb * 1e3
                ));
            }
        }
    }
    let input = dir.join("py.jsonl");
    std::fs::write(&input, lines).unwrap();
    let out_dir = dir.join("py-plots");
    let o = slotline(&[
        "plot",
        input.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stdout}{stderr}");
    // No latencies in these records: throughput figures only, one per topology.
    let mut wrote: Vec<&str> = stdout.lines().collect();
    wrote.sort();
    assert_eq!(wrote.len(), 2, "{stdout}");
    assert!(
        wrote[0].ends_with("throughput-cluster.svg")
            && wrote[1].ends_with("throughput-standalone.svg")
    );
    let svg = std::fs::read_to_string(out_dir.join("throughput-standalone.svg")).unwrap();
    let texts = svg_texts(&svg);
    // The legend: the drawn rows, then the ones left out.
    let nd = texts
        .iter()
        .position(|t| t.starts_with("not drawn"))
        .expect("named");
    assert_eq!(
        texts[nd - 5..nd],
        [
            "slotline[native]",
            "slotline[connector]",
            "lmcache[resp]",
            "lmcache[valkey]",
            "lmcache[redis]"
        ],
        "{texts:?}"
    );
    assert_eq!(texts[nd + 1..nd + 3], ["other-a", "other-b"], "{texts:?}");
    assert_eq!(row_colours(&svg).len(), 5, "five rows, five colours");
    assert!(stderr.contains("not drawn: other-a, other-b"), "{stderr}");
    assert!(
        texts.iter().any(|t| t.starts_with("not drawn")),
        "{texts:?}"
    );
    for title in ["PUT fresh", "PUT overwrite", "GET"] {
        assert_eq!(
            texts.iter().filter(|t| *t == title).count(),
            1,
            "{title}: {texts:?}"
        );
    }
    // slotline's best (2.0) over the best other row (resp, 1.0), at each size and phase.
    assert_eq!(
        texts.iter().filter(|t| *t == "×2.00").count(),
        6,
        "{texts:?}"
    );
    let svg = std::fs::read_to_string(out_dir.join("throughput-cluster.svg")).unwrap();
    let texts = svg_texts(&svg);
    assert_eq!(
        texts.iter().filter(|t| *t == "×3.00").count(),
        6,
        "{texts:?}"
    );
    assert_eq!(row_colours(&svg).len(), 2);
    assert!(!texts.iter().any(|t| t == "lmcache[resp]"));
}

#[test]
fn help_is_available_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["servers", "--help"],
        vec!["servers", "up", "--help"],
        vec!["servers", "certs", "--help"],
        vec!["put", "--help"],
        vec!["get", "--help"],
        vec!["exists", "--help"],
        vec!["del", "--help"],
        vec!["bench", "--help"],
        vec!["plot", "--help"],
    ] {
        let out = ok(&args);
        assert!(out.contains("Usage: slotline"), "{args:?}: {out}");
    }
    let (code, _) = fails(&["put"]);
    assert_eq!(code, 2);
}

#[test]
fn topology_lists_masters_slots_and_owning_shards() {
    let cluster = TestCluster::start();
    // Any single node is a valid seed, even written as a plain redis:// URL.
    let url = format!("redis://{}", cluster.addr(1));
    let out = ok(&["topology", "--url", &url, "--shards", "2"]);
    let masters: Vec<&str> = out.lines().filter(|l| l.starts_with("master ")).collect();
    assert_eq!(masters.len(), 3, "{out}");
    let on = |s: &str| {
        masters
            .iter()
            .filter(|l| l.contains(&format!(" shard {s} ")))
            .count()
    };
    assert_eq!(on("0") + on("1"), 3, "{out}");
    assert!(
        on("0") >= 1 && on("1") >= 1,
        "masters spread over both shards: {out}"
    );
    assert!(out.contains("16384 of 16384 slots covered"), "{out}");
}
