//! TLS against real redis-servers serving `--tls-port`, with certificates this test
//! makes (rcgen, through the test kit): standalone round trips (a 4 MiB value
//! included), a 6-node cluster with `tls-cluster yes`, mTLS, a wrong CA, an expired
//! certificate, `tls_insecure_skip_verify`, host-name verification (DNS and IP SANs) and
//! `SSL_CERT_FILE` (in a child process: the system store is read once per process).
//! Both backends.

mod common;

use std::time::{Duration, Instant};

use common::{test_options, TestCluster, TestDir, TestServer};
use slotline::IoBackend;
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
    e.put(chunks).wait().unwrap();
    let got = e.get(&keys).wait().unwrap();
    for (i, (g, want)) in got.iter().zip(&expect).enumerate() {
        let g = g.as_ref().unwrap_or_else(|| panic!("{} missing", keys[i]));
        assert!(g.data == *want, "{} came back different", keys[i]);
    }
    assert!(e.exists(&keys).wait().unwrap().iter().all(|&b| b));
    let mut with_missing = keys.clone();
    with_missing.push(format!("{tag}-absent"));
    assert_eq!(e.exists(&with_missing).wait().unwrap().last(), Some(&false));
    assert_eq!(e.delete(&keys[..3]).wait().unwrap(), 3);
    let after = e.exists(&keys).wait().unwrap();
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
    e.put(many).wait().unwrap();
    let got = e.get(&keys).wait().unwrap();
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
        .wait()
        .unwrap();
    let slot = c.keyslot("{moving}:kv_bytes");
    let from = c.owner_of("{moving}:kv_bytes");
    let to = (from + 1) % 3;
    c.cluster.move_slots(from, to, slot..slot + 1).unwrap();
    let got = e.get(&["moving"]).wait().unwrap();
    assert!(
        got[0].as_ref().is_some_and(|ch| ch.data == big),
        "read after the move"
    );
    e.put(vec![PutChunk::new("moving", value(MIB, 9), None)])
        .wait()
        .unwrap();
    let got = e.get(&["moving"]).wait().unwrap();
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
        e.put(&chunks).wait().unwrap();
    }
    {
        let dst = &mut region.as_mut_slice()[2 * size..];
        let mut slices: Vec<&mut [u8]> = dst.chunks_mut(size).collect();
        let infos = e.get(&keys).into_slices(&mut slices).wait().unwrap();
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

// ---------------------------------------------------------------------------------------
// Host-name verification and the system trust store
// ---------------------------------------------------------------------------------------

/// A CA and a server certificate naming exactly `names` (DNS names, or IP addresses as
/// IP SANs), written into `dir`; the client files are the server's (unused here).
fn certs_naming(dir: &std::path::Path, names: &[&str]) -> TlsCerts {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose};
    use rcgen::{IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, format!("names CA {}", dir.display()));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut srv =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    // A common name that is a valid host name too: only the SANs may count.
    srv.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    srv.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let srv_key = KeyPair::generate().unwrap();
    let srv = srv.signed_by(&srv_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let (ca, cert, key) = (
        write("ca.pem", ca.pem()),
        write("server.pem", srv.pem()),
        write("server.key", srv_key.serialize_pem()),
    );
    TlsCerts {
        ca,
        server_cert: cert.clone(),
        server_key: key.clone(),
        client_cert: cert,
        client_key: key,
    }
}

/// The server's certificate must name the URL's host: a DNS name is checked against
/// the DNS names, an IP address against the IP addresses (never the common name);
/// a mismatch is refused with rustls's `NotValidForName`.
fn host_name_is_verified(backend: IoBackend) {
    let dir = TestDir::new();
    let cases: [(&str, &[&str], &[&str]); 3] = [
        // certificate names, hosts accepted, hosts refused
        ("dns", &["localhost"], &["localhost"]),
        ("ip", &["127.0.0.1"], &["127.0.0.1"]),
        ("other", &["redis.example.com", "10.9.8.7"], &[]),
    ];
    for (tag, names, accepted) in cases {
        let certs = certs_naming(&dir.join(tag), names);
        let srv = tls_server(&certs, false);
        let port = srv.proc.tls_port().unwrap();
        for host in ["localhost", "127.0.0.1"] {
            let url = format!("rediss://{host}:{port}");
            let cfg = tls_cfg(&url, backend, Some(&certs));
            if accepted.contains(&host) {
                let e = Engine::new(cfg)
                    .unwrap_or_else(|err| panic!("{url} with a certificate for {names:?}: {err}"));
                e.put(vec![PutChunk::new("named", vec![1u8; 64], None)])
                    .wait()
                    .unwrap();
                assert!(e.get(&["named"]).wait().unwrap()[0].is_some());
            } else {
                let err = refused(
                    cfg,
                    &format!("{url} accepted a certificate for {names:?} only"),
                );
                // rustls's NotValidForName (displayed as its text).
                assert!(
                    err.contains("NotValidForName")
                        || err.contains(&format!("not valid for name \"{host}\"")),
                    "{url}, {names:?}: {err}"
                );
                assert!(err.contains("tls handshake with"), "{err}");
            }
        }
    }
}
both_backends!(host_name_is_verified);

/// Set in the child process of `ssl_cert_file_is_honoured`: the TLS URL to reach, and
/// whether the handshake must succeed.
const CHILD_URL: &str = "SLOTLINE_TLS_CHILD_URL";
const CHILD_EXPECT: &str = "SLOTLINE_TLS_CHILD_EXPECT";

/// The child: an engine with no `tls_ca_file`, so only the system trust store (read
/// once per process, hence the child) can vouch for the server.
#[test]
#[ignore = "the child process of ssl_cert_file_is_honoured"]
fn ssl_cert_file_child() {
    let (Ok(url), Ok(expect)) = (std::env::var(CHILD_URL), std::env::var(CHILD_EXPECT)) else {
        common::skip!("only runs as the child of ssl_cert_file_is_honoured");
    };
    let r = Engine::new(tls_cfg(&url, IoBackend::Epoll, None));
    match (expect.as_str(), r) {
        ("ok", Ok(e)) => {
            e.put(vec![PutChunk::new("sys", vec![2u8; 64], None)])
                .wait()
                .unwrap();
            assert!(e.get(&["sys"]).wait().unwrap()[0].is_some());
        }
        ("refused", Err(err)) => {
            assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        }
        (want, r) => panic!("expected {want}, got {:?}", r.map(|_| "an engine")),
    }
    println!("TLS-CHILD-OK");
}

/// `SSL_CERT_FILE` names the system trust store (README): a server whose CA is only
/// there is trusted; without it the same server is an unknown issuer.
#[test]
fn ssl_cert_file_is_honoured() {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = tls_server(&certs, false);
    let me = std::env::current_exe().unwrap();
    for (expect, ca) in [("ok", Some(&certs.ca)), ("refused", None)] {
        let mut cmd = std::process::Command::new(&me);
        cmd.args([
            "--exact",
            "ssl_cert_file_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url(&srv))
        .env(CHILD_EXPECT, expect)
        // Only the file given here may vouch: no directory of the system's.
        .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.output().expect("the test binary runs again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("TLS-CHILD-OK"),
            "child ({expect}, SSL_CERT_FILE {ca:?}) failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
