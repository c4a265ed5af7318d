//! Reporting: the median tables and the ratio rows.

use super::*;

/// `812.4k`, `1.23M`, `950`.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Three significant digits and an `x`.
pub fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        return "-".into();
    }
    let a = r.abs();
    if a >= 100.0 {
        format!("{r:.0}x")
    } else if a >= 10.0 {
        format!("{r:.1}x")
    } else if a >= 1.0 {
        format!("{r:.2}x")
    } else if a >= 0.01 {
        format!("{r:.3}x")
    } else {
        format!("{r:.4}x")
    }
}

/// Escapes `s` for a JSON string literal (without the quotes).
pub(crate) fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

fn opt_cell(x: Option<f64>) -> String {
    x.map_or("-".into(), |f| format!("{f:.1}"))
}

fn header(t: &mut String, width: usize, phase: Phase) {
    let _ = writeln!(
        t,
        "{:<width$} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>11} {:>9} {:>9} {:>9}",
        phase.name().to_uppercase(),
        "keys",
        "keys/s",
        "MB/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "CPU us/key",
        "cmds/b",
        "frames/b",
        "sys/b"
    );
}

/// A median row; p99 is marked `*` when it equals the slowest batch.
fn row(t: &mut String, width: usize, name: &str, keys: Option<KeyPattern>, s: &Sample) {
    let p99 = format!("{:.3}{}", s.p99_ms, if s.p99_is_max() { "*" } else { " " });
    let _ = writeln!(
        t,
        "{:<width$} {:>9} {:>10} {:>10.1} {:>9.3} {:>9.3} {:>10} {:>11.2} {:>9} {:>9} {:>9}",
        name,
        keys.map_or("-", |k| k.name()),
        fmt_rate(s.keys_per_s),
        s.mb_per_s,
        s.p50_ms,
        s.p95_ms,
        p99,
        s.cpu_us_per_key,
        opt_cell(s.commands_per_batch),
        opt_cell(s.frames_per_batch),
        opt_cell(s.syscalls_per_batch),
    );
}

/// A ratio row from [`Sample::ratios_within_runs`].
fn ratio_row(t: &mut String, width: usize, label: &str, keys: Option<KeyPattern>, r: &Sample) {
    let o = |a: Option<f64>| a.map_or("-".into(), fmt_ratio);
    let _ = writeln!(
        t,
        "{:<width$} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>11} {:>9} {:>9} {:>9}",
        format!("  {label}"),
        keys.map_or("-", |k| k.name()),
        fmt_ratio(r.keys_per_s),
        fmt_ratio(r.mb_per_s),
        fmt_ratio(r.p50_ms),
        fmt_ratio(r.p95_ms),
        fmt_ratio(r.p99_ms),
        fmt_ratio(r.cpu_us_per_key),
        o(r.commands_per_batch),
        o(r.frames_per_batch),
        o(r.syscalls_per_batch),
    );
}

/// Prints the median tables: PUT one row per client and key pattern, GET one row per
/// client; `ratios` lists (numerator, denominator) result indices to print as ratio
/// rows below each phase (per key pattern for PUT), each the median of the ratios
/// taken within each run. The median records go to `out` too.
pub fn print_report(
    plan: &Plan,
    results: &[PeerResult],
    ratios: &[(usize, usize)],
    out: &mut Output,
) {
    let ratio_label = |a: usize, b: usize| format!("{} / {}", results[a].name, results[b].name);
    let width = results
        .iter()
        .map(|r| r.name.len())
        .chain(ratios.iter().map(|&(a, b)| ratio_label(a, b).len() + 2))
        .max()
        .unwrap_or(8)
        .max(8);
    let patterns = plan.keys.patterns();
    let mut t = String::new();
    let mut few = false;
    // PUT
    t.push('\n');
    header(&mut t, width, Phase::Put);
    let put_med = |r: &PeerResult, p: KeyPattern| Sample::median_of(r.put(p));
    for r in results {
        for &p in &patterns {
            let m = put_med(r, p);
            few |= m.p99_is_max();
            row(&mut t, width, &r.name, Some(p), &m);
            out.push(Record::new(
                plan,
                &r.name,
                r.read,
                Phase::Put,
                Some(p),
                None,
                &m,
            ));
        }
    }
    for &(a, b) in ratios {
        for &p in &patterns {
            let q = Sample::ratios_within_runs(results[a].put(p), results[b].put(p));
            ratio_row(&mut t, width, &ratio_label(a, b), Some(p), &q);
        }
    }
    // GET
    t.push('\n');
    header(&mut t, width, Phase::Get);
    for r in results {
        let m = Sample::median_of(&r.get);
        few |= m.p99_is_max();
        row(&mut t, width, &r.name, None, &m);
        out.push(Record::new(
            plan,
            &r.name,
            r.read,
            Phase::Get,
            None,
            None,
            &m,
        ));
    }
    for &(a, b) in ratios {
        let q = Sample::ratios_within_runs(&results[a].get, &results[b].get);
        ratio_row(&mut t, width, &ratio_label(a, b), None, &q);
    }
    t.push('\n');
    if few {
        let _ = writeln!(
            t,
            "* p99 equals the slowest batch: {} batches are too few for a p99 (raise --batches).",
            plan.batches
        );
    }
    let _ = write!(
        t,
        "Medians over {} runs; ratio rows are computed within each run (peers of one run \
         side by side), then the median over runs. keys = LMCache chunks; MB = 10^6 payload \
         bytes; latency per batch of {}; CPU = this process (callers + slotline shard \
         threads), server excluded. PUT keys: fresh = keys never written before in the run \
         (the server pays first-touch page faults), overwrite = keys that exist. GET reads \
         what the PUTs wrote. cmds/b = Redis commands per batch, frames/b = writes of one \
         or more pipelined commands per batch (one per command for naive and parallel), \
         sys/b = slotline's syscalls per batch. Build: {GIT_COMMIT} ({BUILD_PROFILE}).",
        plan.runs, plan.batch
    );
    out.say(&t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_json() {
        assert_eq!(fmt_ratio(134.2), "134x");
        assert_eq!(fmt_ratio(0.5), "0.500x");
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
