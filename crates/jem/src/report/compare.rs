//! `jem compare`: one row per run from what the run directory holds — its config, counters,
//! `metrics.jsonl` and the evaluations saved in `RUN/eval/` — as a Markdown table or JSON.
//! Nothing is recomputed: run `jem eval accuracy|calibration|ood` first.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::Result;
use crate::checkpoint::{files, load_state};
use crate::config::TrainConfig;
use crate::eval::store::load_results;
use crate::init::ChainInit;
use crate::loss::Objective;
use crate::metrics::median_step_ms;
use crate::sgld::SamplerKind;

/// One run's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The run directory.
    pub run: PathBuf,
    /// Objective, with sampler and chain start where it samples (e.g. `jem pyld/informative`).
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// Steps completed.
    pub step: u64,
    /// The configured step bound, if any.
    pub max_steps: Option<u64>,
    /// Whether the run stopped before its step bound (it gave up after its recoveries).
    pub stopped_early: bool,
    /// Divergences recovered from.
    pub recoveries: u32,
    /// Median wall-clock milliseconds per step over `metrics.jsonl`.
    pub ms_per_step: Option<f64>,
    /// Test accuracy (`eval/accuracy-test.json`).
    pub accuracy: Option<f64>,
    /// Expected calibration error (`eval/calibration-test.json`).
    pub ece: Option<f64>,
    /// AUROC per (score, OOD set) from `eval/ood-test.json`.
    pub auroc: Vec<(String, String, f64)>,
    /// The OOD score chosen on validation data (`jem eval ood --select`), if one was.
    pub chosen_score: Option<String>,
    /// Per saved attack evaluation (`eval/attack-NORM-refineK-test.json`): its name
    /// (`linf-refine0`), its largest radius and the robust accuracy there.
    pub robust: Vec<(String, f64, f64)>,
    /// Sample accuracy in the feature run's classifier (`eval/samples.json`).
    pub sample_accuracy: Option<f64>,
    /// FID of the buffer samples in the feature run's features (`eval/samples.json`).
    pub fid: Option<f64>,
}

/// Per attack evaluation: (name, largest radius, robust accuracy there).
fn robust_of(results: &[(String, Value)]) -> Vec<(String, f64, f64)> {
    results
        .iter()
        .filter_map(|(name, v)| {
            let short = name.strip_prefix("attack-")?.strip_suffix("-test")?;
            let last = v
                .get("results")?
                .as_array()?
                .iter()
                .filter_map(|r| {
                    Some((r.get("eps")?.as_f64()?, r.get("robust_accuracy")?.as_f64()?))
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))?;
            Some((short.to_string(), last.0, last.1))
        })
        .collect()
}

fn method(dir: &Path) -> Result<(String, u64, Option<u64>)> {
    let cfg = TrainConfig::load_run(dir)?;
    let obj = cfg.loss.objective.name();
    let samples = cfg.loss.needs_sampling();
    let mut m = obj.to_string();
    if samples {
        let sampler = match (cfg.sgld.sampler, cfg.sgld.clamp) {
            (SamplerKind::Sgld, false) => "sgld",
            (SamplerKind::Sgld, true) => "sgld-clamped",
            (SamplerKind::Pyld, _) => "pyld",
        };
        let init = match cfg.buffer.init {
            ChainInit::Uniform => "uniform",
            ChainInit::Informative => "informative",
        };
        let _ = write!(m, " {sampler}/{init}");
        if cfg.buffer.conditional {
            m.push_str(" cond");
        }
    }
    if cfg.loss.objective == Objective::Igebm && cfg.optim.spectral_norm {
        m.push_str(" sn");
    }
    Ok((m, cfg.seed, cfg.schedule.max_steps))
}

/// Read one run's row.
pub fn row(dir: &Path) -> Result<Row> {
    let (method, seed, max_steps) = method(dir)?;
    let state = load_state(dir)?;
    let ms_per_step = median_step_ms(&dir.join(files::METRICS))?;
    let results = load_results(dir)?;
    let find = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let num = |name: &str, key: &str| find(name).and_then(|v| v.get(key)).and_then(Value::as_f64);
    let auroc = find("ood-test")
        .and_then(|v| v.get("rows"))
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r.get("score")?.as_str()?.to_string(),
                        r.get("set")?.as_str()?.to_string(),
                        r.get("auroc")?.as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Row {
        run: dir.to_path_buf(),
        method,
        seed,
        step: state.step,
        max_steps,
        stopped_early: max_steps.is_some_and(|m| state.step < m),
        recoveries: state.recoveries,
        ms_per_step,
        accuracy: num("accuracy-test", "accuracy"),
        ece: num("calibration-test", "ece"),
        auroc,
        robust: robust_of(&results),
        sample_accuracy: num("samples", "sample_accuracy"),
        fid: num("samples", "fid"),
        chosen_score: find("ood-test")
            .and_then(|v| v.pointer("/selected/score"))
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Rows for every run, in order.
pub fn compare(dirs: &[PathBuf]) -> Result<Vec<Row>> {
    dirs.iter().map(|d| row(d)).collect()
}

impl Row {
    /// Keep only the chosen score's AUROCs, under the score name `chosen` (so that runs
    /// which chose different scores share columns); a row without a choice keeps none.
    pub fn only_chosen(&mut self) {
        let chosen = self.chosen_score.clone();
        self.auroc.retain(|(s, _, _)| Some(s) == chosen.as_ref());
        for t in &mut self.auroc {
            t.0 = "chosen".into();
        }
    }

    /// Every figure of the row by name, in a fixed order (missing ones left out):
    /// accuracy, ECE, each AUROC, each robust accuracy, sample accuracy, FID, recoveries,
    /// ms/step.
    pub fn figures(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        let mut push = |name: String, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                out.push((name, v));
            }
        };
        push("accuracy".into(), self.accuracy);
        push("ECE".into(), self.ece);
        for (score, set, a) in &self.auroc {
            push(format!("AUROC {score} vs {set}"), Some(*a));
        }
        for (name, eps, acc) in &self.robust {
            push(format!("robust {name} @ {eps:.4}"), Some(*acc));
        }
        push("sample accuracy".into(), self.sample_accuracy);
        push("FID".into(), self.fid);
        push("recoveries".into(), Some(f64::from(self.recoveries)));
        push("ms/step".into(), self.ms_per_step);
        out
    }
}

/// Every figure that any of `rows` has ([`Row::figures`]), in the order first seen, with
/// each row's value (`None` where a row lacks it).
pub fn by_figure(rows: &[Row]) -> Vec<(String, Vec<Option<f64>>)> {
    let per_row: Vec<Vec<(String, f64)>> = rows.iter().map(Row::figures).collect();
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in per_row.iter().flatten() {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    names
        .into_iter()
        .map(|n| {
            let vals = per_row
                .iter()
                .map(|f| f.iter().find(|(m, _)| m == n).map(|t| t.1))
                .collect();
            (n.to_string(), vals)
        })
        .collect()
}

/// The rows side by side: a header (`""`, then each run's name and method) and one line per
/// figure that any run has (a dash where a run lacks it).
pub fn side_by_side(rows: &[Row]) -> (Vec<String>, Vec<Vec<String>>) {
    let head = std::iter::once(String::new())
        .chain(rows.iter().map(|r| {
            let name = r.run.file_name().map_or_else(
                || r.run.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            format!("{name} ({})", r.method)
        }))
        .collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut line = |label: &str, cells: Vec<String>| {
        lines.push(std::iter::once(label.to_string()).chain(cells).collect());
    };
    line("seed", rows.iter().map(|r| r.seed.to_string()).collect());
    line("steps", rows.iter().map(|r| r.step.to_string()).collect());
    if rows.iter().any(|r| r.chosen_score.is_some()) {
        line(
            "OOD score (chosen on valid)",
            rows.iter()
                .map(|r| r.chosen_score.clone().unwrap_or_else(|| "-".into()))
                .collect(),
        );
    }
    for (n, vals) in by_figure(rows) {
        let digits = match n.as_str() {
            "recoveries" => 0,
            "ms/step" | "FID" => 1,
            _ => 4,
        };
        line(
            &n,
            vals.iter()
                .map(|v| v.map_or("-".into(), |v| format!("{v:.digits$}")))
                .collect(),
        );
    }
    line(
        "finished",
        rows.iter()
            .map(|r| {
                if r.stopped_early {
                    "no (gave up)"
                } else {
                    "yes"
                }
                .to_string()
            })
            .collect(),
    );
    (head, lines)
}

/// [`side_by_side`] as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let (head, lines) = side_by_side(rows);
    let mut o = format!(
        "|{}|\n|",
        head.iter()
            .map(|h| format!(" {h} "))
            .collect::<Vec<_>>()
            .join("|")
    );
    o.push_str(&"---|".repeat(head.len()));
    o.push('\n');
    for l in lines {
        let _ = writeln!(o, "| {} |", l.join(" | "));
    }
    o
}
