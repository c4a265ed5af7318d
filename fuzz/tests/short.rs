//! The short fuzz run CI does on every `cargo test --release`: 200,000 inputs per
//! target from a fixed seed. (Debug builds run 20,000: the decoders are checked at
//! every split point, which is slow unoptimised.)

use slotline_fuzz::{run, CountingAlloc, Target};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const ITERS: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    200_000
};

fn short(t: Target) {
    let r = run(t, ITERS, 0x0510_711E, None);
    println!("{r}");
    assert!(r.crashes.is_empty(), "{r}");
    assert_eq!(r.inputs, ITERS);
}

#[test]
fn resp_short() {
    short(Target::Resp);
}

#[test]
fn mget_short() {
    short(Target::Mget);
}

#[test]
fn metadata_short() {
    short(Target::Metadata);
}
