//! Tests of the test kit (`slotline_testkit`): the local server processes every other integration test
//! and the CLI rely on.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use slotline_testkit::harness::{test_options, wait_until, TestCluster, TestDir, TestServer};
use slotline_testkit::Error;
use slotline_testkit::{self as servers, RedisProcess, ServerOptions};

/// Alive per /proc, zombies excluded (as the module itself judges it).
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| !s[i + 1..].trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

fn role(addr: &str) -> String {
    servers::command_str(addr, None, &["ROLE"])
        .map(|r| r.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn standalone_starts_answers_and_stops() {
    let mut srv = TestServer::start();
    let addr = srv.addr();
    assert!(addr.starts_with("127.0.0.1:"));
    assert_eq!(srv.proc.url(), format!("redis://{addr}"));
    assert_eq!(srv.proc.dir(), srv.dir.join(srv.proc.port().to_string()));
    assert!(srv.proc.log_file().exists());
    assert_eq!(srv.cmd(&["PING"]), "PONG");
    assert_eq!(srv.cmd(&["SET", "k", "v"]), "OK");
    assert_eq!(srv.cmd(&["GET", "k"]), "v");
    assert_eq!(srv.cmd(&["GET", "missing"]), "");
    assert_eq!(srv.cmd(&["INCR", "n"]), "1");
    assert_eq!(srv.cmd(&["CONFIG", "GET", "save"]), "save\n");
    assert_eq!(srv.cmd(&["CONFIG", "GET", "appendonly"]), "appendonly\nno");

    let pid = srv.proc.pid();
    assert!(srv.proc.is_running() && pid_alive(pid));
    srv.proc.stop();
    assert!(!srv.proc.is_running());
    assert!(!pid_alive(pid), "pid {pid} still alive after stop()");
    assert!(servers::command(&addr, None, &[b"PING"]).is_err());
    srv.proc.stop(); // idempotent
}

#[test]
fn error_reply_is_a_server_error() {
    let srv = TestServer::start();
    match servers::command(&srv.addr(), None, &[b"NOSUCHCOMMAND"]) {
        Err(Error::Server { message, .. }) => assert!(message.starts_with("ERR"), "{message}"),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn password_server_rejects_unauthenticated_clients() {
    let mut opts = test_options();
    opts.password = Some("s3cret".into());
    opts.acl_users = vec![("alice".into(), "wonder".into())];
    let srv = TestServer::start_with(opts);
    let addr = srv.addr();
    assert_eq!(srv.url(), format!("redis://:s3cret@{addr}"));

    match servers::command(&addr, None, &[b"PING"]) {
        Err(Error::Server { message, .. }) => assert!(message.starts_with("NOAUTH"), "{message}"),
        other => panic!("PING without AUTH should fail with NOAUTH, got {other:?}"),
    }
    match servers::command(&addr, Some("wrong"), &[b"PING"]) {
        Err(Error::Auth { message, .. }) => assert!(message.contains("WRONGPASS"), "{message}"),
        other => panic!("a wrong password should fail AUTH, got {other:?}"),
    }
    assert_eq!(
        servers::command_str(&addr, Some("s3cret"), &["PING"]).unwrap(),
        "PONG"
    );
    assert_eq!(
        servers::command_str(&addr, None, &["AUTH", "alice", "wonder"]).unwrap(),
        "OK"
    );
    assert!(servers::command_str(&addr, None, &["AUTH", "alice", "nope"]).is_err());
}

#[test]
fn unix_socket_answers() {
    let dir = TestDir::new();
    let sock = dir.join("redis.sock");
    let mut opts = test_options();
    opts.unix_socket = Some(sock.clone());
    let srv = TestServer::start_with(opts);
    assert_eq!(srv.proc.unix_socket().as_deref(), Some(sock.as_path()));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "socket permissions {mode:o}");

    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
}

#[test]
fn kill_then_restart_keeps_port() {
    let mut srv = TestServer::start();
    let (port, old_pid) = (srv.proc.port(), srv.proc.pid());
    srv.cmd(&["SET", "k", "v"]);
    srv.proc.kill();
    assert!(!srv.proc.is_running());
    assert!(!pid_alive(old_pid));

    srv.proc.restart().unwrap();
    assert!(srv.proc.is_running());
    assert_eq!(srv.proc.port(), port);
    assert_ne!(srv.proc.pid(), old_pid);
    assert_eq!(srv.cmd(&["PING"]), "PONG");
    // Persistence is off: a restarted server is empty.
    assert_eq!(srv.cmd(&["DBSIZE"]), "0");

    // restart() of a running server stops it first.
    let pid = srv.proc.pid();
    srv.proc.restart().unwrap();
    assert!(!pid_alive(pid));
    assert_eq!(srv.cmd(&["PING"]), "PONG");
}

#[test]
fn failed_start_reports_the_log() {
    let dir = TestDir::new();
    let opts = ServerOptions {
        extra_args: vec!["--no-such-directive".into(), "1".into()],
        ..test_options()
    };
    let err = RedisProcess::start(dir.path(), &opts).expect_err("start must fail");
    let msg = err.to_string();
    assert!(msg.contains("redis.log"), "{msg}");
    assert!(
        msg.contains("no-such-directive"),
        "error should quote the log: {msg}"
    );
}

#[test]
fn taken_port_is_reported() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = TestDir::new();
    let opts = ServerOptions {
        port,
        ..test_options()
    };
    let msg = RedisProcess::start(dir.path(), &opts)
        .expect_err("port is taken")
        .to_string();
    assert!(
        msg.contains(&format!("port {port} is already in use")),
        "{msg}"
    );
}

#[test]
fn daemonized_server_is_stopped_by_pid() {
    let dir = TestDir::new();
    let opts = ServerOptions {
        daemonize: true,
        ..test_options()
    };
    let p = RedisProcess::start(dir.path(), &opts).unwrap();
    let pid = p.pid();
    assert!(pid_alive(pid));
    assert_eq!(
        servers::command_str(&p.addr(), None, &["PING"]).unwrap(),
        "PONG"
    );
    drop(p);
    assert!(
        !pid_alive(pid),
        "dropping a daemonized server handle stops it"
    );

    let mut p = RedisProcess::start(dir.path(), &opts).unwrap();
    let pid = p.pid();
    p.kill();
    assert!(!pid_alive(pid));
    p.restart().unwrap();
    assert!(p.is_running());
    p.stop();
    assert!(!p.is_running());
}

#[test]
fn cluster_comes_up_with_all_slots() {
    let tc = TestCluster::start();
    println!(
        "cluster of 3 masters + 3 replicas ready in {:?}",
        tc.startup
    );
    let c = &tc.cluster;
    assert_eq!(c.nodes.len(), 6);
    let masters: Vec<u16> = c.masters().iter().map(|n| n.port()).collect();
    let replicas: Vec<u16> = c.replicas().iter().map(|n| n.port()).collect();
    assert_eq!(
        masters,
        c.nodes[..3].iter().map(|n| n.port()).collect::<Vec<_>>()
    );
    assert_eq!(
        replicas,
        c.nodes[3..].iter().map(|n| n.port()).collect::<Vec<_>>()
    );

    for i in 0..6 {
        let info = tc.cmd(i, &["CLUSTER", "INFO"]);
        for want in [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_slots_ok:16384",
            "cluster_known_nodes:6",
            "cluster_size:3",
        ] {
            assert!(
                info.lines().any(|l| l.trim() == want),
                "node {i} lacks {want}:\n{info}"
            );
        }
    }
    // Every replica follows the master it was assigned.
    for i in 0..3 {
        let id = c.node_id(i).unwrap();
        let nodes = tc.cmd(3 + i, &["CLUSTER", "NODES"]);
        let me = nodes.lines().find(|l| l.contains("myself")).unwrap();
        assert_eq!(me.split_whitespace().nth(3), Some(id.as_str()), "{me}");
    }
    assert_eq!(
        tc.seed_url(),
        format!("redis://{},{},{}", tc.addr(0), tc.addr(1), tc.addr(2))
    );
    assert_eq!(c.slot_owner(0).unwrap(), 0);
    assert_eq!(c.slot_owner(16383).unwrap(), 2);
    // A key routes to its owner; elsewhere the server redirects.
    let owner = tc.owner_of("some-key");
    assert_eq!(tc.cmd(owner, &["SET", "some-key", "1"]), "OK");
    let other = (owner + 1) % 3;
    match servers::command(&tc.addr(other), None, &[b"GET", b"some-key"]) {
        Err(Error::Server { message, .. }) => assert!(message.starts_with("MOVED"), "{message}"),
        r => panic!("expected MOVED, got {r:?}"),
    }
}

#[test]
fn killed_master_is_replaced_by_its_replica() {
    let mut tc = TestCluster::start();
    println!("cluster ready in {:?}", tc.startup);
    let victim = tc.owner_of("failover-key");
    let replica = 3 + victim;
    assert_eq!(role(&tc.addr(replica)), "slave");
    // WAIT on the writing connection: the value must reach the replica before the
    // master dies.
    let replies = servers::command_strs(
        &tc.addr(victim),
        None,
        &[&["SET", "failover-key", "before"], &["WAIT", "1", "5000"]],
    )
    .unwrap();
    assert_eq!(replies, ["OK", "1"]);

    let t0 = Instant::now();
    tc.cluster.nodes[victim].kill();
    let replica_addr = tc.addr(replica);
    wait_until(
        Duration::from_secs(30),
        "the replica to be promoted",
        || role(&replica_addr) == "master",
    );
    let promoted = t0.elapsed();
    tc.cluster.wait_ok(Duration::from_secs(30)).unwrap();
    let ok = t0.elapsed();
    println!("failover with node timeout 2000 ms: replica promoted after {promoted:?}, cluster_state:ok after {ok:?}");

    assert_eq!(tc.cmd(replica, &["GET", "failover-key"]), "before");
    assert_eq!(
        tc.cluster.slot_owner(tc.keyslot("failover-key")).unwrap(),
        replica
    );
    assert_eq!(tc.cluster.masters().len(), 3);
    assert_eq!(tc.cluster.replicas().len(), 2);
    assert!(!tc.seed_url().contains(&tc.addr(victim)));

    // The old master comes back with its nodes.conf and follows the new one.
    let t1 = Instant::now();
    tc.cluster.nodes[victim].restart().unwrap();
    let victim_addr = tc.addr(victim);
    wait_until(
        Duration::from_secs(30),
        "the old master to rejoin as a replica",
        || {
            servers::command_str(&victim_addr, None, &["INFO", "replication"])
                .is_ok_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
        },
    );
    println!("old master rejoined as a replica after {:?}", t1.elapsed());
    tc.cluster.wait_ok(Duration::from_secs(30)).unwrap();
    assert_eq!(tc.cluster.replicas().len(), 3);
}

#[test]
fn move_slots_to_a_new_master_moves_the_keys() {
    let mut tc = TestCluster::start();
    let keys: Vec<String> = (0..250).map(|i| format!("{{chunk}}:{i}")).collect();
    let slot = tc.keyslot(&keys[0]);
    let from = tc.owner_of(&keys[0]);
    for k in &keys {
        tc.cmd(from, &["SET", k, &format!("value-of-{k}")]);
    }
    // A neighbouring slot without keys moves too.
    let slots = slot..slot + 2;
    assert_eq!(tc.cluster.slot_owner(slot + 1).unwrap(), from);

    let new_dir = tc.dir.join("added");
    let to = tc.cluster.add_master(&new_dir).unwrap();
    assert_eq!(to, 6);
    assert_eq!(role(&tc.addr(to)), "master");
    for i in 0..7 {
        let info = tc.cmd(i, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_known_nodes:7"), "node {i}:\n{info}");
    }

    let t0 = Instant::now();
    tc.cluster.move_slots(from, to, slots.clone()).unwrap();
    println!(
        "moved {} keys in slots {slots:?} in {:?}",
        keys.len(),
        t0.elapsed()
    );

    let s = slot.to_string();
    assert_eq!(
        tc.cmd(to, &["CLUSTER", "COUNTKEYSINSLOT", &s]),
        keys.len().to_string()
    );
    assert_eq!(tc.cmd(from, &["CLUSTER", "COUNTKEYSINSLOT", &s]), "0");
    assert_eq!(
        tc.cmd(to, &["GET", &keys[7]]),
        format!("value-of-{}", keys[7])
    );
    match servers::command(&tc.addr(from), None, &[b"GET", keys[7].as_bytes()]) {
        Err(Error::Server { message, .. }) => {
            assert_eq!(message, format!("MOVED {slot} {}", tc.addr(to)))
        }
        r => panic!("expected MOVED to the new master, got {r:?}"),
    }
    tc.cluster.wait_ok(Duration::from_secs(10)).unwrap();
    for sl in slots {
        assert_eq!(tc.cluster.slot_owner(sl).unwrap(), to);
    }
    // Every master agrees at once (SETSLOT NODE went to all of them).
    for m in tc.cluster.masters() {
        let slots_text = servers::command_str(&m.addr(), None, &["CLUSTER", "SHARDS"]).unwrap();
        assert!(slots_text.contains(&tc.cluster.node_id(to).unwrap()));
    }
}

/// Stops whatever a state directory records, even when the test fails midway.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = servers::down(self.0);
    }
}

/// `servers::up` on a base port found free. Another process (a concurrent test run)
/// may take the ports between the search and the start; that is retried.
fn up_on_free_ports(state: &Path, cluster: bool) -> (u16, Vec<String>) {
    let mut last = None;
    for _ in 0..3 {
        let base = servers::free_port_block(if cluster { 6 } else { 1 }, cluster).unwrap();
        match servers::up(state, cluster, Some(base)) {
            Ok(lines) => return (base, lines),
            Err(e) if e.to_string().contains("already in use") => last = Some(e),
            Err(e) => panic!("servers::up failed: {e}"),
        }
    }
    panic!("servers::up found its ports taken 3 times: {last:?}");
}

#[test]
fn cli_up_status_down() {
    let dir = TestDir::new();

    // Standalone.
    let state = dir.join("standalone");
    let _guard = DownOnDrop(&state);
    let (port, lines) = up_on_free_ports(&state, false);
    println!("{}", lines.join("\n"));
    assert!(
        lines[0].contains(&format!("redis://127.0.0.1:{port}")),
        "{lines:?}"
    );
    let set = servers::ServerSet::load(&state).unwrap().unwrap();
    assert_eq!(set.servers.len(), 1);
    let pid = set.servers[0].pid;
    assert!(pid_alive(pid));
    let err = servers::up(&state, false, Some(port))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already up"), "{err}");
    let st = servers::status(&state).unwrap();
    assert_eq!(st.len(), 1);
    assert!(
        st[0].contains(&port.to_string()) && st[0].contains("running master"),
        "{st:?}"
    );
    let lines = servers::down(&state).unwrap();
    assert!(lines[0].contains("stopped"), "{lines:?}");
    assert!(!pid_alive(pid));
    assert!(servers::ServerSet::load(&state).unwrap().is_none());
    assert!(servers::status(&state).unwrap()[0].contains("no servers recorded"));
    assert!(servers::down(&state).unwrap()[0].contains("nothing to stop"));

    // A taken port is refused before anything starts.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let err = servers::up(&state, false, Some(taken))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already in use"), "{err}");
    assert!(servers::ServerSet::load(&state).unwrap().is_none());

    // Cluster: 3 masters + 3 replicas on consecutive ports.
    let cstate = dir.join("cluster");
    let _cguard = DownOnDrop(&cstate);
    let t0 = Instant::now();
    let (base, lines) = up_on_free_ports(&cstate, true);
    println!(
        "daemonized cluster up in {:?}:\n{}",
        t0.elapsed(),
        lines.join("\n")
    );
    let url = format!(
        "redis://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        base,
        base + 1,
        base + 2
    );
    assert!(lines.iter().any(|l| l.contains(&url)), "{lines:?}");
    let st = servers::status(&cstate).unwrap();
    println!("{}", st.join("\n"));
    assert_eq!(st.len(), 6);
    assert_eq!(
        st.iter().filter(|l| l.contains("running master")).count(),
        3,
        "{st:?}"
    );
    assert_eq!(
        st.iter().filter(|l| l.contains("running replica")).count(),
        3,
        "{st:?}"
    );
    let pids: Vec<u32> = servers::ServerSet::load(&cstate)
        .unwrap()
        .unwrap()
        .servers
        .iter()
        .map(|s| s.pid)
        .collect();
    let lines = servers::down(&cstate).unwrap();
    assert_eq!(
        lines.iter().filter(|l| l.contains("stopped")).count(),
        6,
        "{lines:?}"
    );
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} survived down()");
    }
}

#[test]
fn password_cluster_replicates_and_migrates() {
    let opts = ServerOptions {
        password: Some("pw".into()),
        ..test_options()
    };
    let tc = TestCluster::start_with(2, 1, opts);
    println!(
        "password cluster of 2 masters + 2 replicas ready in {:?}",
        tc.startup
    );
    assert_eq!(tc.cluster.replicas().len(), 2);
    assert!(servers::command(&tc.addr(0), None, &[b"PING"]).is_err());
    let key = "{pw}:k";
    let from = tc.owner_of(key);
    tc.cmd(from, &["SET", key, "v"]);
    let to = 1 - from;
    let slot = tc.keyslot(key);
    tc.cluster.move_slots(from, to, slot..slot + 1).unwrap();
    assert_eq!(tc.cmd(to, &["GET", key]), "v");
    // Replica links authenticate with masterauth, so writes reach the replica.
    let replies = servers::command_strs(
        &tc.addr(to),
        Some("pw"),
        &[&["SET", "{pw}:w", "w"], &["WAIT", "1", "5000"]],
    );
    assert_eq!(replies.unwrap(), ["OK", "1"]);
    let on_replica = servers::command_strs(
        &tc.addr(2 + to),
        Some("pw"),
        &[&["READONLY"], &["GET", key]],
    );
    assert_eq!(on_replica.unwrap(), ["OK", "v"]);
}

/// A process we started that looks like a server on `port` to anyone reading its
/// command line only (`sh -c 'read x' redis-server 127.0.0.1:PORT`, blocked in a shell
/// builtin so that it has no child of its own), running in `cwd`; killed (by its own
/// handle) when dropped.
struct Decoy(std::process::Child);

impl Decoy {
    fn start(port: u16, cwd: &Path) -> Decoy {
        let child = std::process::Command::new("sh")
            .args(["-c", "read x", "redis-server"])
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(cwd)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the decoy");
        let pid = child.id();
        // Until exec completes, /proc shows the test binary's command line.
        wait_until(Duration::from_secs(5), "decoy running sh", || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"sh\0-c\0read x"))
        });
        Decoy(child)
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn down_signals_only_our_servers() {
    let dir = TestDir::new();
    let state = dir.join("state");
    let port = servers::free_port().unwrap();
    let node_dir = state.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let record = |pid: u32| {
        std::fs::write(
            servers::ServerSet::record_path(&state),
            format!("standalone {port} {pid}\n"),
        )
        .unwrap();
    };

    // A stale record whose pid now belongs to another process naming the port.
    let elsewhere = Decoy::start(port, dir.path());
    record(elsewhere.0.id());
    let lines = servers::down(&state).unwrap();
    assert!(
        pid_alive(elsewhere.0.id()),
        "down() signalled a decoy: {lines:?}"
    );
    assert!(lines[0].contains("was not running"), "{lines:?}");
    drop(elsewhere);

    // Even inside the server's own directory, a process the pidfile does not name is
    // not ours.
    let inside = Decoy::start(port, &node_dir);
    std::fs::write(node_dir.join("redis.pid"), "1\n").unwrap();
    record(inside.0.id());
    let status = servers::status(&state).unwrap();
    assert!(status[0].contains("not running"), "{status:?}");
    let lines = servers::down(&state).unwrap();
    assert!(
        pid_alive(inside.0.id()),
        "down() signalled a decoy: {lines:?}"
    );
}

/// CPUs in a `Cpus_allowed_list` line of `/proc/<pid>/status` (`0-3,6`).
fn allowed_cpus(pid: u32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

/// Issue 19's bench topology: N masters without replicas, each pinned to its own CPU
/// (round-robin over the CPUs this test may use), I/O threads, and the binary chosen
/// explicitly; a binary that does not exist is refused with its path.
#[test]
fn cluster_nodes_pinned_with_io_threads_and_a_chosen_binary() {
    let dir = TestDir::new();
    let mine = allowed_cpus(std::process::id());
    assert!(!mine.is_empty());
    let opts = ServerOptions {
        binary: Some(servers::redis_server_binary().unwrap()),
        io_threads: Some(2),
        ..test_options()
    };
    let want = |i: usize| vec![mine[(mine.len() - 1 - i % mine.len()) % mine.len()]];
    let c = servers::LocalCluster::start_each(dir.path(), 2, 0, &opts, |i, o| o.cpus = want(i))
        .unwrap();
    assert_eq!(c.masters().len(), 2);
    assert!(c.replicas().is_empty());
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(allowed_cpus(n.pid()), want(i), "node {i}");
        let io = servers::command_str(&n.addr(), None, &["CONFIG", "GET", "io-threads"]).unwrap();
        assert_eq!(io, "io-threads\n2", "node {i}");
    }

    let bad = ServerOptions {
        binary: Some(dir.join("no-such-server")),
        ..test_options()
    };
    let e = RedisProcess::start(&dir.join("bad"), &bad).unwrap_err();
    assert!(e.to_string().contains("no-such-server"), "{e}");
}
