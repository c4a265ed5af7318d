//! `slotline-fuzz [resp|mget|metadata|all] [--iters N] [--seed S] [--out DIR]`: runs the
//! mutational fuzzer on the decoder entry points and prints one line per target.
//! Crashing inputs are written to DIR (default `fuzz/crashes`); the exit status is 1
//! if there were any.

use slotline_fuzz::{run, CountingAlloc, Target};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    let mut targets = Vec::new();
    let mut iters: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut out = std::path::PathBuf::from("fuzz/crashes");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--iters" => iters = parse(&value("--iters")),
            "--seed" => seed = parse(&value("--seed")),
            "--out" => out = value("--out").into(),
            "all" => targets.extend(Target::ALL),
            name => targets.push(
                Target::from_name(name)
                    .unwrap_or_else(|| fail(&format!("unknown target {name:?}"))),
            ),
        }
    }
    if targets.is_empty() {
        targets.extend(Target::ALL);
    }
    let mut crashed = false;
    for t in targets {
        let r = run(t, iters, seed, Some(&out));
        println!("{r}");
        crashed |= !r.crashes.is_empty();
    }
    std::process::exit(i32::from(crashed));
}

fn parse(s: &str) -> u64 {
    s.replace('_', "")
        .parse()
        .unwrap_or_else(|_| fail(&format!("{s:?} is not a number")))
}

fn fail(msg: &str) -> ! {
    eprintln!("slotline-fuzz: {msg}");
    std::process::exit(2)
}
