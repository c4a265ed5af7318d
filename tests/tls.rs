//! TLS against real redis-servers serving `--tls-port`, with certificates this test
//! makes (rcgen, through the test kit): standalone round trips (a 4 MiB value
//! included), a 6-node cluster with `tls-cluster yes`, mTLS, a wrong CA, an expired
//! certificate, and `tls_insecure_skip_verify`. Both backends.

mod common;

use std::time::{Duration, Instant};

use common::{test_options, TestCluster, TestDir, TestServer};
use slotline::config::IoBackend;
use slotline::{Config, Engine, PutChunk};
use slotline_testkit::{ServerCertValidity, TlsCerts, TlsServer};

const MIB: usize = 1 << 20;

fn tls_server(certs: &TlsCerts, auth_clients: bool) -> TestServer {
    TestServer::start_with(slotline_testkit::ServerOptions {
        tls: Some(TlsServer {
            auth_clients,
            ..TlsServer::new(certs.clone())
        }),
        ..test_options()
    })
}

fn tls_cfg(url: &str, backend: IoBackend, ca: Option<&TlsCerts>) -> Config {
    let mut cfg = Config::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    cfg.io_backend = backend;
    cfg.shards = Some(2);
    cfg.request_timeout = Duration::from_secs(20);
    cfg.tls_ca_file = ca.map(|c| c.ca.clone());
    cfg
}

/// The error of an engine that must not start.
fn refused(cfg: Config, why: &str) -> String {
    match Engine::new(cfg) {
        Ok(_) => panic!("{why}"),
        Err(e) => e.to_string(),
    }
}

fn url(srv: &TestServer) -> String {
    srv.proc.tls_url().expect("a TLS server")
}

fn value(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn round_trip(e: &Engine, tag: &str) {
    let big = value(4 * MIB, 7);
    let chunks: Vec<PutChunk> = (0..8)
        .map(|i| PutChunk::new(format!("{tag}-{i}"), value(1000 + i * 3000, i as u8), None))
        .chain(std::iter::once(PutChunk::new(
            format!("{tag}-big"),
            big.clone(),
            None,
        )))
        .collect();
    let keys: Vec<String> = chunks
        .iter()
        .map(|c| String::from_utf8(c.key.clone()).unwrap())
        .collect();
    let expect: Vec<Vec<u8>> = chunks.iter().map(|c| c.data.to_vec()).collect();
    e.put(chunks).unwrap();
    let got = e.get(&keys).unwrap();
    for (i, (g, want)) in got.iter().zip(&expect).enumerate() {
        let g = g.as_ref().unwrap_or_else(|| panic!("{} missing", keys[i]));
        assert!(g.data == *want, "{} came back different", keys[i]);
    }
    assert!(e.exists(&keys).unwrap().iter().all(|&b| b));
    let mut with_missing = keys.clone();
    with_missing.push(format!("{tag}-absent"));
    assert_eq!(e.exists(&with_missing).unwrap().last(), Some(&false));
    assert_eq!(e.delete(&keys[..3]).unwrap(), 3);
    let after = e.exists(&keys).unwrap();
    assert_eq!(after.iter().filter(|&&b| b).count(), keys.len() - 3);
}

fn standalone(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, false);
    let e = Engine::new(tls_cfg(&url(&srv), backend, Some(&certs))).unwrap();
    round_trip(&e, "tls");
    let m = e.stats().metrics;
    assert!(m.tls_handshakes >= 1, "handshakes counted: {m:?}");
    assert_eq!(m.tls_handshake_failures, 0);
    // The plaintext only exists after decryption: nothing went straight from the
    // socket into a destination.
    assert_eq!(m.recv_direct_bytes, 0);
    assert!(m.recv_staged_bytes >= 4 * MIB as u64, "{m:?}");
}
both_backends!(standalone);

fn use_tls_in_yaml(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, false);
    let port = srv.proc.tls_port().unwrap();
    let yaml = format!(
        "remote_url: redis://127.0.0.1:{port}\nextra_config:\n  use_tls: true\n  tls_ca_file: {}\n  io_backend: {}\n",
        certs.ca.display(),
        match backend {
            IoBackend::Epoll => "epoll",
            _ => "io_uring",
        }
    );
    let e = Engine::new(Config::from_yaml_str(&yaml).unwrap()).unwrap();
    round_trip(&e, "yaml");
}
both_backends!(use_tls_in_yaml);

fn mutual_tls(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, true);
    let mut cfg = tls_cfg(&url(&srv), backend, Some(&certs));
    cfg.tls_cert_file = Some(certs.client_cert.clone());
    cfg.tls_key_file = Some(certs.client_key.clone());
    let e = Engine::new(cfg).unwrap();
    round_trip(&e, "mtls");
    drop(e);

    let t0 = Instant::now();
    let err = refused(
        tls_cfg(&url(&srv), backend, Some(&certs)),
        "a server requiring client certificates refuses one without",
    );
    eprintln!("{err}");
    assert!(err.contains("tls handshake with 127.0.0.1"), "{err}");
    assert!(
        err.to_ascii_lowercase().contains("certificate"),
        "the reason names the certificate: {err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "no hang: {err}");
}
both_backends!(mutual_tls);

fn wrong_ca(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let other = TlsCerts::generate(&dir.join("other")).unwrap();
    let srv = tls_server(&certs, false);
    let t0 = Instant::now();
    let err = refused(
        tls_cfg(&url(&srv), backend, Some(&other)),
        "a certificate from another CA is refused",
    );
    eprintln!("{err}");
    let addr = format!("127.0.0.1:{}", srv.proc.tls_port().unwrap());
    assert!(
        err.contains(&format!("tls handshake with {addr} failed")),
        "{err}"
    );
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "no hang: {err}");
}
both_backends!(wrong_ca);

fn expired_certificate(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate_with(&dir.join("tls"), ServerCertValidity::Expired).unwrap();
    let srv = tls_server(&certs, false);
    let err = refused(
        tls_cfg(&url(&srv), backend, Some(&certs)),
        "an expired certificate is refused",
    );
    eprintln!("{err}");
    assert!(err.contains("tls handshake with 127.0.0.1"), "{err}");
    assert!(err.to_ascii_lowercase().contains("expired"), "{err}");
}
both_backends!(expired_certificate);

fn insecure_skip_verify(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, false);
    // Without the CA the server is unknown...
    assert!(Engine::new(tls_cfg(&url(&srv), backend, None)).is_err());
    // ...and with verification off it is accepted.
    let mut cfg = tls_cfg(&url(&srv), backend, None);
    cfg.tls_insecure = true;
    let e = Engine::new(cfg).unwrap();
    round_trip(&e, "insecure");
}
both_backends!(insecure_skip_verify);

fn cluster(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let c = TestCluster::start_with(
        3,
        1,
        slotline_testkit::ServerOptions {
            tls: Some(TlsServer::new(certs.clone())),
            ..test_options()
        },
    );
    let seeds = c.cluster.tls_seed_url().unwrap();
    let mut cfg = tls_cfg(&seeds, backend, Some(&certs));
    cfg.key_layout = slotline::KeyLayout::Hashtag;
    let e = Engine::new(cfg).unwrap();
    // Keys over every master, the 4 MiB value included.
    round_trip(&e, "{a}x");
    round_trip(&e, "{b}y");
    round_trip(&e, "{c}z");
    let many: Vec<PutChunk> = (0..200)
        .map(|i| PutChunk::new(format!("k{i}"), value(2000, i as u8), None))
        .collect();
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    e.put(many).unwrap();
    let got = e.get(&keys).unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.as_ref().map(|c| c.data.clone()),
            Some(value(2000, i as u8)),
            "k{i}"
        );
    }
    assert!(e.stats().metrics.tls_handshakes >= 3);

    // A reshard under TLS: MOVED names the TLS port (tls-cluster yes), and the engine
    // follows it with a TLS connection of its own.
    let big = value(4 * MIB, 3);
    e.put(vec![PutChunk::new("moving", big.clone(), None)])
        .unwrap();
    let slot = c.keyslot("{moving}:kv_bytes");
    let from = c.owner_of("{moving}:kv_bytes");
    let to = (from + 1) % 3;
    c.cluster.move_slots(from, to, slot..slot + 1).unwrap();
    let got = e.get(&["moving"]).unwrap();
    assert!(
        got[0].as_ref().is_some_and(|ch| ch.data == big),
        "read after the move"
    );
    e.put(vec![PutChunk::new("moving", value(MIB, 9), None)])
        .unwrap();
    let got = e.get(&["moving"]).unwrap();
    assert!(got[0].as_ref().is_some_and(|ch| ch.data == value(MIB, 9)));
}
both_backends!(cluster);

fn silent_server_times_out(backend: IoBackend) {
    // Accepts TCP (the kernel does, from the backlog) and never answers the
    // ClientHello: the handshake must end at connect_timeout, not hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut cfg = tls_cfg(&format!("rediss://127.0.0.1:{port}"), backend, None);
    cfg.tls_insecure = true;
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.request_timeout = Duration::from_secs(5);
    let t0 = Instant::now();
    let err = refused(cfg, "a server that never answers the handshake");
    eprintln!("{err}");
    assert!(err.contains("tls handshake timed out"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "{:?}: {err}",
        t0.elapsed()
    );
}
both_backends!(silent_server_times_out);

fn plain_port_is_a_clear_error(backend: IoBackend) {
    // rediss:// pointed at the server's plain port.
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, false);
    let plain = format!("rediss://127.0.0.1:{}", srv.proc.port());
    let mut cfg = tls_cfg(&plain, backend, Some(&certs));
    cfg.connect_timeout = Duration::from_millis(500);
    let t0 = Instant::now();
    let err = refused(cfg, "TLS to a plain port");
    eprintln!("{err}");
    // Redis reads the ClientHello as the start of an inline command and waits for its
    // end: the handshake times out.
    assert!(err.contains("tls handshake"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", srv.proc.port())),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "no hang: {err}");
}
both_backends!(plain_port_is_a_clear_error);

/// A registered region on a TLS connection: the payloads are encrypted like any
/// other (never sent or received through the region's fixed buffer, which would put
/// plaintext on the wire or ciphertext in the caller's memory) and round-trip intact.
fn region_over_tls(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, false);
    let e = Engine::new(tls_cfg(&url(&srv), backend, Some(&certs))).unwrap();
    let size = MIB;
    let mut region = e.register_region(vec![0u8; 4 * size]).unwrap();
    let want: Vec<Vec<u8>> = (0..2).map(|i| value(size, 40 + i as u8)).collect();
    for (i, w) in want.iter().enumerate() {
        region.as_mut_slice()[i * size..(i + 1) * size].copy_from_slice(w);
    }
    let keys = ["tls-region-0", "tls-region-1"];
    {
        let src = &region.as_slice()[..2 * size];
        let chunks: Vec<slotline::PutRef<'_>> = keys
            .iter()
            .zip(src.chunks(size))
            .map(|(k, d)| slotline::PutRef {
                key: k.as_bytes(),
                data: d,
                meta: None,
            })
            .collect();
        e.put_slices(&chunks).unwrap();
    }
    {
        let dst = &mut region.as_mut_slice()[2 * size..];
        let mut slices: Vec<&mut [u8]> = dst.chunks_mut(size).collect();
        let infos = e.get_into_slices(&keys, &mut slices).unwrap();
        assert!(infos
            .iter()
            .all(|i| i.as_ref().is_some_and(|i| i.len == size)));
    }
    for (i, w) in want.iter().enumerate() {
        let got = &region.as_slice()[(2 + i) * size..(3 + i) * size];
        assert!(got == &w[..], "value {i} came back different over TLS");
    }
    let m = e.stats().metrics;
    assert_eq!(m.sent_fixed_bytes, 0, "nothing left unencrypted: {m:?}");
    assert_eq!(m.recv_fixed_bytes, 0, "{m:?}");
    assert_eq!(m.recv_direct_bytes, 0, "{m:?}");
}
both_backends!(region_over_tls);
