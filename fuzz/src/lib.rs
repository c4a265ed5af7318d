//! A small mutational fuzzer for slotline's decoders that runs on the stable
//! toolchain without extra tooling (cargo-fuzz needs nightly, cargo-afl its own
//! toolchain). It has no coverage feedback: it mutates a seed corpus of valid frames
//! (bit and byte flips, protocol bytes, inserts, deletes, duplications, splices, length
//! fields rewritten to edge values, truncation), keeps a bounded pool of mutants, and
//! runs each input through a `slotline::fuzz` entry point, which checks the invariants.
//! Deterministic for a given seed. A panic, or an allocation larger than the input
//! justifies, is a crash: the input is kept (and written to a file when asked).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;
use std::time::Instant;

use slotline::RemoteMetadata;

/// One decoder entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The complete-frame RESP parser.
    Resp,
    /// The resumable MGET array reader.
    Mget,
    /// The RemoteMetadata decoder.
    Metadata,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::Resp, Target::Mget, Target::Metadata];

    /// `resp`, `mget` or `metadata`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Resp => "resp",
            Target::Mget => "mget",
            Target::Metadata => "metadata",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    fn call(self, data: &[u8]) {
        match self {
            Target::Resp => slotline::fuzz::resp(data),
            Target::Mget => slotline::fuzz::mget(data),
            Target::Metadata => slotline::fuzz::metadata(data),
        }
    }

    fn seeds(self) -> Vec<Vec<u8>> {
        let text = |s: &[&str]| s.iter().map(|f| f.as_bytes().to_vec()).collect::<Vec<_>>();
        match self {
            Target::Resp => text(&[
                "+OK\r\n",
                "-ERR unknown command\r\n",
                "-MOVED 3999 127.0.0.1:7001\r\n",
                ":0\r\n",
                ":-9223372036854775808\r\n",
                "$5\r\nhello\r\n",
                "$0\r\n\r\n",
                "$-1\r\n",
                "*-1\r\n",
                "*0\r\n",
                "*2\r\n$3\r\nfoo\r\n:42\r\n",
                "*3\r\n*2\r\n:0\r\n:5460\r\n$9\r\n127.0.0.1\r\n*1\r\n+x\r\n",
                "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
                "*2\r\n$4\r\na\r\nb\r\n$-1\r\n",
            ]),
            Target::Mget => {
                let mut seeds = text(&[
                    "*3\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n",
                    "*1\r\n$4\r\n\r\n\r\n\r\n",
                    "*2\r\n$1\r\nx\r\n$1\r\ny\r\n*1\r\n$-1\r\n",
                    "-MOVED 12182 127.0.0.1:7002\r\n*1\r\n$1\r\nz\r\n",
                    "-ASK 1 h:1\r\n",
                    "*-1\r\n",
                    "*0\r\n",
                ]);
                let mut long = b"*2\r\n$300\r\n".to_vec();
                long.extend((0..300).map(|i| (i % 251) as u8));
                long.extend_from_slice(b"\r\n$28\r\n");
                let meta = RemoteMetadata::new(300, 1, 3, &[2, 32, 256, 1024]).map(|m| m.encode());
                long.extend(meta.unwrap_or_default());
                long.extend_from_slice(b"\r\n");
                seeds.push(long);
                seeds
            }
            Target::Metadata => {
                let mut seeds = Vec::new();
                for (len, shape) in [(0, &[][..]), (33_554_432, &[2, 32, 256, 1024][..])] {
                    if let Ok(m) = RemoteMetadata::new(len, 1, 3, shape) {
                        seeds.push(m.encode());
                        let mut two = m.clone();
                        two.groups.push(m.groups[0]);
                        seeds.push(two.encode());
                    }
                }
                seeds.push(vec![0; 27]);
                seeds.push(vec![0xff; 48]);
                seeds
            }
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Which target.
    pub target: Target,
    /// Inputs run.
    pub inputs: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Each crash: its message and input.
    pub crashes: Vec<(String, Vec<u8>)>,
    /// Largest single allocation made while running one input, in bytes.
    pub largest_alloc: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} inputs in {:.1} s ({:.0} inputs/s), {} crashes, largest allocation {} bytes",
            self.target.name(),
            self.inputs,
            self.seconds,
            self.inputs as f64 / self.seconds.max(1e-9),
            self.crashes.len(),
            self.largest_alloc
        )?;
        for (msg, input) in self.crashes.iter().take(5) {
            write!(
                f,
                "\n  crash: {msg}\n  input: {:?}",
                input.escape_ascii().to_string()
            )?;
        }
        Ok(())
    }
}

/// Most crashes a run collects before it stops.
const MAX_CRASHES: usize = 20;
/// Mutants kept for further mutation.
const POOL_MAX: usize = 4096;
/// Largest input generated.
const MAX_INPUT: usize = 4096;
/// Allocation allowed for one input: this much plus `ALLOC_PER_BYTE` per input byte.
const ALLOC_BASE: usize = 1 << 20;
const ALLOC_PER_BYTE: usize = 64;

/// Runs `iters` inputs through `target` from `seed`; crash inputs are also written to
/// `out` (as `<target>-<n>.bin`) when given.
pub fn run(target: Target, iters: u64, seed: u64, out: Option<&Path>) -> Report {
    let mut rng = Rng::new(seed ^ target as u64);
    let seeds = target.seeds();
    let mut pool = seeds.clone();
    let mut crashes = Vec::new();
    let mut largest = 0;
    let started = Instant::now();
    quiet_panics();
    let mut done = 0;
    for n in 0..iters {
        let input = if n < seeds.len() as u64 {
            seeds[n as usize].clone()
        } else {
            let base = &pool[rng.below(pool.len())];
            mutate(base, &pool, &mut rng)
        };
        let _ = LARGEST.try_with(|l| l.set(0));
        let _ = TRACK.try_with(|t| t.set(true));
        let r = panic::catch_unwind(AssertUnwindSafe(|| target.call(&input)));
        let _ = TRACK.try_with(|t| t.set(false));
        done += 1;
        let alloc = LARGEST.try_with(Cell::get).unwrap_or(0);
        largest = largest.max(alloc);
        let failure = match r {
            Err(p) => Some(panic_message(&p)),
            Ok(()) if alloc > ALLOC_BASE + ALLOC_PER_BYTE * input.len() => Some(format!(
                "allocated {alloc} bytes at once for a {}-byte input",
                input.len()
            )),
            Ok(()) => None,
        };
        if let Some(msg) = failure {
            if let Some(dir) = out {
                let _ = std::fs::create_dir_all(dir);
                let path = dir.join(format!("{}-{}.bin", target.name(), crashes.len()));
                let _ = std::fs::write(path, &input);
            }
            crashes.push((msg, input));
            if crashes.len() >= MAX_CRASHES {
                break;
            }
            continue;
        }
        if rng.below(16) == 0 {
            if pool.len() < POOL_MAX {
                pool.push(input);
            } else {
                let i = seeds.len() + rng.below(POOL_MAX - seeds.len());
                pool[i] = input;
            }
        }
    }
    Report {
        target,
        inputs: done,
        seconds: started.elapsed().as_secs_f64(),
        crashes,
        largest_alloc: largest,
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_string())
}

/// Silences the panic hook for panics caught inside a fuzz input (one line per crash
/// would flood the output); other panics are reported as before.
fn quiet_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !TRACK.try_with(Cell::get).unwrap_or(false) {
                previous(info);
            }
        }));
    });
}

/// Numbers a length field is rewritten to.
const EDGE_LENGTHS: [&[u8]; 14] = [
    b"-1",
    b"0",
    b"1",
    b"2",
    b"3",
    b"-2",
    b"65536",
    b"16777216",
    b"16777217",
    b"536870912",
    b"536870913",
    b"2147483648",
    b"9223372036854775807",
    b"99999999999999999999",
];
/// Bytes with a meaning in RESP.
const PROTOCOL_BYTES: &[u8] = b"\r\n$*-+:0123456789";

fn mutate(base: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.below(256) as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                v[i] = PROTOCOL_BYTES[rng.below(PROTOCOL_BYTES.len())];
            }
            3 => {
                let i = rng.below(len + 1);
                v.insert(i, PROTOCOL_BYTES[rng.below(PROTOCOL_BYTES.len())]);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(8)).min(len);
                v.drain(a..b);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let piece = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, piece);
            }
            6 => {
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            7 => rewrite_length(&mut v, rng),
            8 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                // Whole frames from the pool appended: pipelined replies.
                v.extend_from_slice(&pool[rng.below(pool.len())]);
            }
        }
    }
    v.truncate(MAX_INPUT);
    v
}

/// Replaces the number after a `$` or `*` (or anywhere, for binary metadata: four
/// bytes) with an edge value.
fn rewrite_length(v: &mut Vec<u8>, rng: &mut Rng) {
    let marks: Vec<usize> = v
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'$' || b == b'*' || b == b':')
        .map(|(i, _)| i + 1)
        .collect();
    if marks.is_empty() {
        if v.len() >= 4 {
            let i = rng.below(v.len() - 3) & !3;
            let x = [0i32, -1, 1, i32::MAX, i32::MIN, 28, 48][rng.below(7)];
            v[i..i + 4].copy_from_slice(&x.to_le_bytes());
        }
        return;
    }
    let start = marks[rng.below(marks.len())];
    let end = v[start..]
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .map_or(v.len(), |p| start + p);
    let edge = EDGE_LENGTHS[rng.below(EDGE_LENGTHS.len())];
    v.splice(start..end, edge.iter().copied());
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

thread_local! {
    /// Whether this thread is running a fuzz input.
    static TRACK: Cell<bool> = const { Cell::new(false) };
    /// The largest single allocation of this thread's current input.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording the largest single allocation while a fuzz input
/// runs. Install it as the `#[global_allocator]` of the binary that calls [`run`];
/// without it the allocation bound is not checked.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping touches only const-initialised thread-locals
// (which never allocate).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout (see the impl comment).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (all allocations do).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    if TRACK.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}
