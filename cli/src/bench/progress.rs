//! A one-line progress bar on stderr for long benches: drawn only when stderr is a
//! terminal (never into a log or a pipe), at most ten times a second, from whichever
//! caller thread finishes a batch.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

struct State {
    on: bool,
    start: Instant,
    /// Batches of the whole bench (every size, run, peer and phase) and those done.
    total: AtomicUsize,
    done: AtomicUsize,
    /// Batches of the current phase and those done.
    phase_total: AtomicUsize,
    phase_done: AtomicUsize,
    label: Mutex<String>,
    /// Milliseconds since `start` of the last draw.
    last_ms: AtomicU64,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| State {
        on: std::io::stderr().is_terminal() && std::env::var_os("SLOTLINE_NO_PROGRESS").is_none(),
        start: Instant::now(),
        total: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        phase_total: AtomicUsize::new(0),
        phase_done: AtomicUsize::new(0),
        label: Mutex::new(String::new()),
        last_ms: AtomicU64::new(0),
    })
}

/// Adds `batches` to the bench's total (called once per planned size).
pub fn add_total(batches: usize) {
    state().total.fetch_add(batches, Relaxed);
}

/// Takes back `batches` from the total (a peer skipped for the whole bench).
pub fn remove_total(batches: usize) {
    let t = &state().total;
    let _ = t.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(batches)));
}

/// A phase of `batches` batches starts, described by `label`.
pub fn phase(label: String, batches: usize) {
    let s = state();
    s.phase_total.store(batches, Relaxed);
    s.phase_done.store(0, Relaxed);
    *s.label.lock().unwrap_or_else(|e| e.into_inner()) = label;
    draw(true);
}

/// One batch finished.
pub fn tick() {
    let s = state();
    s.done.fetch_add(1, Relaxed);
    s.phase_done.fetch_add(1, Relaxed);
    draw(false);
}

/// Erases the bar so that a line can be printed; the next tick draws it again.
pub fn clear() {
    if state().on {
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K");
        let _ = e.flush();
    }
}

fn draw(force: bool) {
    let s = state();
    if !s.on {
        return;
    }
    let now = s.start.elapsed().as_millis() as u64;
    let last = s.last_ms.load(Relaxed);
    if !force && now < last + 100 {
        return;
    }
    if s.last_ms
        .compare_exchange(last, now, Relaxed, Relaxed)
        .is_err()
    {
        return; // another thread draws
    }
    let (done, total) = (s.done.load(Relaxed), s.total.load(Relaxed).max(1));
    let frac = (done as f64 / total as f64).min(1.0);
    const WIDTH: usize = 24;
    let filled = (frac * WIDTH as f64) as usize;
    let eta = if frac > 0.01 {
        let secs = s.start.elapsed().as_secs_f64() * (1.0 - frac) / frac;
        format!(" ETA {}m{:02}s", secs as u64 / 60, secs as u64 % 60)
    } else {
        String::new()
    };
    let label = s.label.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut e = std::io::stderr().lock();
    let _ = write!(
        e,
        "\r\x1b[K[{}{}] {:>3.0}% {label} {}/{}{eta}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        frac * 100.0,
        s.phase_done.load(Relaxed),
        s.phase_total.load(Relaxed),
    );
    let _ = e.flush();
}
