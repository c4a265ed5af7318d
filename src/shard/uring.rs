//! The completion backend: one io_uring per shard.
//!
//! Each connection has at most one send and one receive in flight. A send is a SENDMSG
//! over the connection's queued segments (headers and the callers' payload buffers, no
//! copy); a receive lands either in the connection's buffer or, for large payloads,
//! straight in the value's destination. Connects complete through POLL_ADD(POLLOUT).
//!
//! This module and `sys` are where slotline's `unsafe` lives: handing memory to the
//! kernel is unsafe because the kernel reads or writes it after the call returns. The
//! rule that makes it sound is enforced here, by ownership: every byte an operation
//! references is moved into this struct's in-flight table ([`Loans`], or `doorbell`)
//! before the operation is pushed, and leaves it only when [`Uring::wait`] reaps that
//! operation's completion. Nothing outside this module can reach memory in the table,
//! so no other code (a failing connection resetting its reader, a dropped connection,
//! a dropped shard) can free or move it early. When the ring is torn down,
//! [`Uring::shutdown`] (also run by `Drop`) cancels every operation and reaps
//! completions for a bounded time; memory of operations the kernel never returned is
//! leaked on purpose, and counted.
//!
//! Test hook: `SLOTLINE_URING_SETUP=plain` in the environment makes [`Uring::new`] set
//! the ring up without DEFER_TASKRUN / COOP_TASKRUN (the setup older kernels fall back
//! to, where the kernel completes receives at any time, not only inside `wait`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::conn::{Conn, RecvBuf, Stream, MAX_IOV, RBUF_SIZE};
use super::fixed::{FixedSend, FixedSlots, RingRegions};
use crate::region::Regions;
use crate::syscalls::{Sys, SyscallCounters};

const OP_SEND: u64 = 1;
const OP_RECV: u64 = 2;
const OP_POLL: u64 = 3;
const OP_DOORBELL: u64 = 4;
const OP_CANCEL: u64 = 5;

/// A completion, decoded. A receive's memory comes back with it.
#[derive(Debug)]
pub(crate) enum Cqe {
    Doorbell,
    /// `fixed`: the bytes went out from a registered region's fixed buffer.
    Sent {
        cid: usize,
        res: i32,
        fixed: bool,
    },
    Recv {
        cid: usize,
        res: i32,
        buf: RecvBuf,
    },
    Connect {
        cid: usize,
        res: i32,
    },
}

/// The msghdr and iovec array the kernel reads during a SENDMSG.
struct SendMsg {
    iov: [libc::iovec; MAX_IOV],
    msg: libc::msghdr,
}

/// A send in flight: its header block and the segments its iovecs point into.
struct SendLoan {
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
struct Loans {
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
    fn any(&self) -> bool {
        self.send.is_some() || self.recv.is_some() || self.poll || !self.zc.is_empty()
    }
}

/// What [`Uring::shutdown`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Teardown {
    /// Operations whose completion arrived after they were cancelled.
    pub drained: usize,
    /// Operations the kernel did not return in time; their memory is leaked.
    pub leaked: usize,
}

pub(crate) struct Uring {
    ring: IoUring,
    doorbell_fd: RawFd,
    /// The doorbell read's 8-byte target while the read is in flight.
    doorbell: Option<Box<u64>>,
    doorbell_spare: Option<Box<u64>>,
    /// In-flight operations by connection id.
    loans: Vec<Loans>,
    /// Operations pushed and not yet reaped (the doorbell included).
    outstanding: usize,
    /// Boxed so a header block keeps its address while the kernel reads it, and is
    /// reused without a new allocation per send.
    #[allow(clippy::vec_box)]
    spare_msgs: Vec<Box<SendMsg>>,
    spare_segs: Vec<Vec<Bytes>>,
    /// Registered receive buffers not lent to a connection.
    pool: Vec<(u16, Vec<u8>)>,
    /// Address of each registered buffer, to accept only the original back.
    registered: Vec<usize>,
    /// Shutting down: the doorbell is not re-armed.
    closing: bool,
    /// DEFER_TASKRUN with TASKRUN_FLAG: completions are posted only inside an enter
    /// with GETEVENTS, and the SQ flags say when work for one is pending.
    deferred: bool,
    /// Connections whose quiet send was queued since the last enter (see `wait`).
    fresh_quiet: Vec<usize>,
    /// This shard's syscall counters (io_uring_enter).
    calls: Arc<SyscallCounters>,
    /// The buffer table is sparse (room for regions after the receive pool).
    sparse: bool,
    /// `shutdown` leaked operations the kernel never returned.
    leaked: bool,
    /// Registered regions (None until attached, and on rings without a sparse table).
    regions: Option<RingRegions>,
}

/// Registered receive buffers per shard: 16 x 128 KiB = 2 MiB of locked memory, well
/// under the 8 MiB an unprivileged user may lock, leaving room for the ring itself.
const FIXED_BUFFERS: usize = 16;
/// Fixed-buffer slots for regions after the receive pool: one per GiB of region.
const REGION_SLOTS: u16 = 240;

/// Largest send counted as quiet (see `Uring::wait`): small enough that the socket
/// takes it at once and its completion is posted inside the enter that submits it.
const QUIET_SEND_MAX: usize = 512 << 10;

/// How long a torn-down ring waits for the kernel to return cancelled operations.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(2);

fn ud(cid: usize, op: u64) -> u64 {
    ((cid as u64 & 0xffff_ffff) << 8) | op
}

fn ud_cid(data: u64) -> usize {
    ((data >> 8) & 0xffff_ffff) as usize
}

impl Uring {
    /// Sets up a ring for the calling thread (SINGLE_ISSUER: the shard thread alone
    /// submits), falling back to plain flags on older kernels.
    pub fn new(doorbell: &impl AsRawFd, calls: Arc<SyscallCounters>) -> io::Result<Uring> {
        let entries = 512;
        let plain = std::env::var_os("SLOTLINE_URING_SETUP").is_some_and(|v| v == "plain");
        // SUBMIT_ALL: one bad entry does not stop the entries queued behind it.
        // TASKRUN_FLAG: the kernel flags pending deferred work, so `wait` can skip an
        // enter that would find nothing.
        let (ring, deferred) = if plain {
            (IoUring::new(entries)?, false)
        } else {
            match IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag()
                .setup_submit_all()
                .build(entries)
            {
                Ok(r) => (r, true),
                Err(_) => (
                    IoUring::builder()
                        .setup_single_issuer()
                        .setup_defer_taskrun()
                        .build(entries)
                        .or_else(|_| IoUring::builder().setup_coop_taskrun().build(entries))
                        .or_else(|_| IoUring::new(entries))?,
                    false,
                ),
            }
        };
        let mut u = Uring {
            ring,
            doorbell_fd: doorbell.as_raw_fd(),
            doorbell: None,
            doorbell_spare: Some(Box::new(0)),
            loans: Vec::new(),
            outstanding: 0,
            spare_msgs: Vec::new(),
            spare_segs: Vec::new(),
            pool: Vec::new(),
            registered: Vec::new(),
            closing: false,
            deferred,
            fresh_quiet: Vec::new(),
            calls,
            sparse: false,
            leaked: false,
            regions: None,
        };
        u.register_pool();
        u.arm_doorbell()?;
        // Surface a seccomp block now (EPERM/ENOSYS), not at the first request.
        u.calls.one(Sys::Enter);
        if let Err(e) = u.ring.submit() {
            // The kernel took nothing: the doorbell read is not in flight, and the
            // ring can go without a drain (or a misleading leak report).
            u.outstanding = 0;
            u.doorbell_spare = u.doorbell.take();
            return Err(e);
        }
        Ok(u)
    }

    /// This shard's syscall counters.
    pub fn calls(&self) -> Arc<SyscallCounters> {
        self.calls.clone()
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
        // A sparse table leaves room for regions behind the pool.
        let total = FIXED_BUFFERS as u32 + REGION_SLOTS as u32;
        self.sparse = self.ring.submitter().register_buffers_sparse(total).is_ok();
        // SAFETY: registration itself only records the iovecs (the kernel pins the
        // pages); the kernel writes a registered buffer only through a READ_FIXED, which
        // `recv` issues only with the buffer moved into the in-flight table. The blocks
        // move into `self.pool` (moving a Vec does not move its heap block); `give_back`
        // accepts only these exact blocks back under their index.
        let r = if self.sparse {
            unsafe { self.ring.submitter().register_buffers_update(0, &iov, None) }
        } else {
            // SAFETY: as above.
            unsafe { self.ring.submitter().register_buffers(&iov) }
        };
        match r {
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

    /// Makes this ring follow the engine's region table (see `crate::region`) as
    /// shard `shard`. Without a sparse buffer table every region falls back.
    pub fn attach_regions(&mut self, table: Arc<Regions>, shard: usize) {
        self.regions = Some(RingRegions::new(
            table,
            shard,
            FixedSlots::new(FIXED_BUFFERS as u16, REGION_SLOTS),
        ));
        self.sync_regions();
    }

    /// Brings the ring's registrations in line with the region table (see
    /// [`RingRegions::sync`]); the registration calls themselves are made here.
    fn sync_regions(&mut self) {
        let Some(rr) = self.regions.as_mut().filter(|r| r.due()) else {
            return;
        };
        let ring = &self.ring;
        rr.sync(
            self.sparse,
            |idx, start, len| Self::register_slot(ring, idx, start, len),
            |idx| Self::clear_slot(ring, idx),
        );
    }

    /// Registers `len` bytes at `start` as fixed-buffer slot `idx`.
    fn register_slot(ring: &IoUring, idx: u16, start: usize, len: usize) -> io::Result<()> {
        let iov = [libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        }];
        // SAFETY: registering pins the pages of this range (or fails); the kernel
        // accesses them only through READ_FIXED / WRITE_FIXED / SEND_ZC operations this
        // module issues for memory that is itself held in the in-flight table (a caller
        // buffer inside the region). The region's memory stays valid while it is in the
        // table: `Region`'s drop waits until `sync_regions` has unregistered it here
        // (see crate::region), which happens only once no operation uses the slot.
        unsafe {
            ring.submitter()
                .register_buffers_update(idx as u32, &iov, None)
        }
    }

    /// Empties fixed-buffer slot `idx` (the kernel unpins its pages once no
    /// operation uses them).
    fn clear_slot(ring: &IoUring, idx: u16) {
        let iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }];
        // SAFETY: an empty entry references no memory.
        if let Err(e) = unsafe {
            ring.submitter()
                .register_buffers_update(idx as u32, &iov, None)
        } {
            tracing::warn!(error = %e, "could not clear a fixed-buffer slot");
        }
    }

    /// The region slot holding all of `[ptr, ptr + len)`, if any.
    fn region_slot(&self, ptr: *const u8, len: usize) -> Option<u16> {
        self.regions.as_ref()?.slots.lookup(ptr as usize, len)
    }

    fn slot_taken(&mut self, idx: Option<u16>) {
        if let (Some(i), Some(rr)) = (idx, self.regions.as_mut()) {
            rr.slots.take(i);
        }
    }

    fn slot_released(&mut self, idx: Option<u16>) {
        if let (Some(i), Some(rr)) = (idx, self.regions.as_mut()) {
            rr.slots.release(i);
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

    fn loans(&mut self, cid: usize) -> &mut Loans {
        if self.loans.len() <= cid {
            self.loans.resize_with(cid + 1, Loans::default);
        }
        &mut self.loans[cid]
    }

    /// `true` while the kernel holds any operation of connection `cid`.
    pub fn busy(&self, cid: usize) -> bool {
        self.loans.get(cid).is_some_and(Loans::any)
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module references only memory held in
            // the in-flight table (`self.loans[cid]`, `self.doorbell`), stored there
            // before this push and removed only when `wait` reaps the entry's
            // completion (or leaked by `shutdown`). Heap blocks do not move when their
            // owner (Box, Vec, Bytes) moves.
            let pushed = unsafe { self.ring.submission().push(e).is_ok() };
            if pushed {
                return Ok(());
            }
            self.calls.one(Sys::Enter);
            self.ring.submit()?;
        }
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
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
        let e = opcode::PollAdd::new(types::Fd(conn.stream.fd()), libc::POLLOUT as u32)
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
        let e = opcode::SendMsg::new(types::Fd(conn.stream.fd()), hdr)
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
        let fd = types::Fd(conn.stream.fd());
        let (ptr, len) = (segs[0].as_ptr(), segs[0].len());
        let Some(rr) = self.regions.as_mut() else {
            return Err(io::Error::other("no regions on this ring"));
        };
        // Zero copy is for TCP; a unix socket refuses SEND_ZC.
        let send = match conn.stream {
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
                // SAFETY: msghdr is a plain C struct for which all-zero is valid.
                msg: unsafe { std::mem::zeroed() },
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
        let fd = conn.stream.fd();
        let mut rb = conn.rx.lend();
        if let Some((i, b)) = conn.rx.released.take() {
            self.give_back(i, b);
        }
        let len = rb.len.min(u32::MAX as usize) as u32;
        let ptr = match rb.buf.get_mut(rb.at..) {
            Some(s) => s.as_mut_ptr(),
            None => {
                conn.rx.restore(rb, 0);
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
                conn.rx.restore(rb, 0);
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

    fn cancel_op(&mut self, target: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(ud(0, OP_CANCEL));
        if let Err(err) = self.push(&e) {
            tracing::warn!(error = %err, "could not queue an io_uring cancel");
        }
    }

    /// Submits what is queued and waits up to `timeout` (None: forever) for at least one
    /// completion, then drains the completion queue into `out`.
    ///
    /// One io_uring_enter both submits and waits, and none is made when nothing is
    /// queued and there is nothing to wait for: completions already posted, or a zero
    /// timeout on a DEFER_TASKRUN ring with no deferred work flagged.
    ///
    /// A quiet send (it carries all its connection had queued, and the reply's receive
    /// is armed) completes inside the enter that submits it, and its completion alone
    /// gives the shard nothing to do; waking for it would cost a second enter per
    /// request. So the enter waits for one completion more per quiet send it submits:
    /// it returns with the reply (or a doorbell, or an error, or at `timeout`).
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Cqe>) -> io::Result<()> {
        if self.regions.is_some() {
            self.sync_regions();
        }
        let sq_empty = self.ring.submission().is_empty();
        let idle = sq_empty
            && (!self.ring.completion().is_empty()
                || (timeout == Some(Duration::ZERO)
                    && self.deferred
                    && !self.ring.submission().taskrun()));
        let mut want = 1;
        for cid in self.fresh_quiet.drain(..) {
            if let Some(l) = self.loans.get(cid) {
                if l.recv.is_some() && l.send.as_ref().is_some_and(|s| s.quiet) {
                    want += 1;
                }
            }
        }
        if !idle {
            self.calls.one(Sys::Enter);
            let r = match timeout {
                None => self.ring.submit_and_wait(want),
                Some(t) => {
                    let ts = types::Timespec::new()
                        .sec(t.as_secs())
                        .nsec(t.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(want, &args)
                }
            };
            if let Err(e) = r {
                match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    _ => return Err(e),
                }
            }
        }
        let mut rearm = false;
        let done: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (data, res, flags) in done {
            let cid = ud_cid(data);
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

    /// Tears the ring's work down: cancels every operation, reaps completions until
    /// none is outstanding or `limit` passed (their memory is freed as it comes back),
    /// then leaks whatever the kernel still holds, so it can never write freed memory.
    pub fn shutdown(&mut self, limit: Duration) -> Teardown {
        self.closing = true;
        let mut t = Teardown::default();
        if self.outstanding == 0 {
            return t;
        }
        for cid in 0..self.loans.len() {
            self.cancel(cid);
        }
        if self.doorbell.is_some() {
            self.cancel_op(ud(0, OP_DOORBELL));
        }
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while self.outstanding > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let before = self.outstanding;
            if let Err(e) = self.wait(
                Some((deadline - now).min(Duration::from_millis(10))),
                &mut out,
            ) {
                tracing::warn!(error = %e, "io_uring wait failed while shutting down");
                break;
            }
            t.drained += before - self.outstanding;
            out.clear();
        }
        t.leaked = self.outstanding;
        if t.leaked > 0 {
            self.leaked = true;
            tracing::error!(
                operations = t.leaked,
                "io_uring operations not returned by the kernel in time; leaking their buffers so they are never reused"
            );
            for l in std::mem::take(&mut self.loans) {
                if l.any() {
                    std::mem::forget(l);
                }
            }
            std::mem::forget(self.doorbell.take());
            self.outstanding = 0;
        }
        t
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Normally the shard has shut down already; this covers an unwinding shard.
        self.shutdown(DRAIN_LIMIT);
        // The ring's registrations go with it. After a leak the kernel may still use
        // a region: its handle then keeps waiting rather than let the memory go.
        if let Some(rr) = &self.regions {
            if !self.leaked {
                rr.table.detach(rr.shard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::EventFd;

    #[test]
    fn registered_pool_takes_back_only_its_own_buffers() {
        let bell = EventFd::new().unwrap();
        let Ok(mut u) = Uring::new(&bell, Arc::default()) else {
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
        let Ok(mut u) = Uring::new(&bell, Arc::default()) else {
            return;
        };
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

    fn unix_conn() -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let conn = Conn::new(
            0,
            super::super::conn::Stream::Unix(mio::net::UnixStream::from_std(a)),
            None,
        );
        (conn, b)
    }

    #[test]
    fn send_and_receive_own_their_memory_until_completion() {
        use std::io::{Read, Write};
        let bell = EventFd::new().unwrap();
        let Ok(mut u) = Uring::new(&bell, Arc::default()) else {
            return;
        };
        let (mut conn, mut peer) = unix_conn();
        conn.hdr().extend_from_slice(b"hello");
        conn.end_frame();
        u.send(0, &conn).unwrap();
        u.recv(0, &mut conn).unwrap();
        assert!(u.busy(0));
        assert!(conn.unread().is_empty(), "the receive buffer is lent out");
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        while !out.iter().any(|c| matches!(c, Cqe::Sent { .. })) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "send never completed"
            );
            u.wait(Some(Duration::from_millis(50)), &mut out).unwrap();
        }
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        peer.write_all(b"+OK\r\n").unwrap();
        while u.busy(0) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "receive never completed"
            );
            u.wait(Some(Duration::from_millis(50)), &mut out).unwrap();
        }
        for c in out {
            match c {
                Cqe::Sent { res, .. } => conn.on_sent(res as usize),
                Cqe::Recv { res, buf, .. } => {
                    assert!(!buf.direct);
                    conn.rx.restore(buf, res as usize);
                }
                _ => {}
            }
        }
        assert_eq!(conn.unread(), b"+OK\r\n");
        assert_eq!(conn.out_len(), 0);
    }

    fn enters(c: &SyscallCounters) -> u64 {
        let mut s = crate::syscalls::SyscallStats::default();
        c.add_to(&mut s);
        s.enter
    }

    #[test]
    fn a_request_and_its_reply_take_one_enter() {
        use std::io::{Read, Write};
        let bell = EventFd::new().unwrap();
        let calls = Arc::new(SyscallCounters::default());
        let Ok(mut u) = Uring::new(&bell, calls.clone()) else {
            return;
        };
        if !u.deferred {
            eprintln!("no DEFER_TASKRUN ring here; one enter per completion is expected");
            return;
        }
        let (mut conn, mut peer) = unix_conn();
        let server = std::thread::spawn(move || {
            let mut got = [0u8; 14];
            peer.read_exact(&mut got).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(b"+PONG\r\n").unwrap();
            peer
        });
        conn.hdr().extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        conn.end_frame();
        u.send(0, &conn).unwrap();
        u.recv(0, &mut conn).unwrap();
        let before = enters(&calls);
        let mut out = Vec::new();
        u.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(enters(&calls), before + 1);
        assert!(out.iter().any(|c| matches!(c, Cqe::Sent { .. })), "{out:?}");
        assert!(out.iter().any(|c| matches!(c, Cqe::Recv { .. })), "{out:?}");
        for c in out {
            if let Cqe::Recv { res, buf, .. } = c {
                conn.rx.restore(buf, res as usize);
            }
        }
        assert_eq!(conn.unread(), b"+PONG\r\n");
        drop(server.join().unwrap());
    }

    #[test]
    fn nothing_queued_and_no_wait_makes_no_enter() {
        let bell = EventFd::new().unwrap();
        let calls = Arc::new(SyscallCounters::default());
        let Ok(mut u) = Uring::new(&bell, calls.clone()) else {
            return;
        };
        let mut out = Vec::new();
        // The first wait may still have to post the doorbell read's arming.
        u.wait(Some(Duration::ZERO), &mut out).unwrap();
        let before = enters(&calls);
        u.wait(Some(Duration::ZERO), &mut out).unwrap();
        if u.deferred {
            assert_eq!(enters(&calls), before, "an idle zero-timeout wait entered");
        }
        // A doorbell still wakes the ring through its read, with no read(2).
        bell.ring();
        for _ in 0..10 {
            u.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
            if !out.is_empty() {
                break;
            }
        }
        assert!(matches!(out.first(), Some(Cqe::Doorbell)));
    }

    #[test]
    fn shutdown_cancels_and_reaps_an_armed_receive() {
        let bell = EventFd::new().unwrap();
        let Ok(mut u) = Uring::new(&bell, Arc::default()) else {
            return;
        };
        let (mut conn, _peer) = unix_conn();
        u.recv(0, &mut conn).unwrap();
        assert_eq!(u.outstanding, 2, "doorbell and receive");
        let t = u.shutdown(DRAIN_LIMIT);
        assert_eq!(
            t,
            Teardown {
                drained: 2,
                leaked: 0
            }
        );
        assert!(!u.busy(0));
    }
}
