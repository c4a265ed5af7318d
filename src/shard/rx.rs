//! The receive side of a connection ([`Rx`]): its buffer, read cursor and reply
//! readers, and [`RecvBuf`], a receive's memory while the kernel holds it (io_uring
//! lends it out with [`Rx::lend`] and gives it back with [`Rx::restore`]; epoll reads
//! into [`Rx::recv_target`]).

use crate::mem::Mem;
use crate::resp::{ArrayReader, ReplyReader};

/// Payloads at least this large are received straight into their destination.
pub(crate) const DIRECT_MIN: usize = 32 * 1024;
/// Smallest free space offered to a receive into the connection's own buffer.
const RECV_CHUNK: usize = 64 * 1024;
/// Size of a connection's receive buffer (and of each registered one).
pub(crate) const RBUF_SIZE: usize = 2 * RECV_CHUNK;

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
    pub(super) fn new(fixed: Option<(u16, Vec<u8>)>) -> Rx {
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
