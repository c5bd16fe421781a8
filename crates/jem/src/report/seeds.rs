//! `jem compare --seeds`: runs of one recipe that differ only in their seed, summarised as
//! the mean and spread of every figure [`compare`](super::compare) reads, so a claim rests on
//! more than one draw of the random generators.

use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::config::TrainConfig;
use crate::report::compare::{Row, by_figure, row};
use crate::{Error, Result};

/// One figure over the seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    /// What it is (`accuracy`, `AUROC chosen vs mnist`, `robust linf-refine10 @ 0.0314`).
    pub name: String,
    /// Mean over the runs that have it.
    pub mean: f64,
    /// Sample standard deviation (0 for one run).
    pub sd: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// One value per run that has it, in run order.
    pub values: Vec<f64>,
}

impl Figure {
    /// The statistics of `values` (at least one).
    ///
    /// ```
    /// let f = jem::report::seeds::Figure::of("accuracy", vec![0.90, 0.92, 0.94]);
    /// assert!((f.mean - 0.92).abs() < 1e-12 && (f.sd - 0.02).abs() < 1e-12);
    /// assert_eq!((f.min, f.max), (0.90, 0.94));
    /// ```
    pub fn of(name: impl Into<String>, values: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Figure {
            name: name.into(),
            mean,
            sd: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            values,
        }
    }
}

/// The summary of the seeds of one recipe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeedSummary {
    /// Method, as `jem compare` names it.
    pub method: String,
    /// The runs.
    pub runs: Vec<PathBuf>,
    /// Their seeds.
    pub seeds: Vec<u64>,
    /// Runs that stopped before their step bound (gave up after their recoveries).
    pub gave_up: usize,
    /// Every figure at least one run has.
    pub figures: Vec<Figure>,
}

pub use crate::config::first_difference;

/// Summarise `dirs` as seeds of one recipe: `Err(NotSeeds)` naming the first config field
/// (other than `seed`) in which a run differs from the first. `keep` filters each row's
/// AUROCs first (as `jem compare --scores/--sets/--chosen` do).
pub fn summarise(dirs: &[PathBuf], keep: impl Fn(&mut Row)) -> Result<SeedSummary> {
    let Some(first) = dirs.first() else {
        return Err(Error::Shape("no runs to summarise".into()));
    };
    let unseeded = |d: &PathBuf| -> Result<Value> {
        let mut c = TrainConfig::load_run(d)?;
        c.seed = 0;
        Ok(serde_json::to_value(&c).expect("configs serialise"))
    };
    let base = unseeded(first)?;
    let mut rows = Vec::with_capacity(dirs.len());
    for d in dirs {
        if let Some(field) = first_difference(&base, &unseeded(d)?, "") {
            return Err(Error::NotSeeds {
                first: first.clone(),
                other: d.clone(),
                field,
            });
        }
        let mut r = row(d)?;
        keep(&mut r);
        rows.push(r);
    }
    let figures = by_figure(&rows)
        .into_iter()
        .map(|(n, vals)| Figure::of(n, vals.into_iter().flatten().collect()))
        .collect();
    Ok(SeedSummary {
        method: rows[0].method.clone(),
        runs: dirs.to_vec(),
        seeds: rows.iter().map(|r| r.seed).collect(),
        gave_up: rows.iter().filter(|r| r.stopped_early).count(),
        figures,
    })
}

/// The summary as a Markdown table: one line per figure, mean ± sd, range and the values.
pub fn markdown(s: &SeedSummary) -> String {
    let mut o = format!(
        "{} over seeds {:?} ({} of {} gave up)\n\n| figure | mean | sd | min | max | runs |\n|---|---|---|---|---|---|\n",
        s.method,
        s.seeds,
        s.gave_up,
        s.runs.len()
    );
    for f in &s.figures {
        let _ = writeln!(
            o,
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {} |",
            f.name,
            f.mean,
            f.sd,
            f.min,
            f.max,
            f.values.len()
        );
    }
    o
}
