//! The ring's in-flight owner table and every submission that lends it memory.
//!
//! The rule that makes handing memory to the kernel sound (see the parent module) is
//! kept here, where every entry is built and pushed: each byte an operation references
//! (a send's header block and segments, a receive's buffer or direct destination, the
//! doorbell read's 8-byte box) is moved into [`Loans`] (or `Uring::doorbell`) before
//! the entry is pushed, and leaves it only in [`Uring::reap`] when that operation's last
//! completion arrives. Heap blocks do not move when their owner (Box, Vec, Bytes)
//! moves. The only other code touching the table is `Uring::shutdown` in the parent,
//! which on a timeout `mem::forget`s every entry still lent, so the kernel never writes
//! freed memory. Nothing outside `uring` can reach the table.
//!
//! A send or receive inside a registered region uses the region's fixed buffer
//! (WRITE_FIXED / SEND_ZC, READ_FIXED) and counts a use of its slot from the push until
//! its last completion (`slot_taken` / `slot_released`, see `setup`).

use std::io;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types};

use super::{
    ring, ud, ud_cid, Cqe, Uring, OP_CANCEL, OP_DOORBELL, OP_POLL, OP_RECV, OP_SEND, QUIET_SEND_MAX,
};
use crate::shard::conn::{Conn, RecvBuf, Stream, MAX_IOV};
use crate::shard::fixed::FixedSend;
use crate::syscalls::Sys;

/// The msghdr and iovec array the kernel reads during a SENDMSG.
pub(super) struct SendMsg {
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

/// A send in flight: its header block and the segments its iovecs point into.
pub(super) struct SendLoan {
    msg: Box<SendMsg>,
    segs: Vec<Bytes>,
    /// Bytes the send carries.
    len: usize,
    /// The send carries everything queued on its connection, so its completion alone
    /// lets the shard do nothing new: the reply's receive is what matters.
    quiet: bool,
    /// Its user_data (a sequence number in the high bits tells zero-copy sends apart).
    ud: u64,
    /// The region slot it reads from (WRITE_FIXED / SEND_ZC from a fixed buffer).
    slot: Option<u16>,
}

/// What the kernel holds for one connection: the in-flight owner of each operation.
#[derive(Default)]
pub(super) struct Loans {
    send: Option<SendLoan>,
    recv: Option<RecvBuf>,
    /// The region slot the receive writes into (READ_FIXED).
    recv_slot: Option<u16>,
    poll: bool,
    /// Zero-copy sends whose result arrived but whose notification (the kernel is
    /// done reading the memory) has not.
    zc: Vec<SendLoan>,
}

impl Loans {
    /// `true` while the kernel holds any of this connection's operations.
    pub(super) fn any(&self) -> bool {
        self.io() || !self.zc.is_empty()
    }

    /// `true` while a send, receive or connect poll of this connection is in flight:
    /// an operation that names the socket's descriptor. Only zero-copy notifications
    /// (which reference pages, not the descriptor) may be left once this is `false`.
    pub(super) fn io(&self) -> bool {
        self.send.is_some() || self.recv.is_some() || self.poll
    }
}

impl Uring {
    fn loans(&mut self, cid: usize) -> &mut Loans {
        if self.loans.len() <= cid {
            self.loans.resize_with(cid + 1, Loans::default);
        }
        &mut self.loans[cid]
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            let pushed = ring::push(&mut self.ring, e);
            if pushed {
                return Ok(());
            }
            self.calls.one(Sys::Enter);
            self.ring.submit()?;
        }
    }

    pub(super) fn arm_doorbell(&mut self) -> io::Result<()> {
        let mut buf = self.doorbell_spare.take().unwrap_or_else(|| Box::new(0));
        let ptr: *mut u64 = &mut *buf;
        let e = opcode::Read::new(types::Fd(self.doorbell_fd), ptr.cast(), 8)
            .build()
            .user_data(ud(0, OP_DOORBELL));
        self.doorbell = Some(buf);
        match self.push(&e) {
            Ok(()) => {
                self.outstanding += 1;
                Ok(())
            }
            Err(err) => {
                self.doorbell_spare = self.doorbell.take();
                Err(err)
            }
        }
    }

    /// Waits for a non-blocking connect to finish.
    pub fn poll_connect(&mut self, cid: usize, conn: &Conn) -> io::Result<()> {
        if self.loans(cid).poll {
            return Ok(());
        }
        let e = opcode::PollAdd::new(types::Fd(conn.stream().fd()), libc::POLLOUT as u32)
            .build()
            .user_data(ud(cid, OP_POLL));
        self.push(&e)?;
        self.loans(cid).poll = true;
        self.outstanding += 1;
        Ok(())
    }

    /// Starts a send of the queued segments if none is in flight.
    pub fn send(&mut self, cid: usize, conn: &Conn) -> io::Result<()> {
        if conn.out_len() == 0 {
            return Ok(());
        }
        if let Some(l) = self.loans(cid).send.as_mut() {
            // More was queued behind the send in flight: its completion matters now.
            if conn.out_len() > l.len {
                l.quiet = false;
            }
            return Ok(());
        }
        let mut segs = self.spare_segs.pop().unwrap_or_default();
        conn.lend_segments(&mut segs);
        if segs.is_empty() {
            self.spare_segs.push(segs);
            return Ok(());
        }
        // A payload inside a registered region goes out alone from its fixed buffer;
        // the segments before it go out first, in one SENDMSG.
        let mut slot = None;
        if self.regions.as_ref().is_some_and(|r| !r.slots.is_empty()) {
            if let Some(i) = self.region_slot(segs[0].as_ptr(), segs[0].len()) {
                segs.truncate(1);
                slot = Some(i);
            } else if let Some(k) = segs
                .iter()
                .position(|s| self.region_slot(s.as_ptr(), s.len()).is_some())
            {
                segs.truncate(k);
            }
        }
        if let Some(idx) = slot {
            return self.send_fixed(cid, conn, segs, idx);
        }
        let mut msg = self.spare_msg();
        for (v, s) in msg.iov.iter_mut().zip(&segs) {
            *v = libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            };
        }
        msg.msg.msg_iov = msg.iov.as_mut_ptr();
        msg.msg.msg_iovlen = segs.len() as _;
        let hdr: *const libc::msghdr = &msg.msg;
        // MSG_WAITALL: the kernel keeps sending until every byte is out (or an error),
        // so a send completes once, not once per socket-buffer's worth.
        let e = opcode::SendMsg::new(types::Fd(conn.stream().fd()), hdr)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
            .build()
            .user_data(ud(cid, OP_SEND));
        let len: usize = segs.iter().map(|s| s.len()).sum();
        let quiet = self.deferred && len == conn.out_len() && len <= QUIET_SEND_MAX;
        if quiet {
            self.fresh_quiet.push(cid);
        }
        self.loans(cid).send = Some(SendLoan {
            msg,
            segs,
            len,
            quiet,
            ud: ud(cid, OP_SEND),
            slot: None,
        });
        if let Err(err) = self.push(&e) {
            if let Some(l) = self.loans(cid).send.take() {
                self.recycle(l);
            }
            return Err(err);
        }
        self.outstanding += 1;
        Ok(())
    }

    /// Sends `segs[0]`, which lies in fixed-buffer slot `idx`, with WRITE_FIXED or
    /// SEND_ZC (see [`FixedSend`]).
    fn send_fixed(
        &mut self,
        cid: usize,
        conn: &Conn,
        segs: Vec<Bytes>,
        idx: u16,
    ) -> io::Result<()> {
        let fd = types::Fd(conn.stream().fd());
        let (ptr, len) = (segs[0].as_ptr(), segs[0].len());
        let Some(rr) = self.regions.as_mut() else {
            return Err(io::Error::other("no regions on this ring"));
        };
        // Zero copy is for TCP; a unix socket refuses SEND_ZC.
        let send = match conn.stream() {
            Stream::Unix(_) => FixedSend::Write,
            Stream::Tcp(_) => rr.send,
        };
        let data = (rr.next_seq() << 40) | ud(cid, OP_SEND);
        let e = match send {
            FixedSend::Write => opcode::WriteFixed::new(fd, ptr, len as u32, idx)
                .build()
                .user_data(data),
            // MSG_WAITALL: one completion for the whole payload, as for SENDMSG.
            FixedSend::ZeroCopy => opcode::SendZc::new(fd, ptr, len as u32)
                .buf_index(Some(idx))
                .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                .build()
                .user_data(data),
        };
        let msg = self.spare_msg();
        self.loans(cid).send = Some(SendLoan {
            msg,
            segs,
            len,
            quiet: false,
            ud: data,
            slot: Some(idx),
        });
        if let Err(err) = self.push(&e) {
            if let Some(l) = self.loans(cid).send.take() {
                self.recycle(l);
            }
            return Err(err);
        }
        self.slot_taken(Some(idx));
        self.outstanding += 1;
        Ok(())
    }

    /// A header block for a send, reused when one is spare.
    fn spare_msg(&mut self) -> Box<SendMsg> {
        self.spare_msgs.pop().unwrap_or_else(|| {
            Box::new(SendMsg {
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
                msg: ring::zeroed_msghdr(),
            })
        })
    }

    fn recycle(&mut self, mut l: SendLoan) {
        l.segs.clear();
        self.spare_segs.push(l.segs);
        self.spare_msgs.push(l.msg);
    }

    /// Starts a receive if none is in flight. The target memory leaves the connection
    /// until the completion brings it back ([`Cqe::Recv`]).
    pub fn recv(&mut self, cid: usize, conn: &mut Conn) -> io::Result<()> {
        if self.loans(cid).recv.is_some() {
            return Ok(());
        }
        let fd = conn.stream().fd();
        let mut rb = conn.rx_mut().lend();
        if let Some((i, b)) = conn.rx_mut().released.take() {
            self.give_back(i, b);
        }
        let len = rb.len.min(u32::MAX as usize) as u32;
        let ptr = match rb.buf.get_mut(rb.at..) {
            Some(s) => s.as_mut_ptr(),
            None => {
                conn.rx_mut().restore(rb, 0);
                return Err(io::Error::other("receive window outside its buffer"));
            }
        };
        // A destination inside a registered region: READ_FIXED into its fixed buffer.
        let slot = if rb.direct {
            self.region_slot(ptr, len as usize)
        } else {
            None
        };
        rb.region = slot.is_some();
        let e = match rb.fixed {
            _ if slot.is_some() => {
                opcode::ReadFixed::new(types::Fd(fd), ptr, len, slot.unwrap_or_default())
                    .build()
                    .user_data(ud(cid, OP_RECV))
            }
            // Into the registered buffer: the kernel skips pinning the pages per call.
            Some(idx) if !rb.direct => opcode::ReadFixed::new(types::Fd(fd), ptr, len, idx)
                .build()
                .user_data(ud(cid, OP_RECV)),
            // Straight into a payload's destination, whose remaining length is known:
            // MSG_WAITALL lets the kernel fill it in one completion instead of one per
            // arriving segment.
            _ if rb.direct => opcode::Recv::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_WAITALL)
                .build()
                .user_data(ud(cid, OP_RECV)),
            _ => opcode::Recv::new(types::Fd(fd), ptr, len)
                .build()
                .user_data(ud(cid, OP_RECV)),
        };
        rb.len = len as usize;
        self.loans(cid).recv = Some(rb);
        if let Err(err) = self.push(&e) {
            if let Some(rb) = self.loans(cid).recv.take() {
                conn.rx_mut().restore(rb, 0);
            }
            return Err(err);
        }
        self.loans(cid).recv_slot = slot;
        self.slot_taken(slot);
        self.outstanding += 1;
        Ok(())
    }

    /// Asks the kernel to give back every operation of a connection being closed.
    pub fn cancel(&mut self, cid: usize) {
        let Some(l) = self.loans.get(cid) else {
            return;
        };
        let ops = [
            l.send.as_ref().map(|s| s.ud),
            l.recv.is_some().then(|| ud(cid, OP_RECV)),
            l.poll.then(|| ud(cid, OP_POLL)),
        ];
        for target in ops.into_iter().flatten() {
            self.cancel_op(target);
        }
    }

    pub(super) fn cancel_op(&mut self, target: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(ud(0, OP_CANCEL));
        if let Err(err) = self.push(&e) {
            tracing::warn!(error = %err, "could not queue an io_uring cancel");
        }
    }

    /// How many quiet sends queued since the last enter still have the reply's
    /// receive armed behind them (see `Uring::wait`); forgets the list.
    pub(super) fn quiet_sends(&mut self) -> usize {
        let mut n = 0;
        for cid in self.fresh_quiet.drain(..) {
            if let Some(l) = self.loans.get(cid) {
                if l.recv.is_some() && l.send.as_ref().is_some_and(|s| s.quiet) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Drains the completion queue into `out`: each completion returns its
    /// operation's memory from the table (a zero-copy send's only with its
    /// notification), and the doorbell read is armed again.
    pub(super) fn reap(&mut self, out: &mut Vec<Cqe>) -> io::Result<()> {
        let mut rearm = false;
        let done: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (data, res, flags) in done {
            let cid = ud_cid(data);
            if res == -libc::EFAULT && matches!(data & 0xff, OP_SEND | OP_RECV) {
                // The kernel found the memory of a send or receive invalid.
                self.efaults += 1;
            }
            match data & 0xff {
                OP_DOORBELL => {
                    if let Some(b) = self.doorbell.take() {
                        self.doorbell_spare = Some(b);
                        self.outstanding -= 1;
                    }
                    rearm = !self.closing;
                    out.push(Cqe::Doorbell);
                }
                OP_SEND if cqueue::notif(flags) => {
                    // A zero-copy send's notification: the kernel is done reading.
                    let Some(loans) = self.loans.get_mut(cid) else {
                        continue;
                    };
                    if let Some(k) = loans.zc.iter().position(|l| l.ud == data) {
                        let l = loans.zc.swap_remove(k);
                        self.outstanding -= 1;
                        self.slot_released(l.slot);
                        self.recycle(l);
                        out.push(Cqe::Notified { cid });
                    }
                }
                OP_SEND => {
                    let Some(loans) = self.loans.get_mut(cid) else {
                        continue;
                    };
                    if loans.send.as_ref().is_some_and(|l| l.ud == data) {
                        let Some(l) = loans.send.take() else { continue };
                        let fixed = l.slot.is_some();
                        if cqueue::more(flags) {
                            // Zero copy: the memory stays lent until the notification.
                            loans.zc.push(l);
                        } else {
                            self.outstanding -= 1;
                            self.slot_released(l.slot);
                            self.recycle(l);
                        }
                        out.push(Cqe::Sent { cid, res, fixed });
                    }
                }
                OP_RECV => {
                    if let Some(loans) = self.loans.get_mut(cid) {
                        if let Some(buf) = loans.recv.take() {
                            let slot = loans.recv_slot.take();
                            self.outstanding -= 1;
                            self.slot_released(slot);
                            out.push(Cqe::Recv { cid, res, buf });
                        }
                    }
                }
                OP_POLL => {
                    if let Some(l) = self.loans.get_mut(cid).filter(|l| l.poll) {
                        l.poll = false;
                        self.outstanding -= 1;
                        out.push(Cqe::Connect { cid, res });
                    }
                }
                _ => {}
            }
        }
        if rearm {
            self.arm_doorbell()?;
        }
        Ok(())
    }
}
