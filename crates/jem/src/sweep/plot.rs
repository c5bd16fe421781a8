//! Heat maps of a sweep: one metric over two axes of its grid, as SVG (rendered to PNG by
//! the CLI) and an HTML page with one map per metric. Each square is the mean over the
//! seeds and the grid's other axes of the finished cells at that pair of values; a square
//! with a cell that gave up or failed is crossed and says how many.

use std::fmt::Write;

use super::Sweep;
use super::cell::{CellResult, CellStatus};
use crate::Result;
use crate::error::Error;
use crate::report::svg::escape;

/// One heat map.
#[derive(Clone, Debug)]
pub struct Heatmap {
    /// The picture.
    pub svg: String,
    /// What it shows, in words (for the terminal and the page).
    pub note: String,
}

/// The value of `metric` in a cell's outcome: `accuracy`, `ece`, `recoveries`,
/// `ms_per_step` or `auroc:SCORE/SET`.
fn metric_of(r: &CellResult, metric: &str) -> Option<f64> {
    match metric {
        "accuracy" => r.accuracy,
        "ece" => r.ece,
        "recoveries" => Some(r.recoveries as f64),
        "ms_per_step" => r.ms_per_step,
        m => {
            let key = m.strip_prefix("auroc:")?;
            r.auroc.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
        }
    }
}

/// Mean of the finished cells' metric and the count of the others, per square.
struct Square {
    mean: Option<f64>,
    gave_up: usize,
    failed: usize,
    cells: usize,
}

/// A direction of the map: an axis of the grid, or the seeds (`seed`).
struct Dim {
    key: String,
    labels: Vec<String>,
    /// The axis, or `None` for the seeds.
    axis: Option<usize>,
}

impl Dim {
    fn of(sweep: &Sweep, key: &str) -> Result<Dim> {
        if key == "seed" {
            return Ok(Dim {
                key: key.into(),
                labels: sweep.spec.seeds.iter().map(u64::to_string).collect(),
                axis: None,
            });
        }
        let axes = &sweep.spec.axes;
        let i = axes.iter().position(|a| a.key == key).ok_or_else(|| {
            let names: Vec<&str> = axes.iter().map(|a| a.key.as_str()).collect();
            Error::Sweep {
                dir: sweep.dir.clone(),
                reason: format!(
                    "`{key}` is no axis of the grid (its axes: {}; or `seed`)",
                    names.join(", ")
                ),
            }
        })?;
        Ok(Dim {
            key: key.into(),
            labels: axes[i].labels.clone(),
            axis: Some(i),
        })
    }

    /// The position of `cell` along this direction.
    fn pos(&self, sweep: &Sweep, cell: &super::Cell) -> usize {
        match self.axis {
            Some(i) => cell.at[i],
            None => sweep
                .spec
                .seeds
                .iter()
                .position(|&s| s == cell.seed)
                .unwrap_or(0),
        }
    }
}

/// The heat map of `metric` over the axes `x` and `y` of `sweep` (either may be `seed`).
pub fn heatmap(sweep: &Sweep, x: &str, y: &str, metric: &str) -> Result<Heatmap> {
    let outcomes = sweep
        .cells()
        .iter()
        .map(|c| sweep.result(c))
        .collect::<Result<Vec<_>>>()?;
    heatmap_of(sweep, &outcomes, x, y, metric)
}

/// [`heatmap`] from the cells' outcomes, read once (in the order of `sweep.cells()`).
fn heatmap_of(
    sweep: &Sweep,
    outcomes: &[Option<CellResult>],
    x: &str,
    y: &str,
    metric: &str,
) -> Result<Heatmap> {
    let (dx, dy) = (Dim::of(sweep, x)?, Dim::of(sweep, y)?);
    if dx.key == dy.key {
        return Err(Error::Sweep {
            dir: sweep.dir.clone(),
            reason: "--x and --y must be two different axes".into(),
        });
    }
    let known = ["accuracy", "ece", "recoveries", "ms_per_step"];
    if !known.contains(&metric) && !metric.starts_with("auroc:") {
        return Err(Error::Sweep {
            dir: sweep.dir.clone(),
            reason: format!(
                "no metric `{metric}`: use accuracy, ece, recoveries, ms_per_step or auroc:SCORE/SET"
            ),
        });
    }
    let (nx, ny) = (dx.labels.len(), dy.labels.len());
    // (sum, finished with the metric, gave up, failed, cells)
    let mut sums = vec![(0.0f64, 0usize, 0usize, 0usize, 0usize); nx * ny];
    for (cell, outcome) in sweep.cells().iter().zip(outcomes) {
        let s = &mut sums[dy.pos(sweep, cell) * nx + dx.pos(sweep, cell)];
        s.4 += 1;
        match outcome {
            Some(r) if r.status == CellStatus::Finished => {
                if let Some(v) = metric_of(r, metric) {
                    s.0 += v;
                    s.1 += 1;
                }
            }
            Some(r) if r.status == CellStatus::GaveUp => s.2 += 1,
            Some(r) if r.status == CellStatus::Failed => s.3 += 1,
            _ => {}
        }
    }
    let squares: Vec<Square> = sums
        .iter()
        .map(|&(sum, n, gave_up, failed, cells)| Square {
            mean: (n > 0).then(|| sum / n as f64),
            gave_up,
            failed,
            cells,
        })
        .collect();
    let svg = draw(&dx, &dy, metric, &squares);
    let done = squares.iter().filter(|s| s.mean.is_some()).count();
    let note = format!(
        "{metric} over {x} (x) and {y} (y): each square the mean over seeds and other axes of its finished cells ({done} of {} squares have one); crossed squares hold cells that gave up or failed",
        squares.len()
    );
    Ok(Heatmap { svg, note })
}

/// A colour from dark blue (0) through teal to yellow (1).
fn colour(t: f64) -> String {
    let stops = [
        (68.0, 1.0, 84.0),
        (33.0, 145.0, 140.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * 2.0;
    let (i, f) = ((t.floor() as usize).min(1), t - t.floor().min(1.0));
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |u: f64, v: f64| (u + (v - u) * f).round() as u8;
    format!("rgb({},{},{})", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn format_value(metric: &str, v: f64) -> String {
    match metric {
        "accuracy" | "ece" => format!("{:.1}%", 100.0 * v),
        "recoveries" => format!("{v:.1}"),
        "ms_per_step" => format!("{v:.0}"),
        _ => format!("{v:.3}"),
    }
}

/// A square's size and the colour scale's ends.
struct Geometry {
    cw: f64,
    ch: f64,
    lo: f64,
    hi: f64,
}

/// One square at `(x0, y0)`: its colour, its value, and a red cross when cells failed.
fn square(s: &mut String, x0: f64, y0: f64, g: &Geometry, metric: &str, sq: &Square) {
    let Geometry { cw, ch, lo, hi } = *g;
    let t = sq
        .mean
        .map(|v| if hi > lo { (v - lo) / (hi - lo) } else { 1.0 });
    let (fill, text) = match (t, sq.mean) {
        (Some(t), Some(v)) => (colour(t), format_value(metric, v)),
        _ => ("rgb(225,225,225)".into(), "-".into()),
    };
    let ink = match t {
        Some(t) if t <= 0.6 => "white",
        _ => "black",
    };
    let _ = write!(
        s,
        r#"<rect x="{x0}" y="{y0}" width="{cw}" height="{ch}" fill="{fill}" stroke="white"/><text x="{}" y="{}" text-anchor="middle" fill="{ink}">{text}</text>"#,
        x0 + cw / 2.0,
        y0 + ch / 2.0 + 4.0
    );
    let bad = sq.gave_up + sq.failed;
    if bad > 0 {
        let what = match (sq.gave_up, sq.failed) {
            (_, 0) => "gave up",
            (0, _) => "failed",
            _ => "stopped",
        };
        let (x1, y1) = (x0 + cw, y0 + ch);
        let _ = write!(
            s,
            r#"<path d="M{x0} {y0} L{x1} {y1} M{x1} {y0} L{x0} {y1}" stroke="red" stroke-width="2"/><text x="{}" y="{}" text-anchor="middle" fill="red" font-size="10">{bad}/{} {what}</text>"#,
            x0 + cw / 2.0,
            y1 - 6.0,
            sq.cells
        );
    }
}

fn draw(ax: &Dim, ay: &Dim, metric: &str, squares: &[Square]) -> String {
    let (nx, ny) = (ax.labels.len(), ay.labels.len());
    let (cw, ch, left, top) = (90.0, 56.0, 130.0, 50.0);
    let (w, h) = (
        (left + cw * nx as f64 + 20.0).max(460.0),
        top + ch * ny as f64 + 60.0,
    );
    let vals: Vec<f64> = squares.iter().filter_map(|s| s.mean).collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="DejaVu Sans" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="14">{}</text><text x="{}" y="34" text-anchor="middle" font-size="11">brighter = higher; from {} to {}</text>"#,
        w / 2.0,
        escape(metric),
        w / 2.0,
        if vals.is_empty() {
            "-".into()
        } else {
            format_value(metric, lo)
        },
        if vals.is_empty() {
            "-".into()
        } else {
            format_value(metric, hi)
        },
    );
    let geo = Geometry { cw, ch, lo, hi };
    for (k, sq) in squares.iter().enumerate() {
        let (i, j) = (k % nx, k / nx);
        // The first y value at the bottom, as on a plot's axis.
        let (x0, y0) = (left + cw * i as f64, top + ch * (ny - 1 - j) as f64);
        square(&mut s, x0, y0, &geo, metric, sq);
    }
    for (i, l) in ax.labels.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + cw * (i as f64 + 0.5),
            top + ch * ny as f64 + 18.0,
            escape(l)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        left + cw * nx as f64 / 2.0,
        top + ch * ny as f64 + 42.0,
        escape(&ax.key)
    );
    for (j, l) in ay.labels.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            top + ch * (ny - 1 - j) as f64 + ch / 2.0 + 4.0,
            escape(l)
        );
    }
    let _ = write!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" font-size="13" transform="rotate(-90 16 {})">{}</text></svg>"#,
        top + ch * ny as f64 / 2.0,
        top + ch * ny as f64 / 2.0,
        escape(&ay.key)
    );
    s
}

/// An HTML page with the heat map of every metric over `x` and `y`, and the summary.
pub fn page(sweep: &Sweep, x: &str, y: &str) -> Result<String> {
    let rows = sweep.rows()?;
    let outcomes: Vec<Option<CellResult>> = rows.iter().map(|r| r.result.clone()).collect();
    let results: Vec<CellResult> = outcomes.iter().flatten().cloned().collect();
    let summary = super::summarise(&results, sweep.len());
    let mut metrics: Vec<String> = ["accuracy", "ece", "recoveries", "ms_per_step"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for r in &results {
        for (k, _) in &r.auroc {
            let m = format!("auroc:{k}");
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
    }
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sweep {}</title><style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:1em}}</style></head><body><h1>Sweep {}</h1><p>{}</p>",
        escape(&sweep.dir.display().to_string()),
        escape(&sweep.dir.display().to_string()),
        escape(&summary.line())
    );
    for m in &metrics {
        let map = heatmap_of(sweep, &outcomes, x, y, m)?;
        let _ = write!(
            html,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            map.svg,
            escape(&map.note)
        );
    }
    html.push_str("</body></html>\n");
    Ok(html)
}
