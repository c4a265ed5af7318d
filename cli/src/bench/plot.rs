//! Plots of bench records (SVG, plotters' SVG backend only: no font or system
//! libraries, text is left to the viewer): `throughput.svg`, GB/s against value size
//! for every row, and `latency.svg`, the latency percentiles of every row.

use plotters::prelude::*;

use super::*;

/// One line of a plot: a row label and its points.
struct Series {
    label: String,
    /// (value size, median record of that size).
    points: Vec<(usize, Sample)>,
}

/// Rows: records grouped by peer, phase and key pattern (and topology, layout,
/// concurrency and commit when those differ between records), one point per value
/// size: the median of the median records there, or of the run records if a file
/// holds only runs.
fn series(records: &[Record]) -> Vec<Series> {
    let differ = |f: fn(&Record) -> String| {
        let mut v: Vec<String> = records.iter().map(f).collect();
        v.sort();
        v.dedup();
        v.len() > 1
    };
    let masters = differ(|r| format!("{:?}", r.masters));
    let (modes, layouts, conc, commits) = (
        differ(|r| r.mode.clone()),
        differ(|r| r.layout.clone()),
        differ(|r| r.concurrency.to_string()),
        differ(|r| r.commit.clone()),
    );
    let label = |r: &Record| {
        let mut l = format!("{} {}", r.peer, r.phase);
        if let Some(k) = &r.keys {
            let _ = write!(l, "[{k}]");
        }
        if modes {
            let _ = write!(l, " {}", r.mode);
        }
        if let Some(m) = r.masters.filter(|_| masters) {
            let _ = write!(l, " {m}m");
        }
        if layouts {
            let _ = write!(l, " {}", r.layout);
        }
        if conc {
            let _ = write!(l, " x{}", r.concurrency);
        }
        if commits {
            let _ = write!(l, " @{}", r.commit);
        }
        l
    };
    let mut groups: BTreeMap<(String, usize), (Vec<Sample>, Vec<Sample>)> = BTreeMap::new();
    for r in records {
        let g = groups.entry((label(r), r.value_size)).or_default();
        match r.run {
            None => g.0.push(r.s),
            Some(_) => g.1.push(r.s),
        }
    }
    let mut out: Vec<Series> = Vec::new();
    for ((label, size), (medians, runs)) in groups {
        let s = Sample::median_of(if medians.is_empty() { &runs } else { &medians });
        match out.iter_mut().find(|x| x.label == label) {
            Some(x) => x.points.push((size, s)),
            None => out.push(Series {
                label,
                points: vec![(size, s)],
            }),
        }
    }
    out
}

/// Strong, distinguishable line colors (matplotlib's tab10 and two more), cycled.
const COLORS: [(u8, u8, u8); 12] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 0),
    (0, 90, 50),
];

fn color(i: usize) -> RGBAColor {
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b).to_rgba()
}

fn plot_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::failed(format!("plot: {e}"))
}

/// Writes `throughput.svg` and `latency.svg` for `records` into `dir` (created if
/// missing). Returns the files written.
pub fn write_plots(records: &[Record], dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    if records.is_empty() {
        return Err(BenchError::failed("plot: no bench records to plot"));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::failed(format!("creating {}: {e}", dir.display())))?;
    let rows = series(records);
    let commits: Vec<&str> = {
        let mut c: Vec<&str> = records.iter().map(|r| r.commit.as_str()).collect();
        c.sort();
        c.dedup();
        c
    };
    let mut subtitle = format!("commit {}", commits.join(", "));
    let first = &records[0];
    if records
        .iter()
        .all(|r| r.mode == first.mode && r.layout == first.layout)
    {
        let _ = write!(subtitle, "; {}, layout {}", first.mode, first.layout);
    }
    let t = dir.join("throughput.svg");
    throughput(&rows, &t, &subtitle).map_err(plot_err)?;
    let l = dir.join("latency.svg");
    latency(&rows, &l, &subtitle).map_err(plot_err)?;
    Ok(vec![t, l])
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn throughput(rows: &[Series], path: &Path, subtitle: &str) -> PlotResult {
    // x is log2 of the size, so that ticks fall on powers of two (1m, 2m, 4m, ...).
    let x_of = |size: usize| (size.max(1) as f64).log2();
    let xs = rows.iter().flat_map(|r| r.points.iter().map(|p| x_of(p.0)));
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, last) = (lo.floor() - 0.5, hi.ceil());
    // Room on the right for the legend, clear of the lines.
    let hi = last + 0.5 + (last - lo).max(2.0) * 0.6;
    let gbs = |s: &Sample| s.mb_per_s / 1e3;
    let top = rows
        .iter()
        .flat_map(|r| r.points.iter().map(|p| gbs(&p.1)))
        .filter(|x| x.is_finite())
        .fold(0f64, f64::max);
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("slotline bench: GB/s by value size ({subtitle})"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0f64..(top * 1.1).max(0.001))?;
    chart
        .configure_mesh()
        .x_labels((hi - lo) as usize + 1)
        .x_max_light_lines(1)
        .x_desc("value size (log scale)")
        .y_desc("GB/s (10^9 payload bytes)")
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 && (0.0..=last).contains(x) {
                fmt_size(1usize << x.round() as u32)
            } else {
                String::new()
            }
        })
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let color = color(i);
        let pts: Vec<(f64, f64)> = r
            .points
            .iter()
            .map(|(size, s)| (x_of(*size), gbs(s)))
            .filter(|p| p.1.is_finite())
            .collect();
        line(&mut chart, pts, color, 4, r.label.clone())?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// One row's line, with its entry in the legend.
fn line<X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    pts: Vec<(f64, f64)>,
    color: RGBAColor,
    point_size: u32,
    label: String,
) -> PlotResult {
    chart
        .draw_series(LineSeries::new(pts, color.stroke_width(2)).point_size(point_size))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    Ok(())
}

/// The legend, top right (the x ranges leave room for it there).
fn legend<'a, X: Ranged<ValueType = f64>, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> PlotResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The percentiles on the latency plot's x axis.
const PERCENTILES: [&str; 4] = ["p50", "p95", "p99", "max"];

fn latency(rows: &[Series], path: &Path, subtitle: &str) -> PlotResult {
    let pick = |s: &Sample| [s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms];
    let all = rows
        .iter()
        .flat_map(|r| r.points.iter().flat_map(|p| pick(&p.1)))
        .filter(|x| x.is_finite() && *x > 0.0);
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if hi > 0.0 { (lo, hi) } else { (0.001, 1.0) };
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("slotline bench: batch latency percentiles per row ({subtitle})"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        // x: the percentiles at 0..=3, then room on the right for the legend.
        .build_cartesian_2d(-0.3f64..5.2f64, ((lo / 1.5)..(hi * 1.5)).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_max_light_lines(1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && (0.0..=3.0).contains(&i) {
                PERCENTILES[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .x_desc("percentile of the batches of a phase")
        .y_desc("ms per batch (log scale)")
        .draw()?;
    let mut i = 0;
    for r in rows {
        for (size, s) in &r.points {
            let color = color(i);
            i += 1;
            let pts: Vec<(f64, f64)> = pick(s)
                .into_iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .map(|(k, v)| (k as f64, v))
                .collect();
            line(
                &mut chart,
                pts,
                color,
                3,
                format!("{} {}", fmt_size(*size), r.label),
            )?;
        }
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// `slotline plot FILE... --out DIR`.
pub fn plot_files(files: &[PathBuf], out: &Path) -> Result<(), BenchError> {
    let mut records = Vec::new();
    for f in files {
        let r = read_records(f)?;
        if r.is_empty() {
            eprintln!("warning: {}: no bench records", f.display());
        }
        records.extend(r);
    }
    for p in write_plots(&records, out)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_both_svgs_from_records() {
        let mut plan = Plan::example();
        let mut records = Vec::new();
        for size in [1usize << 20, 4 << 20] {
            plan.value_size = size;
            for (peer, gb) in [("slotline[epoll]", 3.0), ("parallel", 2.5)] {
                let s = Sample {
                    mb_per_s: gb * 1e3,
                    p50_ms: 5.0,
                    p95_ms: 7.0,
                    p99_ms: 9.0,
                    max_ms: 12.0,
                    ..Sample::default()
                };
                records.push(Record::new(&plan, peer, "get", Phase::Get, None, None, &s));
            }
        }
        let dir = std::env::temp_dir().join(format!("slotline-plot-test-{}", std::process::id()));
        let files = write_plots(&records, &dir).unwrap();
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg"), "{}", f.display());
            assert!(svg.contains("slotline[epoll] get"), "{}", f.display());
        }
        assert!(std::fs::read_to_string(&files[0]).unwrap().contains("4m"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(write_plots(&[], &dir).is_err());
    }
}
