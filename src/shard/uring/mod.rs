//! The completion backend: one io_uring per shard.
//!
//! Each connection has at most one send and one receive in flight. A send is a SENDMSG
//! over the connection's queued segments (headers and the callers' payload buffers, no
//! copy); a receive lands either in the connection's buffer or, for large payloads,
//! straight in the value's destination. Connects complete through POLL_ADD(POLLOUT).
//!
//! This module is where the shard's `unsafe` lives, all of it in one small file,
//! `ring` (every call that hands memory to the kernel, each with its SAFETY argument): handing memory to the kernel is unsafe because the kernel reads or
//! writes it after the call returns. The rule that makes it sound is enforced by
//! ownership: every byte an operation references is moved into the ring's in-flight
//! table ([`Loans`], or `doorbell`) before the operation is pushed, and leaves it only
//! when [`Uring::wait`] reaps that operation's completion. Nothing outside this module
//! can reach memory in the table, so no other code (a failing connection resetting its
//! reader, a dropped connection, a dropped shard) can free or move it early. When the
//! ring is torn down, [`Uring::shutdown`] (also run by `Drop`) cancels every operation
//! and reaps completions for a bounded time; memory of operations the kernel never
//! returned is leaked on purpose, and counted.
//!
//! Where each part lives: this file holds the ring, its completion wait and its
//! teardown; `loans` the in-flight table and every submission (pushing entries, sends,
//! receives, connect polls, the doorbell read, cancels, reaping completions); `setup`
//! the ring's setup and its fixed-buffer table (the registered receive pool and the
//! registered regions' slots); `ring` the unsafe calls themselves (push an entry,
//! register or clear fixed buffers), as safe functions that `loans` and `setup` call.
//!
//! Test hook: `SLOTLINE_URING_SETUP=plain` in the environment makes [`Uring::new`] set
//! the ring up without DEFER_TASKRUN / COOP_TASKRUN (the setup older kernels fall back
//! to, where the kernel completes receives at any time, not only inside `wait`).

mod loans;
mod ring;
mod setup;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{types, IoUring};

use super::conn::RecvBuf;
use super::fixed::RingRegions;
use crate::syscalls::{Sys, SyscallCounters};
use loans::{Loans, SendMsg};

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
    /// A zero-copy send's notification: the kernel let go of its memory.
    Notified {
        cid: usize,
    },
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
    /// Sends and receives that completed with EFAULT (see [`Uring::take_efaults`]).
    efaults: u64,
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
    /// This shard's syscall counters.
    pub fn calls(&self) -> Arc<SyscallCounters> {
        self.calls.clone()
    }

    /// `true` while the kernel holds any operation of connection `cid`.
    pub fn busy(&self, cid: usize) -> bool {
        self.loans.get(cid).is_some_and(Loans::any)
    }

    /// `true` while an operation naming connection `cid`'s descriptor (send, receive,
    /// connect poll) is in flight: until then its socket must stay open, so the
    /// descriptor number cannot be reused under it. Zero-copy notifications may
    /// outlive this.
    pub fn io_busy(&self, cid: usize) -> bool {
        self.loans.get(cid).is_some_and(Loans::io)
    }

    /// Sends and receives that completed with EFAULT since the last call.
    pub fn take_efaults(&mut self) -> u64 {
        std::mem::take(&mut self.efaults)
    }

    /// Hands every queued entry to the kernel; `true` when none is left queued, so
    /// every operation naming a descriptor has reached the kernel (which then holds
    /// the socket itself, whatever happens to the descriptor).
    pub fn submit_queued(&mut self) -> bool {
        if self.ring.submission().is_empty() {
            return true;
        }
        self.calls.one(Sys::Enter);
        if let Err(e) = self.ring.submit() {
            tracing::warn!(error = %e, "io_uring submit failed");
        }
        self.ring.submission().is_empty()
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
        let want = 1 + self.quiet_sends();
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
        self.reap(out)
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
        // a region: its handle's drop then returns without freeing the memory.
        if let Some(rr) = &self.regions {
            if self.leaked {
                rr.table.leaked(rr.shard);
            } else {
                rr.table.detach(rr.shard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::conn::{Conn, Stream, RBUF_SIZE};
    use crate::sys::EventFd;

    #[test]
    fn registered_pool_takes_back_only_its_own_buffers() {
        let bell = EventFd::new().unwrap();
        let Ok(mut u) = Uring::new(&bell, Arc::default()) else {
            slotline_testkit::skip!("io_uring unavailable here; nothing to test");
        };
        if u.pool.is_empty() {
            slotline_testkit::skip!("buffer registration refused here; nothing to test");
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
        let conn = Conn::new(0, Stream::Unix(mio::net::UnixStream::from_std(a)), None);
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
                    conn.rx_mut().restore(buf, res as usize);
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
                conn.rx_mut().restore(buf, res as usize);
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
