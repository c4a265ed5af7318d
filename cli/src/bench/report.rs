//! Reporting: the table, ratios and JSON lines.

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

fn json_escape(s: &str) -> String {
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

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".into()
    }
}

/// One result as a JSON object on one line (`run` None = median over runs).
pub fn json_line(plan: &Plan, peer: &str, phase: Phase, run: Option<usize>, s: &Sample) -> String {
    format!(
        "{{\"bench\":\"slotline\",\"kind\":\"{}\",\"run\":{},\"peer\":\"{}\",\"phase\":\"{}\",\
\"value_size\":{},\"batch\":{},\"batches\":{},\"runs\":{},\"concurrency\":{},\"layout\":\"{}\",\
\"mode\":\"{}\",\"keys_per_s\":{},\"mb_per_s\":{},\"p50_ms\":{},\"p95_ms\":{},\"p99_ms\":{},\
\"cpu_us_per_key\":{},\"frames_per_batch\":{},\"syscalls_per_batch\":{}}}",
        if run.is_some() { "run" } else { "median" },
        run.map_or("null".to_string(), |r| r.to_string()),
        json_escape(peer),
        phase.name(),
        plan.value_size,
        plan.batch,
        plan.batches,
        plan.runs,
        plan.concurrency,
        plan.layout,
        plan.mode,
        json_num(s.keys_per_s),
        json_num(s.mb_per_s),
        json_num(s.p50_ms),
        json_num(s.p95_ms),
        json_num(s.p99_ms),
        json_num(s.cpu_us_per_key),
        s.frames_per_batch.map_or("null".to_string(), json_num),
        s.syscalls_per_batch.map_or("null".to_string(), json_num),
    )
}

/// Prints the median table of both phases; `ratios` lists (numerator, denominator) row
/// indices to print as ratio rows below each phase.
pub fn print_report(plan: &Plan, results: &[PeerResult], ratios: &[(usize, usize)]) {
    let ratio_label = |a: usize, b: usize| format!("{} / {}", results[a].name, results[b].name);
    let width = results
        .iter()
        .map(|r| r.name.len())
        .chain(ratios.iter().map(|&(a, b)| ratio_label(a, b).len() + 2))
        .max()
        .unwrap_or(8)
        .max(8);
    for phase in [Phase::Put, Phase::Get] {
        let med: Vec<Sample> = results
            .iter()
            .map(|r| {
                Sample::median_of(match phase {
                    Phase::Put => &r.put,
                    Phase::Get => &r.get,
                })
            })
            .collect();
        println!();
        println!(
            "{:<width$} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>14} {:>14}",
            phase.name().to_uppercase(),
            "keys/s",
            "MB/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "CPU us/key",
            "requests/batch",
            "syscalls/batch"
        );
        for (r, s) in results.iter().zip(&med) {
            println!(
                "{:<width$} {:>10} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>11.2} {:>14} {:>14}",
                r.name,
                fmt_rate(s.keys_per_s),
                s.mb_per_s,
                s.p50_ms,
                s.p95_ms,
                s.p99_ms,
                s.cpu_us_per_key,
                s.frames_per_batch.map_or("-".into(), |f| format!("{f:.1}")),
                s.syscalls_per_batch
                    .map_or("-".into(), |f| format!("{f:.1}"))
            );
        }
        for &(a, b) in ratios {
            let (x, y) = (&med[a], &med[b]);
            let q = |p: f64, q: f64| fmt_ratio(p / q);
            println!(
                "{:<width$} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>14} {:>14}",
                format!("  {}", ratio_label(a, b)),
                q(x.keys_per_s, y.keys_per_s),
                q(x.mb_per_s, y.mb_per_s),
                q(x.p50_ms, y.p50_ms),
                q(x.p95_ms, y.p95_ms),
                q(x.p99_ms, y.p99_ms),
                q(x.cpu_us_per_key, y.cpu_us_per_key),
                match (x.frames_per_batch, y.frames_per_batch) {
                    (Some(f), Some(g)) => q(f, g),
                    _ => "-".into(),
                },
                match (x.syscalls_per_batch, y.syscalls_per_batch) {
                    (Some(f), Some(g)) => q(f, g),
                    _ => "-".into(),
                }
            );
        }
        if plan.json {
            for (r, s) in results.iter().zip(&med) {
                println!("{}", json_line(plan, &r.name, phase, None, s));
            }
        }
    }
    println!();
    println!(
        "Medians over {} runs. keys = LMCache chunks; MB = 10^6 payload bytes; latency per \
         batch of {}; CPU = this process (callers + slotline shard threads), server excluded.",
        plan.runs, plan.batch
    );
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
