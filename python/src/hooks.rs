//! Test hooks: a pause between a request reaching the engine and its completion-side
//! start, so that a test can run `close()` in exactly that window (the close-during-
//! submit race) instead of hoping to hit it.
//!
//! Off unless a test arms it (`Client._debug_pause_next_submit`): the hot path pays one
//! relaxed atomic load. An armed pause waits at most [`HOLD`] for its release, so a
//! test that forgets to release cannot hang the client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The longest a paused submission waits for its release.
const HOLD: Duration = Duration::from_secs(30);

#[derive(Default)]
struct St {
    /// A submission is waiting at the pause point.
    paused: bool,
    /// The test let it go.
    released: bool,
}

/// One pause point of a client.
#[derive(Default)]
pub struct Pause {
    armed: AtomicBool,
    st: Mutex<St>,
    cv: Condvar,
}

impl Pause {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next submission stops at the pause point.
    pub fn arm(&self) {
        *self.lock() = St::default();
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Called by every submission at the pause point: waits there if armed.
    pub fn point(&self) {
        if !self.armed.load(Ordering::Relaxed) || !self.armed.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut st = self.lock();
        st.paused = true;
        self.cv.notify_all();
        let (mut st, waited) = self
            .cv
            .wait_timeout_while(st, HOLD, |st| !st.released)
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() {
            tracing::warn!("debug pause never released; going on");
        }
        st.paused = false;
    }

    /// Waits up to `timeout` for a submission to reach the pause point.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .cv
            .wait_timeout_while(st, timeout, |st| !st.paused)
            .unwrap_or_else(|e| e.into_inner());
        st.paused
    }

    /// Lets the paused submission go on.
    pub fn release(&self) {
        self.lock().released = true;
        self.cv.notify_all();
    }
}
