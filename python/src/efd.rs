//! The completion doorbell: one non-blocking eventfd per plug-in.
//!
//! LMCache polls it (POLLIN) and never reads it; asyncio watches it with
//! `loop.add_reader`. A finishing request writes it (once until the next drain) and
//! `drain_completions` reads it back to zero, so a poller does not spin.
//!
//! This is a syscall module: the only `unsafe` here wraps `eventfd(2)`, `write(2)`,
//! `read(2)` and `close(2)` on the descriptor this type owns.

use std::io;
use std::os::fd::RawFd;

/// An owned eventfd (closed on drop).
#[derive(Debug)]
pub struct EventFd {
    fd: RawFd,
}

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd with counter 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a negative return is an error, anything
        // else a new descriptor that this value owns from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd { fd })
    }

    /// The descriptor, for the caller to poll. It stays valid until this value drops.
    pub fn raw(&self) -> RawFd {
        self.fd
    }

    /// Makes the descriptor readable. Never blocks: a saturated counter (EAGAIN) is
    /// already readable, which is all a poller needs.
    pub fn notify(&self) {
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live local u64 to the descriptor this
            // value owns (open until drop, which needs `&mut self`).
            let n = unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }

    /// Resets the counter to zero, so the descriptor is no longer readable until the
    /// next `notify`. Never blocks (EAGAIN means it already was zero).
    pub fn reset(&self) {
        let mut v: u64 = 0;
        loop {
            // SAFETY: reads at most 8 bytes into a live local u64 from the descriptor
            // this value owns.
            let n = unsafe { libc::read(self.fd, (&mut v as *mut u64).cast(), 8) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed exactly once, here.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// Whether `fd` is readable right now (tests only).
#[cfg(test)]
pub(crate) fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, count 1, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_then_reset() {
        let e = EventFd::new().unwrap();
        assert!(!readable(e.raw()));
        e.notify();
        e.notify();
        assert!(readable(e.raw()));
        e.reset();
        assert!(!readable(e.raw()));
        // Resetting an empty counter does not block.
        e.reset();
        assert!(!readable(e.raw()));
    }
}
