//! The completion doorbell: one non-blocking eventfd per plug-in.
//!
//! LMCache polls it (POLLIN) and never reads it; asyncio watches it with
//! `loop.add_reader`. A finishing request writes it (once until the next drain) and
//! `drain_completions` reads it back to zero, so a poller does not spin.
//!
//! Two descriptors of one eventfd: the engine's own, which is the only one it ever
//! writes, reads or relies on, and a duplicate (`dup(2)`) handed to Python
//! ([`raw`](EventFd::raw)). The handed-out number belongs to the client: valid until
//! the client is collected, and not to be closed by the caller. If a caller closes it
//! anyway, and the number is reused for another file, the engine is unaffected (it
//! never writes to that number), and at drop the number is closed only if it still
//! refers to this eventfd (`kcmp(2)`); otherwise it is left alone.
//!
//! This is a syscall module: the only `unsafe` here wraps `eventfd(2)`, `dup(2)`,
//! `write(2)`, `read(2)`, `kcmp(2)` and `close(2)` on the descriptors this type owns.

use std::io;
use std::os::fd::RawFd;

/// An owned eventfd (closed on drop) and the duplicate handed out.
#[derive(Debug)]
pub struct EventFd {
    fd: RawFd,
    public: RawFd,
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
        // SAFETY: dup of the descriptor just created; on success the new number is
        // owned by this value too.
        let public = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if public < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: `fd` was created above and is closed once, here.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(EventFd { fd, public })
    }

    /// The descriptor handed to the caller to poll: a duplicate of the engine's own,
    /// so the same counter. It stays valid until this value drops; the engine never
    /// writes to or reads from this number.
    pub fn raw(&self) -> RawFd {
        self.public
    }

    /// Whether the handed-out number still refers to this eventfd (not closed by the
    /// caller and reused). Unknown (kcmp unavailable) counts as no.
    fn public_is_ours(&self) -> bool {
        const KCMP_FILE: libc::c_long = 0;
        // SAFETY: kcmp compares two descriptors of this process; it takes no pointers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                libc::c_long::from(libc::getpid()),
                libc::c_long::from(libc::getpid()),
                KCMP_FILE,
                libc::c_long::from(self.fd),
                libc::c_long::from(self.public),
            )
        };
        r == 0
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
        if self.public_is_ours() {
            // SAFETY: the handed-out number still refers to our eventfd (checked just
            // above), so it is ours to close, once, here.
            unsafe { libc::close(self.public) };
        }
        // SAFETY: the engine's descriptor is owned by this value alone (never handed
        // out) and closed exactly once, here.
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

    /// Whether `fd` is an open descriptor.
    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD takes no pointer.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn a_closed_and_reused_public_fd_is_never_written_nor_closed() {
        let e = EventFd::new().unwrap();
        let public = e.raw();
        let mut p = [0i32; 2];
        // SAFETY: a live two-int array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
        // The caller closes the number it was handed (what the docs forbid) and it is
        // reused by a pipe's write end: dup2 does both at once, so no other thread can
        // take the number in between.
        // SAFETY: descriptors of this process; no pointers.
        assert_eq!(unsafe { libc::dup2(p[1], public) }, public);
        e.notify();
        e.reset();
        e.notify();
        drop(e);
        assert!(is_open(public), "drop closed a number the caller reused");
        let mut buf = [0u8; 16];
        // SAFETY: reads into a live local buffer from the pipe's read end.
        let n = unsafe { libc::read(p[0], buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n < 0, "the engine wrote {n} bytes into a reused descriptor");
        // SAFETY: the pipe's descriptors are ours, each closed once.
        unsafe {
            libc::close(public);
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }

    #[test]
    fn the_public_fd_is_the_same_eventfd() {
        let e = EventFd::new().unwrap();
        assert!(
            e.public_is_ours(),
            "kcmp cannot tell: the public fd would leak"
        );
        e.notify();
        assert!(readable(e.raw()));
        e.reset();
        assert!(!readable(e.raw()));
    }

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
