//! Value sizes on the command line: parsing, printing, and the batch each size gets.

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
