//! What a run records: the metrics of a step ([`StepMetrics`]), validation and recovery
//! events, the divergence a step can report, and [`MetricsLog`], the owner of
//! `metrics.jsonl` (one JSON object per line; opened, appended to and truncated on rollback
//! only through it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor_file::write_atomic;

/// A loss beyond this magnitude stops the run as diverged.
pub const LOSS_LIMIT: f64 = 1e8;

/// What one step measured (a line of `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Steps completed, this one included.
    pub step: u64,
    /// Epoch of this step (0-based).
    pub epoch: u64,
    /// The objective.
    pub loss: f64,
    /// Cross-entropy on the data batch (none for a scalar-energy model).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ce: Option<f64>,
    /// `mean(lse(f(x_data)))`: minus the mean energy of the data.
    pub lse_data: f64,
    /// `mean(lse(f(x_sample)))`: minus the mean energy of the samples.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lse_sample: Option<f64>,
    /// Accuracy on the data batch (none for a scalar-energy model).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc: Option<f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Mean input-gradient norm at the last SGLD step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sgld_grad_norm: Option<f64>,
    /// `--objective lsd`: the Stein discrepancy estimate on the batch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stein: Option<f64>,
    /// `--objective lsd`: the critic's loss `lambda E|g|^2 - SD`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub critic_loss: Option<f64>,
    /// Chains restarted from noise.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n_reinit: Option<usize>,
    /// Wall-clock milliseconds of the step.
    pub ms: f64,
}

impl StepMetrics {
    /// A step's metrics with its loss, `mean lse(f(x_data))` and learning rate; every other
    /// field empty (the step fills in what it measured, the loop the step and epoch).
    pub fn new(loss: f64, lse_data: f64, lr: f64) -> Self {
        StepMetrics {
            step: 0,
            epoch: 0,
            loss,
            ce: None,
            lse_data,
            lse_sample: None,
            acc: None,
            lr,
            sgld_grad_norm: None,
            stein: None,
            critic_loss: None,
            n_reinit: None,
            ms: 0.0,
        }
    }
}

/// A non-finite or exploding quantity seen during an iteration (no update was applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// Which quantity.
    pub what: String,
    /// Its value.
    pub value: f64,
}

impl Divergence {
    /// The one loss-limit check of every step: `value` if it is finite and within
    /// [`LOSS_LIMIT`], else the divergence of `what`.
    pub fn check(what: &str, value: f64) -> Result<f64, Divergence> {
        if value.is_finite() && value.abs() <= LOSS_LIMIT {
            Ok(value)
        } else {
            Err(Divergence {
                what: what.into(),
                value,
            })
        }
    }
}

/// A validation line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Always `"valid"`.
    pub event: String,
    /// Steps completed.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Validation accuracy.
    pub valid_acc: f64,
    /// Validation NLL.
    pub valid_nll: f64,
}

/// A recovery line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryLine {
    /// Always `"recovery"`.
    pub event: String,
    /// The step rolled back to (the last checkpoint).
    pub step: u64,
    /// The step at which the divergence was seen.
    pub flagged_step: u64,
    /// What was flagged.
    pub what: String,
    /// Its value.
    pub value: f64,
    /// Recoveries so far in this run.
    pub recoveries: u32,
    /// Factor now applied to the learning rate.
    pub lr_scale: f64,
    /// Factor now applied to the SGLD step size.
    pub sgld_step_scale: f32,
    /// SGLD steps now added to the configured number.
    pub extra_sgld_steps: usize,
    /// Buffer chains restarted from noise because they held NaN or saturated values.
    pub reinit_chains: usize,
}

/// The median wall-clock milliseconds per step over the step lines of the metrics log at
/// `path` (`None` when it has none).
pub fn median_step_ms(path: &Path) -> Result<Option<f64>> {
    let ms: Vec<f64> = std::fs::read_to_string(path)
        .map_err(|e| Error::io(path, e))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_none())
        .filter_map(|v| v.get("ms").and_then(serde_json::Value::as_f64))
        .collect();
    Ok(median(ms))
}

/// The median of `v` (the upper one of an even count; `None` when empty), for timings.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// `metrics.jsonl`, open for appending.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Create an empty log at `path` (a new run).
    pub fn create(path: &Path) -> Result<Self> {
        File::create(path).map_err(|e| Error::io(path, e))?;
        Self::open(path)
    }

    /// Open the log at `path` for appending (created if missing).
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Append `v` as one line, flushed.
    pub fn write<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let mut line = serde_json::to_string(v).expect("metrics serialise");
        line.push('\n');
        let path = &self.path;
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(path, e))?;
        self.file.flush().map_err(|e| Error::io(path, e))
    }

    /// Drop the lines logged after `step` (they belong to work a resumed or rolled-back run
    /// repeats), rewriting the file atomically, and reopen it.
    pub fn truncate_after(&mut self, step: u64) -> Result<()> {
        truncate_file(&self.path, step)?;
        *self = Self::open(&self.path)?;
        Ok(())
    }
}

fn truncate_file(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}
