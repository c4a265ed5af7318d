//! Value sizes on the command line: parsing, printing, and the batch each size gets.

use super::{BenchArgs, BenchError};

/// Batches per phase unless `--batches` says otherwise: enough for a p99 that is not
/// the slowest batch.
const DEFAULT_BATCHES: usize = 200;

/// Parses a byte size: digits with an optional suffix b, k/kb/kib, m/mb/mib, g/gb/gib
/// (all powers of 1024, case-insensitive).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "size {s:?}: unknown unit; use e.g. 2048, 2k, 4m, 1g"
            ))
        }
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a number; use e.g. 2048, 2k, 4m"))?;
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `2048`, `4k`, `1m`, `32m`: the shortest exact form in powers of 1024.
pub fn fmt_size(n: usize) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// The batch (chunks) for `size` without --batch: LMCache-like batches of large
/// chunks (16 x 1 MiB, 8 x 4 MiB, 4 x 32 MiB), 128 small ones.
pub fn default_batch(size: usize) -> usize {
    match size {
        s if s >= 32 << 20 => 4,
        s if s >= 4 << 20 => 8,
        s if s >= 1 << 20 => 16,
        _ => 128,
    }
}

/// What one size of an invocation runs.
pub(super) struct SizeJob {
    pub value_size: usize,
    pub batch: usize,
    pub batches: usize,
    /// Why `batches` is below the default, if it is.
    pub note: Option<String>,
}

/// Checks one size against the limits and picks its batch and batch count.
pub(super) fn size_job(a: &BenchArgs, value_size: usize) -> Result<SizeJob, BenchError> {
    if value_size == 0 {
        return Err(BenchError::usage("--value-size must be at least 1 byte"));
    }
    let max_value = slotline::Config::default()
        .max_value_size
        .min(i32::MAX as usize);
    if value_size > max_value {
        return Err(BenchError::usage(format!(
            "--value-size {value_size} exceeds slotline's max_value_size ({max_value} bytes)"
        )));
    }
    let batch = a.batch.map_or(default_batch(value_size), |b| b as usize);
    let mut note = None;
    let batches = match a.batches {
        Some(n) => n as usize,
        None => {
            let fit = (a.max_data / (batch * value_size).max(1)).max(1);
            if fit < DEFAULT_BATCHES {
                note = Some(format!(
                    "note: {} x {batch}: {fit} batches per phase instead of {DEFAULT_BATCHES}, so \
                     that one run stores at most --max-data ({:.2} GiB)",
                    fmt_size(value_size),
                    a.max_data as f64 / (1u64 << 30) as f64
                ));
            }
            fit.min(DEFAULT_BATCHES)
        }
    };
    let total = (batch * batches) as u128 * value_size as u128;
    if total > a.max_data as u128 {
        return Err(BenchError::usage(format!(
            "one run would store {:.2} GiB in Redis ({batches} batches x {batch} chunks x \
             {value_size} bytes), more than --max-data {:.2} GiB; lower --batches or --batch, \
             or raise --max-data",
            total as f64 / (1u64 << 30) as f64,
            a.max_data as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(SizeJob {
        value_size,
        batch,
        batches,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("32mib"), Ok(32 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("k").is_err());
        assert!(parse_size("2x").is_err());
        assert!(parse_size("-1").is_err());
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn jobs(args: &[&str]) -> Result<Vec<(usize, usize, usize, bool)>, BenchError> {
        let a = Cmd::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| BenchError::usage(e.to_string()))?
            .a;
        let sizes = a.sizes.clone().unwrap_or(vec![a.value_size]);
        sizes
            .iter()
            .map(|&s| size_job(&a, s).map(|j| (j.value_size, j.batch, j.batches, j.note.is_some())))
            .collect()
    }

    #[test]
    fn sizes_pick_their_batch_and_fit_max_data() {
        assert_eq!(jobs(&[]).unwrap(), vec![(2048, 128, 200, false)]);
        assert_eq!(
            jobs(&["--sizes", "1m,4m,32m"]).unwrap(),
            vec![
                (1 << 20, 16, 200, false),
                (4 << 20, 8, 128, true),
                (32 << 20, 4, 32, true),
            ]
        );
        assert_eq!(
            jobs(&["--sizes", "32m", "--batch", "2", "--max-data", "64m"]).unwrap(),
            vec![(32 << 20, 2, 1, true)]
        );
        // An explicit --batches over --max-data is refused, not lowered.
        let e = jobs(&["--value-size", "32m", "--batches", "200"]).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("--max-data"), "{}", e.msg);
        assert!(jobs(&["--sizes", "1m", "--value-size", "2k"]).is_err());
        assert!(jobs(&["--format", "csv", "--json"]).is_err());
    }
}
