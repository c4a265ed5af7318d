//! One connection to one Redis server, owned by one shard.
//!
//! The connection is sans-I/O: it holds the outgoing segments, the receive buffer, the
//! reply reader and the queue of replies it waits for. The shard's event loop (io_uring
//! or epoll) moves bytes in and out through [`Conn::lend_segments`] / [`Conn::on_sent`] and
//! [`Rx::lend`] / [`Rx::restore`] (io_uring) or [`Rx::recv_target`] / [`Rx::on_recv`] (epoll).
//!
//! Memory handed to the kernel (io_uring) leaves the connection for the duration of the
//! operation: a send takes clones of the outgoing `Bytes` segments (whose data never
//! moves), a receive takes the receive buffer or the reply's payload destination out as
//! a [`RecvBuf`] ([`Rx::lend`]) and gives it back with the completion ([`Rx::restore`]).
//! So nothing the connection does meanwhile (failing, resetting its reader, being
//! dropped) can free memory the kernel may still write.
//!
//! With TLS ([`super::tls`]) the same segments and receive buffer carry ciphertext:
//! [`Conn::seal`] turns queued plaintext into records before a send, [`Conn::open`]
//! decrypts what a receive brought, and the reply reader reads the decrypted bytes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::tls::{Opened, TlsLayer};
use crate::batch::clone_err;
use crate::error::Error;
use crate::resp::{ArrayReader, Dest, ReplyReader};

pub(crate) use super::rx::{RecvBuf, Rx, DIRECT_MIN, RBUF_SIZE};

/// Payloads this small are copied into the frame's header block instead of being sent
/// from their own buffer.
const COPY_MAX: usize = 512;
/// Most plaintext bytes encrypted in one step (TLS).
const SEAL_STEP: usize = 64 * 1024;
/// Most iovecs passed to one send.
pub(crate) const MAX_IOV: usize = 1024;

/// The socket, TCP or unix.
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Stream {
    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Ends the connection for the kernel too: `SO_LINGER` 0 (the later close resets
    /// it and drops unsent data, so zero-copy sends' pages are released and their
    /// notifications arrive even when the peer stopped reading) and `shutdown` both
    /// ways, which completes every receive and send in flight on the socket (a
    /// receive with 0 bytes, a send with an error or a short count). The descriptor
    /// stays open until the connection is dropped, so no operation can reach another
    /// socket that reuses its number.
    pub fn reset(&self) {
        if let Stream::Tcp(_) = self {
            let _ = crate::sys::set_linger_zero(self.fd());
        }
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Result of a non-blocking connect, once the socket reports writable.
    pub fn connect_result(&self) -> io::Result<bool> {
        let err = match self {
            Stream::Tcp(s) => s.take_error()?,
            Stream::Unix(s) => s.take_error()?,
        };
        if let Some(e) = err {
            return Err(e);
        }
        let connected = match self {
            Stream::Tcp(s) => s.peer_addr().is_ok(),
            Stream::Unix(s) => s.peer_addr().is_ok(),
        };
        Ok(connected)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// TCP connect in progress.
    Connecting,
    /// AUTH / SELECT / CLIENT SETNAME sent, replies outstanding.
    Handshaking,
    /// Serving requests.
    Ready,
    /// Failed or closed; waits only for in-flight kernel operations to return.
    Dead,
}

/// What a queued reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartRef {
    pub idx: u32,
    pub gen: u32,
}

/// How a queued reply is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PendKind {
    /// One MGET array; element j belongs to unit `units[j]`.
    Mget,
    /// One simple reply per unit (SET, EXISTS, DEL), in order; `next` counts done ones.
    PerUnit { next: usize },
    /// One reply for all units (MSET).
    AllUnits,
    /// One generic reply for the single unit.
    Command,
    /// A handshake step; an error reply fails the connection when the step is
    /// required, and is logged and ignored when it is optional.
    Handshake { step: HandshakeStep },
    /// `+OK` of an ASKING sent before a redirected command.
    Asking,
}

/// The commands a new connection sends before serving requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeStep {
    Auth,
    Select,
    /// CLIENT SETNAME: optional (proxies such as twemproxy or envoy refuse it).
    SetName,
    /// READONLY on a replica: optional (without it the replica redirects reads to
    /// its master, which still answers them).
    ReadOnly,
}

impl HandshakeStep {
    /// The command, for messages.
    pub fn name(self) -> &'static str {
        match self {
            HandshakeStep::Auth => "AUTH",
            HandshakeStep::Select => "SELECT",
            HandshakeStep::SetName => "CLIENT SETNAME",
            HandshakeStep::ReadOnly => "READONLY",
        }
    }

    /// `true` when an error reply must fail the connection.
    pub fn required(self) -> bool {
        matches!(self, HandshakeStep::Auth | HandshakeStep::Select)
    }
}

/// A reply the connection waits for.
#[derive(Debug)]
pub(crate) struct Pending {
    pub part: Option<PartRef>,
    pub kind: PendKind,
    pub units: Vec<u32>,
    /// Request bytes plus the expected reply bytes, released when the reply is read.
    pub weight: usize,
    pub sent_at: Instant,
    /// Where the command's bytes end in the connection's output stream: it reached
    /// the kernel whole once [`Conn::written`] is at least this.
    pub end: u64,
}

/// One connection. Its fields are its own: the shard reads and changes them through
/// the methods below.
pub(crate) struct Conn {
    node: usize,
    stream: Stream,
    state: ConnState,
    since: Instant,
    /// Segments not yet fully written; the front may be partly written.
    out: VecDeque<Bytes>,
    out_off: usize,
    out_bytes: usize,
    /// Plaintext bytes known to have reached the kernel over the connection's life.
    written: u64,
    /// Plaintext bytes taken out of `out` (by the kernel, or by TLS to encrypt).
    taken: u64,
    /// Headers of the frame being built, split off into `out` as segments.
    hdr: BytesMut,
    rx: Rx,
    /// The replies it waits for, in order.
    pending: VecDeque<Pending>,
    /// Request and expected reply bytes of `pending` (see [`Pending::weight`]).
    inflight: usize,
    /// Kept free of bulk writes for small frames (its node's express connection).
    express: bool,
    /// Why a closed connection failed, kept while a reply's units wait for the kernel
    /// to return their destination (see [`Conn::close`]).
    failure: Option<Error>,
    /// The TLS session, on a `rediss://` connection.
    tls: Option<Box<TlsLayer>>,
}

/// What closing a connection ([`Conn::close`]) leaves to its shard.
pub(crate) struct Closed {
    /// It was still connecting (a failed connect).
    pub was_connecting: bool,
    /// The replies it owed, whose units are retried or failed now.
    pub pending: Vec<Pending>,
    /// How far its output reached the kernel (which of those commands were sent).
    pub written: u64,
    /// A payload destination the reply reader gave back (index in the first pending
    /// reply's units), to return to its unit.
    pub returned: Option<(usize, Dest)>,
}

impl Conn {
    /// The shard-local node it connects to.
    pub fn node(&self) -> usize {
        self.node
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    /// When it was opened.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The socket and the receive side together (a read into the receive target).
    pub fn stream_and_rx(&mut self) -> (&Stream, &mut Rx) {
        (&self.stream, &mut self.rx)
    }

    pub fn rx(&self) -> &Rx {
        &self.rx
    }

    pub fn rx_mut(&mut self) -> &mut Rx {
        &mut self.rx
    }

    /// The replies it waits for, oldest first.
    pub fn pending(&self) -> &VecDeque<Pending> {
        &self.pending
    }

    /// A command was queued: its reply is awaited after the others.
    pub fn expect(&mut self, p: Pending) {
        self.pending.push_back(p);
    }

    /// The reply to read next, taken (give it back with [`Conn::put_back`] while it is
    /// incomplete).
    pub fn next_reply(&mut self) -> Option<Pending> {
        self.pending.pop_front()
    }

    pub fn put_back(&mut self, p: Pending) {
        self.pending.push_front(p);
    }

    /// Bytes in flight (requests and their expected replies).
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// A frame of `weight` bytes was queued.
    pub fn add_inflight(&mut self, weight: usize) {
        self.inflight += weight;
    }

    /// A reply of `weight` bytes was read.
    pub fn release(&mut self, weight: usize) {
        self.inflight = self.inflight.saturating_sub(weight);
    }

    pub fn is_express(&self) -> bool {
        self.express
    }

    pub fn set_express(&mut self) {
        self.express = true;
    }

    /// `true` while a handshake reply (AUTH, SELECT, ...) is still owed.
    fn handshake_owed(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p.kind, PendKind::Handshake { .. }))
    }

    /// The TCP connect finished: the connection handshakes (TLS, then the commands
    /// queued by the pool) or is ready at once.
    pub fn on_connected(&mut self) {
        self.state = if self.tls_handshaking() || self.handshake_owed() {
            ConnState::Handshaking
        } else {
            ConnState::Ready
        };
    }

    /// A handshake step's reply was read: ready once none is owed.
    pub fn handshake_step_done(&mut self) {
        if !self.handshake_owed() {
            self.state = ConnState::Ready;
        }
    }

    /// The TLS handshake finished: ready unless the Redis handshake is still owed.
    pub fn on_tls_established(&mut self) {
        if let Some(t) = self.tls.as_mut() {
            t.established = true;
        }
        if self.state == ConnState::Handshaking && !self.handshake_owed() {
            self.state = ConnState::Ready;
        }
    }

    /// The TLS session finished its handshake once.
    pub fn tls_established(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.established)
    }

    /// TLS: plaintext bytes copied through the session's buffer since the last call.
    pub fn tls_take_copied(&mut self) -> usize {
        self.tls.as_mut().map_or(0, |t| t.take_copied())
    }

    /// Closes the connection (the connection side of `Shard::fail_conn`): it is dead,
    /// its socket reset (the kernel must finish every operation on it: a send to a peer
    /// that stopped reading, or a zero-copy send's notification, would otherwise never
    /// complete, see [`Stream::reset`]), and the replies it owed are handed back. A
    /// reply whose payload destination is lent to an in-flight receive stays, with
    /// `err`, until the kernel returns the receive ([`Conn::settle`]). `None` when it
    /// was closed already.
    pub fn close(&mut self, err: &Error) -> Option<Closed> {
        if self.state == ConnState::Dead {
            return None;
        }
        let was_connecting = self.state == ConnState::Connecting;
        self.state = ConnState::Dead;
        self.stream.reset();
        let held = if self.rx.reader.window_lent() {
            self.pending.pop_front()
        } else {
            None
        };
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        let written = self.written();
        let returned = match held {
            Some(p) => {
                self.pending.push_back(p);
                self.failure = Some(clone_err(err));
                None
            }
            None => self.rx.reader.reset(),
        };
        self.inflight = 0;
        Some(Closed {
            was_connecting,
            pending,
            written,
            returned,
        })
    }

    /// The kernel returned the receive of a closed connection: the reply held back by
    /// [`Conn::close`], with its error (when one was held), and the destination the
    /// reset reader gives back.
    pub fn settle(&mut self) -> (Closed, Option<Error>) {
        let returned = self.rx.reader.reset();
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        let err = self.failure.take();
        let closed = Closed {
            was_connecting: false,
            pending,
            written: self.written(),
            returned,
        };
        (closed, err)
    }

    /// A connection receiving into `fixed` (a buffer registered with the ring, and its
    /// index) when given, else into a buffer of its own.
    pub fn new(node: usize, stream: Stream, fixed: Option<(u16, Vec<u8>)>) -> Conn {
        Conn {
            node,
            stream,
            state: ConnState::Connecting,
            since: Instant::now(),
            out: VecDeque::new(),
            out_off: 0,
            out_bytes: 0,
            written: 0,
            taken: 0,
            hdr: BytesMut::with_capacity(16 * 1024),
            rx: Rx::new(fixed),
            pending: VecDeque::new(),
            inflight: 0,
            express: false,
            failure: None,
            tls: None,
        }
    }

    /// Puts the connection's bytes through `tls` from now on (before anything is sent).
    pub fn use_tls(&mut self, tls: TlsLayer) {
        self.rx.ciphertext = true;
        self.tls = Some(Box::new(tls));
    }

    /// `true` while a TLS handshake is still under way.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.handshaking())
    }

    // ----- building frames -----

    /// Appends header bytes of the frame being built.
    pub fn hdr(&mut self) -> &mut BytesMut {
        &mut self.hdr
    }

    /// Closes the header run so far into a segment.
    fn cut_hdr(&mut self) {
        if !self.hdr.is_empty() {
            let seg = self.hdr.split().freeze();
            self.out_bytes += seg.len();
            self.out.push_back(seg);
        }
        // Keep header staging cheap: start a fresh block when the old one is used up.
        if self.hdr.capacity() < 4096 {
            self.hdr = BytesMut::with_capacity(16 * 1024);
        }
    }

    /// Appends a payload segment sent from the caller's buffer without copying.
    /// Returns `false` when it was copied instead (small payloads are cheaper copied
    /// than given their own iovec).
    pub fn push_payload(&mut self, data: &Bytes) -> bool {
        if data.len() <= COPY_MAX {
            self.hdr.extend_from_slice(data);
            return false;
        }
        self.cut_hdr();
        self.out_bytes += data.len();
        self.out.push_back(data.clone());
        true
    }

    /// Ends a frame: its bytes are queued for sending.
    pub fn end_frame(&mut self) {
        self.cut_hdr();
    }

    /// Unsent bytes: with TLS, the records waiting plus the plaintext that can be
    /// encrypted now (none before the handshake ends).
    pub fn out_len(&self) -> usize {
        match &self.tls {
            None => self.out_bytes,
            Some(t) if t.handshaking() => t.out_len(),
            Some(t) => t.out_len() + self.out_bytes,
        }
    }

    /// The output-stream position after everything queued so far (the frame being
    /// built included): a command's [`Pending::end`].
    pub fn queued_end(&self) -> u64 {
        self.taken + (self.out_bytes + self.hdr.len()) as u64
    }

    /// Bytes the kernel has taken so far. A command whose `end` is beyond this was not
    /// (or not wholly) sent, so the server cannot have run it.
    pub fn written(&self) -> u64 {
        self.written
    }

    // ----- sending -----

    /// What goes to the socket: the plaintext segments, or the TLS records.
    fn wire(&self) -> (&VecDeque<Bytes>, usize) {
        match &self.tls {
            Some(t) => t.segments(),
            None => (&self.out, self.out_off),
        }
    }

    /// Bytes a send may take now ([`Conn::seal`] first on a TLS connection).
    pub fn sendable(&self) -> usize {
        match &self.tls {
            Some(t) => t.out_len(),
            None => self.out_bytes,
        }
    }

    /// TLS: encrypts queued plaintext (once the handshake is done, up to a bound of
    /// records waiting) into records ready to send. No-op on a plain connection.
    pub fn seal(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while tls.has_room() && !self.out.is_empty() {
            // Many small segments (headers, small values) go in as one write, so they
            // share records; at most one bound's worth, since rustls copies it whole.
            let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(16);
            let mut len = 0;
            for (i, seg) in self.out.iter().enumerate() {
                let s: &[u8] = if i == 0 { &seg[self.out_off..] } else { seg };
                let s = &s[..s.len().min(SEAL_STEP - len)];
                len += s.len();
                slices.push(io::IoSlice::new(s));
                if len == SEAL_STEP || slices.len() == 64 {
                    break;
                }
            }
            let n = tls.encrypt(&slices)?;
            drop(slices);
            self.taken += n as u64;
            Self::advance(&mut self.out, &mut self.out_off, &mut self.out_bytes, n);
            let before = tls.out_len();
            tls.collect().map_err(io::Error::other)?;
            if n == 0 && tls.out_len() == before {
                break;
            }
        }
        tls.collect().map_err(io::Error::other)
    }

    /// TLS: feeds the ciphertext a receive brought to the session; the plaintext goes
    /// to the reply reader's input (or straight into a large value's destination).
    /// `None` on a plain connection.
    pub fn open(&mut self) -> Option<Result<Opened, rustls::Error>> {
        let tls = self.tls.as_mut()?;
        let (reader, cipher) = self.rx.reader_and_unread();
        let n = cipher.len();
        let r = tls.open(cipher, reader, DIRECT_MIN);
        self.rx.consume(n);
        Some(r)
    }

    /// Clones (reference counts, no copy) of up to `MAX_IOV` unsent segments into
    /// `segs`, the first one cut at the part already written: what a send may hold
    /// while the kernel reads it.
    pub fn lend_segments(&self, segs: &mut Vec<Bytes>) {
        let (out, off) = self.wire();
        for (i, seg) in out.iter().enumerate() {
            if segs.len() == MAX_IOV {
                break;
            }
            let s = if i == 0 {
                seg.slice(off.min(seg.len())..)
            } else {
                seg.clone()
            };
            if !s.is_empty() {
                segs.push(s);
            }
        }
    }

    /// The unsent segments as slices, for a vectored write.
    pub fn send_slices<'a>(&'a self, out: &mut Vec<std::io::IoSlice<'a>>) {
        let (segs, off) = self.wire();
        for (i, seg) in segs.iter().enumerate() {
            if out.len() == MAX_IOV {
                break;
            }
            let s: &[u8] = if i == 0 { &seg[off..] } else { seg };
            if !s.is_empty() {
                out.push(std::io::IoSlice::new(s));
            }
        }
    }

    /// `n` bytes were written.
    pub fn on_sent(&mut self, n: usize) {
        if let Some(tls) = self.tls.as_mut() {
            self.written = tls.on_sent(n);
            return;
        }
        self.written += n as u64;
        self.taken += n as u64;
        Self::advance(&mut self.out, &mut self.out_off, &mut self.out_bytes, n);
    }

    /// Drops `n` bytes from the front of a segment queue.
    fn advance(
        out: &mut VecDeque<Bytes>,
        out_off: &mut usize,
        out_bytes: &mut usize,
        mut n: usize,
    ) {
        *out_bytes = out_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = out.front() else { break };
            let left = front.len() - *out_off;
            if n >= left {
                n -= left;
                out.pop_front();
                *out_off = 0;
            } else {
                *out_off += n;
                n = 0;
            }
        }
        while out.front().is_some_and(|f| f.len() == *out_off) {
            out.pop_front();
            *out_off = 0;
        }
    }

    // ----- receiving (delegated to `rx`, a separate field so the stream can be
    // borrowed beside it) -----

    /// Received bytes not yet read (decrypted ones on a TLS connection).
    pub fn unread(&self) -> &[u8] {
        match &self.tls {
            Some(t) => t.unread(),
            None => self.rx.unread(),
        }
    }

    /// Marks `n` bytes of [`Conn::unread`] as read.
    pub fn consume(&mut self, n: usize) {
        match &mut self.tls {
            Some(t) => t.consume(n),
            None => self.rx.consume(n),
        }
    }

    /// The reply reader and [`Conn::unread`] together.
    pub fn reader_and_unread(&mut self) -> (&mut ArrayReader, &[u8]) {
        match &self.tls {
            Some(t) => (&mut self.rx.reader, t.unread()),
            None => self.rx.reader_and_unread(),
        }
    }

    /// The reader of non-MGET replies and [`Conn::unread`] together (decrypted bytes
    /// on a TLS connection).
    pub fn replies_and_unread(&mut self) -> (&mut ReplyReader, &[u8]) {
        match &self.tls {
            Some(t) => (&mut self.rx.replies, t.unread()),
            None => self.rx.replies_and_unread(),
        }
    }

    /// Shrinks the buffers back after a large control-plane reply.
    pub fn trim(&mut self) {
        self.rx.trim();
        if let Some(t) = self.tls.as_mut() {
            t.trim();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    /// A connection over one end of a unix socket pair, and the other end (with a read
    /// timeout, so a missing shutdown fails the test instead of hanging it).
    fn unix_conn() -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = Conn::new(0, Stream::Unix(mio::net::UnixStream::from_std(a)), None);
        (conn, b)
    }

    fn owed(conn: &Conn) -> Pending {
        Pending {
            part: Some(PartRef { idx: 0, gen: 1 }),
            kind: PendKind::Command,
            units: vec![0],
            weight: 10,
            sent_at: Instant::now(),
            end: conn.queued_end(),
        }
    }

    #[test]
    fn close_hands_back_the_owed_replies_once_and_ends_the_socket() {
        let (mut c, mut peer) = unix_conn();
        c.hdr().extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        c.end_frame();
        let p = owed(&c);
        c.expect(p);
        c.add_inflight(10);
        c.on_connected();
        assert_eq!(c.state(), ConnState::Ready);

        let closed = c.close(&Error::Closed).expect("an open connection closes");
        assert!(!closed.was_connecting);
        assert_eq!(
            closed.pending.len(),
            1,
            "the owed reply goes back to the shard"
        );
        assert!(
            closed.pending[0].end > closed.written,
            "nothing was written: the command cannot have run"
        );
        assert!(closed.returned.is_none());
        assert_eq!(c.state(), ConnState::Dead);
        assert_eq!(c.inflight(), 0);
        assert!(c.pending().is_empty());
        // The socket is shut down both ways: the peer reads the end at once.
        let mut buf = [0u8; 16];
        assert_eq!(peer.read(&mut buf).expect("the peer sees the end"), 0);
        // A closed connection fails once: a second failure finds nothing to do.
        assert!(c.close(&Error::Closed).is_none());
        let (held, err) = c.settle();
        assert!(held.pending.is_empty() && err.is_none());
    }

    #[test]
    fn closing_a_connect_in_progress_says_so() {
        let (mut c, _peer) = unix_conn();
        assert_eq!(c.state(), ConnState::Connecting);
        let closed = c.close(&Error::Closed).expect("closes");
        assert!(closed.was_connecting);
        assert!(closed.pending.is_empty());
    }
}
