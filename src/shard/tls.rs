//! TLS on a shard connection, sans-I/O: a `rustls::ClientConnection` between the
//! connection's plaintext (RESP frames out, replies in) and the socket.
//!
//! Out: [`Conn::seal`](super::conn::Conn::seal) writes plaintext segments into rustls
//! and [`TlsLayer::collect`] moves the records rustls made into `Bytes` segments; the
//! backends send those exactly as they send plaintext segments on a plain connection
//! (io_uring's send holds clones of them until its completion). A plaintext command
//! counts as written (for the retry rules) once the records carrying its last byte
//! reached the kernel.
//!
//! In: the ciphertext received into the connection's receive buffer is fed to rustls
//! ([`TlsLayer::open`]); the plaintext goes to a buffer the RESP reader reads, or,
//! when a large value is in progress and nothing is staged before it, straight from
//! rustls into the value's destination (one copy; the kernel never writes a payload
//! destination on a TLS connection, since the bytes only exist after decryption).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::resp::ArrayReader;

/// Ciphertext queued ahead of the socket before more plaintext is encrypted: bounds
/// the copy a large write makes at once.
const SEAL_AHEAD: usize = 1024 * 1024;
/// Free space kept at the end of the plaintext buffer for one read from rustls.
const PLAIN_CHUNK: usize = 32 * 1024;

/// A TLS session's state on one connection.
pub(crate) struct TlsLayer {
    session: ClientConnection,
    /// Records not yet sent; the front may be partly sent.
    out: VecDeque<Bytes>,
    out_off: usize,
    out_bytes: usize,
    /// Ciphertext bytes queued / handed to the kernel over the connection's life.
    queued: u64,
    sent: u64,
    /// Plaintext bytes handed to rustls so far.
    plain_in: u64,
    /// (ciphertext end, plaintext end): once `sent` reaches the first, the plaintext
    /// up to the second is on the wire.
    marks: VecDeque<(u64, u64)>,
    plain_sent: u64,
    /// The handshake finished and was counted.
    pub established: bool,
    /// Decrypted bytes not yet read by the RESP reader.
    plain: Vec<u8>,
    pstart: usize,
    pend: usize,
    /// Value bytes copied from rustls straight into their destination since last asked.
    copied: usize,
}

/// What a batch of received ciphertext did.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// The handshake completed with these bytes.
    pub established: bool,
    /// rustls has records to send (handshake messages, alerts, key updates).
    pub wants_write: bool,
}

impl TlsLayer {
    /// A client session to `name`; the ClientHello is queued at once.
    pub fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsLayer, rustls::Error> {
        let mut layer = TlsLayer {
            session: ClientConnection::new(config, name)?,
            out: VecDeque::new(),
            out_off: 0,
            out_bytes: 0,
            queued: 0,
            sent: 0,
            plain_in: 0,
            marks: VecDeque::new(),
            plain_sent: 0,
            established: false,
            plain: vec![0u8; 2 * PLAIN_CHUNK],
            pstart: 0,
            pend: 0,
            copied: 0,
        };
        // The rustls buffers are bounded by this layer (SEAL_AHEAD, draining plaintext
        // after every record batch), so rustls's own limit only splits writes.
        layer.session.set_buffer_limit(Some(SEAL_AHEAD));
        layer.collect()?;
        Ok(layer)
    }

    /// `true` until the handshake completed.
    pub fn handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// `true` while more plaintext may be encrypted now.
    pub fn has_room(&self) -> bool {
        !self.session.is_handshaking() && self.out_bytes < SEAL_AHEAD
    }

    /// Encrypts a prefix of `plain`; returns how many bytes were taken (0 when the
    /// session's buffer is full: collect, then try again).
    pub fn encrypt(&mut self, plain: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.session.writer().write_vectored(plain)?;
        self.plain_in += n as u64;
        Ok(n)
    }

    /// Moves the records rustls made into the send queue.
    pub fn collect(&mut self) -> Result<(), rustls::Error> {
        if !self.session.wants_write() {
            return Ok(());
        }
        let mut records = Vec::new();
        while self.session.wants_write() {
            // A Vec takes everything offered, so this ends.
            if let Err(e) = self.session.write_tls(&mut records) {
                return Err(rustls::Error::General(format!("queueing records: {e}")));
            }
        }
        if !records.is_empty() {
            self.out_bytes += records.len();
            self.queued += records.len() as u64;
            self.out.push_back(Bytes::from(records));
            self.marks.push_back((self.queued, self.plain_in));
        }
        Ok(())
    }

    /// Unsent ciphertext bytes.
    pub fn out_len(&self) -> usize {
        self.out_bytes
    }

    /// The unsent records and the part of the first one already sent.
    pub fn segments(&self) -> (&VecDeque<Bytes>, usize) {
        (&self.out, self.out_off)
    }

    /// `n` ciphertext bytes reached the kernel; returns the plaintext position now
    /// known to be on the wire.
    pub fn on_sent(&mut self, mut n: usize) -> u64 {
        self.sent += n as u64;
        self.out_bytes = self.out_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.len() - self.out_off;
            if n >= left {
                n -= left;
                self.out.pop_front();
                self.out_off = 0;
            } else {
                self.out_off += n;
                n = 0;
            }
        }
        while self.marks.front().is_some_and(|m| m.0 <= self.sent) {
            if let Some((_, p)) = self.marks.pop_front() {
                self.plain_sent = p;
            }
        }
        self.plain_sent
    }

    /// Feeds received ciphertext to rustls and reads out what it decrypted: into the
    /// payload destination of `reader` when a large value is in progress and nothing
    /// is staged before it, else into the plaintext buffer.
    pub fn open(
        &mut self,
        mut cipher: &[u8],
        reader: &mut ArrayReader,
        direct_min: usize,
    ) -> Result<Opened, rustls::Error> {
        let was_handshaking = self.session.is_handshaking();
        let mut opened = Opened::default();
        while !cipher.is_empty() {
            let n = match self.session.read_tls(&mut cipher) {
                Ok(n) => n,
                Err(e) => return Err(rustls::Error::General(format!("reading records: {e}"))),
            };
            let state = match self.session.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Queue the alert rustls prepared; the connection closes anyway.
                    let _ = self.collect();
                    return Err(e);
                }
            };
            // A close_notify is followed by the end of the stream, which the read
            // path reports; what was decrypted before it is still delivered.
            let _ = state;
            self.drain_plaintext(reader, direct_min)?;
            if n == 0 {
                break;
            }
        }
        if was_handshaking && !self.session.is_handshaking() {
            opened.established = true;
        }
        self.collect()?;
        opened.wants_write = self.out_bytes > 0;
        Ok(opened)
    }

    fn drain_plaintext(
        &mut self,
        reader: &mut ArrayReader,
        direct_min: usize,
    ) -> Result<(), rustls::Error> {
        loop {
            let staged_empty = self.pstart == self.pend;
            let r = if staged_empty
                && reader.payload_len() >= direct_min
                && reader.payload_remaining() > 0
            {
                match reader.direct_window() {
                    Some(w) => match self.session.reader().read(w) {
                        Ok(n) => {
                            reader.advance_direct(n);
                            self.copied += n;
                            Ok(n)
                        }
                        Err(e) => Err(e),
                    },
                    None => self.read_staged(),
                }
            } else {
                self.read_staged()
            };
            match r {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // An unclean end of the peer's stream is reported by the read path.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(rustls::Error::General(format!("reading plaintext: {e}"))),
            }
        }
    }

    /// One read from rustls into the plaintext buffer, made room for first.
    fn read_staged(&mut self) -> io::Result<usize> {
        if self.plain.len() - self.pend < PLAIN_CHUNK {
            if self.pstart > 0 {
                self.plain.copy_within(self.pstart..self.pend, 0);
                self.pend -= self.pstart;
                self.pstart = 0;
            }
            if self.plain.len() - self.pend < PLAIN_CHUNK {
                // A control-plane reply (CLUSTER SHARDS) is parsed whole: grow.
                let want = (self.pend + PLAIN_CHUNK).max(self.plain.len() * 2);
                self.plain.resize(want, 0);
            }
        }
        let n = self.session.reader().read(&mut self.plain[self.pend..])?;
        self.pend += n;
        Ok(n)
    }

    /// Decrypted bytes not yet consumed.
    pub fn unread(&self) -> &[u8] {
        &self.plain[self.pstart..self.pend]
    }

    /// Marks `n` decrypted bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pstart = (self.pstart + n).min(self.pend);
        if self.pstart == self.pend {
            self.pstart = 0;
            self.pend = 0;
        }
    }

    /// Value bytes copied from rustls into their destination since the last call.
    pub fn take_copied(&mut self) -> usize {
        std::mem::take(&mut self.copied)
    }

    /// Shrinks the plaintext buffer back after a large control-plane reply.
    pub fn trim(&mut self) {
        if self.pstart == self.pend && self.plain.len() > 8 * PLAIN_CHUNK {
            self.plain = vec![0u8; 2 * PLAIN_CHUNK];
            self.pstart = 0;
            self.pend = 0;
        }
    }
}

/// Starts TLS on a new connection to `addr` when the engine uses TLS (`config`): the
/// ClientHello is queued ahead of everything else the connection will send.
pub(super) fn attach(
    config: Option<&Arc<ClientConfig>>,
    conn: &mut super::conn::Conn,
    addr: &crate::addr::ServerAddr,
) -> io::Result<()> {
    let Some(config) = config else {
        return Ok(());
    };
    let crate::addr::ServerAddr::Tcp { host, .. } = addr else {
        return Err(io::Error::other("TLS needs a TCP address"));
    };
    let name = crate::tls::server_name(host).map_err(io::Error::other)?;
    let layer = TlsLayer::new(config.clone(), name).map_err(io::Error::other)?;
    conn.use_tls(layer);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{RootCertStore, ServerConfig, ServerConnection};

    /// A client layer and an in-memory server trusting each other.
    fn pair() -> (TlsLayer, ServerConnection) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        (
            TlsLayer::new(Arc::new(client), name).unwrap(),
            ServerConnection::new(Arc::new(server)).unwrap(),
        )
    }

    /// Everything the client queued, as the wire would carry it; marks it sent.
    fn wire(c: &mut TlsLayer) -> Vec<u8> {
        let (segs, off) = c.segments();
        let mut out: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
        out.drain(..off);
        c.on_sent(out.len());
        out
    }

    fn to_client(s: &mut ServerConnection, c: &mut TlsLayer, r: &mut ArrayReader) -> Opened {
        let mut bytes = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut bytes).unwrap();
        }
        c.open(&bytes, r, 32 * 1024).unwrap()
    }

    /// Delivers the client's records; returns the plaintext the server read.
    fn to_server(c: &mut TlsLayer, s: &mut ServerConnection) -> Vec<u8> {
        let bytes = wire(c);
        let mut rd = &bytes[..];
        let mut plain = Vec::new();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
            let _ = io::Read::read_to_end(&mut s.reader(), &mut plain);
        }
        plain
    }

    #[test]
    fn handshake_then_plaintext_both_ways_and_sent_positions() {
        let (mut c, mut s) = pair();
        let mut r = ArrayReader::new();
        assert!(
            c.handshaking() && c.out_len() > 0,
            "ClientHello queued at once"
        );
        let mut established = false;
        for _ in 0..4 {
            to_server(&mut c, &mut s);
            established |= to_client(&mut s, &mut c, &mut r).established;
        }
        assert!(established && !c.handshaking());

        // 300 KB of plaintext: several records; the plaintext position moves only as
        // the records carrying it are sent.
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut taken = 0;
        while taken < plain.len() {
            let n = c
                .encrypt(&[io::IoSlice::new(
                    &plain[taken..(taken + 64 * 1024).min(plain.len())],
                )])
                .unwrap();
            taken += n;
            c.collect().unwrap();
        }
        let total = c.out_len();
        let mid = c.on_sent(total / 2);
        assert!(
            mid < plain.len() as u64,
            "half the records do not carry it all"
        );
        assert_eq!(c.on_sent(total - total / 2), plain.len() as u64);
        assert_eq!(c.out_len(), 0);
        // (on_sent already consumed the records: replay them to the server by hand.)
        let (mut c2, mut s2) = pair();
        for _ in 0..4 {
            to_server(&mut c2, &mut s2);
            to_client(&mut s2, &mut c2, &mut r);
        }
        c2.encrypt(&[io::IoSlice::new(&plain[..60_000])]).unwrap();
        c2.collect().unwrap();
        assert_eq!(to_server(&mut c2, &mut s2), plain[..60_000]);

        // Server to client: the decrypted bytes wait in the plaintext buffer.
        s2.writer().write_all(b"+OK\r\n$3\r\nabc\r\n").unwrap();
        to_client(&mut s2, &mut c2, &mut r);
        assert_eq!(c2.unread(), b"+OK\r\n$3\r\nabc\r\n");
        c2.consume(5);
        assert_eq!(c2.unread(), b"$3\r\nabc\r\n");
    }
}
