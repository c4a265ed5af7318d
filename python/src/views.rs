//! Caller memory: a Python buffer (LMCache hands over memoryviews of its pinned memory)
//! held for the life of one request.
//!
//! A [`View`] keeps the exporter's buffer acquired (`PyObject_GetBuffer`), so the memory
//! cannot be freed or resized while the view lives; the request that owns it keeps it
//! until its completion has been drained by Python. This is the one module that reads
//! or writes caller memory through raw pointers; every `unsafe` block relies only on
//! the checks made in [`View::acquire`] and on the buffer being held by `self`.

use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;

/// One acquired, C-contiguous byte buffer of the caller.
pub struct View {
    buf: PyUntypedBuffer,
    len: usize,
    ptr: *mut u8,
}

// SAFETY: the pointer targets memory kept alive by `buf` (which is itself Send + Sync:
// releasing it re-attaches to the interpreter); nothing here is tied to a thread.
unsafe impl Send for View {}
// SAFETY: shared access only reads `len` or copies out of the memory (`as_bytes`).
unsafe impl Sync for View {}

impl View {
    /// Acquires `obj`'s buffer: any object with the buffer protocol whose bytes are
    /// C-contiguous with one-byte items (format `B`, `<B`, `b`, `c`, ...). `writable`
    /// demands a buffer Python allows to be written (reads land in it).
    pub fn acquire(obj: &Bound<'_, PyAny>, writable: bool) -> Result<View, String> {
        let buf = PyUntypedBuffer::get(obj).map_err(|e| format!("not a buffer: {e}"))?;
        if buf.item_size() != 1 {
            return Err(format!(
                "buffer items are {} bytes (format {:?}); a byte buffer is needed",
                buf.item_size(),
                buf.format()
            ));
        }
        if !buf.is_c_contiguous() {
            return Err("buffer is not contiguous".into());
        }
        if writable && buf.readonly() {
            return Err("buffer is read-only; reads need a writable buffer".into());
        }
        let len = buf.len_bytes();
        let ptr = buf.buf_ptr().cast::<u8>();
        Ok(View { buf, len, ptr })
    }

    /// The first byte's address (what `lent.rs` registers).
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes (for sending or copying out).
    ///
    /// The caller's contract (LMCache 7b: a buffer belongs to the request until its
    /// completion is drained) says Python does not write it meanwhile.
    pub fn as_bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `acquire` checked that `ptr` starts `len` contiguous bytes of an
        // exporter buffer, and `self.buf` keeps that buffer acquired (not freed, not
        // resized) for as long as `self` and so the returned borrow live.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Copies `src` to the start of the buffer. `src` must not be longer than the
    /// buffer; returns false (writing nothing) if it is.
    pub fn fill_from(&mut self, src: &[u8]) -> bool {
        if src.len() > self.len {
            return false;
        }
        if src.is_empty() {
            return true;
        }
        if self.buf.readonly() {
            return false;
        }
        // SAFETY: `acquire` checked that `ptr` starts `len >= src.len()` contiguous
        // bytes; the buffer is writable (checked just above) and held by `self.buf`;
        // `src` is Rust memory, so the ranges cannot overlap unless the caller passed a
        // view of engine memory, which it cannot reach. `&mut self` rules out a
        // concurrent `as_bytes` borrow through this view.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, src.len()) };
        true
    }
}

// SAFETY: `ptr..ptr+len` is fixed at `acquire` and stays valid while `self.buf` keeps
// the exporter's buffer acquired, i.e. until the View is dropped; moving the View moves
// the handle, not the memory. Both methods return that same memory on every call (an
// empty slice, always, for a read-only buffer). Nothing else touches it meanwhile:
// every View handed to the engine as a destination was lent writable first
// (`lent::lend`, in `client.rs`), which refuses it if any byte of it is already lent to
// the engine (another destination of the same request, or of any request in flight in
// this process, or the source of a write in flight), and keeps it lent until the
// engine has handed it back; and LMCache's contract (7b) is that Python does not touch
// a submitted buffer until its completion was drained.
unsafe impl slotline::CallerBufMut for View {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 || self.buf.readonly() {
            return &mut [];
        }
        // SAFETY: as for the impl: valid, writable (checked just above), and, by the
        // lent-range check, no other `&mut` or `&` the engine makes overlaps it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn as_slice(&self) -> &[u8] {
        if self.buf.readonly() {
            return &[];
        }
        self.as_bytes()
    }
}

// SAFETY: as above: the same `ptr..ptr+len`, valid until the View is dropped.
unsafe impl slotline::CallerBuf for View {
    fn as_slice(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({} bytes)", self.len)
    }
}
