//! Run directories and checkpoints.
//!
//! A checkpoint is written in three moves: each data file to a staged name
//! (`model.safetensors.next`, ...), then `state.json` (the commit point), then the staged files
//! renamed into place. [`settle`], run before any checkpoint is read, finishes an interrupted
//! commit (staged files of the committed step are moved into place) or discards an
//! uncommitted one (staged files of a later step are removed), so a process killed at any
//! moment leaves exactly one complete checkpoint.
//!
//! A run directory holds `config.toml` (the resolved config), `model.safetensors`,
//! `optim.safetensors`, `buffer.safetensors`, `state.json` (step, epoch, RNG state) and
//! `metrics.jsonl`. Every file is written atomically (temporary file, `fsync`, rename), and
//! each checkpoint file carries the step it belongs to, so that a mixed set of files from two
//! checkpoints is detected rather than silently resumed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::error::CheckpointError;
use crate::rng::Rng;
use crate::tensor_file::{file_step, write_atomic};

/// File names inside a run directory.
pub mod files {
    /// The resolved configuration.
    pub const CONFIG: &str = "config.toml";
    /// Model weights.
    pub const MODEL: &str = "model.safetensors";
    /// Optimiser state.
    pub const OPTIM: &str = "optim.safetensors";
    /// Replay buffer.
    pub const BUFFER: &str = "buffer.safetensors";
    /// Stein critic weights (`--objective lsd`).
    pub const CRITIC: &str = "critic.safetensors";
    /// Stein critic optimiser state.
    pub const CRITIC_OPTIM: &str = "critic_optim.safetensors";
    /// Counters and RNG state; written last.
    pub const STATE: &str = "state.json";
    /// One JSON line per logged step.
    pub const METRICS: &str = "metrics.jsonl";
}

/// Counters and generator state of a run at a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Format version of the run directory.
    pub version: u32,
    /// Training steps completed.
    pub step: u64,
    /// The run's generator, as it is after `step` steps.
    pub rng: Rng,
    /// Wall-clock seconds spent training so far.
    pub elapsed_s: f64,
    /// Divergences recovered from so far.
    #[serde(default)]
    pub recoveries: u32,
    /// Factor on the learning rate after back-offs.
    #[serde(default = "one_f64")]
    pub lr_scale: f64,
    /// Factor on the SGLD step size after back-offs.
    #[serde(default = "one_f32")]
    pub sgld_scale: f32,
    /// SGLD steps added after back-offs.
    #[serde(default)]
    pub extra_sgld_steps: usize,
    /// `|loss|` of the last (up to 50) steps, the baseline of the loss-spike watch.
    #[serde(default)]
    pub recent_losses: Vec<f64>,
    /// The device the run last trained on ([`crate::device::describe`]; unset in runs of
    /// earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

fn one_f64() -> f64 {
    1.0
}

fn one_f32() -> f32 {
    1.0
}

impl RunState {
    /// The state of a new run.
    pub fn new(rng: Rng) -> Self {
        RunState {
            version: FORMAT_VERSION,
            step: 0,
            rng,
            elapsed_s: 0.0,
            recoveries: 0,
            lr_scale: 1.0,
            sgld_scale: 1.0,
            extra_sgld_steps: 0,
            recent_losses: Vec::new(),
            device: None,
        }
    }
}

/// Current run-directory format.
pub const FORMAT_VERSION: u32 = 1;

/// The staged name of a checkpoint file (`model.safetensors` -> `model.safetensors.next`).
pub fn staged(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

/// Settle `dir` on its last committed checkpoint and return that checkpoint's state: staged
/// files of the committed step are moved into place (an interrupted commit is finished),
/// staged files of any other step (an uncommitted checkpoint) are removed. Run before any
/// checkpoint is read.
pub fn settle(dir: &Path) -> Result<RunState, CheckpointError> {
    let state = load_state(dir)?;
    for name in [
        files::MODEL,
        files::OPTIM,
        files::BUFFER,
        files::CRITIC,
        files::CRITIC_OPTIM,
    ] {
        let path = dir.join(name);
        let next = staged(&path);
        if !next.exists() {
            continue;
        }
        if file_step(&next) == Some(state.step) {
            std::fs::rename(&next, &path).map_err(|e| CheckpointError::io(&path, e))?;
        } else {
            tracing::warn!(file = %next.display(), "removing an uncommitted checkpoint file");
            std::fs::remove_file(&next).map_err(|e| CheckpointError::io(&next, e))?;
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(state)
}

/// Write `state.json` atomically (the last file of a checkpoint).
pub fn save_state(dir: &Path, state: &RunState) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(state).expect("RunState serialises");
    write_atomic(&dir.join(files::STATE), text.as_bytes())
}

/// The path of the run file `file` in `dir`, or the error that `dir` is not a run
/// directory when it is missing.
pub fn run_file(dir: &Path, file: &'static str) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(CheckpointError::NotARun {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

/// Read `state.json`.
pub fn load_state(dir: &Path) -> Result<RunState, CheckpointError> {
    let path = run_file(dir, files::STATE)?;
    let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::io(&path, e))?;
    let state: RunState = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::corrupt(&path, format!("not a run state: {e}")))?;
    if state.version != FORMAT_VERSION {
        return Err(CheckpointError::corrupt(
            &path,
            format!(
                "run format version {}, this jem reads {FORMAT_VERSION}",
                state.version
            ),
        ));
    }
    Ok(state)
}
