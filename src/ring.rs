//! Submission lanes: how callers on any thread hand work to a shard.
//!
//! Each shard has one bounded lock-free queue per priority class and an eventfd
//! doorbell. Callers push and ring the doorbell only when the shard is parked, so a
//! busy shard is never woken by a syscall per request.
//!
//! # Priority and the anti-starvation rule
//!
//! Classes are served PEEK > PREFETCH > GET > PUT. A [`Picker`] takes the highest
//! non-empty class, except that after [`STARVATION_LIMIT`] consecutive picks that passed
//! over a waiting lower class, the next pick goes to the *lowest* waiting class. Under
//! a constant stream of reads, PUT therefore still gets at least one pick in
//! `STARVATION_LIMIT + 1`. The same picker orders work inside the shard, where parts
//! wait for connection capacity.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::sys::EventFd;

/// Request classes, most urgent first (LMCache's numbering: PEEK is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Existence and prefix checks.
    Peek = 0,
    /// Prefetch reads (the hit prefix of a lookup).
    Prefetch = 1,
    /// Blocking reads.
    Get = 2,
    /// Writes and deletes.
    Put = 3,
}

impl Priority {
    /// All classes, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Peek,
        Priority::Prefetch,
        Priority::Get,
        Priority::Put,
    ];

    /// Index 0..4, most urgent first.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lowercase name, as used in stats and errors.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Peek => "peek",
            Priority::Prefetch => "prefetch",
            Priority::Get => "get",
            Priority::Put => "put",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Picks passed over a waiting lower class before that class is served once.
pub const STARVATION_LIMIT: u32 = 16;

/// Chooses which class to serve next (see the module docs for the rule).
#[derive(Debug, Default)]
pub struct Picker {
    skipped: u32,
}

impl Picker {
    /// Given which classes have work, the class to serve now.
    pub fn pick(&mut self, nonempty: [bool; 4]) -> Option<Priority> {
        let first = nonempty.iter().position(|&b| b)?;
        let last = nonempty.iter().rposition(|&b| b)?;
        if first == last {
            self.skipped = 0;
            return Some(Priority::ALL[first]);
        }
        if self.skipped >= STARVATION_LIMIT {
            self.skipped = 0;
            return Some(Priority::ALL[last]);
        }
        self.skipped += 1;
        Some(Priority::ALL[first])
    }
}

/// One shard's four bounded lanes and its doorbell.
pub struct Lanes<T> {
    lanes: [ArrayQueue<T>; 4],
    doorbell: EventFd,
    parked: AtomicBool,
    waiting: AtomicUsize,
    space_lock: Mutex<Vec<Waker>>,
    space: Condvar,
}

impl<T> Lanes<T> {
    /// Lanes of `capacity` entries each.
    pub fn new(capacity: usize) -> std::io::Result<Lanes<T>> {
        let cap = capacity.max(1);
        Ok(Lanes {
            lanes: std::array::from_fn(|_| ArrayQueue::new(cap)),
            doorbell: EventFd::new()?,
            parked: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            space_lock: Mutex::new(Vec::new()),
            space: Condvar::new(),
        })
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

    /// Pushes, waiting for space until `deadline`; gives the item back on time-out.
    pub fn push_wait(&self, class: Priority, mut item: T, deadline: Instant) -> Result<(), T> {
        loop {
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

    /// `true` if every lane is empty.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.is_empty())
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
        let mut w = self.space_lock.lock().unwrap_or_else(|e| e.into_inner());
        let wakers = std::mem::take(&mut *w);
        self.waiting.fetch_sub(wakers.len(), Ordering::SeqCst);
        drop(w);
        self.space.notify_all();
        for waker in wakers {
            waker.wake();
        }
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

    /// Shard side: awake again.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
        self.doorbell.drain();
    }

    /// Rings the doorbell if the shard sleeps.
    pub fn wake_shard(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.doorbell.ring();
        }
    }

    /// Rings the doorbell whatever the shard is doing (shutdown, control messages).
    pub fn ring(&self) {
        self.doorbell.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_priority_when_alone() {
        let mut p = Picker::default();
        assert_eq!(p.pick([false, false, true, true]), Some(Priority::Get));
        assert_eq!(p.pick([false, false, false, false]), None);
        assert_eq!(p.pick([false, false, false, true]), Some(Priority::Put));
    }

    #[test]
    fn put_not_starved() {
        let mut p = Picker::default();
        let mut puts = 0;
        for _ in 0..(STARVATION_LIMIT as usize + 1) * 10 {
            if p.pick([true, false, true, true]) == Some(Priority::Put) {
                puts += 1;
            }
        }
        assert_eq!(puts, 10);
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
