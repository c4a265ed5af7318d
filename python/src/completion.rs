//! Completion delivery: one thread per plug-in polls every request's future and, when
//! one finishes, queues its [`Outcome`] and rings the eventfd.
//!
//! No thread per call: each request is a future woken by the shard that completes it
//! (the waker queues the request's id and unparks this thread). Python takes finished
//! requests with [`Completions::drain`], which first resets the eventfd.
//!
//! Buffers ([`View`](crate::views::View)s) are never dropped on this thread: they
//! travel inside the outcome and are released by Python's drain, with the GIL held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crate::efd::EventFd;
use crate::io::{Job, Outcome};

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
    /// Submitted, not yet seen by the thread.
    incoming: Vec<(u64, Job)>,
    /// Ids whose futures were woken.
    woken: Vec<u64>,
    /// Finished, not yet drained.
    done: Vec<Done>,
    /// No new requests; the thread exits once everything running has finished.
    closing: bool,
    /// Requests accepted and not yet finished.
    running: usize,
}

struct Shared {
    efd: EventFd,
    st: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent data (plain
        // pushes and takes); keep going rather than poison every later call.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wakes one request: queue its id for the completion thread.
struct JobWaker {
    id: u64,
    shared: Arc<Shared>,
    thread: Thread,
}

impl Wake for JobWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.lock().woken.push(self.id);
        self.thread.unpark();
    }
}

/// The completion side of one plug-in instance.
pub struct Completions {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// How long the completion thread sleeps without news before it looks at `closing`.
const IDLE: Duration = Duration::from_millis(200);

impl Completions {
    /// Creates the eventfd and starts the completion thread.
    pub fn start(name: &str) -> std::io::Result<Completions> {
        let shared = Arc::new(Shared {
            efd: EventFd::new()?,
            st: Mutex::new(State::default()),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(s2))?;
        Ok(Completions {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The eventfd Python polls.
    pub fn event_fd(&self) -> i32 {
        self.shared.efd.raw()
    }

    /// Hands a request to the completion thread. After `close`, the request is
    /// finished at once (it was built as a failure by the caller, or is failed here
    /// unpolled).
    pub fn submit(&self, id: u64, job: Job) {
        let thread = {
            let mut st = self.shared.lock();
            if st.closing {
                drop(st);
                // Dropping an unpolled job releases nothing the engine holds: it never
                // reached the engine (close refuses new work before submitting).
                drop(job);
                return self.finish_now(id, Outcome::failed("plug-in is closed", Vec::new()));
            }
            st.running += 1;
            st.incoming.push((id, job));
            self.thread_handle()
        };
        if let Some(t) = thread {
            t.unpark();
        }
    }

    /// Queues an outcome that needs no polling (failed before reaching the engine).
    pub fn finish_now(&self, id: u64, outcome: Outcome) {
        self.shared.lock().done.push(Done { id, outcome });
        self.shared.efd.notify();
    }

    fn thread_handle(&self) -> Option<Thread> {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|h| h.thread().clone())
    }

    /// Resets the eventfd, then takes every finished request.
    ///
    /// Reset first: an outcome queued after the reset rings the eventfd again, so none
    /// is left behind unannounced.
    pub fn drain(&self) -> Vec<Done> {
        self.shared.efd.reset();
        std::mem::take(&mut self.shared.lock().done)
    }

    /// Whether `close` has been called.
    pub fn is_closing(&self) -> bool {
        self.shared.lock().closing
    }

    /// Refuses new requests, waits for every running one to finish (each is bounded by
    /// the engine's request timeout) and stops the thread. Finished requests stay
    /// drainable. Idempotent.
    pub fn close(&self) {
        self.shared.lock().closing = true;
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }

    /// Requests accepted and not yet finished.
    pub fn running(&self) -> usize {
        self.shared.lock().running
    }
}

impl Drop for Completions {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(shared: Arc<Shared>) {
    let me = std::thread::current();
    let mut jobs: HashMap<u64, (Job, Waker)> = HashMap::new();
    loop {
        let (incoming, woken, closing) = {
            let mut st = shared.lock();
            (
                std::mem::take(&mut st.incoming),
                std::mem::take(&mut st.woken),
                st.closing,
            )
        };
        let mut to_poll = woken;
        for (id, job) in incoming {
            let waker = Waker::from(Arc::new(JobWaker {
                id,
                shared: shared.clone(),
                thread: me.clone(),
            }));
            jobs.insert(id, (job, waker));
            to_poll.push(id);
        }
        let mut finished = Vec::new();
        for id in to_poll {
            let Some((job, waker)) = jobs.get_mut(&id) else {
                continue; // woken twice, or after it finished
            };
            let mut cx = Context::from_waker(waker);
            if let Poll::Ready(outcome) = job.as_mut().poll(&mut cx) {
                jobs.remove(&id);
                finished.push(Done { id, outcome });
            }
        }
        if !finished.is_empty() {
            let mut st = shared.lock();
            st.running -= finished.len();
            st.done.append(&mut finished);
            drop(st);
            shared.efd.notify();
        }
        if closing && jobs.is_empty() {
            let st = shared.lock();
            if st.incoming.is_empty() {
                return;
            }
            continue;
        }
        std::thread::park_timeout(IDLE);
    }
}
