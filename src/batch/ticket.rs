//! The caller's side of a batch: block on it, or poll it as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::SubmitPart;
use crate::error::{Error, Result};
use crate::lanes::Lanes;
use crate::priority::Priority;

use super::{Batch, Output};

/// A part whose shard's lane was full at submission: the ticket pushes it when space
/// frees, so an `*_async` call never waits for a lane.
pub(crate) struct Unpushed {
    pub lanes: Arc<Lanes<SubmitPart>>,
    pub class: Priority,
    pub part: SubmitPart,
}

/// A caller's handle on a submitted request: wait for it, or `.await` it.
///
/// The future needs no particular executor: the shard that completes the request wakes
/// the registered waker.
pub struct Ticket<T> {
    batch: Option<Arc<Batch>>,
    convert: fn(Output) -> Result<T>,
    ready: Option<Result<T>>,
    /// Parts still to be pushed, in submission order.
    unpushed: Vec<Unpushed>,
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
            unpushed: Vec::new(),
        }
    }

    pub(crate) fn ready(r: Result<T>) -> Ticket<T> {
        Ticket {
            batch: None,
            convert: |_| Err(Error::Closed),
            ready: Some(r),
            unpushed: Vec::new(),
        }
    }

    /// A ticket on `batch` that still has to push `unpushed` (lanes that were full).
    pub(crate) fn with_unpushed(mut self, unpushed: Vec<Unpushed>) -> Ticket<T> {
        self.unpushed = unpushed;
        self
    }

    /// Pushes the parts still waiting for lane space, blocking until there is space
    /// or the deadline passes (then the part's batch fails with a time-out).
    fn push_blocking(&mut self) {
        for Unpushed { lanes, class, part } in std::mem::take(&mut self.unpushed) {
            let batch = part.batch.clone();
            if batch.is_finished() {
                continue;
            }
            let pushed = lanes.push_wait(class, part, batch.deadline).is_ok();
            if lanes.is_closed() {
                // Refused, or accepted and failed by the closing shard: either way the
                // shard's panic is the answer.
                batch.fail(lanes.gone_error());
            } else if !pushed {
                batch.fail(lane_timeout(&batch, class));
            }
        }
    }

    /// Pushes what fits now; `false` (with the waker registered on the full lane) when
    /// a part must wait for space.
    fn push_ready(&mut self, cx: &Context<'_>) -> bool {
        while !self.unpushed.is_empty() {
            let Unpushed { lanes, class, part } = self.unpushed.remove(0);
            let batch = part.batch.clone();
            if batch.is_finished() {
                continue;
            }
            if Instant::now() >= batch.deadline {
                batch.fail(lane_timeout(&batch, class));
                continue;
            }
            let part = match lanes.try_push(class, part) {
                Ok(()) => None,
                Err(part) => {
                    lanes.wake_on_space(cx.waker());
                    lanes.try_push(class, part).err()
                }
            };
            if lanes.is_closed() {
                // Pushed or not, a dead shard serves nothing (see `Lanes::close`).
                batch.fail(lanes.gone_error());
                continue;
            }
            if let Some(part) = part {
                self.unpushed.insert(0, Unpushed { lanes, class, part });
                return false;
            }
        }
        true
    }

    /// Blocks the calling thread until the request completes.
    pub fn wait(mut self) -> Result<T> {
        self.push_blocking();
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
        if !self.unpushed.is_empty() && !self.push_ready(cx) {
            return Poll::Pending;
        }
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

impl<T> Drop for Ticket<T> {
    /// A ticket dropped with parts still waiting for lane space pushes them (waiting
    /// for space up to the deadline): the request is carried out as if it were kept.
    fn drop(&mut self) {
        if !self.unpushed.is_empty() {
            self.push_blocking();
        }
    }
}

fn lane_timeout(batch: &Batch, class: Priority) -> Error {
    Error::Timeout {
        after: batch.started.elapsed(),
        what: format!("waiting for space in the {class} lane"),
    }
}
