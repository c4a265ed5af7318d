//! Submission lanes: how callers on any thread hand work to a shard.
//!
//! Each shard has one bounded lock-free queue per priority class and an eventfd
//! doorbell. Callers push and ring the doorbell only when the shard is parked, so a
//! busy shard is never woken by a syscall per request.
//!
//! Which lane the shard takes from next is a [`Picker`]'s choice (weighted shares, see
//! [`crate::priority`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

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
    /// The shard is gone: nothing pushed here will be served.
    closed: AtomicBool,
    /// Test hook: the shard panics at its next turn (see `Engine::debug_crash_shard`).
    crash: AtomicBool,
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
            crash: AtomicBool::new(false),
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

    /// Pushes without waiting; gives the item back when the lane is full.
    pub fn try_push(&self, class: Priority, item: T) -> Result<(), T> {
        self.lanes[class.index()].push(item)?;
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

    /// The shard died: marks the lanes closed and wakes every caller waiting for space
    /// (they then see [`Self::is_closed`]). The shard drains what is queued after this;
    /// a caller that pushed checks `is_closed` afterwards, so no part is left unserved.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.notify_space();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// `true` once the shard behind these lanes is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
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

    /// Pops from any lane, ignoring weights (draining a dead shard's lanes).
    pub fn pop_any(&self) -> Option<T> {
        self.lanes.iter().find_map(|l| l.pop())
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
