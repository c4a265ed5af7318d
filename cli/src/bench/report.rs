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

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".into()
    }
}

/// One result as a JSON object on one line (`run` None = median over runs; `keys` the
/// key pattern of a PUT, None for a GET).
pub fn json_line(
    plan: &Plan,
    peer: &str,
    phase: Phase,
    keys: Option<KeyPattern>,
    run: Option<usize>,
    s: &Sample,
) -> String {
    let opt = |x: Option<f64>| x.map_or("null".to_string(), json_num);
    format!(
        "{{\"bench\":\"slotline\",\"kind\":\"{}\",\"run\":{},\"peer\":\"{}\",\"phase\":\"{}\",\
\"keys\":{},\"value_size\":{},\"batch\":{},\"batches\":{},\"runs\":{},\"concurrency\":{},\
\"layout\":\"{}\",\"mode\":\"{}\",\"keys_per_s\":{},\"mb_per_s\":{},\"p50_ms\":{},\"p95_ms\":{},\
\"p99_ms\":{},\"cpu_us_per_key\":{},\"commands_per_batch\":{},\"frames_per_batch\":{},\
\"syscalls_per_batch\":{}}}",
        if run.is_some() { "run" } else { "median" },
        run.map_or("null".to_string(), |r| r.to_string()),
        json_escape(peer),
        phase.name(),
        keys.map_or("null".to_string(), |k| format!("\"{}\"", k.name())),
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
        opt(s.commands_per_batch),
        opt(s.frames_per_batch),
        opt(s.syscalls_per_batch),
    )
}

fn opt_cell(x: Option<f64>) -> String {
    x.map_or("-".into(), |f| format!("{f:.1}"))
}

fn print_header(width: usize, phase: Phase) {
    println!(
        "{:<width$} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
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

fn print_row(width: usize, name: &str, keys: Option<KeyPattern>, s: &Sample) {
    println!(
        "{:<width$} {:>9} {:>10} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>11.2} {:>9} {:>9} {:>9}",
        name,
        keys.map_or("-", |k| k.name()),
        fmt_rate(s.keys_per_s),
        s.mb_per_s,
        s.p50_ms,
        s.p95_ms,
        s.p99_ms,
        s.cpu_us_per_key,
        opt_cell(s.commands_per_batch),
        opt_cell(s.frames_per_batch),
        opt_cell(s.syscalls_per_batch),
    );
}

fn print_ratio(width: usize, label: &str, keys: Option<KeyPattern>, x: &Sample, y: &Sample) {
    let q = |p: f64, q: f64| fmt_ratio(p / q);
    let o = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(f), Some(g)) => q(f, g),
        _ => "-".into(),
    };
    println!(
        "{:<width$} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
        format!("  {label}"),
        keys.map_or("-", |k| k.name()),
        q(x.keys_per_s, y.keys_per_s),
        q(x.mb_per_s, y.mb_per_s),
        q(x.p50_ms, y.p50_ms),
        q(x.p95_ms, y.p95_ms),
        q(x.p99_ms, y.p99_ms),
        q(x.cpu_us_per_key, y.cpu_us_per_key),
        o(x.commands_per_batch, y.commands_per_batch),
        o(x.frames_per_batch, y.frames_per_batch),
        o(x.syscalls_per_batch, y.syscalls_per_batch),
    );
}

/// Prints the median tables: PUT one row per client and key pattern, GET one row per
/// client; `ratios` lists (numerator, denominator) result indices to print as ratio
/// rows below each phase (per key pattern for PUT).
pub fn print_report(plan: &Plan, results: &[PeerResult], ratios: &[(usize, usize)]) {
    let ratio_label = |a: usize, b: usize| format!("{} / {}", results[a].name, results[b].name);
    let width = results
        .iter()
        .map(|r| r.name.len())
        .chain(ratios.iter().map(|&(a, b)| ratio_label(a, b).len() + 2))
        .max()
        .unwrap_or(8)
        .max(8);
    let patterns = plan.keys.patterns();
    // PUT
    println!();
    print_header(width, Phase::Put);
    let put_med = |r: &PeerResult, p: KeyPattern| Sample::median_of(r.put(p));
    for r in results {
        for &p in &patterns {
            print_row(width, &r.name, Some(p), &put_med(r, p));
        }
    }
    for &(a, b) in ratios {
        for &p in &patterns {
            let (x, y) = (put_med(&results[a], p), put_med(&results[b], p));
            print_ratio(width, &ratio_label(a, b), Some(p), &x, &y);
        }
    }
    if plan.json {
        for r in results {
            for &p in &patterns {
                println!(
                    "{}",
                    json_line(plan, &r.name, Phase::Put, Some(p), None, &put_med(r, p))
                );
            }
        }
    }
    // GET
    println!();
    print_header(width, Phase::Get);
    let get_med: Vec<Sample> = results.iter().map(|r| Sample::median_of(&r.get)).collect();
    for (r, s) in results.iter().zip(&get_med) {
        print_row(width, &r.name, None, s);
    }
    for &(a, b) in ratios {
        print_ratio(width, &ratio_label(a, b), None, &get_med[a], &get_med[b]);
    }
    if plan.json {
        for (r, s) in results.iter().zip(&get_med) {
            println!("{}", json_line(plan, &r.name, Phase::Get, None, None, s));
        }
    }
    println!();
    println!(
        "Medians over {} runs. keys = LMCache chunks; MB = 10^6 payload bytes; latency per \
         batch of {}; CPU = this process (callers + slotline shard threads), server excluded. \
         PUT keys: fresh = keys never written before in the run (the server pays first-touch \
         page faults), overwrite = keys that exist. GET reads what the PUTs wrote. cmds/b = \
         Redis commands per batch, frames/b = writes of one or more pipelined commands per \
         batch (one per command for naive and parallel), sys/b = slotline's syscalls per batch.",
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
