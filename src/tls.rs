//! The TLS client configuration an engine uses for every connection: trusted roots (the
//! operating system's store plus `tls_ca_file`), an optional client certificate (mTLS),
//! and the `ring` crypto provider, installed explicitly (never a process default).
//!
//! Built once per engine; each connection then makes a `rustls::ClientConnection` from
//! it ([`server_name`] gives its SNI and the name its certificate is checked against).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::Config;
use crate::error::{Error, Result};

mod pinned;
pub(crate) use pinned::explain;

/// The configuration an engine's connections use: `None` when TLS is off. Checks
/// every seed's name too, so a bad one fails here rather than on the shard.
pub(crate) fn for_engine(cfg: &Config) -> Result<Option<Arc<ClientConfig>>> {
    if !cfg.tls {
        return Ok(None);
    }
    for seed in &cfg.seeds {
        if let crate::addr::ServerAddr::Tcp { host, .. } = seed {
            server_name(host)?;
        }
    }
    client_config(cfg).map(Some)
}

/// The configuration for `cfg` (which has TLS on).
pub(crate) fn client_config(cfg: &Config) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("use_tls", true, format!("TLS setup failed: {e}")))?;
    let builder = if cfg.tls_insecure {
        warn_insecure_once();
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let roots = Arc::new(roots(cfg.tls_ca_file.as_deref())?);
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| {
                    Error::config(
                        "extra_config.tls_ca_file",
                        "",
                        format!("TLS setup failed: {e}"),
                    )
                })?;
        match cfg.tls_ca_file.as_deref() {
            // A server certificate byte-identical to one of the file's is accepted too
            // (self-signed servers; see `pinned`).
            Some(path) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pinned::PinnedOrWebPki {
                    webpki,
                    pinned: read_certs("extra_config.tls_ca_file", path)?,
                })),
            None => builder.with_webpki_verifier(webpki),
        }
    };
    let config = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("extra_config.tls_cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::config(
                    "extra_config.tls_key_file",
                    key.display(),
                    format!("no usable PEM private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                // rustls names the mismatch; the key itself is never in the message.
                Error::config(
                    "extra_config.tls_cert_file",
                    cert.display(),
                    format!("client certificate and key do not fit together: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a server is reached by: its SNI and the name its certificate must carry.
/// An IP address gets no SNI and is checked against the certificate's IP SANs.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|e| {
        Error::config(
            "remote_url",
            host,
            format!("not a valid TLS server name: {e}"),
        )
    })
}

/// The system's trusted roots plus the certificates of `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = ca_file {
        for c in read_certs("extra_config.tls_ca_file", path)? {
            store.add(c).map_err(|e| {
                Error::config(
                    "extra_config.tls_ca_file",
                    path.display(),
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
    }
    if store.is_empty() {
        return Err(Error::config(
            "extra_config.tls_ca_file",
            "",
            "no trusted certificate authority: the system store is empty and tls_ca_file \
             is not set",
        ));
    }
    Ok(store)
}

/// The operating system's trust store, read once per process (it is a few hundred
/// certificates). Unreadable entries are skipped; what was found is logged.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipped part of the system trust store");
        }
        tracing::debug!(
            certificates = found.certs.len(),
            "read the system trust store"
        );
        found.certs
    })
}

/// Every certificate of a PEM file; at least one.
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::config(key, path.display(), format!("cannot read PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config(
            key,
            path.display(),
            "holds no PEM certificate",
        ));
    }
    Ok(certs)
}

fn warn_insecure_once() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "TLS server certificates are NOT verified (tls_insecure_skip_verify: true): \
             anyone on the path can read and change the traffic"
        );
    }
}

/// `tls_insecure_skip_verify`: accepts any server certificate. Handshake signatures are
/// still checked (they prove the server holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_host_is_an_ip_server_name_and_a_dns_host_a_dns_name() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("redis.example.com").unwrap(),
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn unreadable_files_name_the_key_and_the_path() {
        let cfg = Config {
            tls: true,
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..Config::default()
        };
        let e = client_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("extra_config.tls_ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let cfg = Config {
            tls: true,
            tls_insecure: true,
            tls_cert_file: Some("/nonexistent/c.pem".into()),
            tls_key_file: Some("/nonexistent/k.pem".into()),
            ..Config::default()
        };
        let e = client_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("tls_cert_file") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
    }

    #[test]
    fn insecure_needs_no_roots() {
        let cfg = Config {
            tls: true,
            tls_insecure: true,
            ..Config::default()
        };
        assert!(client_config(&cfg).is_ok());
    }
}
