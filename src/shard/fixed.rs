//! Which of a ring's fixed-buffer slots hold which registered region, and how many
//! operations in flight use each: the bookkeeping behind `Uring`'s region support
//! (see `crate::region`). No I/O and no `unsafe` here; `uring/setup.rs` registers (through
//! `uring/ring.rs`).

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::region::Regions;

/// Most bytes one fixed buffer may span (the kernel refuses larger ones), so a region
/// takes one slot per started GiB.
pub(crate) const SLOT_MAX: usize = 1 << 30;

/// One slot holding part of a region.
#[derive(Debug, Clone, Copy)]
struct Slot {
    region: u64,
    idx: u16,
    start: usize,
    end: usize,
    uses: u32,
}

/// The region slots of one ring: indices `first..first + count` of its sparse table.
#[derive(Debug, Default)]
pub(crate) struct FixedSlots {
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Regions this ring could not register (not retried while they live).
    pub failed: Vec<u64>,
    /// The table generation last synced.
    pub seen: u64,
}

impl FixedSlots {
    /// Slots `first..first + count` are free for regions.
    pub fn new(first: u16, count: u16) -> FixedSlots {
        FixedSlots {
            slots: Vec::new(),
            free: (first..first.saturating_add(count)).rev().collect(),
            failed: Vec::new(),
            seen: 0,
        }
    }

    /// `true` when no region is registered (the hot path skips lookups then).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot whose buffer holds all of `[ptr, ptr + len)`, if any.
    pub fn lookup(&self, ptr: usize, len: usize) -> Option<u16> {
        let end = ptr.checked_add(len)?;
        self.slots
            .iter()
            .find(|s| ptr >= s.start && end <= s.end)
            .map(|s| s.idx)
    }

    /// An operation using slot `idx` was pushed.
    pub fn take(&mut self, idx: u16) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.idx == idx) {
            s.uses += 1;
        }
    }

    /// An operation using slot `idx` completed.
    pub fn release(&mut self, idx: u16) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.idx == idx) {
            s.uses = s.uses.saturating_sub(1);
        }
    }

    /// Regions with at least one slot.
    pub fn regions(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.slots.iter().map(|s| s.region).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// `true` while an operation in flight uses region `id`.
    pub fn in_use(&self, id: u64) -> bool {
        self.slots.iter().any(|s| s.region == id && s.uses > 0)
    }

    /// Plans the slots for `len` bytes at `base`: (index, start, length) per started
    /// GiB, or `None` when too few slots are free. Nothing is taken yet.
    pub fn plan(&self, base: usize, len: usize) -> Option<Vec<(u16, usize, usize)>> {
        let n = len.div_ceil(SLOT_MAX);
        if n > self.free.len() {
            return None;
        }
        let picks = self.free.iter().rev().take(n);
        Some(
            picks
                .enumerate()
                .map(|(i, &idx)| {
                    let start = base + i * SLOT_MAX;
                    (idx, start, (len - i * SLOT_MAX).min(SLOT_MAX))
                })
                .collect(),
        )
    }

    /// Records slot `idx` as registered for region `id`.
    pub fn add(&mut self, id: u64, idx: u16, start: usize, len: usize) {
        self.free.retain(|&f| f != idx);
        self.slots.push(Slot {
            region: id,
            idx,
            start,
            end: start + len,
            uses: 0,
        });
    }

    /// Forgets region `id`'s slots (unregistered by the caller) and returns them.
    pub fn remove(&mut self, id: u64) -> Vec<u16> {
        let idxs: Vec<u16> = self
            .slots
            .iter()
            .filter(|s| s.region == id)
            .map(|s| s.idx)
            .collect();
        self.slots.retain(|s| s.region != id);
        self.free.extend(&idxs);
        idxs
    }
}

/// How payloads inside a registered region are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FixedSend {
    /// WRITE_FIXED: copied by the kernel from the fixed buffer.
    Write,
    /// SEND_ZC from the fixed buffer: no copy, a notification when the kernel is done.
    ZeroCopy,
}

/// One ring's part in the engine's region table.
pub(crate) struct RingRegions {
    pub table: Arc<Regions>,
    pub shard: usize,
    pub slots: FixedSlots,
    pub send: FixedSend,
    /// Sequence number for zero-copy sends' user_data.
    seq: u64,
    /// A removed region waits for operations in flight before it is unregistered.
    pending: bool,
}

impl RingRegions {
    /// Shard `shard`'s ring follows `table` with `slots`.
    pub fn new(table: Arc<Regions>, shard: usize, slots: FixedSlots) -> RingRegions {
        // SEND_ZC by default: at 4 and 32 MiB (loopback, 2-core VM) the two measured
        // the same throughput and CPU within run-to-run noise; SEND_ZC carries
        // MSG_NOSIGNAL (a write to a reset socket raises SIGPIPE, fatal where the
        // host process has not ignored it) and MSG_WAITALL (a socket write may return
        // short). `SLOTLINE_REGION_SEND=write` selects WRITE_FIXED, for comparison.
        let send = match std::env::var("SLOTLINE_REGION_SEND").as_deref() {
            Ok("write") => FixedSend::Write,
            _ => FixedSend::ZeroCopy,
        };
        table.attach(shard);
        RingRegions {
            table,
            shard,
            slots,
            send,
            seq: 0,
            pending: false,
        }
    }

    /// The next zero-copy sequence number (24 bits).
    pub fn next_seq(&mut self) -> u64 {
        self.seq = (self.seq + 1) & 0xff_ffff;
        self.seq
    }

    /// The table changed, or a removed region still waits for its operations.
    pub fn due(&self) -> bool {
        self.table.gen() != self.slots.seen || self.pending
    }

    /// Brings the registrations in line with the table: `register(idx, start, len)`
    /// new regions' slots, `clear(idx)` the slots of removed regions once no operation
    /// in flight uses them; reports what the ring holds. A refused registration
    /// leaves the region plain on this ring (counted, logged once).
    pub fn sync(
        &mut self,
        sparse: bool,
        mut register: impl FnMut(u16, usize, usize) -> io::Result<()>,
        mut clear: impl FnMut(u16),
    ) {
        let (gen, live) = self.table.claim(self.shard);
        let is_live = |id: u64| live.iter().any(|r| r.id == id);
        for id in self.slots.regions() {
            if is_live(id) || self.slots.in_use(id) {
                continue;
            }
            self.slots.remove(id).into_iter().for_each(&mut clear);
            self.table.registered.fetch_sub(1, Relaxed);
        }
        self.slots.failed.retain(|&id| is_live(id));
        for spec in &live {
            if self.slots.regions().contains(&spec.id) || self.slots.failed.contains(&spec.id) {
                continue;
            }
            let plan = match (sparse, self.slots.plan(spec.base, spec.len)) {
                (false, _) => Err(io::Error::other("this ring has no sparse buffer table")),
                (_, None) => Err(io::Error::other(
                    "too many regions for the fixed-buffer table",
                )),
                (true, Some(plan)) => Ok(plan),
            };
            let res = plan.and_then(|plan| {
                plan.into_iter().try_for_each(|(idx, start, len)| {
                    register(idx, start, len)?;
                    self.slots.add(spec.id, idx, start, len);
                    Ok(())
                })
            });
            match res {
                Ok(()) => {
                    self.table.registered.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.slots.remove(spec.id).into_iter().for_each(&mut clear);
                    self.slots.failed.push(spec.id);
                    self.table.fallback(&e, spec.len);
                }
            }
        }
        self.slots.seen = gen;
        let held = self.slots.regions();
        self.pending = held.iter().any(|&id| !is_live(id));
        self.table.report(self.shard, gen, held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A region's handle dropped while a ring is registering it (between the ring's
    /// look at the table and its report): the drop waits until the ring cleared the
    /// slot again, so a freed buffer never stays in a ring's fixed table.
    #[test]
    fn a_removal_during_a_registration_waits_for_the_slot_to_be_cleared() {
        let table = Arc::new(Regions::default());
        // No ring follows the table yet, so this does not wait for one.
        let region = crate::region::register_raw(&table, 0x7000_0000, 4096).unwrap();
        let mut rr = RingRegions::new(table.clone(), 0, FixedSlots::new(16, 4));
        let (tx, rx) = mpsc::channel();
        let mut region = Some(region);
        let mut cleared = Vec::new();
        rr.sync(
            true,
            |_, _, _| {
                let (r, tx) = (region.take(), tx.clone());
                std::thread::spawn(move || {
                    drop(r);
                    let _ = tx.send(());
                });
                let t0 = Instant::now();
                while table.gen() < 2 {
                    assert!(t0.elapsed() < Duration::from_secs(10), "removal never ran");
                    std::thread::yield_now();
                }
                assert!(
                    rx.recv_timeout(Duration::from_millis(300)).is_err(),
                    "the removal returned while the ring was registering the region"
                );
                Ok(())
            },
            |idx| cleared.push(idx),
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the removal returned with the region registered"
        );
        assert!(rr.due(), "the table changed since");
        rr.sync(
            true,
            |_, _, _| panic!("nothing to register"),
            |idx| cleared.push(idx),
        );
        assert_eq!(cleared, vec![16], "the slot was cleared");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the removal returns once the slot is cleared");
    }

    #[test]
    fn a_region_takes_one_slot_per_gib_and_lookups_stay_inside_one() {
        let mut f = FixedSlots::new(16, 4);
        let base = 0x1000_0000usize;
        let len = 2 * SLOT_MAX + 10;
        let plan = f.plan(base, len).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[2].2, 10);
        for (idx, start, l) in plan {
            f.add(7, idx, start, l);
        }
        assert!(f.plan(0, 2 * SLOT_MAX).is_none(), "one slot left");
        let a = f.lookup(base + 5, 100).unwrap();
        assert_eq!(f.lookup(base + SLOT_MAX - 50, 100), None, "spans two slots");
        assert_eq!(f.lookup(base + len - 5, 10), None, "past the end");
        f.take(a);
        assert!(f.in_use(7));
        f.release(a);
        assert!(!f.in_use(7));
        assert_eq!(f.regions(), vec![7]);
        assert_eq!(f.remove(7).len(), 3);
        assert!(f.is_empty());
        assert!(f.plan(0, 4 * SLOT_MAX).is_some());
    }
}
