//! Server certificates pinned in `tls_ca_file`, and what to do about a refusal.
//!
//! A self-signed server certificate (what `openssl req -x509` makes) given as
//! `tls_ca_file` is what redis-py and OpenSSL accept; webpki refuses it
//! (`CaUsedAsEndEntity` when it says `CA:TRUE`). [`PinnedOrWebPki`] verifies as webpki
//! does and, where webpki refuses, accepts a certificate byte-identical to one in
//! `tls_ca_file` whose names include the host and whose dates hold now. [`explain`]
//! turns a rustls refusal into a message that says what to change.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};

/// webpki's verification, then the pinned certificates.
#[derive(Debug)]
pub(super) struct PinnedOrWebPki {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of `tls_ca_file`.
    pub(super) pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(refused);
        }
        // Pinned: these exact bytes are trusted; the host name and the dates still
        // count. The handshake signature is checked as for any certificate.
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        check_dates(end_entity.as_ref(), now)?;
        tracing::debug!(server = ?server_name, "accepted the server certificate pinned in tls_ca_file");
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Refuses a certificate outside its validity period, as webpki would.
fn check_dates(der: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
    let (not_before, not_after) = validity(der).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::BadEncoding,
    ))?;
    if now.as_secs() < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(not_before)),
        }
        .into());
    }
    if now.as_secs() > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(not_after)),
        }
        .into());
    }
    Ok(())
}

/// One DER element: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `notBefore` and `notAfter` of an X.509 certificate, in seconds since the epoch.
fn validity(der: &[u8]) -> Option<(u64, u64)> {
    const SEQ: u8 = 0x30;
    let (SEQ, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQ, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2; // version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serialNumber, signature, issuer
    }
    let (SEQ, v, _) = tlv(rest)? else {
        return None;
    };
    let (t1, a, rest) = tlv(v)?;
    let (t2, b, _) = tlv(rest)?;
    Some((der_time(t1, a)?, der_time(t2, b)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, s: &[u8]) -> Option<u64> {
    let digits = |r: &[u8]| -> Option<u64> {
        r.iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let (year, rest) = match tag {
        0x17 if s.len() == 13 => {
            let yy = digits(&s[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        0x18 if s.len() == 15 => (digits(&s[..4])?, &s[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, h, m, sec) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // Before 1970 (a UTCTime from 1950 on) counts as the epoch itself.
    let Some(days) = (era * 146_097 + doe).checked_sub(719_468) else {
        return Some(0);
    };
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// A rustls refusal, followed by what to change.
pub(crate) fn explain(e: &rustls::Error) -> String {
    use rustls::Error as E;
    use CertificateError as C;
    let ca = "extra_config.tls_ca_file";
    let hint = match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!(
                "the server's certificate is not signed by a CA slotline trusts: set {ca} to \
                 the PEM of the CA that signed it (for a self-signed server certificate, the \
                 certificate itself), or have the server send its intermediate certificates"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "reach the server by a name or address its certificate lists (subjectAltName), \
                 or reissue the certificate with the host of the URL in it"
                    .to_string()
            }
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => {
                "renew the server's certificate (its tls-cert-file), or correct this machine's \
                 clock"
                    .to_string()
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "reissue the server's certificate with extendedKeyUsage serverAuth".to_string()
            }
            C::BadSignature => format!(
                "the certificate's signature does not verify: {ca} holds another key of the \
                 same name, or the certificate was altered"
            ),
            C::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => format!(
                "the server presents a CA certificate (CA:TRUE, as `openssl req -x509` makes) \
                 as its own: put that exact certificate in {ca} to pin it (it is then accepted \
                 for the names it lists), or give the server a certificate signed by that CA"
            ),
            _ => format!(
                "check the server's certificate (its tls-cert-file) against {ca}: \
                 `openssl verify -CAfile <tls_ca_file> <server cert>` names the problem"
            ),
        },
        E::NoCertificatesPresented => {
            "the server sent no certificate: check its tls-cert-file".to_string()
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (tls-auth-clients): set \
             extra_config.tls_cert_file and extra_config.tls_key_file"
                .to_string()
        }
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
        ) => "the server refused slotline's client certificate: set \
              extra_config.tls_cert_file to a valid certificate signed by a CA in the \
              server's tls-ca-cert-file"
            .to_string(),
        E::AlertReceived(AlertDescription::HandshakeFailure) => {
            "the server ended the handshake: it may require a client certificate \
             (extra_config.tls_cert_file, tls_key_file) or share no cipher suite with \
             slotline (TLS 1.2/1.3 with ECDHE and AES-GCM or ChaCha20; its tls-ciphers)"
                .to_string()
        }
        E::AlertReceived(AlertDescription::ProtocolVersion) | E::PeerIncompatible(_) => {
            "no TLS version or cipher suite in common: slotline speaks TLS 1.2 and 1.3 \
             with ECDHE and AES-GCM or ChaCha20; check the server's tls-protocols and \
             tls-ciphers"
                .to_string()
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the server does not speak TLS here: use its tls-port in the rediss:// URL, or \
             redis:// without use_tls for its plain port"
                .to_string()
        }
        _ => "check the server's TLS settings (tls-port, tls-cert-file, tls-protocols) \
              against extra_config.tls_ca_file, tls_cert_file and tls_key_file"
            .to_string(),
    };
    format!("{e}; {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_a_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2001, 2, 28);
        p.not_after = rcgen::date_time_ymd(2061, 3, 1); // GeneralizedTime from 2050
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (a, b) = validity(cert.der()).unwrap();
        assert_eq!(a, 983_318_400, "2001-02-28T00:00:00Z");
        assert_eq!(b, 2_876_860_800, "2061-03-01T00:00:00Z");
        let at = |s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        assert!(check_dates(cert.der(), at(a)).is_ok());
        assert!(check_dates(cert.der(), at(b)).is_ok());
        let e = check_dates(cert.der(), at(b + 1)).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let e = check_dates(cert.der(), at(a - 1)).unwrap_err().to_string();
        assert!(e.contains("not valid yet"), "{e}");
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            der_time(0x17, b"500101000000Z"),
            Some(0),
            "1950: before the epoch"
        );
    }

    #[test]
    fn malformed_der_is_none_never_a_panic() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        for n in 0..der.len() {
            let _ = validity(&der[..n]);
        }
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x01\x02\x03\x04\x05",
            b"\x30\x80",
        ] {
            assert_eq!(validity(bad), None);
        }
        assert_eq!(der_time(0x17, b"991301000000Z"), None);
        assert_eq!(der_time(0x18, b"20240101000000+"), None);
    }

    #[test]
    fn every_refusal_says_what_to_change() {
        use rustls::Error as E;
        for (e, want) in [
            (
                E::InvalidCertificate(CertificateError::UnknownIssuer),
                "tls_ca_file",
            ),
            (
                E::InvalidCertificate(CertificateError::NotValidForName),
                "subjectAltName",
            ),
            (E::InvalidCertificate(CertificateError::Expired), "renew"),
            (
                E::AlertReceived(AlertDescription::CertificateRequired),
                "tls_cert_file",
            ),
            (
                E::AlertReceived(AlertDescription::UnknownCA),
                "tls_cert_file",
            ),
            (
                E::AlertReceived(AlertDescription::ProtocolVersion),
                "tls-protocols",
            ),
            (E::General("x".into()), "tls-port"),
        ] {
            let m = explain(&e);
            assert!(m.starts_with(&e.to_string()) && m.contains(want), "{m}");
        }
    }
}
