//! Self-signed server certificates given as `tls_ca_file` (what redis-py and OpenSSL
//! accept), against real redis-servers serving `--tls-port` with certificates the test
//! kit makes: a `CA:FALSE` end-entity certificate and an `openssl req -x509` style
//! `CA:TRUE` one, each used directly as the server certificate and pinned as
//! `tls_ca_file`, round-trip; another self-signed certificate is refused with a message
//! that says what to change; a pinned certificate that does not name the host is still
//! refused. Both backends.

mod common;

use std::time::{Duration, Instant};

use common::{test_options, TestDir, TestServer};
use slotline::IoBackend;
use slotline::{Config, Engine, PutChunk};
use slotline_testkit::{SelfSigned, TlsCerts, TlsServer};

fn tls_server(certs: &TlsCerts) -> TestServer {
    TestServer::start_with(slotline_testkit::ServerOptions {
        tls: Some(TlsServer::new(certs.clone())),
        ..test_options()
    })
}

fn cfg(url: &str, backend: IoBackend, ca_file: &TlsCerts) -> Config {
    let mut cfg = Config::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    cfg.io_backend = backend;
    cfg.shards = Some(2);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.request_timeout = Duration::from_secs(20);
    cfg.tls_ca_file = Some(ca_file.ca.clone());
    cfg
}

/// The error of an engine that must not start, within a watchdog.
fn refused(cfg: Config, why: &str) -> String {
    let t0 = Instant::now();
    let err = match Engine::new(cfg) {
        Ok(_) => panic!("{why}"),
        Err(e) => e.to_string(),
    };
    eprintln!("{why}: {err}");
    assert!(t0.elapsed() < Duration::from_secs(15), "no hang: {err}");
    err
}

fn round_trip(e: &Engine) {
    let chunks: Vec<PutChunk> = (0..6)
        .map(|i| PutChunk::new(format!("pinned-{i}"), vec![i as u8; 100 + 50_000 * i], None))
        .collect();
    let keys: Vec<String> = (0..6).map(|i| format!("pinned-{i}")).collect();
    e.put(chunks).wait().unwrap();
    let got = e.get(&keys).wait().unwrap();
    for (i, g) in got.iter().enumerate() {
        let g = g.as_ref().unwrap_or_else(|| panic!("{} missing", keys[i]));
        assert!(
            g.data == vec![i as u8; 100 + 50_000 * i],
            "{} came back different",
            keys[i]
        );
    }
    assert_eq!(e.delete(&keys).wait().unwrap(), keys.len());
}

fn pinned_round_trip(backend: IoBackend, kind: SelfSigned) {
    let dir = TestDir::new();
    let certs = TlsCerts::self_signed(&dir.join("tls"), &["127.0.0.1", "localhost"], kind).unwrap();
    let srv = tls_server(&certs);
    let url = srv.proc.tls_url().unwrap();
    let e = Engine::new(cfg(&url, backend, &certs))
        .unwrap_or_else(|e| panic!("{kind:?} pinned in tls_ca_file: {e}"));
    round_trip(&e);
    let m = e.stats().metrics;
    assert!(
        m.tls_handshakes >= 1 && m.tls_handshake_failures == 0,
        "{m:?}"
    );
    drop(e);
    // By name too: `localhost` is in the certificate.
    let port = srv.proc.tls_port().unwrap();
    let e = Engine::new(cfg(&format!("rediss://localhost:{port}"), backend, &certs)).unwrap();
    round_trip(&e);
}

fn end_entity(backend: IoBackend) {
    pinned_round_trip(backend, SelfSigned::EndEntity);
}
both_backends!(end_entity);

fn openssl_x509(backend: IoBackend) {
    pinned_round_trip(backend, SelfSigned::OpensslX509);
}
both_backends!(openssl_x509);

/// Another self-signed certificate in `tls_ca_file` is not the server's: refused, and
/// the message says what to put in `tls_ca_file`.
fn another_certificate_is_refused(backend: IoBackend) {
    let dir = TestDir::new();
    for kind in [SelfSigned::EndEntity, SelfSigned::OpensslX509] {
        let names = ["127.0.0.1", "localhost"];
        let certs = TlsCerts::self_signed(&dir.join(format!("{kind:?}")), &names, kind).unwrap();
        let other =
            TlsCerts::self_signed(&dir.join(format!("{kind:?}-other")), &names, kind).unwrap();
        let srv = tls_server(&certs);
        let url = srv.proc.tls_url().unwrap();
        let err = refused(cfg(&url, backend, &other), "another certificate pinned");
        assert!(err.contains("tls handshake with 127.0.0.1"), "{err}");
        assert!(err.contains("tls_ca_file"), "says what to change: {err}");
        if kind == SelfSigned::OpensslX509 {
            assert!(
                err.contains("CaUsedAsEndEntity") && err.contains("pin"),
                "{err}"
            );
        } else {
            assert!(
                err.contains("UnknownIssuer") && err.contains("self-signed"),
                "{err}"
            );
        }
    }
}
both_backends!(another_certificate_is_refused);

/// Pinning does not waive the host name: a certificate for `localhost` only, reached
/// as 127.0.0.1, is refused, and the message says which names it holds.
fn host_name_still_checked(backend: IoBackend) {
    let dir = TestDir::new();
    for kind in [SelfSigned::EndEntity, SelfSigned::OpensslX509] {
        let certs =
            TlsCerts::self_signed(&dir.join(format!("{kind:?}")), &["localhost"], kind).unwrap();
        let srv = tls_server(&certs);
        let url = srv.proc.tls_url().unwrap();
        let err = refused(
            cfg(&url, backend, &certs),
            "a pinned certificate for another name",
        );
        assert!(err.contains("not valid for name"), "{err}");
        assert!(
            err.contains("localhost") && err.contains("subjectAltName"),
            "{err}"
        );
        // The same certificate by the name it holds is fine.
        let port = srv.proc.tls_port().unwrap();
        let e = Engine::new(cfg(&format!("rediss://localhost:{port}"), backend, &certs)).unwrap();
        round_trip(&e);
    }
}
both_backends!(host_name_still_checked);

/// The refusal of a server that wants a client certificate says which settings give it.
fn client_certificate_required_says_so(backend: IoBackend) {
    let dir = TestDir::new();
    let certs = TlsCerts::generate(&dir.join("tls")).unwrap();
    let srv = TestServer::start_with(slotline_testkit::ServerOptions {
        tls: Some(TlsServer {
            auth_clients: true,
            ..TlsServer::new(certs.clone())
        }),
        ..test_options()
    });
    let url = srv.proc.tls_url().unwrap();
    let err = refused(cfg(&url, backend, &certs), "no client certificate");
    assert!(
        err.contains("tls_cert_file") && err.contains("tls_key_file"),
        "{err}"
    );
}
both_backends!(client_certificate_required_says_so);
