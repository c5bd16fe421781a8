//! `jem report`: one self-contained HTML file per run (optionally beside a baseline run):
//! the config, training curves from `metrics.jsonl`, and every evaluation saved in
//! `RUN/eval/`, with figures embedded (SVG charts drawn here, PNG grids as data URIs).

pub mod compare;
pub mod figures;
pub mod raster;
pub mod seeds;
pub mod svg;

use std::fmt::Write;
use std::path::Path;

use base64::Engine;
use serde_json::Value;

use crate::checkpoint::{files, load_state};
use crate::config::TrainConfig;
use crate::eval::store::{eval_dir, load_results};
use crate::{Error, Result};
use svg::{Series, chart, escape};

/// One run's material.
struct RunData {
    name: String,
    step: u64,
    config_text: String,
    objective: String,
    metrics: Vec<Value>,
    results: Vec<(String, Value)>,
    pngs: Vec<(String, Vec<u8>)>,
}

fn read_run(dir: &Path) -> Result<RunData> {
    let cfg = TrainConfig::load_run(dir)?;
    let state = load_state(dir)?;
    let metrics_path = dir.join(files::METRICS);
    let metrics = std::fs::read_to_string(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut pngs = Vec::new();
    for folder in [dir.to_path_buf(), eval_dir(dir)] {
        if let Ok(entries) = std::fs::read_dir(&folder) {
            let mut found: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                // Sample grids only: the evaluations' own figures are drawn again as SVG.
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("samples"))
                })
                .collect();
            found.sort();
            for p in found {
                let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                pngs.push((
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string(),
                    bytes,
                ));
            }
        }
    }
    Ok(RunData {
        name: dir.display().to_string(),
        step: state.step,
        config_text: cfg.to_toml(),
        objective: format!("{:?}", cfg.loss.objective).to_lowercase(),
        metrics,
        results: load_results(dir)?,
        pngs,
    })
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// The string under `key` (empty when missing).
fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The array under `key` (empty when missing or not an array).
fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A number for a table: integers as integers, others with 4 decimals, missing as a dash.
fn f4(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e9 && x.abs() > 1.0 || x == 0.0 => {
            format!("{x:.0}")
        }
        Some(x) => format!("{x:.4}"),
    }
}

fn series_of(metrics: &[Value], key: &str, filter: impl Fn(&Value) -> bool) -> Vec<(f64, f64)> {
    metrics
        .iter()
        .filter(|m| filter(m))
        .filter_map(|m| Some((num(m, "step")?, num(m, key)?)))
        .collect()
}

fn curves(r: &RunData) -> String {
    let steps = |m: &Value| m.get("event").is_none();
    let valid = |m: &Value| m.get("event").and_then(Value::as_str) == Some("valid");
    let mut o = String::from(r#"<div class="figs">"#);
    o += &chart(
        "Losses",
        "step",
        "value",
        &[
            Series::line("loss", "#1f77b4", series_of(&r.metrics, "loss", steps)),
            Series::line(
                "cross-entropy",
                "#ff7f0e",
                series_of(&r.metrics, "ce", steps),
            ),
        ],
        None,
    );
    o += &chart(
        "lse of data and samples (minus energy)",
        "step",
        "mean logsumexp f(x)",
        &[
            Series::line("data", "#2ca02c", series_of(&r.metrics, "lse_data", steps)),
            Series::line(
                "samples",
                "#d62728",
                series_of(&r.metrics, "lse_sample", steps),
            ),
        ],
        None,
    );
    let mut v = Series::line(
        "validation",
        "#9467bd",
        series_of(&r.metrics, "valid_acc", valid),
    );
    v.dots = true;
    o += &chart(
        "Accuracy",
        "step",
        "accuracy",
        &[
            Series::line("batch", "#8c564b", series_of(&r.metrics, "acc", steps)),
            v,
        ],
        Some((0.0, 1.0)),
    );
    o += &chart(
        "Learning rate",
        "step",
        "lr",
        &[Series::line(
            "lr",
            "#7f7f7f",
            series_of(&r.metrics, "lr", steps),
        )],
        None,
    );
    o += "</div>";
    o
}

fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut o = format!(r#"<table id="{}"><tr>"#, escape(id));
    for h in head {
        let _ = write!(o, "<th>{}</th>", escape(h));
    }
    o += "</tr>";
    for r in rows {
        o += "<tr>";
        for c in r {
            let _ = write!(o, "<td>{}</td>", escape(c));
        }
        o += "</tr>";
    }
    o + "</table>"
}

/// The table of an accuracy evaluation.
fn eval_accuracy(o: &mut String, id: &str, v: &Value) {
    *o += &table(
        id,
        &["accuracy", "nll", "refinement steps"],
        &[vec![
            f4(num(v, "accuracy")),
            f4(num(v, "nll")),
            f4(num(v, "refine_steps")),
        ]],
    );
}

/// The table and reliability diagram of a calibration evaluation.
fn eval_calibration(o: &mut String, id: &str, v: &Value) {
    *o += &table(
        id,
        &["ECE", "MCE", "NLL", "Brier", "accuracy"],
        &[["ece", "mce", "nll", "brier", "accuracy"]
            .iter()
            .map(|k| f4(num(v, k)))
            .collect()],
    );
    *o += &figures::reliability(v);
}

/// The AUROC table and score histograms of an OOD evaluation.
fn eval_ood(o: &mut String, id: &str, v: &Value) {
    let rows: Vec<Vec<String>> = array(v, "rows")
        .iter()
        .map(|r| {
            vec![
                text(r, "score"),
                text(r, "set"),
                f4(num(r, "auroc")),
                f4(num(r, "aupr_in")),
                f4(num(r, "aupr_out")),
                f4(num(r, "fpr95")),
            ]
        })
        .collect();
    *o += &table(
        id,
        &["score", "OOD set", "AUROC", "AUPR-in", "AUPR-out", "FPR95"],
        &rows,
    );
    ood_selection(o, id, v);
    *o += r#"<div class="figs">"#;
    for h in array(v, "histograms") {
        *o += &figures::ood_histogram(h);
    }
    *o += "</div>";
}

/// The score an OOD evaluation chose on validation data (`--select`), with its candidates.
fn ood_selection(o: &mut String, id: &str, v: &Value) {
    let Some(sel) = v.get("selected") else {
        return;
    };
    let _ = write!(
        o,
        "<p>The detector: <b>{}</b>, chosen by the {} against {}.</p>",
        escape(&text(sel, "score")),
        escape(&text(sel, "criterion")),
        escape(
            &array(sel, "sets")
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    let rows: Vec<Vec<String>> = array(sel, "candidates")
        .iter()
        .map(|c| {
            vec![
                text(c, "score"),
                f4(num(c, "worst_auroc")),
                text(c, "worst_set"),
                f4(num(c, "mean_auroc")),
            ]
        })
        .collect();
    *o += &table(
        &format!("{id}-selection"),
        &[
            "score",
            "validation: worst AUROC",
            "worst set",
            "mean AUROC",
        ],
        &rows,
    );
}

/// The robust-accuracy table and curve of an attack evaluation.
fn eval_attack(o: &mut String, id: &str, v: &Value) {
    let res = array(v, "results");
    let rows: Vec<Vec<String>> = res
        .iter()
        .map(|e| {
            vec![
                format!("{:.5}", num(e, "eps").unwrap_or(f64::NAN)),
                f4(num(e, "robust_accuracy")),
                f4(num(e, "success_rate")),
            ]
        })
        .collect();
    let _ = write!(
        o,
        "<p>clean accuracy {}, {} steps, refinement {} SGLD steps</p>",
        f4(num(v, "clean_accuracy")),
        f4(num(v, "steps")),
        f4(num(v, "refine_steps"))
    );
    *o += &table(
        id,
        &["epsilon", "robust accuracy", "attack success rate"],
        &rows,
    );
    *o += &figures::attack_curve(v);
}

/// The FID, score and diversity tables of a samples evaluation.
fn eval_samples(o: &mut String, id: &str, v: &Value) {
    *o += &table(
        id,
        &[
            "FID",
            "FID test halves",
            "Inception-style score",
            "score of test images",
            "sample accuracy",
        ],
        &[[
            "fid",
            "fid_test_halves",
            "inception_score",
            "inception_score_test",
            "sample_accuracy",
        ]
        .iter()
        .map(|k| f4(num(v, k)))
        .collect()],
    );
    let div = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|x| f4(x.as_f64())).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (d, t) = (div("diversity"), div("diversity_test"));
    let acc = div("sample_accuracy_per_class");
    let rows: Vec<Vec<String>> = d
        .iter()
        .zip(t.iter())
        .enumerate()
        .map(|(c, (a, b))| {
            let hit = acc.get(c).cloned().unwrap_or_else(|| "-".into());
            vec![c.to_string(), a.clone(), b.clone(), hit]
        })
        .collect();
    *o += &table(
        &format!("{id}-diversity"),
        &[
            "class",
            "sample diversity",
            "test-image diversity",
            "sample accuracy",
        ],
        &rows,
    );
    let _ = write!(
        o,
        "<p>Features of {}: not Inception-v3, comparable between runs evaluated with the same feature run.</p>",
        escape(v.get("feature_run").and_then(Value::as_str).unwrap_or("?"))
    );
}

/// Any other saved result, as JSON.
fn eval_other(o: &mut String, _id: &str, v: &Value) {
    let _ = write!(
        o,
        "<pre>{}</pre>",
        escape(&serde_json::to_string_pretty(v).unwrap_or_default())
    );
}

fn evaluation(name: &str, v: &Value) -> String {
    let id = format!("eval-{name}");
    let mut o = format!("<h3>{}</h3>", escape(name));
    if let Some(n) = num(v, "n") {
        let _ = write!(o, "<p>{} images, step {}</p>", n, f4(num(v, "step")));
    }
    let render: fn(&mut String, &str, &Value) = match name {
        n if n.starts_with("accuracy") => eval_accuracy,
        n if n.starts_with("calibration") => eval_calibration,
        n if n.starts_with("ood") => eval_ood,
        n if n.starts_with("attack") => eval_attack,
        n if n.starts_with("samples") => eval_samples,
        _ => eval_other,
    };
    render(&mut o, &id, v);
    o
}

fn section(r: &RunData) -> String {
    let mut o = format!(
        "<section><h2>{}</h2><p>objective <b>{}</b>, step {}</p>",
        escape(&r.name),
        escape(&r.objective),
        r.step
    );
    o += "<h3>Training</h3>";
    o += &curves(r);
    o += "<h3>Evaluations</h3>";
    if r.results.is_empty() {
        o += "<p>No evaluation has been run yet: see <code>jem eval --help</code>.</p>";
    }
    for (name, v) in &r.results {
        o += &evaluation(name, v);
    }
    for (name, bytes) in &r.pngs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let _ = write!(
            o,
            r#"<figure><img alt="{0}" src="data:image/png;base64,{1}"/><figcaption>{0}</figcaption></figure>"#,
            escape(name),
            b64
        );
    }
    let _ = write!(
        o,
        "<details><summary>config.toml</summary><pre>{}</pre></details></section>",
        escape(&r.config_text)
    );
    o
}

fn summary(runs: &[RunData]) -> String {
    let find = |r: &RunData, name: &str| {
        r.results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("step".to_string())
            .chain(runs.iter().map(|r| r.step.to_string()))
            .collect(),
        std::iter::once("objective".to_string())
            .chain(runs.iter().map(|r| r.objective.clone()))
            .collect(),
    ];
    for (label, name, key) in [
        ("test accuracy", "accuracy-test", "accuracy"),
        ("test NLL", "accuracy-test", "nll"),
        ("ECE", "calibration-test", "ece"),
        ("FID", "samples", "fid"),
    ] {
        rows.push(
            std::iter::once(label.to_string())
                .chain(
                    runs.iter()
                        .map(|r| f4(find(r, name).and_then(|v| num(&v, key)))),
                )
                .collect(),
        );
    }
    // Mean AUROC per score over the OOD sets.
    let mut scores: Vec<String> = Vec::new();
    for r in runs {
        if let Some(v) = find(r, "ood-test") {
            for row in array(&v, "rows") {
                let s = text(row, "score");
                if !scores.contains(&s) {
                    scores.push(s);
                }
            }
        }
    }
    for s in &scores {
        rows.push(
            std::iter::once(format!("mean OOD AUROC ({s})"))
                .chain(runs.iter().map(|r| {
                    let v = find(r, "ood-test").unwrap_or_default();
                    let a: Vec<f64> = array(&v, "rows")
                        .iter()
                        .filter(|x| x.get("score").and_then(Value::as_str) == Some(s))
                        .filter_map(|x| num(x, "auroc"))
                        .collect();
                    f4((!a.is_empty()).then(|| a.iter().sum::<f64>() / a.len() as f64))
                }))
                .collect(),
        );
    }
    let head: Vec<&str> = std::iter::once("")
        .chain(runs.iter().map(|r| r.name.as_str()))
        .collect();
    table("summary", &head, &rows)
}

/// Render the report of `run` (beside `baseline`, when given) as one HTML document.
pub fn render_report(run: &Path, baseline: Option<&Path>) -> Result<String> {
    let mut runs = vec![read_run(run)?];
    if let Some(b) = baseline {
        runs.push(read_run(b)?);
    }
    let mut o = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>jem report</title><style>
body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
.cols{display:flex;gap:24px;align-items:flex-start}.cols>section{flex:1;min-width:0}.figs{display:flex;flex-wrap:wrap;gap:8px}figure{display:inline-block;margin:8px}img{image-rendering:pixelated;max-width:100%}pre{background:#f8f8f8;padding:8px;overflow:auto}
</style></head><body><h1>jem report</h1>"#,
    );
    o += &summary(&runs);
    let dirs: Vec<&Path> = std::iter::once(run).chain(baseline).collect();
    let mut rows: Vec<compare::Row> = dirs
        .iter()
        .map(|d| compare::row(d))
        .collect::<Result<_>>()?;
    rows.iter_mut().for_each(compare::Row::only_chosen);
    if rows.iter().any(|r| r.chosen_score.is_some()) {
        let (head, lines) = compare::side_by_side(&rows);
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        o += "<h2>Every claim, side by side (OOD: the score chosen on validation data)</h2>";
        o += &table("side-by-side", &head, &lines);
    }
    o += r#"<div class="cols">"#;
    for r in &runs {
        o += &section(r);
    }
    o += "</div></body></html>\n";
    Ok(o)
}
