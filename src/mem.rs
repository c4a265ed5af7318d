//! Caller memory: buffers the engine sends from or receives into without a copy, the
//! rule that keeps them sound, and the payload destination [`Mem`] (the engine's own
//! bytes, pooled ones from [`pool`], or a caller's buffer).
//!
//! A caller's buffer enters the engine wrapped in a tracker ([`Tracked`] for reads,
//! [`TrackedRead`] for writes) that belongs to one request's [`Home`]. Whoever holds the
//! tracker — a part in a shard, a reply reader, an io_uring receive or send in flight,
//! a segment on a connection's send queue — holds the buffer; when the last holder
//! drops it, the tracker's `Drop` moves the buffer back to its home. The engine's
//! `CallerTicket` completes only once the answer is in *and* every buffer is home, so
//! a buffer is never touched after its completion was delivered, whatever happened on
//! the way (time-outs, connection loss, shutdown); a buffer the kernel still holds past
//! a bound (an operation a torn-down ring leaked) is left out of the completion, which
//! then fails, and stays allocated (its holder was forgotten, never dropped).
//!
//! The blocking calls that take borrowed slices (`&[u8]`, `&mut [u8]`) build on that:
//! they wrap the slice in a lifetime-erased owner ([`LentRef`], [`LentMut`]) created
//! here and only here, submit, and return only once every owner was dropped (a
//! [`Loan`] counts them) before the borrow ends. The `unsafe` here is the erased
//! lifetimes and the `unsafe impl`s of the caller traits, each justified by the rules
//! stated in this file.

use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::error::Result;

pub(crate) mod pool;

pub(crate) use pool::ValuePool;
pub use pool::ValuePoolStats;

/// A caller buffer the engine may receive into.
///
/// # Safety
///
/// The kernel writes into the buffer through a raw pointer taken from
/// [`as_mut_slice`](Self::as_mut_slice) while the owner is moved around (it is always
/// boxed). Implementors promise that every call returns the same memory (same address,
/// same length) for as long as the value lives, that the memory stays valid until the
/// value is dropped (moving the value, or its box, does not move or free it), and that
/// nothing else reads or writes it meanwhile.
pub unsafe trait CallerBufMut: Send + 'static {
    /// The bytes values land in.
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// The same bytes, read-only.
    fn as_slice(&self) -> &[u8];
}

/// A caller buffer the engine may send from.
///
/// # Safety
///
/// The kernel reads the buffer through a raw pointer taken from
/// [`as_slice`](Self::as_slice) while the owner is moved around. Implementors promise
/// that every call returns the same memory for as long as the value lives, valid until
/// the value is dropped, and not written by anyone meanwhile.
pub unsafe trait CallerBuf: Send + 'static {
    /// The bytes to send.
    fn as_slice(&self) -> &[u8];
}

// SAFETY: a Vec's heap block does not move when the Vec moves, and these methods do not
// reallocate; the engine never resizes a buffer it was given.
unsafe impl CallerBufMut for Vec<u8> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
    fn as_slice(&self) -> &[u8] {
        self
    }
}

// SAFETY: as for Vec: a boxed slice's block stays where it is until dropped.
unsafe impl CallerBufMut for Box<[u8]> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
    fn as_slice(&self) -> &[u8] {
        self
    }
}

// SAFETY: as above; shared access only.
unsafe impl CallerBuf for Vec<u8> {
    fn as_slice(&self) -> &[u8] {
        self
    }
}

// SAFETY: as above.
unsafe impl CallerBuf for Box<[u8]> {
    fn as_slice(&self) -> &[u8] {
        self
    }
}

// SAFETY: `Bytes` data never moves and is immutable while any handle lives.
unsafe impl CallerBuf for bytes::Bytes {
    fn as_slice(&self) -> &[u8] {
        self
    }
}

/// Where a request's caller buffers come back to.
pub(crate) struct Home<B: ?Sized> {
    st: Mutex<HomeState<B>>,
    cv: Condvar,
}

struct HomeState<B: ?Sized> {
    bufs: Vec<Option<Box<B>>>,
    out: usize,
    waker: Option<Waker>,
}

impl<B: ?Sized> Home<B> {
    fn new(n: usize) -> Arc<Home<B>> {
        Arc::new(Home {
            st: Mutex::new(HomeState {
                bufs: (0..n).map(|_| None).collect(),
                out: n,
                waker: None,
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HomeState<B>> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrive(&self, idx: usize, buf: Box<B>) {
        let mut st = self.lock();
        if let Some(slot) = st.bufs.get_mut(idx) {
            *slot = Some(buf);
        }
        st.out = st.out.saturating_sub(1);
        if st.out > 0 {
            // Waiters (`wait_home`) and the waker only care about the last one: no
            // wake-up (a futex syscall) per buffer.
            return;
        }
        let w = st.waker.take();
        drop(st);
        self.cv.notify_all();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// `true` once every buffer is home.
    pub(crate) fn is_home(&self) -> bool {
        self.lock().out == 0
    }

    /// Takes the buffers back, in request order, once all are home.
    pub(crate) fn take_if_home(&self, waker: Option<&Waker>) -> Option<Vec<Box<B>>> {
        let mut st = self.lock();
        if st.out > 0 {
            if let Some(w) = waker {
                st.waker = Some(w.clone());
            }
            return None;
        }
        Some(std::mem::take(&mut st.bufs).into_iter().flatten().collect())
    }

    /// Blocks until every buffer is home, or `bound` passed: the buffers home, and how
    /// many are not. A buffer still out is never freed here: if its holder lets go of
    /// it later, `arrive` drops it then (nobody, the kernel included, holds it any
    /// more); if the holder was leaked (a ring torn down with the kernel still owning
    /// the operation), it stays allocated for the life of the process.
    pub(crate) fn wait_home_for(&self, bound: Duration) -> (Vec<Box<B>>, usize) {
        let st = self.lock();
        let mut st = self
            .cv
            .wait_timeout_while(st, bound, |st| st.out > 0)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        let missing = st.out;
        (
            std::mem::take(&mut st.bufs).into_iter().flatten().collect(),
            missing,
        )
    }

    /// Blocks until every buffer is home, however long that takes (a request on
    /// borrowed slices, see [`lend`]; logged every 10 s). Owned buffers use
    /// [`Self::wait_home_for`].
    pub(crate) fn wait_home(&self) -> Vec<Box<B>> {
        let mut st = self.lock();
        let mut warned = Instant::now();
        while st.out > 0 {
            st = self
                .cv
                .wait_timeout(st, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if st.out > 0 && warned.elapsed() >= Duration::from_secs(10) {
                warned = Instant::now();
                tracing::error!(
                    buffers = st.out,
                    "caller buffers still held by the engine; waiting for them before returning"
                );
            }
        }
        std::mem::take(&mut st.bufs).into_iter().flatten().collect()
    }
}

/// A caller buffer for a read, on its way through the engine.
pub(crate) struct Tracked {
    buf: Option<Box<dyn CallerBufMut>>,
    home: Arc<Home<dyn CallerBufMut>>,
    idx: usize,
}

impl Tracked {
    /// Wraps every buffer of one request.
    pub(crate) fn wrap(
        bufs: Vec<Box<dyn CallerBufMut>>,
    ) -> (Arc<Home<dyn CallerBufMut>>, Vec<Tracked>) {
        let home = Home::new(bufs.len());
        let t = bufs
            .into_iter()
            .enumerate()
            .map(|(idx, b)| Tracked {
                buf: Some(b),
                home: home.clone(),
                idx,
            })
            .collect();
        (home, t)
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.as_mut_slice(),
            None => &mut [],
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self.buf.as_ref() {
            Some(b) => b.as_slice(),
            None => &[],
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.home.arrive(self.idx, b);
        }
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracked({} bytes)", self.as_slice().len())
    }
}

/// A caller buffer for a write: the owner inside the `Bytes` segments the send path
/// holds (`Bytes::from_owner`), home when the last segment is dropped.
pub(crate) struct TrackedRead {
    buf: Option<Box<dyn CallerBuf>>,
    home: Arc<Home<dyn CallerBuf>>,
    idx: usize,
}

impl TrackedRead {
    /// Wraps every buffer of one request as `Bytes` that own them.
    pub(crate) fn wrap(
        bufs: Vec<Box<dyn CallerBuf>>,
    ) -> (Arc<Home<dyn CallerBuf>>, Vec<bytes::Bytes>) {
        let home = Home::new(bufs.len());
        let t = bufs
            .into_iter()
            .enumerate()
            .map(|(idx, b)| {
                bytes::Bytes::from_owner(TrackedRead {
                    buf: Some(b),
                    home: home.clone(),
                    idx,
                })
            })
            .collect();
        (home, t)
    }
}

impl AsRef<[u8]> for TrackedRead {
    fn as_ref(&self) -> &[u8] {
        match self.buf.as_ref() {
            Some(b) => b.as_slice(),
            None => &[],
        }
    }
}

impl Drop for TrackedRead {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.home.arrive(self.idx, b);
        }
    }
}

/// What a request started on lent owners returns (the engine's `CallerTicket`):
/// `finish` blocks until the answer is in and hands the owners back by dropping them.
/// The loan's soundness does not rest on it: [`lend`] itself waits until every owner
/// was dropped (see [`Loan`]).
pub(crate) trait LoanTicket<T> {
    /// Waits for the answer, however long the owners take to come home.
    fn finish(self) -> Result<T>;
}

/// Counts the owners of one loan still alive: each [`LentMut`] / [`LentRef`] holds it
/// and arrives when dropped, wherever that happens (a part, a reply reader, an io_uring
/// operation, a send queue, the caller's ticket).
struct Loan {
    out: Mutex<usize>,
    cv: Condvar,
}

impl Loan {
    fn new(n: usize) -> Arc<Loan> {
        Arc::new(Loan {
            out: Mutex::new(n),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrive(&self) {
        let mut out = self.lock();
        *out = out.saturating_sub(1);
        if *out == 0 {
            drop(out);
            self.cv.notify_all();
        }
    }

    /// Blocks until every owner was dropped, however long that takes: returning while
    /// the kernel may still write into a slice would let the caller reuse that memory,
    /// so an owner a torn-down ring leaked keeps this waiting (logged every 10 s).
    fn wait_all(&self) {
        let mut out = self.lock();
        let mut warned = Instant::now();
        while *out > 0 {
            out = self
                .cv
                .wait_timeout(out, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if *out > 0 && warned.elapsed() >= Duration::from_secs(10) {
                warned = Instant::now();
                tracing::error!(
                    buffers = *out,
                    "caller buffers still held by the engine; waiting for them before returning"
                );
            }
        }
    }
}

/// A borrowed `&mut [u8]` with its lifetime erased. Created only by [`with_lent_mut`].
struct LentMut {
    ptr: *mut u8,
    len: usize,
    loan: Arc<Loan>,
}

impl Drop for LentMut {
    fn drop(&mut self) {
        self.loan.arrive();
    }
}

// SAFETY: LentMut is a unique borrow (created from `&mut [u8]`, see `with_lent_mut`)
// moved to the thread that fills it; `&mut [u8]` is Send (and `Arc<Loan>` is).
unsafe impl Send for LentMut {}

// SAFETY: the memory is the `&mut [u8]` given to `with_lent_mut`, which stays borrowed
// (so valid, unmoved and untouched by anyone else) until `with_lent_mut` returns, and
// that happens only after every LentMut it made was dropped (`lend` waits on their
// `Loan`). Both methods return that same memory every call.
unsafe impl CallerBufMut for LentMut {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: see the impl's comment: `ptr..ptr+len` is a live unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A borrowed `&[u8]` with its lifetime erased. Created only by [`with_lent_ref`].
struct LentRef {
    ptr: *const u8,
    len: usize,
    loan: Arc<Loan>,
}

impl Drop for LentRef {
    fn drop(&mut self) {
        self.loan.arrive();
    }
}

// SAFETY: a shared borrow of bytes (`&[u8]` is Send, and `Arc<Loan>` is).
unsafe impl Send for LentRef {}

// SAFETY: the memory is a `&[u8]` borrowed by `with_lent_ref` until it returns, which
// happens only after every LentRef it made was dropped (`lend` waits on their `Loan`).
unsafe impl CallerBuf for LentRef {
    fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: see the impl's comment.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Aborts the process if dropped while armed: a loan of a borrowed slice must not end by
/// unwinding (a panic inside `start` or `finish`) while the engine, or the kernel, may
/// still hold an owner pointing into the slice.
struct NoUnwind;

impl Drop for NoUnwind {
    fn drop(&mut self) {
        tracing::error!("panic while caller memory was lent to the engine: aborting");
        std::process::abort();
    }
}

/// Runs a request on borrowed destination slices: `start` gets owners of the slices
/// and returns the request's ticket; this returns only once every owner was dropped,
/// so no write into `slices` can happen after it returns.
pub(crate) fn with_lent_mut<T, L: LoanTicket<T>>(
    slices: &mut [&mut [u8]],
    start: impl FnOnce(Vec<Box<dyn CallerBufMut>>) -> L,
) -> Result<T> {
    let loan = Loan::new(slices.len());
    let owners: Vec<Box<dyn CallerBufMut>> = slices
        .iter_mut()
        .map(|s| {
            Box::new(LentMut {
                ptr: s.as_mut_ptr(),
                len: s.len(),
                loan: loan.clone(),
            }) as Box<dyn CallerBufMut>
        })
        .collect();
    lend(&loan, owners, start)
}

/// Runs a request on borrowed source slices; returns only once every owner was
/// dropped, so no read of `slices` can happen after it returns.
pub(crate) fn with_lent_ref<T, L: LoanTicket<T>>(
    slices: &[&[u8]],
    start: impl FnOnce(Vec<Box<dyn CallerBuf>>) -> L,
) -> Result<T> {
    let loan = Loan::new(slices.len());
    let owners: Vec<Box<dyn CallerBuf>> = slices
        .iter()
        .map(|s| {
            Box::new(LentRef {
                ptr: s.as_ptr(),
                len: s.len(),
                loan: loan.clone(),
            }) as Box<dyn CallerBuf>
        })
        .collect();
    lend(&loan, owners, start)
}

/// Hands the owners of lent slices to `start`, waits for the request, then for the
/// last owner to be dropped: that ends the loan. A panic in between aborts (see
/// `NoUnwind`).
fn lend<T, B: ?Sized, L: LoanTicket<T>>(
    loan: &Loan,
    owners: Vec<Box<B>>,
    start: impl FnOnce(Vec<Box<B>>) -> L,
) -> Result<T> {
    let armed = NoUnwind;
    let r = start(owners).finish();
    // Normally at once: `finish` waits for the buffers (unbounded) and drops them.
    loan.wait_all();
    std::mem::forget(armed);
    r
}

/// A payload destination: the engine's own allocation or a caller's buffer.
#[derive(Debug)]
pub(crate) enum Mem {
    Own(Vec<u8>),
    Caller(Tracked),
    /// The engine's own bytes from a shard's value pool, to go back there when the
    /// [`Chunk`](crate::Chunk) holding them drops.
    Pooled(Vec<u8>, std::sync::Arc<ValuePool>),
}

impl Default for Mem {
    fn default() -> Self {
        Mem::Own(Vec::new())
    }
}

impl Mem {
    /// The engine's own bytes (a caller buffer yields nothing: it goes home).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Mem::Own(v) | Mem::Pooled(v, _) => v,
            Mem::Caller(_) => Vec::new(),
        }
    }

    /// The engine's own bytes and, for a pooled buffer, the pool it goes back to.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Option<std::sync::Arc<ValuePool>>) {
        match self {
            Mem::Pooled(v, p) => (v, Some(p)),
            m => (m.into_vec(), None),
        }
    }

    /// `true` for a caller's buffer, where a value must fill it exactly.
    pub(crate) fn is_caller(&self) -> bool {
        matches!(self, Mem::Caller(_))
    }
}

impl std::ops::Deref for Mem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mem::Own(v) | Mem::Pooled(v, _) => v,
            Mem::Caller(t) => t.as_slice(),
        }
    }
}

impl std::ops::DerefMut for Mem {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Mem::Own(v) | Mem::Pooled(v, _) => v,
            Mem::Caller(t) => t.as_mut_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_home_in_order_whoever_drops_them() {
        let bufs: Vec<Box<dyn CallerBufMut>> = vec![Box::new(vec![1u8; 3]), Box::new(vec![2u8])];
        let (home, mut t) = Tracked::wrap(bufs);
        assert!(home.take_if_home(None).is_none());
        let second = t.pop().unwrap();
        let first = t.pop().unwrap();
        let h = std::thread::spawn(move || drop(second));
        drop(first);
        h.join().unwrap();
        let back = home.wait_home();
        assert_eq!(back[0].as_slice(), &[1, 1, 1]);
        assert_eq!(back[1].as_slice(), &[2]);
    }

    #[test]
    fn write_owners_come_home_when_the_last_bytes_handle_drops() {
        let (home, b) = TrackedRead::wrap(vec![Box::new(vec![7u8; 4]) as Box<dyn CallerBuf>]);
        let clone = b[0].slice(1..);
        drop(b);
        assert!(home.take_if_home(None).is_none());
        assert_eq!(&clone[..], &[7, 7, 7]);
        drop(clone);
        assert_eq!(home.take_if_home(None).unwrap().len(), 1);
    }

    /// A ticket that "finishes" at once while another thread still holds the owners:
    /// the loan itself must keep the borrow alive until the last owner is dropped.
    struct Early;

    impl LoanTicket<()> for Early {
        fn finish(self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_loan_returns_only_after_its_last_owner_is_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (owners_tx, owners_rx) = std::sync::mpsc::channel::<Vec<Box<dyn CallerBufMut>>>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let early = Arc::new(AtomicBool::new(false));
        let holder = {
            let early = early.clone();
            std::thread::spawn(move || {
                let mut owners = owners_rx.recv().expect("the owners");
                owners[0].as_mut_slice().fill(9);
                // A correct loan cannot return while these are held: the wait runs
                // out. A loan that returned anyway is seen at once.
                if done_rx.recv_timeout(Duration::from_secs(3)).is_ok() {
                    early.store(true, Ordering::SeqCst);
                }
                drop(owners);
            })
        };
        let mut a = [0u8; 4];
        let r = with_lent_mut(&mut [&mut a[..]], |owners| {
            owners_tx.send(owners).expect("the holder");
            Early
        });
        let _ = done_tx.send(());
        holder.join().expect("the holder thread");
        assert!(r.is_ok());
        assert!(
            !early.load(Ordering::SeqCst),
            "with_lent_mut returned while an owner of the slice was alive"
        );
        assert_eq!(a, [9; 4]);
    }
}
