//! The completion of a request on caller memory: [`CallerTicket`] and what it
//! completes with, [`Returned`]. The buffers' tracking (and the loans of borrowed
//! slices) is `crate::mem`'s; this is the caller-facing half.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::batch::{ChunkInfo, Output, Ticket};
use crate::error::{Error, Result};
use crate::mem::{Home, LoanTicket};
use crate::metrics::Metrics;

/// What a [`CallerTicket`] completes with: the engine's answer and the caller's
/// buffers, in request order. The buffers are the caller's again: the engine holds no
/// reference to them any more.
pub struct Returned<T, B: ?Sized> {
    /// The answer.
    pub result: Result<T>,
    /// The buffers the request was given.
    pub bufs: Vec<Box<B>>,
}

impl<T: std::fmt::Debug, B: ?Sized> std::fmt::Debug for Returned<T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Returned")
            .field("result", &self.result)
            .field("bufs", &self.bufs.len())
            .finish()
    }
}

/// A request on caller memory: completes once the answer is in and every buffer is
/// back. Wait for it, or `.await` it (any executor).
pub struct CallerTicket<T, B: ?Sized> {
    ticket: Option<Ticket<T>>,
    result: Option<Result<T>>,
    home: Arc<Home<B>>,
    /// How long [`wait`](Self::wait) waits for the buffers once the answer is in, and
    /// where buffers given up on are counted (`None`: until they are home).
    give_up: Option<(Duration, Arc<Metrics>)>,
}

impl<T, B: ?Sized> std::fmt::Debug for CallerTicket<T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerTicket")
    }
}

impl<T, B: ?Sized> CallerTicket<T, B> {
    pub(crate) fn new(ticket: Ticket<T>, home: Arc<Home<B>>) -> CallerTicket<T, B> {
        CallerTicket {
            ticket: Some(ticket),
            result: None,
            home,
            give_up: None,
        }
    }

    /// Bounds [`wait`](Self::wait): once the answer is in, the buffers get `after` to
    /// come home; those still held then are given up (counted in `metrics` as
    /// `leaked_buffers`, never freed) and the result is an error.
    pub(crate) fn bounded(mut self, after: Duration, metrics: Arc<Metrics>) -> Self {
        self.give_up = Some((after, metrics));
        self
    }

    /// Blocks until the answer is in and every buffer is back.
    ///
    /// Bounded (the engine's calls on owned buffers): once the answer is in, the
    /// buffers get `request_timeout` plus [`KERNEL_GRACE`] to come home, time for a
    /// stalled connection to be failed and for a torn-down ring's drain. A buffer still
    /// held then (an operation the kernel never returned, leaked on purpose) is left
    /// out of `bufs` and never freed, and the result is an [`Error::Timeout`].
    pub fn wait(mut self) -> Returned<T, B> {
        let result = match self.ticket.take() {
            // The ticket (and the batch it holds) goes before waiting for the buffers:
            // the batch may be what still holds some of them.
            Some(t) => t.wait(),
            None => self.result.take().unwrap_or(Err(Error::Closed)),
        };
        let Some((after, metrics)) = self.give_up.take() else {
            let bufs = self.home.wait_home();
            return Returned { result, bufs };
        };
        let (bufs, missing) = self.home.wait_home_for(after);
        if missing == 0 {
            return Returned { result, bufs };
        }
        metrics.leaked_buffers(missing);
        tracing::error!(
            buffers = missing,
            "caller buffers still held by the kernel past the bound; they are leaked, never freed"
        );
        Returned {
            result: Err(Error::Timeout {
                after,
                what: format!(
                    "{missing} caller buffer(s) still held by the kernel; leaked (never freed), not returned"
                ),
            }),
            bufs,
        }
    }

    /// `true` once [`wait`](Self::wait) will not block.
    pub fn is_done(&self) -> bool {
        self.ticket.as_ref().is_none_or(|t| t.is_done()) && self.home.is_home()
    }
}

impl<T, B: ?Sized> Unpin for CallerTicket<T, B> {}

impl<T, B: ?Sized> Future for CallerTicket<T, B> {
    type Output = Returned<T, B>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(t) = self.ticket.as_mut() {
            match Pin::new(t).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    self.ticket = None;
                    self.result = Some(r);
                }
            }
        }
        match self.home.take_if_home(Some(cx.waker())) {
            None => Poll::Pending,
            Some(bufs) => Poll::Ready(Returned {
                result: self.result.take().unwrap_or(Err(Error::Closed)),
                bufs,
            }),
        }
    }
}

/// Past the engine's own bounds (a stalled connection fails `request_timeout` after
/// its frame went out, a torn-down ring drains for 2 s), the time a wait gives a
/// caller buffer to come home before it counts as leaked.
pub(crate) const KERNEL_GRACE: Duration = Duration::from_secs(3);

/// Converts a read's output to the per-key infos; the buffers in it go home as they
/// are dropped.
pub(crate) fn infos(o: Output) -> Result<Vec<Option<ChunkInfo>>> {
    match o {
        Output::Into(_bufs, infos) => Ok(infos),
        _ => Err(Error::Closed),
    }
}

/// A request on borrowed slices (`crate::mem::with_lent_mut` / `with_lent_ref`): the
/// wait for the buffers is not bounded, since borrowed memory cannot be leaked on the
/// caller's behalf; dropping the returned owners ends the loan.
impl<T, B: ?Sized> LoanTicket<T> for CallerTicket<T, B> {
    fn finish(mut self) -> Result<T> {
        self.give_up = None;
        let r = self.wait();
        drop(r.bufs);
        r.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{CallerBufMut, Tracked};

    #[test]
    fn a_buffer_that_never_comes_home_ends_the_wait_at_its_bound_leaked() {
        let bufs: Vec<Box<dyn CallerBufMut>> = vec![Box::new(vec![1u8; 3]), Box::new(vec![2u8])];
        let (home, mut t) = Tracked::wrap(bufs);
        // What a ring torn down with the kernel still owning an operation does with
        // the operation's memory: forgets it.
        std::mem::forget(t.pop());
        drop(t);
        let metrics = Arc::new(crate::metrics::Metrics::with_shards(1));
        let ticket: CallerTicket<(), dyn CallerBufMut> =
            CallerTicket::new(Ticket::ready(Ok(())), home)
                .bounded(Duration::from_millis(50), metrics.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ticket.wait());
        });
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait must end at its bound");
        assert!(
            matches!(r.result, Err(Error::Timeout { .. })),
            "{:?}",
            r.result
        );
        assert_eq!(r.bufs.len(), 1, "the buffer that came home is returned");
        assert_eq!(metrics.snapshot().leaked_buffers, 1);
    }
}
