//! Ctrl-C and SIGTERM: a flag checked between batches, so that the bench unwinds and
//! stops the servers it started.

use super::*;

pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C kills at once.
    // SAFETY: signal() is async-signal-safe; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Turns SIGINT/SIGTERM into a flag checked between batches, so the bench unwinds
/// normally and the servers it started are stopped by their Drop.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic and calls signal(), both
        // async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install_signal_handlers`] (for other
/// commands that clean up before exiting, e.g. `slotline metrics --load`).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub(super) fn check_interrupted() -> Result<(), BenchError> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(BenchError::failed("interrupted"));
    }
    Ok(())
}
