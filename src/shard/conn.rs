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
use crate::mem::Mem;
use crate::resp::{ArrayReader, ReplyReader};

/// Payloads at least this large are received straight into their destination.
pub(crate) const DIRECT_MIN: usize = 32 * 1024;
/// Smallest free space offered to a receive into the connection's own buffer.
const RECV_CHUNK: usize = 64 * 1024;
/// Size of a connection's receive buffer (and of each registered one).
pub(crate) const RBUF_SIZE: usize = 2 * RECV_CHUNK;
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

/// One connection.
pub(crate) struct Conn {
    pub node: usize,
    pub stream: Stream,
    pub state: ConnState,
    pub since: Instant,
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
    pub rx: Rx,
    pub pending: VecDeque<Pending>,
    pub inflight: usize,
    /// Kept free of bulk writes for small frames (its node's express connection).
    pub express: bool,
    /// Why a closed connection failed, kept while a reply's units wait for the kernel
    /// to return their destination (see `Shard::fail_conn`).
    pub failure: Option<crate::error::Error>,
    /// The TLS session, on a `rediss://` connection.
    pub tls: Option<Box<TlsLayer>>,
}

impl Conn {
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

/// A receive's memory while the kernel holds it: the connection's receive buffer or a
/// payload's destination, written at `buf[at..at + len]`.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    pub buf: Mem,
    pub at: usize,
    pub len: usize,
    /// The payload destination (from the reply reader), not the receive buffer.
    pub direct: bool,
    /// Registered-buffer index when `buf` is a registered buffer.
    pub fixed: Option<u16>,
    /// Set by the ring: the receive wrote through a registered region's fixed buffer.
    pub region: bool,
}

/// The receive side: buffer, read cursor and reply reader.
pub(crate) struct Rx {
    rbuf: Vec<u8>,
    /// Registered-buffer index while `rbuf` is the registered buffer (never resized
    /// then: the kernel knows its address).
    pub fixed: Option<u16>,
    /// A registered buffer given up (to grow past it), to be returned to the pool.
    pub released: Option<(u16, Vec<u8>)>,
    rstart: usize,
    rend: usize,
    pub reader: ArrayReader,
    /// Reader of every reply but MGET's (bounded, resumable).
    pub replies: ReplyReader,
    /// Most bytes the next receive into the receive buffer may take: set when the
    /// reply's next element is a large value of known length, so the receive stops at
    /// the end of its header and the value itself lands straight in its destination.
    pub cap: Option<usize>,
    /// TLS: the receive buffer takes ciphertext, never capped, never bypassed.
    pub ciphertext: bool,
}

impl Rx {
    fn new(fixed: Option<(u16, Vec<u8>)>) -> Rx {
        let (fixed, rbuf) = match fixed {
            Some((i, b)) => (Some(i), b),
            None => (None, vec![0u8; RBUF_SIZE]),
        };
        Rx {
            rbuf,
            fixed,
            released: None,
            rstart: 0,
            rend: 0,
            reader: ArrayReader::new(),
            replies: ReplyReader::new(),
            cap: None,
            ciphertext: false,
        }
    }

    /// Where the next receive should write. `true` in the second field means directly
    /// into the payload destination.
    pub fn recv_target(&mut self) -> (&mut [u8], bool) {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
            // A large value is received straight into its destination to its end,
            // also when the part still missing has become small.
            if !self.ciphertext
                && self.reader.payload_len() >= DIRECT_MIN
                && self.reader.payload_remaining() > 0
            {
                if let Some(w) = self.reader.direct_window() {
                    return (w, true);
                }
            }
        }
        if self.rbuf.len() - self.rend < RECV_CHUNK {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            if self.rbuf.len() - self.rend < RECV_CHUNK {
                // Both readers consume all they are given, so only a header line
                // longer than the free space is left here; make room for it.
                let want = (self.rend + RECV_CHUNK).max(self.rbuf.len() * 2);
                match self.fixed.take() {
                    // A registered buffer must keep its address: copy out of it instead.
                    Some(i) => {
                        let mut bigger = vec![0u8; want];
                        bigger[..self.rend].copy_from_slice(&self.rbuf[..self.rend]);
                        self.released = Some((i, std::mem::replace(&mut self.rbuf, bigger)));
                    }
                    None => self.rbuf.resize(want, 0),
                }
            }
        }
        let end = match self.cap.filter(|_| !self.ciphertext) {
            Some(c) => (self.rend + c.max(1)).min(self.rbuf.len()),
            None => self.rbuf.len(),
        };
        (&mut self.rbuf[self.rend..end], false)
    }

    /// Moves the memory the next receive should write out of the connection (the
    /// payload destination for a large value, else the receive buffer). It must come
    /// back through [`Rx::restore`]; meanwhile the receive buffer reads as empty.
    pub fn lend(&mut self) -> RecvBuf {
        let (_, direct) = self.recv_target();
        if direct {
            if let Some((buf, at, end)) = self.reader.lend_window() {
                return RecvBuf {
                    buf,
                    at,
                    len: end - at,
                    direct: true,
                    fixed: None,
                    region: false,
                };
            }
        }
        let buf = std::mem::take(&mut self.rbuf);
        let room = buf.len().saturating_sub(self.rend);
        RecvBuf {
            at: self.rend,
            len: self
                .cap
                .filter(|_| !self.ciphertext)
                .map_or(room, |c| c.max(1).min(room)),
            buf: Mem::Own(buf),
            direct: false,
            fixed: self.fixed,
            region: false,
        }
    }

    /// Takes back what [`Rx::lend`] gave out, with `n` bytes received into it. Returns
    /// a payload destination nobody waits for any more (the reader was reset).
    pub fn restore(&mut self, b: RecvBuf, n: usize) -> Option<Mem> {
        if b.direct {
            self.reader.restore_window(b.buf, n)
        } else {
            self.rbuf = b.buf.into_vec();
            self.rend = (self.rend + n).min(self.rbuf.len());
            None
        }
    }

    /// `n` bytes arrived at the place `recv_target` gave.
    pub fn on_recv(&mut self, n: usize, direct: bool) {
        if direct {
            self.reader.advance_direct(n);
        } else {
            self.rend = (self.rend + n).min(self.rbuf.len());
        }
    }

    /// Takes the registered buffer out (the connection is being freed).
    pub fn take_fixed(&mut self) -> Option<(u16, Vec<u8>)> {
        let i = self.fixed.take()?;
        Some((i, std::mem::take(&mut self.rbuf)))
    }

    /// Unread received bytes (none while the receive buffer is lent).
    pub fn unread(&self) -> &[u8] {
        self.rbuf.get(self.rstart..self.rend).unwrap_or(&[])
    }

    /// Marks `n` unread bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.rstart = (self.rstart + n).min(self.rend);
    }

    /// The reader and the unread bytes together (split borrow for the MGET path).
    pub fn reader_and_unread(&mut self) -> (&mut ArrayReader, &[u8]) {
        let unread = self.rbuf.get(self.rstart..self.rend).unwrap_or(&[]);
        (&mut self.reader, unread)
    }

    /// The reply reader and the unread bytes together (split borrow for the other
    /// replies).
    pub fn replies_and_unread(&mut self) -> (&mut ReplyReader, &[u8]) {
        let unread = self.rbuf.get(self.rstart..self.rend).unwrap_or(&[]);
        (&mut self.replies, unread)
    }

    /// Shrinks the receive buffer back after a large control-plane reply.
    pub fn trim(&mut self) {
        // A lent buffer reads as empty here (length 0) and is left alone.
        if self.rstart == self.rend && self.rbuf.len() > 4 * RECV_CHUNK && self.fixed.is_none() {
            self.rbuf = vec![0u8; RBUF_SIZE];
            self.rstart = 0;
            self.rend = 0;
        }
    }
}
