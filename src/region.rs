//! Registered regions: a caller's large buffer (LMCache's pinned CPU pool, several GiB)
//! registered once with every shard's io_uring, so that payloads inside it go out and
//! come in through the ring's fixed buffers (the kernel skips pinning the pages per
//! operation).
//!
//! The engine keeps a table of live regions ([`Regions`]); each io_uring shard brings
//! its ring's registrations in line with the table at its next loop turn and reports
//! which regions its ring still holds. A region leaves the table when its handle
//! ([`Region`], or the [`OwnedRegion`] around it) is dropped; the drop returns only once
//! no shard's ring holds it any more, and a ring lets go of a region only when no
//! operation in flight uses it (the in-flight-owner rule of `shard/uring/loans.rs`). So
//! the memory may be freed after the drop returns, never before. A ring reading the
//! table claims its live regions in the same critical section (`Regions::claim`), so a
//! removal racing a registration in progress waits for it too. A ring torn down with
//! operations the kernel never returned keeps its regions for good: the drop then
//! returns at once (logged) and an [`OwnedRegion`] leaks its buffer rather than free it.
//!
//! When the kernel refuses to pin the memory (RLIMIT_MEMLOCK: an unprivileged user may
//! lock 8 MiB by default), the region stays a plain one on that shard: payloads in it
//! take the direct path (iovec send, direct receive), the refusal is logged once and
//! counted (`region_fallbacks`). The epoll backend keeps the table only as a marker.
//! No `unsafe` here: the memory is only recorded (addresses), the ring registers it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::mem::CallerBufMut;

/// One region as the shards see it: an address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegionSpec {
    pub id: u64,
    pub base: usize,
    pub len: usize,
}

/// What one shard's ring reported last.
#[derive(Debug, Default)]
struct ShardView {
    /// The table generation the shard's ring is in line with.
    seen: u64,
    /// Regions its ring holds (registered, or waiting for operations to finish).
    held: Vec<u64>,
    /// A ring shard that is running.
    alive: bool,
    /// Its ring was torn down with operations the kernel never returned: what it
    /// holds stays registered (and the memory lent) for good.
    leaked: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    live: Vec<RegionSpec>,
    shards: Vec<ShardView>,
}

/// The engine's table of registered regions, shared with the io_uring shards.
#[derive(Default)]
pub(crate) struct Regions {
    gen: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
    /// Region registrations active on rings, summed over shards (a gauge).
    pub registered: AtomicU64,
    /// Registrations the kernel refused (locked-memory limit, old kernel).
    pub fallbacks: AtomicU64,
    /// Region handles alive (a gauge; on epoll regions are markers only).
    pub handles: AtomicU64,
    logged: AtomicBool,
    /// Wakes every shard, to make it look at the table now (the engine rings the
    /// shards' doorbells).
    waker: OnceLock<Waker>,
}

/// What [`Regions`] calls to wake every shard.
pub(crate) type Waker = Box<dyn Fn() + Send + Sync>;

/// How long `register_region` waits for the shards to register a new region.
const ADD_WAIT: Duration = Duration::from_secs(5);

impl Regions {
    /// Gives the table the way to wake every shard (set once; later calls are no-ops).
    pub fn set_waker(&self, wake: Waker) {
        let _ = self.waker.set(wake);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ring_all(&self) {
        if let Some(wake) = self.waker.get() {
            wake();
        }
    }

    /// The table's generation: a shard re-syncs when it changed.
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The generation and the live regions, for shard `shard`'s sync, which may
    /// register them: each live region is claimed for the shard (added to what it
    /// holds) in the same critical section, so a removal that runs after this waits
    /// for the shard's next report instead of missing a registration in progress.
    pub fn claim(&self, shard: usize) -> (u64, Vec<RegionSpec>) {
        let mut s = self.lock();
        let live = s.live.clone();
        if let Some(v) = s.shards.get_mut(shard) {
            for r in &live {
                if !v.held.contains(&r.id) {
                    v.held.push(r.id);
                }
            }
        }
        (self.gen(), live)
    }

    /// A ring shard starts following the table.
    pub fn attach(&self, shard: usize) {
        let mut s = self.lock();
        if s.shards.len() <= shard {
            s.shards.resize_with(shard + 1, ShardView::default);
        }
        s.shards[shard] = ShardView {
            seen: 0,
            held: Vec::new(),
            alive: true,
            leaked: false,
        };
    }

    /// A shard's ring is in line with generation `seen` and holds `held`.
    pub fn report(&self, shard: usize, seen: u64, held: Vec<u64>) {
        let mut s = self.lock();
        if let Some(v) = s.shards.get_mut(shard) {
            v.seen = seen;
            v.held = held;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// A shard's ring is gone (its registrations with it).
    pub fn detach(&self, shard: usize) {
        let mut s = self.lock();
        if let Some(v) = s.shards.get_mut(shard) {
            v.alive = false;
            v.held.clear();
        }
        drop(s);
        self.changed.notify_all();
    }

    /// A shard's ring was torn down leaking operations: the regions it holds stay
    /// registered there; removing them no longer waits for it (see [`Region`]).
    pub fn leaked(&self, shard: usize) {
        let mut s = self.lock();
        if let Some(v) = s.shards.get_mut(shard) {
            v.leaked = true;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The kernel refused to register a region on one shard.
    pub fn fallback(&self, err: &std::io::Error, len: usize) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, bytes = len, "could not register a memory region with io_uring (locked-memory limit? see RLIMIT_MEMLOCK); its payloads take the unregistered path (logged once, counted in region_fallbacks)");
        }
    }

    /// Adds a region and waits (bounded) until every ring shard has tried to register
    /// it. Overlapping an existing region is an error.
    fn add(self: &Arc<Self>, base: usize, len: usize) -> crate::Result<Region> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(crate::Error::Invalid(
                "a region needs a non-empty address range".into(),
            ));
        }
        let mut s = self.lock();
        if s.live
            .iter()
            .any(|r| base < r.base + r.len && r.base < base + len)
        {
            return Err(crate::Error::Invalid(
                "the region overlaps a registered one".into(),
            ));
        }
        s.next_id += 1;
        let id = s.next_id;
        s.live.push(RegionSpec { id, base, len });
        let gen = self.gen.fetch_add(1, Ordering::AcqRel) + 1;
        self.handles.fetch_add(1, Ordering::Relaxed);
        self.ring_all();
        let until = Instant::now() + ADD_WAIT;
        while s.shards.iter().any(|v| v.alive && v.seen < gen) {
            let now = Instant::now();
            if now >= until {
                tracing::warn!("shards did not register a region in time; they will later");
                break;
            }
            s = self
                .changed
                .wait_timeout(s, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(Region {
            spec: RegionSpec { id, base, len },
            table: self.clone(),
            done: false,
        })
    }

    /// Takes a region out of the table and waits until no ring holds it (a ring that
    /// claimed it for a registration in progress included, see [`Self::claim`]).
    /// `false` when a ring that leaked operations at its teardown still holds it: the
    /// memory may still be in use by the kernel and must never be freed.
    fn remove(&self, id: u64) -> bool {
        let mut s = self.lock();
        s.live.retain(|r| r.id != id);
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.handles.fetch_sub(1, Ordering::Relaxed);
        self.ring_all();
        let start = Instant::now();
        let mut warned = false;
        let holds = |v: &ShardView| v.alive && v.held.contains(&id);
        while s.shards.iter().any(|v| holds(v) && !v.leaked) {
            if !warned && start.elapsed() > Duration::from_secs(5) {
                warned = true;
                tracing::warn!(
                    region = id,
                    "still waiting for operations in flight to release a region"
                );
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            // A shard parked on its doorbell may have missed the first ring.
            self.ring_all();
        }
        let kept = s.shards.iter().any(holds);
        if kept {
            tracing::error!(
                region = id,
                "a region stays registered on a ring that leaked operations at shutdown; its memory is kept, never freed"
            );
        }
        !kept
    }
}

/// A registered region of caller memory (see [`crate::Engine::register_region_raw`]).
/// Dropping it unregisters the region and returns once no shard's ring holds it.
#[derive(Debug)]
pub struct Region {
    spec: RegionSpec,
    table: Arc<Regions>,
    /// `release` ran.
    done: bool,
}

impl std::fmt::Debug for Regions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regions")
            .field("gen", &self.gen())
            .finish_non_exhaustive()
    }
}

impl Region {
    /// The region's id, unique within its engine.
    pub fn id(&self) -> u64 {
        self.spec.id
    }

    /// First byte of the region.
    pub fn as_ptr(&self) -> *const u8 {
        self.spec.base as *const u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.spec.len
    }

    /// `true` for an empty region (never: registration refuses those).
    pub fn is_empty(&self) -> bool {
        self.spec.len == 0
    }

    /// `true` when `data` lies wholly inside the region.
    pub fn contains(&self, data: &[u8]) -> bool {
        let p = data.as_ptr() as usize;
        p >= self.spec.base && p + data.len() <= self.spec.base + self.spec.len
    }
}

impl Region {
    /// Unregisters (once) and waits until no ring holds the region; `false` when a
    /// ring that leaked operations at shutdown keeps it (`kernel_leaks` > 0): the
    /// memory must then never be freed or reused.
    fn release(&mut self) -> bool {
        if std::mem::replace(&mut self.done, true) {
            return true;
        }
        self.table.remove(self.spec.id)
    }
}

impl Drop for Region {
    /// Returns once no ring holds the region, or at once for a ring that leaked
    /// operations at its teardown (logged): the memory of a raw region must then be
    /// kept for the life of the process.
    fn drop(&mut self) {
        self.release();
    }
}

/// A caller buffer registered as a region, owned by the region while registered
/// (see [`crate::Engine::register_region`]): the buffer cannot be freed or replaced
/// before the registration ends. Payloads sent from or read into slices of it go
/// through the ring's fixed buffers.
pub struct OwnedRegion<B: CallerBufMut> {
    region: Region,
    /// `None` only once taken by `into_inner` or the drop.
    buf: Option<B>,
}

impl<B: CallerBufMut> Drop for OwnedRegion<B> {
    /// Unregisters first, then frees the buffer; a buffer a leaked ring still holds is
    /// leaked instead (never freed), so the drop returns either way.
    fn drop(&mut self) {
        let released = self.region.release();
        if let Some(b) = self.buf.take() {
            if released {
                drop(b);
            } else {
                std::mem::forget(b);
            }
        }
    }
}

impl<B: CallerBufMut> std::fmt::Debug for OwnedRegion<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnedRegion").field(&self.region).finish()
    }
}

impl<B: CallerBufMut> OwnedRegion<B> {
    /// The region's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_slice())
    }

    /// The region's bytes, writable (split them for concurrent reads into parts).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.as_mut_slice(),
            None => &mut [],
        }
    }

    /// The registration.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Ends the registration (waiting for operations in flight) and returns the
    /// buffer; fails, leaking the buffer, when a ring that leaked operations at its
    /// teardown still holds it (the kernel may still use the memory).
    pub fn into_inner(mut self) -> crate::Result<B> {
        if self.region.release() {
            return self.buf.take().ok_or(crate::Error::Closed);
        }
        if let Some(b) = self.buf.take() {
            std::mem::forget(b);
        }
        Err(crate::Error::Invalid(
            "the region's buffer is still held by a ring that leaked operations at shutdown; it was leaked, not returned".into(),
        ))
    }
}

/// Registers `buf` (see [`crate::Engine::register_region`]).
pub(crate) fn register_owned<B: CallerBufMut>(
    table: &Arc<Regions>,
    mut buf: B,
) -> crate::Result<OwnedRegion<B>> {
    let s = buf.as_mut_slice();
    let (base, len) = (s.as_mut_ptr() as usize, s.len());
    let region = table.add(base, len)?;
    Ok(OwnedRegion {
        region,
        buf: Some(buf),
    })
}

/// Registers `len` bytes at `base` (see [`crate::Engine::register_region_raw`]).
pub(crate) fn register_raw(table: &Arc<Regions>, base: usize, len: usize) -> crate::Result<Region> {
    table.add(base, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Adding and removing a region wake the shards through the waker the engine set,
    /// so a shard parked on its doorbell registers (and lets go of) it now.
    #[test]
    fn adding_and_removing_a_region_wakes_the_shards() {
        use std::sync::atomic::AtomicUsize;
        let table = Arc::new(Regions::default());
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        table.set_waker(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        let r = register_owned(&table, vec![1u8; 4096]).unwrap();
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "the add woke the shards");
        drop(r);
        assert_eq!(
            wakes.load(Ordering::SeqCst),
            2,
            "the removal woke the shards"
        );
    }

    /// A ring torn down with operations the kernel never returned holds its regions for
    /// good: dropping one (or taking its buffer back) returns at once instead of
    /// waiting forever, and the buffer is leaked, not handed back.
    #[test]
    fn a_region_a_leaked_ring_holds_is_let_go_without_waiting() {
        let table = Arc::new(Regions::default());
        let dropped = register_owned(&table, vec![1u8; 4096]).unwrap();
        let taken = register_owned(&table, vec![2u8; 4096]).unwrap();
        table.attach(0);
        let ids = vec![dropped.region().id(), taken.region().id()];
        table.report(0, table.gen(), ids);
        table.leaked(0);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(dropped);
            let _ = tx.send(taken.into_inner().is_err());
        });
        let refused = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the region's drop must not wait for a leaked ring");
        assert!(
            refused,
            "into_inner cannot hand back a buffer a leaked ring holds"
        );
    }
}
