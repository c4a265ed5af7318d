//! Canary memory: caller buffers on pages of their own that turn `PROT_NONE` the moment
//! the engine reports them returned.
//!
//! The lent-memory contract says that once a request is reported finished (a ticket
//! resolved, a blocking call returned), neither a shard thread nor the kernel touches
//! the caller's memory again. A test proves it by lending [`Canary`] buffers and calling
//! [`Canary::seal`] on each as soon as they come back: a later write by a shard thread
//! then crashes the test process (SIGSEGV), and a later kernel write fails its op with
//! `EFAULT` (the engine counts those; tests assert the count is zero). Sealed pages are
//! never unmapped, so the address range cannot be reused by a later allocation and hide
//! a late write; a test lends at most a few MiB of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use slotline::{CallerBuf, CallerBufMut};

/// A buffer of `len` bytes at the start of its own anonymous mapping.
pub struct Canary {
    ptr: *mut u8,
    len: usize,
    map_len: usize,
    sealed: Arc<AtomicBool>,
}

/// Seals a [`Canary`]'s pages from outside, once the canary itself went into the
/// engine as a `Box<dyn CallerBufMut>` (whose type the returned box no longer shows).
pub struct Sealer {
    ptr: usize,
    map_len: usize,
    sealed: Arc<AtomicBool>,
}

impl Sealer {
    /// As [`Canary::seal`]: the pages stay mapped (a canary is never unmapped), so
    /// this is valid whenever it runs.
    pub fn seal(&self) {
        seal_pages(self.ptr as *mut u8, self.map_len, &self.sealed);
    }
}

fn seal_pages(ptr: *mut u8, map_len: usize, sealed: &AtomicBool) {
    if sealed.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: the range is a canary's own mapping, which is never unmapped.
    let rc = unsafe { libc::mprotect(ptr.cast(), map_len, libc::PROT_NONE) };
    assert_eq!(rc, 0, "mprotect(PROT_NONE) failed");
    // The bytes are of no further use: give the pages back to the system (a stress test
    // seals hundreds of MiB); the range stays mapped and inaccessible.
    // SAFETY: as above; nothing may read the range any more.
    unsafe { libc::madvise(ptr.cast(), map_len, libc::MADV_DONTNEED) };
}

// SAFETY: the mapping is owned by this value alone (no other handle to it exists), so
// moving it to another thread moves the only access to it.
unsafe impl Send for Canary {}
// SAFETY: shared access only reads the bytes (`as_slice`) or seals the pages, which is
// one `mprotect` call; neither writes through the pointer.
unsafe impl Sync for Canary {}

fn page() -> usize {
    // SAFETY: sysconf has no memory preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl Canary {
    /// A fresh buffer of `len` bytes, each set to `fill`.
    pub fn new(len: usize, fill: u8) -> Canary {
        let pg = page();
        let map_len = len.max(1).div_ceil(pg) * pg;
        // SAFETY: an anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(ptr != libc::MAP_FAILED, "mmap of {map_len} bytes failed");
        let ptr = ptr as *mut u8;
        // SAFETY: `ptr..ptr+map_len` was just mapped readable and writable.
        unsafe { std::ptr::write_bytes(ptr, fill, map_len) };
        Canary {
            ptr,
            len,
            map_len,
            sealed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes the pages inaccessible: any later access, by any thread or the kernel,
    /// faults. Call it the moment the engine hands the buffer back. Idempotent.
    pub fn seal(&self) {
        seal_pages(self.ptr, self.map_len, &self.sealed);
    }

    /// A handle that seals this canary's pages later, wherever the canary went.
    pub fn sealer(&self) -> Sealer {
        Sealer {
            ptr: self.ptr as usize,
            map_len: self.map_len,
            sealed: self.sealed.clone(),
        }
    }

    /// Whether [`seal`](Self::seal) ran.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::SeqCst)
    }

    /// The bytes, read before sealing (panics if already sealed, rather than fault).
    pub fn bytes(&self) -> &[u8] {
        assert!(!self.is_sealed(), "canary read after seal");
        // SAFETY: the range is mapped readable while not sealed.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The buffer's address range, for tests of overlap checks.
    pub fn addr_range(&self) -> std::ops::Range<usize> {
        self.ptr as usize..self.ptr as usize + self.len
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        // Sealed or not, the pages stay mapped (and become PROT_NONE) so the range is
        // never handed to another allocation while a late writer might still use it.
        self.seal();
    }
}

// SAFETY: the mapping never moves or shrinks while the value lives and is never unmapped
// (Drop only seals it); the engine is the only user while it holds the value.
unsafe impl CallerBufMut for Canary {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: a unique borrow of the value, so of its mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

// SAFETY: as for CallerBufMut; the engine only reads a buffer it sends from.
unsafe impl CallerBuf for Canary {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live and readable until sealed.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Seals every buffer in `bufs` (the buffers a request returned) and leaks them, so
/// their pages stay mapped and inaccessible for the rest of the process.
pub fn seal_all<B: std::ops::Deref<Target = Canary>>(bufs: Vec<B>) {
    for b in bufs {
        b.seal();
        std::mem::forget(b);
    }
}
