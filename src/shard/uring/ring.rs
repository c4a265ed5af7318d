//! Every `unsafe` call of the io_uring backend, and nothing else: pushing a submission
//! entry, registering the receive pool, registering or clearing one fixed-buffer slot,
//! and the all-zero `msghdr` of a send's header block. The rest of `uring` calls these
//! safe wrappers; each states the rule its callers keep (all of them in `loans` and
//! `setup`, since these functions are private to `uring`).
//!
//! The rule behind all of them (see the parent module): memory the kernel reads or
//! writes after a call returns is owned by the ring's in-flight table (`Loans`, or
//! `Uring::doorbell`) from before the entry is pushed until `Uring::reap` takes the
//! entry's last completion, or is leaked on purpose by `Uring::shutdown`. A registered
//! buffer is touched by the kernel only through a fixed-buffer operation, which is
//! itself such an entry.

use std::io;

use io_uring::{squeue, IoUring};

/// Queues `e` on the submission queue; `false` when the queue is full (nothing was
/// queued: submit and try again).
///
/// Callers: only `Uring::push` in `loans`, for entries built there over memory that is
/// in the in-flight table before this call (a send's header block and segments, a
/// receive's buffer, the doorbell's box) or over no memory at all (a poll, a cancel).
pub(super) fn push(ring: &mut IoUring, e: &squeue::Entry) -> bool {
    // SAFETY: the entry references only memory moved into the ring's in-flight table
    // before this push (the callers' contract above), and that memory leaves the table
    // only when `Uring::reap` takes the entry's last completion, or is forgotten (never
    // freed) by `Uring::shutdown`. Heap blocks do not move when their owner (Box, Vec,
    // Bytes) moves, so the addresses in the entry stay valid while the kernel holds it.
    unsafe { ring.submission().push(e).is_ok() }
}

/// An all-zero `msghdr`: the header block of a SENDMSG before its iovecs are set.
pub(super) fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct (pointers and integers) for which all-zero
    // is a valid value (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// Registers `iov` (the receive pool's buffers) as fixed buffers `0..iov.len()`: into
/// the sparse table made beforehand when `sparse`, as the whole table otherwise.
///
/// Callers: only `Uring::register_pool` in `setup`, whose blocks then live in
/// `Uring::pool` (or, while lent to a receive, in the in-flight table) and are taken
/// back by `give_back` only under their own index and address.
pub(super) fn register_pool(ring: &IoUring, sparse: bool, iov: &[libc::iovec]) -> io::Result<()> {
    if sparse {
        // SAFETY: registration records the iovecs and pins their pages; the kernel
        // writes a registered buffer only through a READ_FIXED, which `loans` issues
        // only with the buffer moved into the in-flight table (module doc).
        unsafe { ring.submitter().register_buffers_update(0, iov, None) }
    } else {
        // SAFETY: as above.
        unsafe { ring.submitter().register_buffers(iov) }
    }
}

/// Registers `len` bytes at `start` as fixed-buffer slot `idx`.
///
/// Callers: only `Uring::sync_regions` in `setup`, for a region of the engine's table
/// (`crate::region`), whose memory stays valid until the slot is cleared again.
pub(super) fn register_slot(ring: &IoUring, idx: u16, start: usize, len: usize) -> io::Result<()> {
    let iov = [libc::iovec {
        iov_base: start as *mut libc::c_void,
        iov_len: len,
    }];
    // SAFETY: registering pins the pages of this range (or fails); the kernel accesses
    // them only through READ_FIXED / WRITE_FIXED / SEND_ZC operations `loans` issues
    // for memory that is itself held in the in-flight table (a caller buffer inside the
    // region). The region's memory stays valid while it is registered: `Region`'s drop
    // waits until `sync_regions` has cleared the slot (see crate::region), which
    // happens only once no operation uses it.
    unsafe {
        ring.submitter()
            .register_buffers_update(idx as u32, &iov, None)
    }
}

/// Empties fixed-buffer slot `idx` (the kernel unpins its pages once no operation
/// uses them).
pub(super) fn clear_slot(ring: &IoUring, idx: u16) -> io::Result<()> {
    let iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }];
    // SAFETY: an empty entry references no memory.
    unsafe {
        ring.submitter()
            .register_buffers_update(idx as u32, &iov, None)
    }
}
