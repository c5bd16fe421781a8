//! The figures of the evaluations, drawn from their saved JSON: the same chart goes into the
//! run's `eval/*.png` (via [`super::raster`]) and into the HTML report (as SVG).

use serde_json::Value;

use super::svg::{Series, chart};

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Reliability diagram of a calibration result: accuracy per confidence bin against the
/// diagonal, with each bin's share of the images.
pub fn reliability(v: &Value) -> String {
    let bins = v
        .get("bins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mid = |b: &Value| Some((num(b, "lo")? + num(b, "hi")?) / 2.0);
    let width = bins
        .first()
        .and_then(|b| Some(num(b, "hi")? - num(b, "lo")?))
        .unwrap_or(0.05);
    let bars: Vec<(f64, f64)> = bins
        .iter()
        .filter(|b| num(b, "count").unwrap_or(0.0) > 0.0)
        .filter_map(|b| Some((mid(b)?, num(b, "accuracy")?)))
        .collect();
    let total: f64 = bins
        .iter()
        .filter_map(|b| num(b, "count"))
        .sum::<f64>()
        .max(1.0);
    let share: Vec<(f64, f64)> = bins
        .iter()
        .filter_map(|b| Some((mid(b)?, num(b, "count")? / total)))
        .collect();
    let title = format!(
        "Reliability diagram (ECE {:.4})",
        num(v, "ece").unwrap_or(f64::NAN)
    );
    chart(
        &title,
        "confidence",
        "accuracy",
        &[
            Series {
                label: "accuracy per bin".into(),
                color: "#1f77b4",
                points: bars,
                bar_width: Some(width * 0.9),
                dots: false,
            },
            Series {
                label: "share of images".into(),
                color: "#ff7f0e",
                points: share,
                bar_width: Some(width * 0.4),
                dots: false,
            },
            Series::line("perfect calibration", "#333", vec![(0.0, 0.0), (1.0, 1.0)]),
        ],
        Some((0.0, 1.0)),
    )
}

/// Robust accuracy against epsilon of an attack result.
pub fn attack_curve(v: &Value) -> String {
    let res = v
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut s = Series::line(
        "robust accuracy",
        "#d62728",
        res.iter()
            .filter_map(|e| Some((num(e, "eps")?, num(e, "robust_accuracy")?)))
            .collect(),
    );
    s.dots = true;
    chart(
        "Robust accuracy under PGD",
        "epsilon ([0, 1] pixel units)",
        "accuracy",
        &[s],
        Some((0.0, 1.0)),
    )
}

const COLORS: [&str; 10] = [
    "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#1f77b4",
];

/// Histograms of one score, in-distribution against each OOD set, from an OOD result's
/// `histograms` entry for that score.
pub fn ood_histogram(h: &Value) -> String {
    let edges: Vec<f64> = h
        .get("edges")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let centres: Vec<f64> = edges.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let to_points = |d: &Value| -> Vec<(f64, f64)> {
        d.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .zip(&centres)
                    .map(|(y, &x)| (x, y))
                    .collect()
            })
            .unwrap_or_default()
    };
    let width = edges.get(1).zip(edges.first()).map_or(1.0, |(b, a)| b - a);
    let mut series = vec![Series {
        label: "in-distribution".into(),
        color: "#1f77b4",
        points: to_points(h.get("inside").unwrap_or(&Value::Null)),
        bar_width: Some(width),
        dots: false,
    }];
    if let Some(sets) = h.get("sets").and_then(Value::as_array) {
        for (i, s) in sets.iter().enumerate() {
            let name = s.get("set").and_then(Value::as_str).unwrap_or("?");
            series.push(Series::line(
                name,
                COLORS[i % COLORS.len()],
                to_points(s.get("density").unwrap_or(&Value::Null)),
            ));
        }
    }
    let score = h.get("score").and_then(Value::as_str).unwrap_or("?");
    chart(
        &format!("Score {score}: in-distribution vs OOD"),
        score,
        "density",
        &series,
        None,
    )
}
