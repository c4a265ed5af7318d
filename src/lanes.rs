//! Submission lanes: how callers on any thread hand work to a shard.
//!
//! Each shard has one bounded lock-free queue per priority class and an eventfd
//! doorbell. Callers push and ring the doorbell only when the shard is parked, so a
//! busy shard is never woken by a syscall per request.
//!
//! Which lane the shard takes from next is a [`Picker`]'s choice (weighted shares, see
//! [`crate::priority`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::error::Error;
use crate::priority::{Picker, Priority};
use crate::sys::EventFd;
use crate::syscalls::{Sys, SyscallCounters};

/// Largest capacity of one lane. A lane preallocates every slot (crossbeam's
/// `ArrayQueue` holds the entry and a stamp per slot, about 64 bytes for a shard's
/// submission), so this keeps the four lanes of a shard under about 256 MiB; beyond it
/// a typo would abort the process on allocation failure, which no caller can handle.
pub const MAX_LANE_CAPACITY: usize = 1 << 20;

/// One shard's four bounded lanes and its doorbell.
pub struct Lanes<T> {
    lanes: [ArrayQueue<T>; 4],
    doorbell: EventFd,
    parked: AtomicBool,
    waiting: AtomicUsize,
    /// Callers blocked in `push_wait` (they count themselves in and out).
    space_lock: Mutex<()>,
    space: Condvar,
    /// Futures waiting for space (counted in `waiting` too), woken by the shard's pop.
    space_wakers: Mutex<Vec<Waker>>,
    /// Doorbell syscalls, callers' and the shard's (several writers).
    calls: Arc<SyscallCounters>,
    /// The shard is gone: every push is refused, and nothing queued is left behind
    /// (see [`Lanes::close`]).
    closed: AtomicBool,
    /// Pushes in progress: [`Lanes::close`] waits for them, so a push either lands
    /// before the closing drain or is refused.
    pushing: AtomicUsize,
    /// Why the lanes closed: the shard's label and the panic's message (`None`: the
    /// engine shut down).
    gone: OnceLock<Option<(String, String)>>,
    /// Test hook: the shard panics at its next turn (see `Engine::debug_crash_shard`).
    crash: AtomicBool,
    /// Test hook: where the dying shard waits (see `Engine::debug_crash_shard_held`).
    hold: Mutex<Option<(DeathStage, Arc<Gate>)>>,
}

/// Where a dying shard can be held by [`crate::Engine::debug_crash_shard_held`]
/// (test hook).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathStage {
    /// The panic was caught; the lanes are still open (pushes land in them).
    Panicked,
    /// The lanes are closed and drained; the thread has not ended (`is_alive`).
    Closed,
}

/// A reached/released pair of flags with a condvar.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shard side: announce arrival, then wait for the release (bounded: a test that
    /// forgets the hold does not freeze the shard for ever).
    fn pass(&self) {
        let mut st = self.lock();
        st.0 = true;
        self.cv.notify_all();
        let limit = Instant::now() + Duration::from_secs(60);
        while !st.1 && Instant::now() < limit {
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn release(&self) {
        self.lock().1 = true;
        self.cv.notify_all();
    }
}

/// A dying shard held at a [`DeathStage`] until this is released or dropped (test hook).
#[doc(hidden)]
pub struct DeathHold(Arc<Gate>);

impl DeathHold {
    /// Waits until the shard reached the stage; `false` if it did not within `limit`.
    pub fn wait_reached(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut st = self.0.lock();
        while !st.0 {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            st = self
                .0
                .cv
                .wait_timeout(st, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Lets the shard go on (also done on drop).
    pub fn release(self) {}
}

impl Drop for DeathHold {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<T> Lanes<T> {
    /// Lanes of `capacity` entries each; more than [`MAX_LANE_CAPACITY`] is an error.
    pub fn new(capacity: usize) -> std::io::Result<Lanes<T>> {
        if capacity > MAX_LANE_CAPACITY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("lane capacity {capacity} exceeds {MAX_LANE_CAPACITY}"),
            ));
        }
        let cap = capacity.max(1);
        Ok(Lanes {
            lanes: std::array::from_fn(|_| ArrayQueue::new(cap)),
            doorbell: EventFd::new()?,
            parked: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            space_lock: Mutex::new(()),
            space: Condvar::new(),
            space_wakers: Mutex::new(Vec::new()),
            calls: Arc::default(),
            closed: AtomicBool::new(false),
            pushing: AtomicUsize::new(0),
            gone: OnceLock::new(),
            crash: AtomicBool::new(false),
            hold: Mutex::new(None),
        })
    }

    /// The doorbell's syscall counters.
    pub fn syscalls(&self) -> &Arc<SyscallCounters> {
        &self.calls
    }

    /// The doorbell fd the shard waits on.
    pub fn doorbell(&self) -> &EventFd {
        &self.doorbell
    }

    /// Pushes without waiting; gives the item back when the lane is full or the lanes
    /// are closed (then [`Self::is_closed`] is `true`). An item pushed here is either
    /// served by the shard or failed by [`Self::close`]; never left behind.
    pub fn try_push(&self, class: Priority, item: T) -> Result<(), T> {
        // Counted in before looking at `closed`, counted out after the push: `close`
        // sets `closed` and then waits for the count to drop to zero (SeqCst on both
        // sides, so either the pusher sees `closed` or `close` sees the pusher).
        self.pushing.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.pushing.fetch_sub(1, Ordering::SeqCst);
            return Err(item);
        }
        let r = self.lanes[class.index()].push(item);
        self.pushing.fetch_sub(1, Ordering::SeqCst);
        r?;
        self.wake_shard();
        Ok(())
    }

    /// Pushes, waiting for space until `deadline`; gives the item back on time-out or
    /// when the lanes are closed.
    pub fn push_wait(&self, class: Priority, mut item: T, deadline: Instant) -> Result<(), T> {
        loop {
            if self.is_closed() {
                return Err(item);
            }
            item = match self.try_push(class, item) {
                Ok(()) => return Ok(()),
                Err(item) => item,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(item);
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let guard = self.space_lock.lock().unwrap_or_else(|e| e.into_inner());
            // Re-check under the lock: the shard notifies under it, so no wake is lost.
            if !self.lanes[class.index()].is_full() {
                drop(guard);
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _unused = self.space.wait_timeout(guard, wait);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The shard is gone (`gone`: its label and the panic's message; `None` when the
    /// engine shut it down): refuses every later push, waits for pushes in progress,
    /// wakes every caller waiting for space and returns everything queued, for the
    /// shard to fail. After this the lanes stay empty. Idempotent.
    pub fn close(&self, gone: Option<(String, String)>) -> Vec<T> {
        let _ = self.gone.set(gone);
        self.closed.store(true, Ordering::SeqCst);
        // A push in progress is a few atomic operations and at most a doorbell write.
        while self.pushing.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.notify_space();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut left = Vec::new();
        while let Some(item) = self.lanes.iter().find_map(|l| l.pop()) {
            left.push(item);
        }
        left
    }

    /// `true` once the shard behind these lanes is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The error a part refused by closed lanes fails with: the shard's panic, or
    /// [`Error::Closed`] when the engine shut the shard down.
    pub fn gone_error(&self) -> Error {
        match self.gone.get() {
            Some(Some((node, msg))) => shard_died(node, msg),
            _ => Error::Closed,
        }
    }

    /// Test hook: the dying shard will wait at `stage` until the hold is released.
    pub fn hold_death(&self, stage: DeathStage) -> DeathHold {
        let gate = Arc::new(Gate::default());
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = Some((stage, gate.clone()));
        DeathHold(gate)
    }

    /// Shard side: waits here if a test holds the dying shard at `stage`.
    pub fn death_stage(&self, stage: DeathStage) {
        let gate = {
            let h = self.hold.lock().unwrap_or_else(|e| e.into_inner());
            h.as_ref()
                .filter(|(s, _)| *s == stage)
                .map(|(_, g)| g.clone())
        };
        if let Some(g) = gate {
            g.pass();
        }
    }

    /// Test hook: asks the shard to panic at its next turn.
    pub fn request_crash(&self) {
        self.crash.store(true, Ordering::SeqCst);
        self.ring();
    }

    /// Shard side: `true` once when a crash was requested.
    pub fn crash_requested(&self) -> bool {
        self.crash.load(Ordering::Relaxed) && self.crash.swap(false, Ordering::SeqCst)
    }

    /// `true` if every lane is empty.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.is_empty())
    }

    /// Entries queued in each lane (by `Priority::index`), for the stats; racy by nature.
    pub fn depth(&self) -> [usize; 4] {
        std::array::from_fn(|i| self.lanes[i].len())
    }

    /// Which lanes hold work.
    pub fn nonempty(&self) -> [bool; 4] {
        std::array::from_fn(|i| !self.lanes[i].is_empty())
    }

    /// Pops the next item by the picker's rule.
    pub fn pop(&self, picker: &mut Picker) -> Option<(Priority, T)> {
        loop {
            let class = picker.pick(self.nonempty())?;
            if let Some(item) = self.lanes[class.index()].pop() {
                return Some((class, item));
            }
        }
    }

    /// Called by the shard after popping: wakes callers waiting for space.
    pub fn notify_space(&self) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Taking the lock orders this notification after a waiter's re-check.
        let guard = self.space_lock.lock().unwrap_or_else(|e| e.into_inner());
        drop(guard);
        self.space.notify_all();
        let wakers = std::mem::take(&mut *self.lock_wakers());
        self.waiting.fetch_sub(wakers.len(), Ordering::SeqCst);
        for w in wakers {
            w.wake();
        }
    }

    /// A future found its lane full: `waker` is woken at the next pop. The caller
    /// tries again after registering, so a pop in between is not missed.
    pub fn wake_on_space(&self, waker: &Waker) {
        let mut ws = self.lock_wakers();
        if ws.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        ws.push(waker.clone());
        self.waiting.fetch_add(1, Ordering::SeqCst);
    }

    fn lock_wakers(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.space_wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shard side: announce the intent to sleep. Returns `false` if work arrived in the
    /// meantime (then the shard must not sleep).
    pub fn park(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        if !self.is_empty() {
            self.parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Shard side: awake again. The doorbell is not read here: io_uring reads it
    /// through the ring, epoll calls [`Lanes::drain_doorbell`] when it fired; a read
    /// per loop iteration would mostly fail with EAGAIN.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Shard side: resets the doorbell after it fired (epoll).
    pub fn drain_doorbell(&self) {
        self.calls.one_shared(Sys::DoorbellRead);
        self.doorbell.drain();
    }

    /// Rings the doorbell if the shard sleeps.
    pub fn wake_shard(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.calls.one_shared(Sys::DoorbellWrite);
            self.doorbell.ring();
        }
    }

    /// Rings the doorbell whatever the shard is doing (shutdown, control messages).
    pub fn ring(&self) {
        self.calls.one_shared(Sys::DoorbellWrite);
        self.doorbell.ring();
    }
}

/// The error of a part a dead shard held or refused: names the shard and its panic.
pub(crate) fn shard_died(node: &str, msg: &str) -> Error {
    Error::Io {
        node: node.to_string(),
        source: std::io::Error::other(format!("the shard thread panicked: {msg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_bounded() {
        assert!(Lanes::<u8>::new(MAX_LANE_CAPACITY + 1).is_err());
        assert!(Lanes::<u8>::new(usize::MAX).is_err());
        assert!(Lanes::<u8>::new(4).is_ok());
    }

    #[test]
    fn lanes_order_and_backpressure() {
        let lanes: Lanes<u32> = Lanes::new(2).unwrap();
        lanes.try_push(Priority::Put, 1).unwrap();
        lanes.try_push(Priority::Put, 2).unwrap();
        assert_eq!(lanes.try_push(Priority::Put, 3), Err(3));
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(lanes.push_wait(Priority::Put, 3, soon), Err(3));
        lanes.try_push(Priority::Peek, 9).unwrap();
        let mut p = Picker::default();
        assert_eq!(lanes.pop(&mut p), Some((Priority::Peek, 9)));
        assert_eq!(lanes.pop(&mut p), Some((Priority::Put, 1)));
    }

    #[test]
    fn backlogged_lanes_pop_by_weight() {
        let lanes: Lanes<u32> = Lanes::new(64).unwrap();
        for class in Priority::ALL {
            for i in 0..60 {
                lanes.try_push(class, i).unwrap();
            }
        }
        let mut p = Picker::default();
        let mut counts = [0; 4];
        let mut next = [0; 4];
        for _ in 0..45 {
            let (class, item) = lanes.pop(&mut p).unwrap();
            // FIFO inside a lane.
            assert_eq!(item, next[class.index()]);
            next[class.index()] += 1;
            counts[class.index()] += 1;
        }
        assert_eq!(counts, [24, 12, 6, 3]);
    }

    #[test]
    fn blocked_pusher_resumes_when_shard_pops() {
        let lanes = std::sync::Arc::new(Lanes::<u32>::new(1).unwrap());
        lanes.try_push(Priority::Get, 1).unwrap();
        let l2 = lanes.clone();
        let t = std::thread::spawn(move || {
            l2.push_wait(Priority::Get, 2, Instant::now() + Duration::from_secs(5))
        });
        std::thread::sleep(Duration::from_millis(20));
        let mut p = Picker::default();
        assert_eq!(lanes.pop(&mut p), Some((Priority::Get, 1)));
        lanes.notify_space();
        assert_eq!(t.join().unwrap(), Ok(()));
    }

    #[test]
    fn waiting_future_is_woken_when_shard_pops() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let lanes = Lanes::<u32>::new(1).unwrap();
        lanes.try_push(Priority::Get, 1).unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        lanes.wake_on_space(&waker);
        lanes.wake_on_space(&waker);
        assert_eq!(
            lanes.waiting.load(Ordering::SeqCst),
            1,
            "one entry per waker"
        );
        lanes.notify_space();
        assert!(flag.0.load(Ordering::SeqCst));
        assert_eq!(lanes.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn close_returns_what_was_queued_and_refuses_later_pushes() {
        let lanes: Lanes<u32> = Lanes::new(4).unwrap();
        lanes.try_push(Priority::Get, 1).unwrap();
        lanes.try_push(Priority::Put, 2).unwrap();
        let mut left = lanes.close(Some(("shard 3".into(), "boom".into())));
        left.sort();
        assert_eq!(left, [1, 2]);
        assert_eq!(lanes.try_push(Priority::Get, 5), Err(5));
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(lanes.push_wait(Priority::Get, 6, soon), Err(6));
        assert!(lanes.is_empty());
        assert!(lanes.close(None).is_empty());
        let msg = lanes.gone_error().to_string();
        assert!(msg.contains("shard 3") && msg.contains("boom"), "{msg}");
    }

    #[test]
    fn racing_pushes_land_before_the_drain_or_are_refused() {
        let lanes = Arc::new(Lanes::<u32>::new(1 << 12).unwrap());
        let pushers: Vec<_> = (0..2u32)
            .map(|t| {
                let l = lanes.clone();
                std::thread::spawn(move || {
                    let mut refused = 0;
                    for i in 0..2000 {
                        if l.try_push(Priority::Get, t * 10_000 + i).is_err() {
                            refused += 1;
                        }
                    }
                    refused
                })
            })
            .collect();
        let left = lanes.close(None).len();
        let refused: usize = pushers.into_iter().map(|p| p.join().unwrap()).sum();
        assert!(lanes.is_empty(), "a push landed after the drain");
        assert_eq!(left + refused, 4000);
    }

    #[test]
    fn doorbell_rings_only_when_parked() {
        let lanes: Lanes<u32> = Lanes::new(4).unwrap();
        lanes.try_push(Priority::Get, 1).unwrap();
        assert_eq!(lanes.doorbell().drain(), 0);
        let mut p = Picker::default();
        lanes.pop(&mut p);
        assert!(lanes.park());
        lanes.try_push(Priority::Get, 2).unwrap();
        assert_eq!(lanes.doorbell().drain(), 1);
    }
}
