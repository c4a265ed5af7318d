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

use super::conn::{Conn, MAX_IOV};

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
}

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
        };
        u.arm_doorbell()?;
        // Surface a seccomp block now (EPERM/ENOSYS), not at the first request.
        u.ring.submit()?;
        Ok(u)
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
        let e = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len)
            .build()
            .user_data(ud(cid, OP_RECV));
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
