//! Completion delivery without a thread: each request is a future polled by whoever
//! wakes it, and a finished one is queued and announced on the eventfd.
//!
//! The first poll happens on the submitting thread (GIL released); later polls run in
//! the waker, i.e. on the shard thread that completed the request's batch or brought
//! its last buffer home. That saves a thread hop (a futex wake and a context switch)
//! per request against a dedicated completion thread. It is safe because every job's
//! poll is non-blocking (the engine's `try_*` and `*_async` forms never wait for lane
//! space) and because a job never holds the last engine handle: `close` waits for
//! every job to finish before the client drops its engine, and a finished job is
//! dropped before it counts as finished.
//!
//! A job is counted ([`Completions::register`]) before it can reach the engine and is
//! never dropped unfinished: its outcome, failures included, is published only once
//! the engine handed every buffer back. `close` waits for running jobs up to a bound;
//! a job still running then is leaked (forgotten, with its buffers), never dropped.
//!
//! A job is polled by one thread at a time: the poller takes it out of the table, and
//! a wake that finds it taken marks it `notified`, so the poller polls again before
//! putting it back. No wake-up is lost and none waits.
//!
//! Buffers ([`View`](crate::views::View)s) are never released here: they travel inside
//! the outcome and are released by Python's drain, with the GIL held.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::efd::EventFd;
use crate::io::{Held, Job, Outcome};

/// A finished request, waiting to be drained.
#[derive(Debug)]
pub struct Done {
    /// The future id `submit_*` returned.
    pub id: u64,
    /// What it produced.
    pub outcome: Outcome,
}

#[derive(Default)]
struct State {
    /// Finished, not yet drained.
    done: Vec<Done>,
    /// The eventfd was written and not drained since: later outcomes need no write.
    signalled: bool,
    /// No new requests.
    closing: bool,
    /// Requests accepted and not yet finished.
    running: usize,
}

/// One running request.
struct Entry {
    /// `None` while a thread is polling it.
    job: Option<Job>,
    /// Woken while being polled: the poller polls again.
    notified: bool,
    waker: Waker,
}

struct Shared {
    efd: EventFd,
    st: Mutex<State>,
    jobs: Mutex<HashMap<u64, Entry>>,
    /// Signalled when the last running request finishes after `close` began.
    idle: Condvar,
}

// A panic elsewhere while holding one of these locks leaves consistent data (plain
// inserts, pushes and takes); keep going rather than poison every later call.
impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an outcome and rings the eventfd unless it is already ringing.
    fn push_done(&self, id: u64, outcome: Outcome, was_running: bool) {
        let mut st = self.lock();
        if was_running {
            st.running -= 1;
        }
        st.done.push(Done { id, outcome });
        let ring = !std::mem::replace(&mut st.signalled, true);
        let idle = st.closing && st.running == 0;
        drop(st);
        if ring {
            self.efd.notify();
        }
        if idle {
            self.idle.notify_all();
        }
    }
}

/// Wakes one request by polling it on the waking thread.
struct JobWaker {
    id: u64,
    shared: Weak<Shared>,
}

impl Wake for JobWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            drive(&shared, self.id);
        }
    }
}

/// Polls request `id` until it is pending with nobody having woken it meanwhile, or
/// finished. Returns at once if another thread is polling it (that thread polls again).
fn drive(shared: &Shared, id: u64) {
    let (mut job, waker) = {
        let mut jobs = shared.jobs();
        let Some(e) = jobs.get_mut(&id) else {
            return; // finished already (a late or second wake)
        };
        match e.job.take() {
            Some(j) => {
                e.notified = false;
                (j, e.waker.clone())
            }
            None => {
                e.notified = true;
                return;
            }
        }
    };
    let mut cx = Context::from_waker(&waker);
    loop {
        match job.as_mut().poll(&mut cx) {
            Poll::Ready(outcome) => {
                shared.jobs().remove(&id);
                // Dropped before it counts as finished: `close` relies on no job
                // outliving the count (a job may hold an engine handle).
                drop(job);
                shared.push_done(id, outcome, true);
                return;
            }
            Poll::Pending => {
                let mut jobs = shared.jobs();
                let e = jobs.entry(id).or_insert_with(|| Entry {
                    job: None,
                    notified: false,
                    waker: waker.clone(),
                });
                if std::mem::take(&mut e.notified) {
                    continue; // woken while polling: look again
                }
                e.job = Some(job);
                return;
            }
        }
    }
}

/// The completion side of one plug-in instance.
pub struct Completions {
    shared: Arc<Shared>,
}

impl Completions {
    /// Creates the eventfd.
    pub fn new() -> std::io::Result<Completions> {
        Ok(Completions {
            shared: Arc::new(Shared {
                efd: EventFd::new()?,
                st: Mutex::new(State::default()),
                jobs: Mutex::new(HashMap::new()),
                idle: Condvar::new(),
            }),
        })
    }

    /// The eventfd Python polls.
    pub fn event_fd(&self) -> i32 {
        self.shared.efd.raw()
    }

    /// Counts a request before it may reach the engine: from here `close` waits for
    /// it. `false` (nothing counted) once `close` began: the request must not be sent.
    pub fn register(&self) -> bool {
        let mut st = self.shared.lock();
        if st.closing {
            return false;
        }
        st.running += 1;
        true
    }

    /// Takes a request counted by [`register`](Self::register) and polls it once here.
    /// It is polled to completion whatever happens meanwhile (`close` included): a job
    /// is never dropped unfinished, since an unfinished job may have buffers lent to the
    /// engine, and its outcome is published only once they are all home.
    pub fn start(&self, id: u64, job: Job) {
        let waker = Waker::from(Arc::new(JobWaker {
            id,
            shared: Arc::downgrade(&self.shared),
        }));
        self.shared.jobs().insert(
            id,
            Entry {
                job: Some(job),
                notified: false,
                waker,
            },
        );
        drive(&self.shared, id);
    }

    /// [`register`](Self::register) and [`start`](Self::start) in one, for a job that
    /// has not reached the engine yet: after `close` it is failed at once, unpolled.
    pub fn submit(&self, id: u64, job: Job) {
        if !self.register() {
            // Dropping an unpolled job releases nothing the engine holds: it never
            // reached the engine.
            drop(job);
            return self.finish_now(id, Outcome::failed("plug-in is closed", Held::None));
        }
        self.start(id, job);
    }

    /// Queues an outcome that needs no polling (failed before reaching the engine).
    pub fn finish_now(&self, id: u64, outcome: Outcome) {
        self.shared.push_done(id, outcome, false);
    }

    /// Resets the eventfd, then takes every finished request.
    ///
    /// Reset first: an outcome queued after the reset finds `signalled` cleared (or is
    /// taken by this drain), so it rings the eventfd again and none is left behind
    /// unannounced.
    pub fn drain(&self) -> Vec<Done> {
        self.shared.efd.reset();
        let mut st = self.shared.lock();
        st.signalled = false;
        std::mem::take(&mut st.done)
    }

    /// Refuses new requests and waits for every running one to finish, at most
    /// `bound` (each is bounded by its deadline; a request the engine cannot hand its
    /// buffers back for is not). Returns how many were still running at the bound:
    /// those are leaked, never dropped nor published, so that the memory the engine or
    /// the kernel may still hold stays lent (and its Python buffer exports held) for the
    /// life of the process. Finished requests stay drainable. Idempotent.
    pub fn close(&self, bound: Duration) -> usize {
        let deadline = Instant::now() + bound;
        let mut st = self.shared.lock();
        st.closing = true;
        while st.running > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .idle
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let running = st.running;
        drop(st);
        if running > 0 {
            tracing::error!(
                running,
                "closing the plug-in: requests still running past the bound; their \
                 buffers are leaked (never released), since the engine may still hold them"
            );
            leak_unfinished(&mut self.shared.jobs());
        }
        running
    }

    /// Whether `close` has been called (tests and the debug hooks).
    pub fn closing(&self) -> bool {
        self.shared.lock().closing
    }

    /// Requests accepted and not yet finished.
    pub fn running(&self) -> usize {
        self.shared.lock().running
    }
}

/// Forgets every job not being polled right now: its buffers stay lent for good. (A
/// job a thread is polling goes back to the table, and is leaked with it at drop.)
fn leak_unfinished(jobs: &mut HashMap<u64, Entry>) {
    for e in jobs.values_mut() {
        if let Some(job) = e.job.take() {
            std::mem::forget(job);
        }
    }
}

impl Drop for Shared {
    /// The last handle went: a job still unfinished here is leaked, never dropped (see
    /// [`Completions::close`]).
    fn drop(&mut self) {
        leak_unfinished(self.jobs.get_mut().unwrap_or_else(|e| e.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Payload;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Pending until `open`, keeping its latest waker in `wakers[id]`; counts its
    /// polls.
    struct Gate {
        id: usize,
        open: Arc<AtomicBool>,
        wakers: Arc<Mutex<Vec<Option<Waker>>>>,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Gate {
        type Output = Outcome;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready(Outcome::ok(Payload::None, Held::None));
            }
            self.wakers.lock().unwrap()[self.id] = Some(cx.waker().clone());
            // Opened between the check and the registration: the opener's wake may
            // have found no waker yet, so look again.
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready(Outcome::ok(Payload::None, Held::None));
            }
            Poll::Pending
        }
    }

    fn drained_ids(c: &Completions) -> Vec<u64> {
        let mut ids: Vec<u64> = c.drain().into_iter().map(|d| d.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_job_ready_at_once_finishes_on_submit() {
        let c = Completions::new().unwrap();
        c.submit(
            7,
            crate::io::ready(Outcome::ok(Payload::Count(3), Held::None)),
        );
        assert_eq!(c.running(), 0);
        let d = c.drain();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].id, 7);
        assert!(matches!(d[0].outcome.payload, Payload::Count(3)));
    }

    #[test]
    fn a_wake_during_its_own_poll_is_not_lost() {
        // Wakes itself while being polled, then is pending: the waker finds the job
        // taken, marks it, and the poller polls again.
        struct SelfWake(u32);
        impl Future for SelfWake {
            type Output = Outcome;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
                self.0 += 1;
                if self.0 >= 3 {
                    return Poll::Ready(Outcome::ok(Payload::None, Held::None));
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let c = Completions::new().unwrap();
        c.submit(1, Box::pin(SelfWake(0)));
        assert_eq!(c.running(), 0);
        assert_eq!(drained_ids(&c), vec![1]);
    }

    #[test]
    fn concurrent_wakes_finish_each_job_exactly_once() {
        const JOBS: u64 = 200;
        let c = Arc::new(Completions::new().unwrap());
        let open = Arc::new(AtomicBool::new(false));
        let wakers = Arc::new(Mutex::new(vec![None; JOBS as usize]));
        let polls = Arc::new(AtomicUsize::new(0));
        for id in 0..JOBS {
            c.submit(
                id,
                Box::pin(Gate {
                    id: id as usize,
                    open: open.clone(),
                    wakers: wakers.clone(),
                    polls: polls.clone(),
                }),
            );
        }
        assert_eq!(c.running(), JOBS as usize);
        // Four threads wake every registered waker over and over (spurious wakes,
        // several at once for one job), and the gate opens halfway through.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (open, wakers) = (open.clone(), wakers.clone());
                std::thread::spawn(move || {
                    for round in 0..50 {
                        if t == 0 && round == 25 {
                            open.store(true, Ordering::SeqCst);
                        }
                        let ws: Vec<Waker> =
                            wakers.lock().unwrap().iter().flatten().cloned().collect();
                        for w in ws {
                            w.wake_by_ref();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // No sweep after the threads: thread 0 woke every job after opening the gate,
        // so a job still running here lost a wake-up.
        assert_eq!(c.running(), 0);
        assert_eq!(drained_ids(&c), (0..JOBS).collect::<Vec<_>>());
        assert!(c.drain().is_empty(), "a job finished twice");
        assert!(polls.load(Ordering::SeqCst) >= 2 * JOBS as usize);
    }

    #[test]
    fn close_waits_for_running_jobs_and_refuses_new_ones() {
        let c = Arc::new(Completions::new().unwrap());
        let open = Arc::new(AtomicBool::new(false));
        let wakers = Arc::new(Mutex::new(vec![None]));
        c.submit(
            1,
            Box::pin(Gate {
                id: 0,
                open: open.clone(),
                wakers: wakers.clone(),
                polls: Arc::new(AtomicUsize::new(0)),
            }),
        );
        // Opens the gate only once close has begun: close must still be waiting then.
        let opener = {
            let (c, open, wakers) = (c.clone(), open.clone(), wakers.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !c.closing() {
                    assert!(t0.elapsed() < Duration::from_secs(20), "close never began");
                    std::thread::yield_now();
                }
                assert_eq!(c.running(), 1, "close finished a job it did not wait for");
                open.store(true, Ordering::SeqCst);
                let w = wakers.lock().unwrap()[0].take();
                if let Some(w) = w {
                    w.wake();
                }
            })
        };
        assert_eq!(c.close(Duration::from_secs(30)), 0);
        assert_eq!(c.running(), 0);
        opener.join().unwrap();
        c.submit(2, crate::io::ready(Outcome::ok(Payload::None, Held::None)));
        let d = c.drain();
        let ids: Vec<u64> = d.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert!(d[0].outcome.ok);
        assert!(!d[1].outcome.ok, "a submit after close must fail");
    }

    #[test]
    fn the_eventfd_rings_once_until_drained() {
        let c = Completions::new().unwrap();
        let fd = c.event_fd();
        c.submit(1, crate::io::ready(Outcome::ok(Payload::None, Held::None)));
        c.submit(2, crate::io::ready(Outcome::ok(Payload::None, Held::None)));
        assert!(crate::efd::readable(fd));
        assert_eq!(drained_ids(&c), vec![1, 2]);
        assert!(!crate::efd::readable(fd), "drain leaves the eventfd quiet");
        c.finish_now(3, Outcome::failed("x", Held::None));
        assert!(
            crate::efd::readable(fd),
            "an outcome after a drain rings again"
        );
        assert_eq!(drained_ids(&c), vec![3]);
    }

    /// Counts its drops.
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn close_past_its_bound_leaks_the_unfinished_job_and_publishes_nothing() {
        let c = Completions::new().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let wakers = Arc::new(Mutex::new(vec![None]));
        let gate = Gate {
            id: 0,
            open: Arc::new(AtomicBool::new(false)),
            wakers: wakers.clone(),
            polls: Arc::new(AtomicUsize::new(0)),
        };
        let guard = Dropped(drops.clone());
        assert!(c.register());
        c.start(
            1,
            Box::pin(async move {
                let _guard = guard;
                gate.await
            }),
        );
        // Under a watchdog: a close that ignored its bound would wait forever.
        let c = Arc::new(c);
        let (tx, rx) = std::sync::mpsc::channel();
        let closer = {
            let c = c.clone();
            std::thread::spawn(move || tx.send(c.close(Duration::from_millis(50))))
        };
        let running = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(running, Ok(1), "close did not return within its bound");
        closer.join().unwrap().ok();
        let c = Arc::try_unwrap(c).unwrap_or_else(|_| panic!("close thread kept a handle"));
        assert!(c.drain().is_empty(), "an unfinished job was published");
        assert!(!c.register(), "a closed plug-in counted a new request");
        // A late wake polls nothing, and dropping the plug-in drops nothing.
        let w = wakers.lock().unwrap()[0].take();
        if let Some(w) = w {
            w.wake();
        }
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "a lent job was dropped");
    }

    #[test]
    fn a_job_registered_before_close_runs_to_completion() {
        // The close-during-submit window: counted, then close begins, then started.
        let c = Arc::new(Completions::new().unwrap());
        assert!(c.register());
        let closer = {
            let c = c.clone();
            std::thread::spawn(move || c.close(Duration::from_secs(30)))
        };
        let t0 = Instant::now();
        while !c.closing() {
            assert!(t0.elapsed() < Duration::from_secs(20), "close never began");
            std::thread::yield_now();
        }
        assert_eq!(c.running(), 1, "a registered request was not counted");
        c.start(
            5,
            crate::io::ready(Outcome::ok(Payload::Count(1), Held::None)),
        );
        assert_eq!(closer.join().unwrap(), 0);
        let d = c.drain();
        assert_eq!(d.len(), 1);
        assert!(d[0].outcome.ok, "a counted request was failed by close");
    }
}
