//! Plots of bench records (SVG, plotters' SVG backend only: no font or system
//! libraries, text is left to the viewer). Per topology (`mode`; one figure when the
//! records have one): `throughput.svg`, GB/s against value size with one panel per
//! phase (PUT fresh, PUT overwrite, GET, ...), at most [`MAX_SERIES`] rows with
//! distinct colours and markers, slotline's best row ÷ the best other row written at
//! each size, axes bounded by the data; and `latency.svg`, the batch latency
//! percentiles of the same rows. Several topologies: `throughput-MODE.svg` and
//! `latency-MODE.svg` each.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::*;

/// Most rows (peers) one figure draws; the rest are named on stderr and in the figure.
pub const MAX_SERIES: usize = 5;

/// One line of a panel: a row label and its points.
struct Series {
    label: String,
    /// (value size, median record of that size).
    points: Vec<(usize, Sample)>,
}

/// One panel: a phase (`PUT fresh`, `GET`, ...) and its rows.
struct Panel {
    title: String,
    rows: Vec<Series>,
}

/// Whether a row is slotline's own (`slotline[epoll]`, `slotline[native]`, ...): the
/// ratio written at each size is its best row ÷ the best of the others.
fn is_slotline(label: &str) -> bool {
    label.starts_with("slotline")
}

/// A record's panel: `PUT fresh`, `PUT overwrite`, `GET`, ...
fn phase_title(r: &Record) -> String {
    let p = r.phase.to_uppercase();
    match &r.keys {
        Some(k) => format!("{p} {k}"),
        None => p,
    }
}

/// Panels in the order a workload runs them.
fn phase_rank(title: &str) -> (usize, String) {
    let rank = match title {
        "PUT fresh" => 0,
        "PUT overwrite" => 1,
        "PUT" => 2,
        "GET" => 3,
        _ => 4,
    };
    (rank, title.to_string())
}

/// Row labels: the peer, and the fields that differ between `records` (layout,
/// masters, concurrency, commit).
fn labeller(records: &[Record]) -> impl Fn(&Record) -> String {
    let differ = |f: fn(&Record) -> String| {
        let mut v: Vec<String> = records.iter().map(f).collect();
        v.sort();
        v.dedup();
        v.len() > 1
    };
    let masters = differ(|r| format!("{:?}", r.masters));
    let (layouts, conc, commits) = (
        differ(|r| r.layout.clone()),
        differ(|r| r.concurrency.to_string()),
        differ(|r| r.commit.clone()),
    );
    move |r: &Record| {
        let mut l = r.peer.clone();
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
    }
}

/// The panels of one figure, one point per row and value size: the median of the
/// median records there, or of the run records if a file holds only runs.
fn panels(records: &[Record]) -> Vec<Panel> {
    let label = labeller(records);
    type Key = ((usize, String), String, usize);
    let mut groups: BTreeMap<Key, (Vec<Sample>, Vec<Sample>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in records {
        let l = label(r);
        if !order.contains(&l) {
            order.push(l.clone());
        }
        let g = groups
            .entry((phase_rank(&phase_title(r)), l, r.value_size))
            .or_default();
        match r.run {
            None => g.0.push(r.s),
            Some(_) => g.1.push(r.s),
        }
    }
    let mut out: Vec<Panel> = Vec::new();
    for (((_, title), label, size), (medians, runs)) in groups {
        let s = Sample::median_of(if medians.is_empty() { &runs } else { &medians });
        if out.last().map(|p| &p.title) != Some(&title) {
            out.push(Panel {
                title: title.clone(),
                rows: Vec::new(),
            });
        }
        let panel = out.last_mut().expect("pushed above");
        match panel.rows.iter_mut().find(|x| x.label == label) {
            Some(x) => x.points.push((size, s)),
            None => panel.rows.push(Series {
                label,
                points: vec![(size, s)],
            }),
        }
    }
    // Rows in the order the records first name them (the bench's peer order).
    for p in &mut out {
        p.rows
            .sort_by_key(|s| order.iter().position(|l| *l == s.label));
    }
    out
}

fn gbs(s: &Sample) -> f64 {
    s.mb_per_s / 1e3
}

/// The rows a figure draws (at most [`MAX_SERIES`]: slotline's first, then the others
/// by their best GB/s) and the ones it leaves out.
fn choose_rows(panels: &[Panel]) -> (Vec<String>, Vec<String>) {
    let mut best: Vec<(String, f64)> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.rows) {
        let top = s.points.iter().map(|p| gbs(&p.1)).filter(|x| x.is_finite());
        let top = top.fold(f64::NEG_INFINITY, f64::max);
        match best.iter_mut().find(|b| b.0 == s.label) {
            Some(b) => b.1 = b.1.max(top),
            None => best.push((s.label.clone(), top)),
        }
    }
    let (ours, mut others): (Vec<_>, Vec<_>) = best.into_iter().partition(|b| is_slotline(&b.0));
    others.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Room for the two best other rows at least, so the ratios have something to
    // compare with.
    let keep_ours = ours.len().min(MAX_SERIES - others.len().min(2));
    let mut ranked: Vec<(String, f64)> = Vec::new();
    let mut dropped: Vec<(String, f64)> = Vec::new();
    for (i, b) in ours.into_iter().enumerate() {
        if i < keep_ours {
            ranked.push(b);
        } else {
            dropped.push(b);
        }
    }
    for b in others {
        if ranked.len() < MAX_SERIES {
            ranked.push(b);
        } else {
            dropped.push(b);
        }
    }
    let drawn: Vec<String> = ranked.into_iter().map(|b| b.0).collect();
    (drawn, dropped.into_iter().map(|b| b.0).collect())
}

/// Distinct colours (matplotlib's tab10, first five), one per drawn row.
const COLORS: [(u8, u8, u8); MAX_SERIES] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
];

fn color(i: usize) -> RGBAColor {
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b).to_rgba()
}

fn plot_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::failed(format!("plot: {e}"))
}

/// Writes the throughput and latency figures for `records` into `dir` (created if
/// missing), one pair per topology. Returns the files written.
pub fn write_plots(records: &[Record], dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    if records.is_empty() {
        return Err(BenchError::failed("plot: no bench records to plot"));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::failed(format!("creating {}: {e}", dir.display())))?;
    let mut modes: Vec<&str> = records.iter().map(|r| r.mode.as_str()).collect();
    modes.dedup();
    modes.sort();
    modes.dedup();
    let mut files = Vec::new();
    for mode in &modes {
        let recs: Vec<Record> = records
            .iter()
            .filter(|r| r.mode == *mode)
            .cloned()
            .collect();
        let suffix = if modes.len() > 1 {
            format!("-{mode}")
        } else {
            String::new()
        };
        let mut commits: Vec<&str> = recs.iter().map(|r| r.commit.as_str()).collect();
        commits.sort();
        commits.dedup();
        let mut subtitle = format!("commit {}", commits.join(", "));
        if !mode.is_empty() {
            let _ = write!(subtitle, "; {mode}");
        }
        if recs.iter().all(|r| r.layout == recs[0].layout) && !recs[0].layout.is_empty() {
            let _ = write!(subtitle, ", layout {}", recs[0].layout);
        }
        let panels = panels(&recs);
        let (drawn, dropped) = choose_rows(&panels);
        if !dropped.is_empty() {
            eprintln!(
                "warning: plot{suffix}: {} rows, at most {MAX_SERIES} drawn; not drawn: {}",
                drawn.len() + dropped.len(),
                dropped.join(", ")
            );
        }
        let fig = Figure {
            panels,
            drawn,
            dropped,
            subtitle,
        };
        let t = dir.join(format!("throughput{suffix}.svg"));
        throughput(&fig, &t).map_err(plot_err)?;
        files.push(t);
        let l = dir.join(format!("latency{suffix}.svg"));
        if latency(&fig, &l).map_err(plot_err)? {
            files.push(l);
        }
    }
    Ok(files)
}

/// What one figure draws.
struct Figure {
    panels: Vec<Panel>,
    /// Row labels drawn, in style order (colour and marker `i`).
    drawn: Vec<String>,
    dropped: Vec<String>,
    subtitle: String,
}

impl Figure {
    fn style(&self, label: &str) -> Option<usize> {
        self.drawn.iter().position(|l| l == label)
    }

    /// Drawn rows of a panel, with their style index.
    fn rows<'a>(&'a self, p: &'a Panel) -> impl Iterator<Item = (usize, &'a Series)> + 'a {
        p.rows
            .iter()
            .filter_map(move |s| self.style(&s.label).map(|i| (i, s)))
    }
}

type PlotResult<T = ()> = Result<T, Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws marker `kind` at `c` (its shape in pixels around the point): filled circle,
/// triangle, square, diamond, cross.
fn marker<CT: CoordTranslate>(
    area: &DrawingArea<SVGBackend<'_>, CT>,
    kind: usize,
    c: CT::From,
    color: RGBAColor,
) -> PlotResult {
    let e = EmptyElement::at(c);
    match kind % MAX_SERIES {
        0 => area.draw(&(e + Circle::new((0, 0), 4, color.filled())))?,
        1 => area.draw(&(e + TriangleMarker::new((0, 0), 6, color.filled())))?,
        2 => area.draw(&(e + Rectangle::new([(-4, -4), (4, 4)], color.filled())))?,
        3 => {
            area.draw(&(e + Polygon::new(vec![(0, -6), (5, 0), (0, 6), (-5, 0)], color.filled())))?
        }
        _ => area.draw(&(e + Cross::new((0, 0), 5, color.stroke_width(2))))?,
    }
    Ok(())
}

/// The shared legend on the right: each drawn row's colour, marker and label, then
/// the rows left out and what the numbers over the points mean.
fn legend(area: &Area<'_>, fig: &Figure, ratio_note: bool) -> PlotResult {
    let font = ("sans-serif", 14).into_font();
    let mut y = 40;
    for (i, label) in fig.drawn.iter().enumerate() {
        let c = color(i);
        area.draw(&PathElement::new(vec![(8, y), (40, y)], c.stroke_width(2)))?;
        marker(area, i, (24, y), c)?;
        area.draw(&Text::new(label.clone(), (48, y - 7), font.clone()))?;
        y += 26;
    }
    let small = ("sans-serif", 12).into_font();
    if !fig.dropped.is_empty() {
        y += 8;
        area.draw(&Text::new(
            format!("not drawn (max {MAX_SERIES}):"),
            (8, y),
            small.clone(),
        ))?;
        for d in &fig.dropped {
            y += 16;
            area.draw(&Text::new(d.clone(), (16, y), small.clone()))?;
        }
        y += 10;
    }
    if ratio_note {
        y += 16;
        for line in [
            "×N over a size: slotline's",
            "best row ÷ the best other",
            "row at that size",
        ] {
            area.draw(&Text::new(line, (8, y), small.clone()))?;
            y += 15;
        }
    }
    Ok(())
}

/// The x range of a figure's rows: log2 of the smallest to the largest value size,
/// with room for the markers but less than a power of two on either side (so no tick
/// falls outside the data).
fn x_range(fig: &Figure) -> (f64, f64) {
    let xs = fig.panels.iter().flat_map(|p| {
        fig.rows(p)
            .flat_map(|(_, s)| s.points.iter().map(|p| x_of(p.0)))
    });
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
    let pad = (0.08 * (hi - lo)).clamp(0.1, 0.4);
    (lo - pad, hi + pad)
}

/// x is log2 of the size, so that ticks fall on powers of two (1m, 2m, 4m, ...).
fn x_of(size: usize) -> f64 {
    (size.max(1) as f64).log2()
}

fn throughput(fig: &Figure, path: &Path) -> PlotResult {
    let shown: Vec<&Panel> = fig
        .panels
        .iter()
        .filter(|p| {
            fig.rows(p)
                .any(|(_, s)| s.points.iter().any(|q| gbs(&q.1).is_finite()))
        })
        .collect();
    let n = shown.len().max(1);
    let root = SVGBackend::new(path, (1060, 60 + 280 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("slotline bench: GB/s by value size ({})", fig.subtitle),
        ("sans-serif", 18),
    )?;
    let (left, right) = root.split_horizontally(800);
    let (lo, hi) = x_range(fig);
    let mut any_ratio = false;
    for (panel, area) in shown.iter().zip(left.split_evenly((n, 1))) {
        let top = fig
            .rows(panel)
            .flat_map(|(_, s)| s.points.iter().map(|p| gbs(&p.1)))
            .filter(|x| x.is_finite())
            .fold(0f64, f64::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(panel.title.clone(), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0f64..(top * 1.1).max(1e-6))?;
        chart
            .configure_mesh()
            .x_labels(((hi - lo).ceil() as usize + 1).max(2))
            .x_max_light_lines(1)
            .x_desc("value size (log scale)")
            .y_desc("GB/s")
            .x_label_formatter(&|x| {
                let r = x.round();
                if (x - r).abs() < 1e-6 && r >= 0.0 {
                    fmt_size(1usize << r as u32)
                } else {
                    String::new()
                }
            })
            .draw()?;
        for (i, s) in fig.rows(panel) {
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|(size, q)| (x_of(*size), gbs(q)))
                .filter(|p| p.1.is_finite())
                .collect();
            let c = color(i);
            chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            for p in pts {
                marker(chart.plotting_area(), i, p, c)?;
            }
        }
        any_ratio |= ratios(&mut chart, fig, panel)?;
    }
    legend(&right, fig, any_ratio)?;
    root.present()?;
    Ok(())
}

/// Writes, over each size where both exist, slotline's best row ÷ the best other row
/// (`×2.41`). Returns whether it wrote any.
fn ratios(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    fig: &Figure,
    panel: &Panel,
) -> PlotResult<bool> {
    let mut best: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for (_, s) in fig.rows(panel) {
        for (size, q) in &s.points {
            let v = gbs(q);
            if !v.is_finite() {
                continue;
            }
            let b = best.entry(*size).or_insert((f64::NAN, f64::NAN));
            let slot = if is_slotline(&s.label) {
                &mut b.0
            } else {
                &mut b.1
            };
            *slot = if slot.is_nan() { v } else { slot.max(v) };
        }
    }
    let mut any = false;
    let font = ("sans-serif", 13).into_font().color(&BLACK);
    for (size, (ours, theirs)) in best {
        if ours.is_finite() && theirs.is_finite() && theirs > 0.0 {
            let at = EmptyElement::at((x_of(size), ours.max(theirs)));
            let text = Text::new(format!("×{:.2}", ours / theirs), (-14, -20), font.clone());
            chart.plotting_area().draw(&(at + text))?;
            any = true;
        }
    }
    Ok(any)
}

/// The percentiles on the latency plot's x axis.
const PERCENTILES: [&str; 4] = ["p50", "p95", "p99", "max"];

/// One panel per phase, a line per drawn row and value size over p50..max. Returns
/// false (nothing written) when the records have no latencies (the Python bench's).
fn latency(fig: &Figure, path: &Path) -> PlotResult<bool> {
    let pick = |s: &Sample| [s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms];
    let ok = |x: &f64| x.is_finite() && *x > 0.0;
    let has = |p: &Panel| {
        fig.rows(p)
            .any(|(_, s)| s.points.iter().any(|q| pick(&q.1).iter().any(ok)))
    };
    let shown: Vec<&Panel> = fig.panels.iter().filter(|p| has(p)).collect();
    if shown.is_empty() {
        return Ok(false);
    }
    let n = shown.len();
    let root = SVGBackend::new(path, (1060, 60 + 280 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "slotline bench: batch latency percentiles ({})",
            fig.subtitle
        ),
        ("sans-serif", 18),
    )?;
    let (left, right) = root.split_horizontally(800);
    for (panel, area) in shown.iter().zip(left.split_evenly((n, 1))) {
        let all = fig
            .rows(panel)
            .flat_map(|(_, s)| s.points.iter().flat_map(|p| pick(&p.1)))
            .filter(ok);
        let (lo, hi) = all.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{} (one line per row and value size)", panel.title),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.2f64..3.6f64, ((lo / 1.2)..(hi * 1.2)).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_max_light_lines(1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && (0.0..=3.0).contains(&i) {
                    PERCENTILES[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("ms per batch (log)")
            .draw()?;
        let font = ("sans-serif", 11).into_font();
        for (i, s) in fig.rows(panel) {
            let c = color(i);
            for (size, q) in &s.points {
                let pts: Vec<(f64, f64)> = pick(q)
                    .into_iter()
                    .enumerate()
                    .filter(|(_, v)| ok(v))
                    .map(|(k, v)| (k as f64, v))
                    .collect();
                if let Some(&end) = pts.last() {
                    chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
                    for p in pts {
                        marker(chart.plotting_area(), i, p, c)?;
                    }
                    let tag = Text::new(fmt_size(*size), (8, -6), font.clone());
                    chart.plotting_area().draw(&(EmptyElement::at(end) + tag))?;
                }
            }
        }
    }
    legend(&right, fig, false)?;
    root.present()?;
    Ok(true)
}

/// `slotline plot FILE... --out DIR`.
pub fn plot_files(files: &[PathBuf], out: &Path) -> Result<(), BenchError> {
    let mut records = Vec::new();
    for f in files {
        let r = read_records(f)?;
        if r.is_empty() {
            eprintln!(
                "warning: {}: no bench records (a `python -m slotline.bench --json` file? \
                 `python -m slotline.bench.records FILE` turns it into records)",
                f.display()
            );
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

    fn record(plan: &Plan, peer: &str, phase: Phase, keys: Option<KeyPattern>, gb: f64) -> Record {
        let s = Sample {
            mb_per_s: gb * 1e3,
            p50_ms: 5.0,
            p95_ms: 7.0,
            p99_ms: 9.0,
            max_ms: 12.0,
            ..Sample::default()
        };
        Record::new(plan, peer, "get", phase, keys, None, &s)
    }

    #[test]
    fn panels_per_phase_rows_capped_and_ratios() {
        let mut plan = Plan::example();
        let mut records = Vec::new();
        for size in [1usize << 20, 4 << 20] {
            plan.value_size = size;
            for (k, peer) in ["slotline[epoll]", "a", "b", "c", "d", "e", "f"]
                .iter()
                .enumerate()
            {
                let gb = 3.0 - k as f64 * 0.3;
                records.push(record(&plan, peer, Phase::Get, None, gb));
                records.push(record(&plan, peer, Phase::Put, Some(KeyPattern::Fresh), gb));
            }
        }
        let p = panels(&records);
        assert_eq!(
            p.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(),
            ["PUT fresh", "GET"]
        );
        let (drawn, dropped) = choose_rows(&p);
        assert_eq!(drawn, ["slotline[epoll]", "a", "b", "c", "d"]);
        assert_eq!(dropped, ["e", "f"]);
        let dir = std::env::temp_dir().join(format!("slotline-plot-test-{}", std::process::id()));
        let files = write_plots(&records, &dir).unwrap();
        assert_eq!(files.len(), 2);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.starts_with("<svg"));
        // 3.0 / 2.7 at both sizes, in both panels.
        assert_eq!(svg.matches("×1.11").count(), 4, "{svg}");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(write_plots(&[], &dir).is_err());
    }
}
