//! Setting a ring up and keeping its fixed-buffer table: the registered receive pool
//! (slots `0..FIXED_BUFFERS`) and the registered regions' slots behind it.
//!
//! Registering a buffer pins its pages; the kernel reads or writes a registered buffer
//! only through a READ_FIXED / WRITE_FIXED / SEND_ZC operation, and `loans` issues
//! those only for memory it has moved into the in-flight table first (a lent receive
//! buffer, or a caller buffer inside a region), releasing the slot's use only at the
//! operation's last completion. So registration itself never lets the kernel touch
//! memory that is not owned by an operation in flight.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::IoUring;

use super::{ring, Uring, FIXED_BUFFERS, REGION_SLOTS};
use crate::region::Regions;
use crate::shard::conn::RBUF_SIZE;
use crate::shard::fixed::{FixedSlots, RingRegions};
use crate::syscalls::{Sys, SyscallCounters};

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
            efaults: 0,
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
        // Registration only records the iovecs (see `ring::register_pool`). The blocks
        // move into `self.pool` (moving a Vec does not move its heap block); `give_back`
        // accepts only these exact blocks back under their index.
        let r = ring::register_pool(&self.ring, self.sparse, &iov);
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
    pub(super) fn sync_regions(&mut self) {
        let Some(rr) = self.regions.as_mut().filter(|r| r.due()) else {
            return;
        };
        let ring = &self.ring;
        rr.sync(
            self.sparse,
            |idx, start, len| ring::register_slot(ring, idx, start, len),
            |idx| {
                if let Err(e) = ring::clear_slot(ring, idx) {
                    tracing::warn!(error = %e, "could not clear a fixed-buffer slot");
                }
            },
        );
    }

    /// The region slot holding all of `[ptr, ptr + len)`, if any.
    pub(super) fn region_slot(&self, ptr: *const u8, len: usize) -> Option<u16> {
        self.regions.as_ref()?.slots.lookup(ptr as usize, len)
    }

    pub(super) fn slot_taken(&mut self, idx: Option<u16>) {
        if let (Some(i), Some(rr)) = (idx, self.regions.as_mut()) {
            rr.slots.take(i);
        }
    }

    pub(super) fn slot_released(&mut self, idx: Option<u16>) {
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
}
