//! Request classes and how they share a shard: weighted fair picking.
//!
//! Work waits in two places inside slotline: in a shard's submission lanes (one per
//! class, until the shard has room for another active part) and in the shard's
//! per-class queues of active parts (until a connection can take a frame). In both
//! places a `Picker` decides which class goes next.
//!
//! # The rule: weighted shares, not strict priority
//!
//! Strict priority starves: with PEEK and PUT both backlogged, PREFETCH and GET would
//! never be served. Instead every class has a weight ([`PriorityWeights`]) and, while
//! several classes have work, each is picked in proportion to its weight. The picker
//! is start-time fair queueing (stride scheduling with a virtual clock):
//!
//! - class `c` has a *stride* `L / weight[c]` (with `L` the least common multiple of
//!   the weights, so strides are exact integers) and a *pass*, its virtual time;
//! - a pick serves the waiting class with the smallest pass (ties go to the more
//!   urgent class) and advances its pass by its stride; the virtual clock becomes the
//!   served class's pass before the advance;
//! - a class that had no work re-enters at the virtual clock: time spent idle (or
//!   blocked) earns no credit, so a class returning from idleness gets its share from
//!   then on, not a burst.
//!
//! While the same classes stay backlogged, every `sum of their weights` picks serve
//! each class exactly `weight` times (from a fresh picker; with history, within one
//! pick). A class that was idle for a while is served at its next pick unless it is
//! itself in debt, which keeps the latency of a lone PEEK to one pick.

use std::fmt;

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

    /// Lowercase name, as used in stats, errors and configuration keys.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Peek => "peek",
            Priority::Prefetch => "prefetch",
            Priority::Get => "get",
            Priority::Put => "put",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest weight accepted; keeps the strides' common multiple (at most about 10^12
/// for four weights) far from overflowing the picker's 64-bit virtual clock.
pub const MAX_PRIORITY_WEIGHT: u32 = 1000;

/// Relative shares of the four classes while several have work
/// (`extra_config.priority_weights`).
///
/// The defaults, PEEK 8 : PREFETCH 4 : GET 2 : PUT 1, halve at each step:
/// - PEEK (`exists`, `contains_prefix`) sits on LMCache's lookup path, where the
///   scheduler waits for the answer, and its replies are tiny, so a large share costs
///   the other classes little time: 8/15 of the picks under full contention.
/// - PREFETCH loads the hit prefix of a lookup before the request runs; it is the
///   next to be waited on (4/15).
/// - GET is a blocking retrieve of chunks a running request needs (2/15).
/// - PUT offloads fresh KV that nobody waits for, in the largest frames; 1/15 of the
///   picks still guarantees that writes progress under a constant read load, which the
///   old strict order (with only the lowest class rescued) did not give to PREFETCH
///   and GET.
///
/// Picks count parts (in the lanes) and frames (towards connections), not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityWeights {
    /// Weight of [`Priority::Peek`].
    pub peek: u32,
    /// Weight of [`Priority::Prefetch`].
    pub prefetch: u32,
    /// Weight of [`Priority::Get`].
    pub get: u32,
    /// Weight of [`Priority::Put`].
    pub put: u32,
}

impl Default for PriorityWeights {
    fn default() -> Self {
        PriorityWeights {
            peek: 8,
            prefetch: 4,
            get: 2,
            put: 1,
        }
    }
}

impl PriorityWeights {
    /// The weight of `class`.
    pub fn of(&self, class: Priority) -> u32 {
        match class {
            Priority::Peek => self.peek,
            Priority::Prefetch => self.prefetch,
            Priority::Get => self.get,
            Priority::Put => self.put,
        }
    }

    /// The weight of `class`, to change it.
    pub fn of_mut(&mut self, class: Priority) -> &mut u32 {
        match class {
            Priority::Peek => &mut self.peek,
            Priority::Prefetch => &mut self.prefetch,
            Priority::Get => &mut self.get,
            Priority::Put => &mut self.put,
        }
    }
}

impl fmt::Display for PriorityWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{peek: {}, prefetch: {}, get: {}, put: {}}}",
            self.peek, self.prefetch, self.get, self.put
        )
    }
}

/// When the virtual clock passes this, every pass is shifted down (see `pick`).
const CLOCK_REBASE: u64 = 1 << 62;

/// Chooses which class to serve next (see the module docs for the rule).
#[derive(Debug, Clone)]
pub(crate) struct Picker {
    stride: [u64; 4],
    pass: [u64; 4],
    /// Virtual time: the pass at which the last served class was picked.
    clock: u64,
    /// The last pick, to undo it: (class index, its pass before, clock before).
    last: Option<(usize, u64, u64)>,
}

impl Default for Picker {
    /// A picker with the default weights.
    fn default() -> Self {
        Picker::new(PriorityWeights::default())
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Picker {
    /// A picker sharing service by `weights`. Weights are clamped to
    /// 1..=[`MAX_PRIORITY_WEIGHT`] (configuration validation rejects others first).
    pub(crate) fn new(weights: PriorityWeights) -> Picker {
        let w = Priority::ALL.map(|c| u64::from(weights.of(c).clamp(1, MAX_PRIORITY_WEIGHT)));
        let lcm = w.iter().fold(1u64, |acc, &x| acc / gcd(acc, x) * x);
        Picker {
            stride: w.map(|x| lcm / x),
            pass: [0; 4],
            clock: 0,
            last: None,
        }
    }

    /// Given which classes have work, the class to serve now.
    pub(crate) fn pick(&mut self, nonempty: [bool; 4]) -> Option<Priority> {
        if self.clock >= CLOCK_REBASE {
            // Only differences matter; a pass left behind by an idle class is raised to
            // the clock when it returns anyway, so saturating at 0 loses nothing.
            let base = self.clock;
            for p in &mut self.pass {
                *p = p.saturating_sub(base);
            }
            self.clock = 0;
        }
        let mut best: Option<usize> = None;
        for (c, _) in nonempty
            .iter()
            .enumerate()
            .filter(|(_, &has_work)| has_work)
        {
            // Idle time earns no credit: a returning class starts at the clock.
            self.pass[c] = self.pass[c].max(self.clock);
            if best.is_none_or(|b| self.pass[c] < self.pass[b]) {
                best = Some(c);
            }
        }
        let c = best?;
        self.last = Some((c, self.pass[c], self.clock));
        self.clock = self.pass[c];
        self.pass[c] += self.stride[c];
        Some(Priority::ALL[c])
    }

    /// Takes back the last pick of `class` when the caller could not serve it after
    /// all (e.g. no connection had room), so a blocked class is not charged for a turn
    /// it did not get. Does nothing if the last pick was another class or was already
    /// taken back.
    pub(crate) fn unpick(&mut self, class: Priority) {
        if let Some((c, pass, clock)) = self.last {
            if c == class.index() {
                self.pass[c] = pass;
                self.clock = clock;
                self.last = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [bool; 4] = [true; 4];

    fn weights(w: [u32; 4]) -> PriorityWeights {
        PriorityWeights {
            peek: w[0],
            prefetch: w[1],
            get: w[2],
            put: w[3],
        }
    }

    /// Picks `n` times with `nonempty` fixed; counts per class.
    fn run(p: &mut Picker, nonempty: [bool; 4], n: usize) -> [usize; 4] {
        let mut counts = [0; 4];
        for _ in 0..n {
            let c = p.pick(nonempty).expect("some class has work");
            assert!(nonempty[c.index()], "picked {c}, which has no work");
            counts[c.index()] += 1;
        }
        counts
    }

    #[test]
    fn default_weights_favour_urgent_classes() {
        let w = PriorityWeights::default();
        let seq: Vec<u32> = Priority::ALL.iter().map(|&c| w.of(c)).collect();
        assert_eq!(seq, [8, 4, 2, 1]);
        assert_eq!(w.to_string(), "{peek: 8, prefetch: 4, get: 2, put: 1}");
    }

    #[test]
    fn all_backlogged_exact_proportions() {
        for w in [
            [8, 4, 2, 1],
            [1, 1, 1, 1],
            [1, 2, 4, 8],
            [5, 3, 2, 7],
            [1000, 999, 1, 3],
        ] {
            let mut p = Picker::new(weights(w));
            let cycle: usize = w.iter().map(|&x| x as usize).sum();
            for round in 1..=4 {
                let counts = run(&mut p, ALL, cycle);
                assert_eq!(
                    counts,
                    w.map(|x| x as usize),
                    "weights {w:?}, cycle {round}"
                );
            }
        }
    }

    #[test]
    fn every_class_early_in_a_cycle() {
        // Fresh and all backlogged: each class is served within the first four picks,
        // so no class waits a whole cycle of the others.
        let mut p = Picker::default();
        let first: Vec<Priority> = (0..4).map(|_| p.pick(ALL).unwrap()).collect();
        assert_eq!(first, Priority::ALL);
    }

    #[test]
    fn a_class_alone_is_served_every_time() {
        for c in Priority::ALL {
            let mut p = Picker::default();
            // Some history first, so the alone-class may be in debt.
            run(&mut p, ALL, 37);
            let mut only = [false; 4];
            only[c.index()] = true;
            for _ in 0..100 {
                assert_eq!(p.pick(only), Some(c));
            }
        }
        assert_eq!(Picker::default().pick([false; 4]), None);
    }

    #[test]
    fn no_class_starves_in_any_subset() {
        let w = [8u32, 4, 2, 1];
        // A deterministic mix of histories before each subset.
        let mut p = Picker::new(weights(w));
        for mask in 1u32..16 {
            let subset: [bool; 4] = std::array::from_fn(|i| mask & (1 << i) != 0);
            let cycle: usize = (0..4).filter(|&i| subset[i]).map(|i| w[i] as usize).sum();
            let counts = run(&mut p, subset, 2 * cycle);
            for i in 0..4 {
                let want = if subset[i] { 2 * w[i] as usize } else { 0 };
                assert!(
                    counts[i].abs_diff(want) <= 1,
                    "subset {subset:?}: class {} got {} picks, want {want}±1",
                    Priority::ALL[i],
                    counts[i]
                );
                if subset[i] {
                    assert!(counts[i] >= 1, "class {} starved", Priority::ALL[i]);
                }
            }
            // Change the history between subsets.
            run(
                &mut p,
                [mask % 2 == 0, true, mask % 3 == 0, mask % 5 == 0],
                mask as usize,
            );
        }
    }

    #[test]
    fn idle_classes_gain_no_credit() {
        let mut p = Picker::default();
        // PEEK idle while PUT runs alone for a long time.
        run(&mut p, [false, false, false, true], 1000);
        // Both backlogged now: PEEK gets its 8 in 9, not a burst of the 1000 turns it
        // "missed".
        let counts = run(&mut p, [true, false, false, true], 90);
        assert!(counts[3].abs_diff(10) <= 1, "put got {} of 90", counts[3]);
        // And a returning class is served at once (no waiting behind the others).
        let mut p = Picker::default();
        run(&mut p, [false, true, true, true], 500);
        assert_eq!(p.pick(ALL), Some(Priority::Peek));
    }

    #[test]
    fn flickering_class_gets_no_more_than_its_share() {
        // A class whose lane empties after every pick (one caller submitting one request
        // at a time) must not win by coming back "fresh" each time.
        let mut p = Picker::default();
        let mut puts = 0usize;
        let mut put_waiting = true;
        for _ in 0..1500 {
            let c = p.pick([true, true, true, put_waiting]).unwrap();
            if c == Priority::Put {
                puts += 1;
                put_waiting = false;
            } else {
                put_waiting = true;
            }
        }
        assert!(puts.abs_diff(100) <= 2, "put got {puts} of 1500");
    }

    #[test]
    fn unpick_returns_the_turn() {
        let mut p = Picker::default();
        let before = p.clone();
        assert_eq!(p.pick(ALL), Some(Priority::Peek));
        p.unpick(Priority::Put); // not the last pick: ignored
        assert_ne!(p.pass, before.pass);
        p.unpick(Priority::Peek);
        assert_eq!((p.pass, p.clock), (before.pass, before.clock));
        // Blocked PEEK (excluded after the take-back) does not slow the others down.
        let counts = run(&mut p, [false, true, true, true], 7);
        assert_eq!(counts, [0, 4, 2, 1]);
    }

    #[test]
    fn clock_rebase_keeps_shares() {
        let mut p = Picker {
            clock: CLOCK_REBASE - 3,
            pass: [CLOCK_REBASE - 3, CLOCK_REBASE - 1, CLOCK_REBASE + 2, 7],
            ..Picker::default()
        };
        for _ in 0..10 {
            run(&mut p, ALL, 15);
        }
        assert!(p.clock < CLOCK_REBASE);
        assert_eq!(run(&mut p, ALL, 150), [80, 40, 20, 10]);
    }

    #[test]
    fn out_of_range_weights_are_clamped() {
        let mut p = Picker::new(weights([0, 1, 1, u32::MAX]));
        let counts = run(&mut p, ALL, 1003 * 3);
        assert_eq!(counts, [3, 3, 3, 3000]);
    }
}
