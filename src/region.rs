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
//! the memory may be freed after the drop returns, never before.
//!
//! When the kernel refuses to pin the memory (RLIMIT_MEMLOCK: an unprivileged user may
//! lock 8 MiB by default), the region stays a plain one on that shard: payloads in it
//! take the direct path (iovec send, direct receive), the refusal is logged once and
//! counted (`region_fallbacks`). The epoll backend keeps the table only as a marker.
//! No `unsafe` here: the memory is only recorded (addresses), the ring registers it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cmem::CallerBufMut;
use crate::lanes::Lanes;
use crate::shard::SubmitPart;

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
    /// The shards' doorbells, to make them look at the table now.
    bells: OnceLock<Arc<[Arc<Lanes<SubmitPart>>]>>,
}

/// How long `register_region` waits for the shards to register a new region.
const ADD_WAIT: Duration = Duration::from_secs(5);

impl Regions {
    /// Gives the table the shards' lanes, whose doorbells wake them.
    pub fn set_bells(&self, lanes: Arc<[Arc<Lanes<SubmitPart>>]>) {
        let _ = self.bells.set(lanes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ring_all(&self) {
        if let Some(b) = self.bells.get() {
            for l in b.iter() {
                l.ring();
            }
        }
    }

    /// The table's generation: a shard re-syncs when it changed.
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The generation and the live regions, for a shard's sync.
    pub fn snapshot(&self) -> (u64, Vec<RegionSpec>) {
        let s = self.lock();
        (self.gen(), s.live.clone())
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
        })
    }

    /// Takes a region out of the table and waits until no ring holds it.
    fn remove(&self, id: u64) {
        let mut s = self.lock();
        s.live.retain(|r| r.id != id);
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.handles.fetch_sub(1, Ordering::Relaxed);
        self.ring_all();
        let start = Instant::now();
        let mut warned = false;
        while s.shards.iter().any(|v| v.alive && v.held.contains(&id)) {
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
    }
}

/// A registered region of caller memory (see [`crate::Engine::register_region_raw`]).
/// Dropping it unregisters the region and returns once no shard's ring holds it.
#[derive(Debug)]
pub struct Region {
    spec: RegionSpec,
    table: Arc<Regions>,
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

impl Drop for Region {
    fn drop(&mut self) {
        self.table.remove(self.spec.id);
    }
}

/// A caller buffer registered as a region, owned by the region while registered
/// (see [`crate::Engine::register_region`]): the buffer cannot be freed or replaced
/// before the registration ends. Payloads sent from or read into slices of it go
/// through the ring's fixed buffers.
pub struct OwnedRegion<B: CallerBufMut> {
    // Declared first: dropped (unregistered, waited for) before the buffer.
    region: Region,
    buf: B,
}

impl<B: CallerBufMut> std::fmt::Debug for OwnedRegion<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OwnedRegion").field(&self.region).finish()
    }
}

impl<B: CallerBufMut> OwnedRegion<B> {
    /// The region's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_slice()
    }

    /// The region's bytes, writable (split them for concurrent reads into parts).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf.as_mut_slice()
    }

    /// The registration.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Ends the registration (waiting for operations in flight) and returns the buffer.
    pub fn into_inner(self) -> B {
        let OwnedRegion { region, buf } = self;
        drop(region);
        buf
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
    Ok(OwnedRegion { region, buf })
}

/// Registers `len` bytes at `base` (see [`crate::Engine::register_region_raw`]).
pub(crate) fn register_raw(table: &Arc<Regions>, base: usize, len: usize) -> crate::Result<Region> {
    table.add(base, len)
}
