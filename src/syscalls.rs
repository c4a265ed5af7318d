//! Syscall counters: how many kernel entries each backend makes, by kind, so the bench
//! can report syscalls per batch and the two backends can be compared on what they
//! cost the host, not only on throughput.
//!
//! Each shard owns one [`SyscallCounters`] and is its only writer (a plain load and
//! store, no locked instruction on the hot path); callers ringing a shard's doorbell
//! count into the doorbell's own counters (in the lanes), a separate cache line. The
//! engine's metrics sum every registered set when a snapshot is taken.
//!
//! Not counted: connection setup (socket, connect, setsockopt, getsockopt), ring and
//! buffer registration, and the callers' own waits for their batches (futex).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a syscall was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sys {
    /// io_uring_enter (submit, wait, or both).
    Enter,
    /// epoll_wait.
    EpollWait,
    /// epoll_ctl (register, deregister).
    EpollCtl,
    /// read/recv on a server socket (epoll).
    SockRead,
    /// sendmsg on a server socket (epoll).
    SockWrite,
    /// read(2) of the doorbell eventfd by the shard.
    DoorbellRead,
    /// write(2) of the doorbell eventfd (callers waking a shard, or shutdown).
    DoorbellWrite,
}

const KINDS: usize = 7;

/// One writer's counters, alone on their cache line(s).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct SyscallCounters {
    n: [AtomicU64; KINDS],
}

impl SyscallCounters {
    /// Counts one call made by this set's only writer thread (the shard).
    #[inline]
    pub fn one(&self, s: Sys) {
        let c = &self.n[s as usize];
        // Single writer: a load and a store suffice; readers may see a slightly old
        // value, never a torn one.
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Counts one call made by any thread (callers ringing a doorbell).
    #[inline]
    pub fn one_shared(&self, s: Sys) {
        self.n[s as usize].fetch_add(1, Relaxed);
    }

    /// Adds this set's counts to `to`.
    pub fn add_to(&self, to: &mut SyscallStats) {
        let g = |s: Sys| self.n[s as usize].load(Relaxed);
        to.enter += g(Sys::Enter);
        to.epoll_wait += g(Sys::EpollWait);
        to.epoll_ctl += g(Sys::EpollCtl);
        to.sock_read += g(Sys::SockRead);
        to.sock_write += g(Sys::SockWrite);
        to.doorbell_read += g(Sys::DoorbellRead);
        to.doorbell_write += g(Sys::DoorbellWrite);
    }
}

/// Syscalls made by the engine so far, by kind (see `MetricsSnapshot::syscalls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallStats {
    /// io_uring_enter calls (each may submit and wait).
    pub enter: u64,
    /// epoll_wait calls.
    pub epoll_wait: u64,
    /// epoll_ctl calls (connections registered and removed).
    pub epoll_ctl: u64,
    /// Reads from server sockets outside io_uring (epoll backend).
    pub sock_read: u64,
    /// sendmsg calls on server sockets outside io_uring (epoll backend).
    pub sock_write: u64,
    /// read(2) calls on the doorbell eventfd by shard threads.
    pub doorbell_read: u64,
    /// write(2) calls on the doorbell eventfd: callers waking a parked shard (and
    /// shutdown).
    pub doorbell_write: u64,
}

impl SyscallStats {
    /// Every counted syscall.
    pub fn total(&self) -> u64 {
        self.enter
            + self.epoll_wait
            + self.epoll_ctl
            + self.sock_read
            + self.sock_write
            + self.doorbell_read
            + self.doorbell_write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_by_kind() {
        let a = SyscallCounters::default();
        let b = SyscallCounters::default();
        a.one(Sys::Enter);
        a.one(Sys::Enter);
        b.one_shared(Sys::DoorbellWrite);
        b.one(Sys::SockRead);
        let mut s = SyscallStats::default();
        a.add_to(&mut s);
        b.add_to(&mut s);
        assert_eq!(s.enter, 2);
        assert_eq!(s.doorbell_write, 1);
        assert_eq!(s.sock_read, 1);
        assert_eq!(s.total(), 4);
    }
}
