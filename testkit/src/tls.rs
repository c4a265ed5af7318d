//! Certificates for local TLS servers, made with `rcgen`: a CA, a server certificate
//! for `127.0.0.1`, `::1` and `localhost` signed by it, and a client certificate for mTLS.
//! All PEM files under one directory; keys are written with mode 0600.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{local_err, Result};

/// The PEM files of one certificate set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCerts {
    /// The CA certificate (what a client trusts: `tls_ca_file`).
    pub ca: PathBuf,
    /// Server certificate and key (`--tls-cert-file`, `--tls-key-file`).
    pub server_cert: PathBuf,
    /// The server certificate's key.
    pub server_key: PathBuf,
    /// Client certificate and key for mTLS (`tls_cert_file`, `tls_key_file`).
    pub client_cert: PathBuf,
    /// The client certificate's key.
    pub client_key: PathBuf,
}

/// How the server certificate is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerCertValidity {
    /// Valid from a day ago for ten years.
    #[default]
    Valid,
    /// Expired yesterday.
    Expired,
}

/// What [`TlsCerts::self_signed`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfSigned {
    /// An end-entity certificate (`CA:FALSE`, serverAuth).
    EndEntity,
    /// `openssl req -x509` style: `CA:TRUE` (webpki: `CaUsedAsEndEntity`).
    OpensslX509,
}

impl TlsCerts {
    /// Writes a fresh set into `dir` (created if missing): `ca.pem`, `server.pem`,
    /// `server.key`, `client.pem`, `client.key`.
    pub fn generate(dir: &Path) -> Result<TlsCerts> {
        TlsCerts::generate_with(dir, ServerCertValidity::Valid)
    }

    /// As [`TlsCerts::generate`], with the server certificate's validity chosen.
    pub fn generate_with(dir: &Path, validity: ServerCertValidity) -> Result<TlsCerts> {
        let err = |what: &str, e: rcgen::Error| local_err(format!("cannot make {what}: {e}"));
        fs::create_dir_all(dir)
            .map_err(|e| local_err(format!("cannot create {}: {e}", dir.display())))?;
        let now = OffsetDateTime::now_utc();

        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
        ca_params
            .distinguished_name
            // A name of its own: two sets never share an issuer name, so a client
            // trusting the other set's CA reports an unknown issuer.
            .push(
                DnType::CommonName,
                format!("slotline test CA {}", now.unix_timestamp_nanos()),
            );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = now - Duration::days(2);
        ca_params.not_after = now + Duration::days(3650);
        let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
        let ca = ca_params.self_signed(&ca_key).map_err(|e| err("CA", e))?;

        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let mut server = CertificateParams::new(names).map_err(|e| err("server certificate", e))?;
        server
            .distinguished_name
            .push(DnType::CommonName, "slotline test server");
        // Redis presents this certificate as a client too (replication, cluster bus).
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        match validity {
            ServerCertValidity::Valid => {
                server.not_before = now - Duration::days(1);
                server.not_after = now + Duration::days(3650);
            }
            ServerCertValidity::Expired => {
                server.not_before = now - Duration::days(30);
                server.not_after = now - Duration::days(1);
            }
        }
        let server_key = KeyPair::generate().map_err(|e| err("server key", e))?;
        let server_cert = server
            .signed_by(&server_key, &ca, &ca_key)
            .map_err(|e| err("server certificate", e))?;

        let mut client = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| err("client certificate", e))?;
        client
            .distinguished_name
            .push(DnType::CommonName, "slotline test client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.not_before = now - Duration::days(1);
        client.not_after = now + Duration::days(3650);
        let client_key = KeyPair::generate().map_err(|e| err("client key", e))?;
        let client_cert = client
            .signed_by(&client_key, &ca, &ca_key)
            .map_err(|e| err("client certificate", e))?;

        let certs = TlsCerts {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        write(&certs.ca, &ca.pem(), false)?;
        write(&certs.server_cert, &server_cert.pem(), false)?;
        write(&certs.server_key, &server_key.serialize_pem(), true)?;
        write(&certs.client_cert, &client_cert.pem(), false)?;
        write(&certs.client_key, &client_key.serialize_pem(), true)?;
        Ok(certs)
    }

    /// A self-signed server certificate for `names` (DNS names or IP addresses), used
    /// directly: `server.pem` is also `ca.pem`, what a client pins as `tls_ca_file`,
    /// and the client certificate (mTLS is not what these are for). `kind` picks
    /// `CA:FALSE` or the `CA:TRUE` of `openssl req -x509`.
    pub fn self_signed(dir: &Path, names: &[&str], kind: SelfSigned) -> Result<TlsCerts> {
        let err =
            |e: rcgen::Error| local_err(format!("cannot make a self-signed certificate: {e}"));
        fs::create_dir_all(dir)
            .map_err(|e| local_err(format!("cannot create {}: {e}", dir.display())))?;
        let now = OffsetDateTime::now_utc();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).map_err(err)?;
        p.distinguished_name.push(
            DnType::CommonName,
            format!("slotline self-signed {}", now.unix_timestamp_nanos()),
        );
        match kind {
            SelfSigned::EndEntity => {
                p.is_ca = IsCa::ExplicitNoCa;
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            // What `openssl req -x509 -addext subjectAltName=...` makes: basicConstraints
            // CA:TRUE, no key usage, no extended key usage.
            SelfSigned::OpensslX509 => p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
        }
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(3650);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.self_signed(&key).map_err(err)?;
        let certs = TlsCerts {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("server.pem"),
            client_key: dir.join("server.key"),
        };
        write(&certs.ca, &cert.pem(), false)?;
        write(&certs.server_cert, &cert.pem(), false)?;
        write(&certs.server_key, &key.serialize_pem(), true)?;
        Ok(certs)
    }

    /// The files as found in `dir` (made earlier by [`TlsCerts::generate`]).
    pub fn in_dir(dir: &Path) -> TlsCerts {
        TlsCerts {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if secret {
        o.mode(0o600);
    }
    o.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| local_err(format!("cannot write {}: {e}", path.display())))
}

/// TLS settings of a server (`ServerOptions::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServer {
    /// `--tls-port`; 0 picks a free one. The plain `--port` stays open on the bind
    /// address for the kit's own control traffic.
    pub port: u16,
    /// The certificate files.
    pub certs: TlsCerts,
    /// `--tls-auth-clients yes`: clients must present a certificate signed by the CA.
    pub auth_clients: bool,
}

impl TlsServer {
    /// A server with `certs`, client certificates optional.
    pub fn new(certs: TlsCerts) -> TlsServer {
        TlsServer {
            port: 0,
            certs,
            auth_clients: false,
        }
    }

    /// The redis-server arguments; `cluster`: the bus and replication use TLS too.
    pub(crate) fn args(&self, cluster_bus_port: Option<u16>) -> Vec<String> {
        // redis-server chdirs into its --dir: paths must be absolute.
        let p = |p: &Path| {
            fs::canonicalize(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let mut args = vec![
            "--tls-port".into(),
            self.port.to_string(),
            "--tls-cert-file".into(),
            p(&self.certs.server_cert),
            "--tls-key-file".into(),
            p(&self.certs.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.certs.ca),
            "--tls-auth-clients".into(),
            if self.auth_clients { "yes" } else { "no" }.into(),
            "--tls-replication".into(),
            "yes".into(),
        ];
        if let Some(bus) = cluster_bus_port {
            // The bus port would follow the TLS port with tls-cluster; pinning it keeps
            // it at the plain port + 10000, where CLUSTER MEET looks.
            args.extend([
                "--tls-cluster".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
            ]);
        }
        args
    }
}
