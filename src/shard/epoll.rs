//! The readiness backend: epoll through `mio`, for hosts where io_uring is missing or
//! blocked (Docker's default seccomp profile). The shard does the reads and writes itself
//! when the socket reports ready.

use std::io::{self, IoSlice, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::conn::{Conn, Stream};
use crate::syscalls::{Sys, SyscallCounters};

const DOORBELL: Token = Token(usize::MAX);

/// What the poll reported.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ev {
    Doorbell,
    Ready {
        cid: usize,
        readable: bool,
        writable: bool,
        /// The peer closed or the socket failed: read until end of stream or error,
        /// as no later edge will report it.
        closed: bool,
    },
}

pub(crate) struct Epoll {
    poll: Poll,
    events: Events,
    /// This shard's syscall counters.
    calls: Arc<SyscallCounters>,
}

impl Epoll {
    pub fn new(doorbell: &impl AsRawFd, calls: Arc<SyscallCounters>) -> io::Result<Epoll> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&doorbell.as_raw_fd()),
            DOORBELL,
            Interest::READABLE,
        )?;
        Ok(Epoll {
            poll,
            events: Events::with_capacity(256),
            calls,
        })
    }

    /// This shard's syscall counters.
    pub fn calls(&self) -> Arc<SyscallCounters> {
        self.calls.clone()
    }

    pub fn register(&mut self, cid: usize, conn: &mut Conn) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.calls.one(Sys::EpollCtl);
        match conn.stream_mut() {
            Stream::Tcp(s) => self.poll.registry().register(s, Token(cid), interest),
            Stream::Unix(s) => self.poll.registry().register(s, Token(cid), interest),
        }
    }

    pub fn deregister(&mut self, conn: &mut Conn) {
        self.calls.one(Sys::EpollCtl);
        let _ = match conn.stream_mut() {
            Stream::Tcp(s) => self.poll.registry().deregister(s),
            Stream::Unix(s) => self.poll.registry().deregister(s),
        };
    }

    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ev>) -> io::Result<()> {
        self.calls.one(Sys::EpollWait);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            if ev.token() == DOORBELL {
                out.push(Ev::Doorbell);
            } else {
                out.push(Ev::Ready {
                    cid: ev.token().0,
                    readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    writable: ev.is_writable() || ev.is_error(),
                    closed: ev.is_read_closed() || ev.is_error(),
                });
            }
        }
        Ok(())
    }
}

/// Writes as much of the connection's queue as the socket takes now.
/// Returns the bytes written; `WouldBlock` ends the attempt without error.
pub(crate) fn flush(conn: &mut Conn, calls: &SyscallCounters) -> io::Result<usize> {
    let mut total = 0;
    loop {
        // TLS: more plaintext becomes records as the earlier ones leave.
        conn.seal()?;
        if conn.sendable() == 0 {
            break;
        }
        // Grows to the frame's segment count (at most MAX_IOV); most frames have few.
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(64);
        conn.send_slices(&mut slices);
        calls.one(Sys::SockWrite);
        let r = crate::sys::send_vectored(conn.stream().fd(), &slices);
        drop(slices);
        match r {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "socket accepted no bytes",
                ))
            }
            Ok(n) => {
                conn.on_sent(n);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Reads once into the connection's receive target. `Ok(None)` means nothing to read now;
/// `Ok(Some((0, ..)))` is end of stream. The first flag tells whether the bytes went
/// straight into a value's destination; the second says the read filled its target, so
/// the socket may hold more: a shorter read emptied the stream socket's queue, and bytes
/// arriving later raise a new edge, so reading again until EAGAIN would only cost a
/// failing read(2).
pub(crate) fn read_once(
    conn: &mut Conn,
    calls: &SyscallCounters,
) -> io::Result<Option<(usize, bool, bool)>> {
    loop {
        calls.one(Sys::SockRead);
        let (stream, rx) = conn.stream_and_rx();
        let (buf, direct) = rx.recv_target();
        let room = buf.len();
        let r = match stream {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        };
        return match r {
            Ok(n) => {
                conn.rx_mut().on_recv(n, direct);
                Ok(Some((n, direct, n == room)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}
