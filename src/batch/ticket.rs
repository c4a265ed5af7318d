//! The caller's side of a batch: block on it, or poll it as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::{Batch, Output};

/// A caller's handle on a submitted request: wait for it, or `.await` it.
///
/// The future needs no particular executor: the shard that completes the request wakes
/// the registered waker.
pub struct Ticket<T> {
    batch: Option<Arc<Batch>>,
    convert: fn(Output) -> Result<T>,
    ready: Option<Result<T>>,
}

impl<T> std::fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

/// Extra time a waiting caller gives the shards beyond the request deadline before it
/// gives up by itself (the shards normally time the request out first).
const WAIT_GRACE: Duration = Duration::from_secs(2);

impl<T> Ticket<T> {
    pub(crate) fn new(batch: Arc<Batch>, convert: fn(Output) -> Result<T>) -> Ticket<T> {
        Ticket {
            batch: Some(batch),
            convert,
            ready: None,
        }
    }

    pub(crate) fn ready(r: Result<T>) -> Ticket<T> {
        Ticket {
            batch: None,
            convert: |_| Err(Error::Closed),
            ready: Some(r),
        }
    }

    /// Blocks the calling thread until the request completes.
    pub fn wait(mut self) -> Result<T> {
        if let Some(r) = self.ready.take() {
            return r;
        }
        let Some(batch) = self.batch.take() else {
            return Err(Error::Closed);
        };
        let limit = batch.deadline + WAIT_GRACE;
        let mut st = batch.lock();
        while st.output.is_none() {
            let now = Instant::now();
            if now >= limit {
                drop(st);
                batch.fail(Error::Timeout {
                    after: batch.started.elapsed(),
                    what: format!(
                        "{} of {} keys (no shard answered)",
                        batch.op_name(),
                        batch.keys.len()
                    ),
                });
                st = batch.lock();
                break;
            }
            st = batch
                .cv
                .wait_timeout(st, limit - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let out = st.output.take();
        drop(st);
        match out {
            Some(r) => r.and_then(self.convert),
            None => Err(Error::Closed),
        }
    }

    /// `true` once the result is available (wait() will not block).
    pub fn is_done(&self) -> bool {
        self.ready.is_some() || self.batch.as_ref().is_none_or(|b| b.is_finished())
    }
}

impl<T> Unpin for Ticket<T> {}

impl<T> Future for Ticket<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.ready.take() {
            return Poll::Ready(r);
        }
        let Some(batch) = self.batch.clone() else {
            return Poll::Ready(Err(Error::Closed));
        };
        {
            let mut st = batch.lock();
            if st.output.is_none() {
                st.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.batch = None;
        match batch.take_output() {
            Some(r) => Poll::Ready(r.and_then(self.convert)),
            None => Poll::Ready(Err(Error::Closed)),
        }
    }
}
