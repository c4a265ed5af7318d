//! Thin wrappers over the few Linux calls std does not offer. One of the few places
//! where slotline uses `unsafe` (ARCHITECTURE.md lists them).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd: the doorbell that wakes a shard.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd with counter 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor
        // that nothing else owns, so OwnedFd may take it.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above; fd is valid and owned by us alone.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds 1 to the counter, waking whoever waits on the fd.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local; the fd is owned by self. A full
        // counter (EAGAIN) already means "readable", so the result is ignored.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Resets the counter; returns how many rings it held.
    pub fn drain(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local; the fd is owned by self.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n == 8 {
            v
        } else {
            0
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `sendmsg(fd, iov, MSG_NOSIGNAL)`: a vectored write that returns EPIPE instead of
/// raising SIGPIPE, which would kill a host process (a Python interpreter embedding
/// slotline) that did not ignore the signal.
pub fn send_vectored(fd: RawFd, slices: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec on Unix (documented by std); the
    // slices borrow live memory for the duration of the call; msghdr is plain data for
    // which all-zero is valid, and only the iov fields are set.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = slices.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sets `SO_LINGER` to on, zero seconds: closing the socket then resets the connection
/// and drops its unsent data at once, instead of keeping it queued (and any zero-copy
/// pages it references pinned) until the peer reads it.
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` is a live `linger` on the stack for the duration of the call and the
    // length passed is its size; setsockopt only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Highest NUMA node id [`prefer_numa_node`] accepts (the mask below has 1024 bits).
pub const MAX_NUMA_NODE: usize = 1022;

/// `set_mempolicy(MPOL_PREFERRED, {node})` for the calling thread: its later page
/// allocations come from `node` while it has free memory, then from any node. Used by
/// shard threads configured with `cores: "numa:N"`.
pub fn prefer_numa_node(node: usize) -> io::Result<()> {
    if node > MAX_NUMA_NODE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    const MPOL_PREFERRED: libc::c_long = 1;
    let mut mask = [0 as libc::c_ulong; 16];
    let bits = libc::c_ulong::BITS as usize;
    mask[node / bits] |= 1 << (node % bits);
    // The kernel reads `maxnode - 1` bits; 1024 bits fit in 16 longs of 64 bits (the
    // array is only larger on 32-bit targets, where fewer bits are read).
    let maxnode = (mask.len() * bits).min(1024) as libc::c_ulong;
    // SAFETY: set_mempolicy reads at most `maxnode - 1` bits from `mask`, a live local
    // of `mask.len() * bits >= maxnode` bits, and writes nothing; it only changes the
    // calling thread's allocation policy.
    let r = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_PREFERRED,
            mask.as_ptr(),
            maxnode,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU ids this process may run on (its affinity mask), in order.
pub fn allowed_cores() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_and_drains() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.drain(), 0);
        e.ring();
        e.ring();
        assert_eq!(e.drain(), 2);
        assert_eq!(e.drain(), 0);
    }

    #[test]
    fn send_vectored_writes_all_slices_and_reports_epipe() {
        use std::io::{IoSlice, Read};
        use std::os::fd::AsRawFd;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let n = send_vectored(a.as_raw_fd(), &[IoSlice::new(b"ab"), IoSlice::new(b"cde")]).unwrap();
        assert_eq!(n, 5);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcde");
        drop(b);
        let e = send_vectored(a.as_raw_fd(), &[IoSlice::new(b"x")]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn prefer_numa_node_on_node0_and_rejects_bad_nodes() {
        // In a thread of its own: the policy is per thread and must not leak into
        // other tests.
        std::thread::spawn(|| {
            let has_numa = std::path::Path::new("/sys/devices/system/node/node0").exists();
            match prefer_numa_node(0) {
                Ok(()) => {}
                // Kernels without CONFIG_NUMA, or seccomp filters, refuse it.
                Err(e) => assert!(!has_numa || e.raw_os_error() == Some(libc::EPERM), "{e}"),
            }
            let e = prefer_numa_node(MAX_NUMA_NODE + 1).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
            // A node that does not exist: the kernel refuses it (EINVAL).
            assert!(prefer_numa_node(MAX_NUMA_NODE).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn allowed_cores_not_empty() {
        assert!(!allowed_cores().is_empty());
    }
}
