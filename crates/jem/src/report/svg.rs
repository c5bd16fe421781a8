//! Small self-contained SVG charts (lines, points and bars on linear axes) for the report.

use std::fmt::Write;

/// One series of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// CSS colour.
    pub color: &'static str,
    /// Points `(x, y)`; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Draw as bars of this width (in x units) instead of a line.
    pub bar_width: Option<f64>,
    /// Draw a dot at every point.
    pub dots: bool,
}

impl Series {
    /// A line series.
    pub fn line(label: &str, color: &'static str, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            color,
            points,
            bar_width: None,
            dots: false,
        }
    }
}

/// Escape text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 12 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The plot area of a chart and its data ranges.
struct Frame {
    w: f64,
    h: f64,
    ml: f64,
    mr: f64,
    mt: f64,
    mb: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn sx(&self, x: f64) -> f64 {
        self.ml + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.ml - self.mr)
    }

    fn sy(&self, y: f64) -> f64 {
        self.mt + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * (self.h - self.mt - self.mb)
    }
}

/// The data ranges `(x0, x1, y0, y1)` of `series` (bars widen x and include 0 in y);
/// `y_range` fixes the y axis.
fn bounds(series: &[Series], y_range: Option<(f64, f64)>) -> (f64, f64, f64, f64) {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for s in series {
        if let Some(bw) = s.bar_width {
            x0 -= bw / 2.0;
            x1 += bw / 2.0;
            y0 = y0.min(0.0);
        }
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some((a, b)) = y_range {
        (y0, y1) = (a, b);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1)
}

/// The SVG header, title, grid lines with tick labels, frame and axis labels.
fn axes(o: &mut String, f: &Frame, title: &str, x_label: &str, y_label: &str) {
    let Frame {
        w,
        h,
        ml,
        mr,
        mt,
        mb,
        ..
    } = *f;
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    for t in ticks(f.y0, f.y1) {
        let y = f.sy(t);
        let _ = write!(
            o,
            r##"<line x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - mr,
            ml - 4.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    for t in ticks(f.x0, f.x1) {
        let x = f.sx(t);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#ccc"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - mb,
            h - mb + 4.0,
            h - mb + 16.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        o,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    let _ = write!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (ml + w - mr) / 2.0,
        h - 8.0,
        escape(x_label)
    );
    let _ = write!(
        o,
        r#"<text transform="translate(14 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (mt + h - mb) / 2.0,
        escape(y_label)
    );
}

/// Series `i`: bars or a line (and dots), and its legend entry.
fn draw_series(o: &mut String, f: &Frame, i: usize, s: &Series) {
    let (y0, y1) = (f.y0, f.y1);
    let finite: Vec<(f64, f64)> = s
        .points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    if let Some(bw) = s.bar_width {
        for &(x, y) in &finite {
            let (xa, xb) = (f.sx(x - bw / 2.0), f.sx(x + bw / 2.0));
            let (ya, yb) = (f.sy(y.max(y0)), f.sy(0.0f64.max(y0)));
            if (yb - ya).abs() < 0.05 {
                continue; // an empty bar
            }
            let _ = write!(
                o,
                r#"<rect x="{xa:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.55"/>"#,
                ya.min(yb),
                (xb - xa).max(0.5),
                (yb - ya).abs(),
                s.color
            );
        }
    } else if finite.len() > 1 {
        let path: Vec<String> = finite
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", f.sx(x), f.sy(y.clamp(y0, y1))))
            .collect();
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            s.color,
            path.join(" ")
        );
    }
    if s.dots || finite.len() == 1 {
        for &(x, y) in &finite {
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                f.sx(x),
                f.sy(y.clamp(y0, y1)),
                s.color
            );
        }
    }
    let ly = f.mt + 12.0 + 14.0 * i as f64;
    let _ = write!(
        o,
        r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
        f.ml + 8.0,
        ly - 9.0,
        s.color,
        f.ml + 22.0,
        ly,
        escape(&s.label)
    );
}

/// A chart with a title and axis labels; `y_range` fixes the y axis (else it fits the data).
pub fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> String {
    let (x0, x1, y0, y1) = bounds(series, y_range);
    let frame = Frame {
        w: 460.0,
        h: 280.0,
        ml: 56.0,
        mr: 12.0,
        mt: 28.0,
        mb: 44.0,
        x0,
        x1,
        y0,
        y1,
    };
    let mut o = String::new();
    axes(&mut o, &frame, title, x_label, y_label);
    for (i, s) in series.iter().enumerate() {
        draw_series(&mut o, &frame, i, s);
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0);
        assert_eq!(t.len(), 6);
        assert!(
            t.iter()
                .zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
                .all(|(a, b)| (a - b).abs() < 1e-9)
        );
        let t = ticks(3.0, 1234.0);
        assert!(t.first().unwrap() >= &3.0 && t.last().unwrap() <= &1234.0 && t.len() >= 3);
    }

    #[test]
    fn a_chart_is_svg_with_escaped_labels() {
        let s = chart(
            "a < b",
            "x",
            "y",
            &[Series::line(
                "s&t",
                "red",
                vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN)],
            )],
            None,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("a &lt; b") && s.contains("s&amp;t") && s.contains("<polyline"));
    }
}
