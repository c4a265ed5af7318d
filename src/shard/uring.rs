//! The completion backend: one io_uring per shard.
//!
//! Each connection has at most one send and one receive in flight. A send is a SENDMSG
//! over the connection's queued segments (headers and the callers' payload buffers, no
//! copy); a receive lands either in the connection's buffer or, for large payloads,
//! straight in the value's destination. Connects complete through POLL_ADD(POLLOUT).
//!
//! This module and `sys` are where slotline's `unsafe` lives: handing buffers to the
//! kernel is unsafe because the kernel writes them after the call returns. The rule
//! that makes it sound: a buffer referenced by an in-flight operation is owned by the
//! connection (or by this struct), and a connection is only dropped once
//! `Conn::kernel_busy()` is false, i.e. after every operation's completion arrived.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use super::conn::{Conn, MAX_IOV, RBUF_SIZE};

const OP_SEND: u64 = 1;
const OP_RECV: u64 = 2;
const OP_POLL: u64 = 3;
const OP_DOORBELL: u64 = 4;
const OP_CANCEL: u64 = 5;

/// A completion, decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cqe {
    Doorbell,
    Sent { cid: usize, res: i32 },
    Recv { cid: usize, res: i32 },
    Connect { cid: usize, res: i32 },
}

/// Per-connection memory the kernel reads during a SENDMSG: must not move meanwhile.
struct SendState {
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

pub(crate) struct Uring {
    ring: IoUring,
    doorbell_fd: i32,
    doorbell_buf: Box<u64>,
    sends: Vec<Option<Box<SendState>>>,
    /// Registered receive buffers not lent to a connection.
    pool: Vec<(u16, Vec<u8>)>,
    /// Address of each registered buffer, to accept only the original back.
    registered: Vec<usize>,
}

/// Registered receive buffers per shard: 16 x 128 KiB = 2 MiB of locked memory, well
/// under the 8 MiB an unprivileged user may lock, leaving room for the ring itself.
const FIXED_BUFFERS: usize = 16;

fn ud(cid: usize, op: u64) -> u64 {
    ((cid as u64) << 8) | op
}

impl Uring {
    /// Sets up a ring for the calling thread (SINGLE_ISSUER: the shard thread alone
    /// submits), falling back to plain flags on older kernels.
    pub fn new(doorbell: &impl AsRawFd) -> io::Result<Uring> {
        let entries = 512;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(entries))
            .or_else(|_| IoUring::new(entries))?;
        let mut u = Uring {
            ring,
            doorbell_fd: doorbell.as_raw_fd(),
            doorbell_buf: Box::new(0),
            sends: Vec::new(),
            pool: Vec::new(),
            registered: Vec::new(),
        };
        u.register_pool();
        u.arm_doorbell()?;
        // Surface a seccomp block now (EPERM/ENOSYS), not at the first request.
        u.ring.submit()?;
        Ok(u)
    }

    /// Registers the receive-buffer pool; without it (locked-memory limit, old kernel)
    /// connections receive into plain buffers.
    fn register_pool(&mut self) {
        let bufs: Vec<Vec<u8>> = (0..FIXED_BUFFERS).map(|_| vec![0u8; RBUF_SIZE]).collect();
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the iovecs describe the heap blocks of `bufs`, which move into
        // `self.pool` (moving a Vec does not move its heap block) and are only freed
        // when the ring is dropped, or after a connection gives one up, from which
        // point its index is never used again (see `give_back`).
        match unsafe { self.ring.submitter().register_buffers(&iov) } {
            Ok(()) => {
                self.registered = bufs.iter().map(|b| b.as_ptr() as usize).collect();
                self.pool = bufs
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| (i as u16, b))
                    .collect();
                self.pool.reverse();
            }
            Err(e) => {
                tracing::info!(error = %e, "io_uring buffer registration failed (locked-memory limit?); receiving into unregistered buffers");
            }
        }
    }

    /// Lends a registered receive buffer to a new connection, if one is free.
    pub fn take_fixed(&mut self) -> Option<(u16, Vec<u8>)> {
        self.pool.pop()
    }

    /// Takes a registered buffer back from a connection that no longer uses it.
    pub fn give_back(&mut self, idx: u16, buf: Vec<u8>) {
        if self.registered.get(idx as usize) == Some(&(buf.as_ptr() as usize))
            && buf.len() == RBUF_SIZE
        {
            self.pool.push((idx, buf));
        }
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module references only memory that stays
            // valid until its completion: connection-owned buffers (see the module docs),
            // `self.doorbell_buf` and `self.sends[cid]`, boxed and kept until then.
            let pushed = unsafe { self.ring.submission().push(e).is_ok() };
            if pushed {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.doorbell_buf;
        let e = opcode::Read::new(types::Fd(self.doorbell_fd), buf.cast(), 8)
            .build()
            .user_data(ud(0, OP_DOORBELL));
        self.push(&e)
    }

    /// Waits for a non-blocking connect to finish.
    pub fn poll_connect(&mut self, cid: usize, conn: &mut Conn) -> io::Result<()> {
        if conn.poll_busy {
            return Ok(());
        }
        let e = opcode::PollAdd::new(types::Fd(conn.stream.fd()), libc::POLLOUT as u32)
            .build()
            .user_data(ud(cid, OP_POLL));
        self.push(&e)?;
        conn.poll_busy = true;
        Ok(())
    }

    /// Starts a send of the queued segments if none is in flight.
    pub fn send(&mut self, cid: usize, conn: &mut Conn) -> io::Result<()> {
        if conn.send_busy || conn.out_len() == 0 {
            return Ok(());
        }
        if self.sends.len() <= cid {
            self.sends.resize_with(cid + 1, || None);
        }
        let st = self.sends[cid].get_or_insert_with(|| {
            Box::new(SendState {
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
                // SAFETY: msghdr is a plain C struct for which all-zero is valid.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        let n = conn.send_iov(&mut st.iov);
        st.msg.msg_iov = st.iov.as_mut_ptr();
        st.msg.msg_iovlen = n as _;
        let msg: *const libc::msghdr = &st.msg;
        let e = opcode::SendMsg::new(types::Fd(conn.stream.fd()), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud(cid, OP_SEND));
        self.push(&e)?;
        conn.send_busy = true;
        Ok(())
    }

    /// Starts a receive if none is in flight.
    pub fn recv(&mut self, cid: usize, conn: &mut Conn) -> io::Result<()> {
        if conn.recv_busy {
            return Ok(());
        }
        let fd = conn.stream.fd();
        let (buf, direct) = conn.recv_target();
        let len = buf.len().min(u32::MAX as usize) as u32;
        let ptr = buf.as_mut_ptr();
        if let Some((i, b)) = conn.rx.released.take() {
            self.give_back(i, b);
        }
        let e = match conn.rx.fixed {
            // Into the registered buffer: the kernel skips pinning the pages per call.
            Some(idx) if !direct => opcode::ReadFixed::new(types::Fd(fd), ptr, len, idx)
                .build()
                .user_data(ud(cid, OP_RECV)),
            // Straight into a payload's destination, whose remaining length is known:
            // MSG_WAITALL lets the kernel fill it in one completion instead of one per
            // arriving segment.
            _ if direct => opcode::Recv::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_WAITALL)
                .build()
                .user_data(ud(cid, OP_RECV)),
            _ => opcode::Recv::new(types::Fd(fd), ptr, len)
                .build()
                .user_data(ud(cid, OP_RECV)),
        };
        self.push(&e)?;
        conn.recv_busy = true;
        conn.recv_direct = direct;
        Ok(())
    }

    /// Asks the kernel to give back every operation of a connection being closed.
    pub fn cancel(&mut self, cid: usize, conn: &Conn) {
        for (busy, op) in [
            (conn.send_busy, OP_SEND),
            (conn.recv_busy, OP_RECV),
            (conn.poll_busy, OP_POLL),
        ] {
            if busy {
                let e = opcode::AsyncCancel::new(ud(cid, op))
                    .build()
                    .user_data(ud(cid, OP_CANCEL));
                let _ = self.push(&e);
            }
        }
    }

    /// Submits what is queued and waits up to `timeout` (None: forever) for at least one
    /// completion, then drains the completion queue into `out`.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Cqe>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => return Err(e),
            }
        }
        let mut rearm = false;
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            let cid = (data >> 8) as usize;
            let res = cqe.result();
            match data & 0xff {
                OP_DOORBELL => {
                    rearm = true;
                    out.push(Cqe::Doorbell);
                }
                OP_SEND => out.push(Cqe::Sent { cid, res }),
                OP_RECV => out.push(Cqe::Recv { cid, res }),
                OP_POLL => out.push(Cqe::Connect { cid, res }),
                _ => {}
            }
        }
        if rearm {
            self.arm_doorbell()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::EventFd;

    #[test]
    fn registered_pool_takes_back_only_its_own_buffers() {
        let bell = EventFd::new().unwrap();
        let Ok(mut u) = Uring::new(&bell) else {
            eprintln!("io_uring unavailable here; nothing to test");
            return;
        };
        if u.pool.is_empty() {
            eprintln!("buffer registration refused here; nothing to test");
            return;
        }
        let n = u.pool.len();
        let (i, b) = u.take_fixed().unwrap();
        u.give_back(i, vec![0u8; RBUF_SIZE]);
        assert_eq!(
            u.pool.len(),
            n - 1,
            "a foreign buffer must not enter the pool"
        );
        u.give_back(i, b);
        assert_eq!(u.pool.len(), n);
    }

    #[test]
    fn doorbell_completes_through_the_ring() {
        let bell = EventFd::new().unwrap();
        let Ok(mut u) = Uring::new(&bell) else { return };
        bell.ring();
        let mut out = Vec::new();
        for _ in 0..10 {
            u.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
            if !out.is_empty() {
                break;
            }
        }
        assert!(matches!(out.first(), Some(Cqe::Doorbell)));
    }
}
