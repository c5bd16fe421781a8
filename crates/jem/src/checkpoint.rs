//! Run directories and checkpoints.
//!
//! A checkpoint is written in three moves: each data file to a staged name
//! (`model.safetensors.next`, ...), then `state.json` (the commit point), then the staged files
//! renamed into place. [`recover`], run before any checkpoint is read, finishes an interrupted
//! commit (staged files of the committed step are moved into place) or discards an
//! uncommitted one (staged files of a later step are removed), so a process killed at any
//! moment leaves exactly one complete checkpoint.
//!
//! A run directory holds `config.toml` (the resolved config), `model.safetensors`,
//! `optim.safetensors`, `buffer.safetensors`, `state.json` (step, epoch, RNG state) and
//! `metrics.jsonl`. Every file is written atomically (temporary file, `fsync`, rename), and
//! each checkpoint file carries the step it belongs to, so that a mixed set of files from two
//! checkpoints is detected rather than silently resumed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

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

/// A run directory or checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a run directory.
    #[error("{dir} is not a jem run directory (no {file}); train one with `jem train --out {dir}`")]
    NotARun {
        /// The directory.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
    },
    /// The output directory already holds files.
    #[error(
        "{0} already exists and is not empty; continue it with `jem train --resume {0}` or choose another --out"
    )]
    Exists(PathBuf),
    /// A file that cannot be parsed or does not fit the run.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// I/O on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl CheckpointError {
    /// A corrupt `path`.
    pub fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, flushed to
/// disk, renamed over `path`, and the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CheckpointError::io(path, e)
    })
}

/// Write f32 tensors `(name, values, shape)` as safetensors with `step` and `meta` in the
/// header, atomically.
pub fn write_safetensors(
    path: &Path,
    step: u64,
    mut meta: HashMap<String, String>,
    tensors: &[(&str, &[f32], &[usize])],
) -> Result<(), CheckpointError> {
    meta.insert("step".into(), step.to_string());
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, _, shape), b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), b)
            .map_err(|e| CheckpointError::corrupt(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.to_string(), view));
    }
    let out = safetensors::serialize(views, Some(meta))
        .map_err(|e| CheckpointError::corrupt(path, format!("serialising: {e}")))?;
    write_atomic(path, &out)
}

/// A safetensors file read back, checked to belong to the expected step.
pub struct SafeFile {
    path: PathBuf,
    bytes: Vec<u8>,
    meta: HashMap<String, String>,
}

fn read_checked(
    path: &Path,
    step: u64,
) -> Result<(Vec<u8>, HashMap<String, String>), CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| CheckpointError::corrupt(path, format!("not a safetensors file: {e}")))?;
    SafeTensors::deserialize(&bytes).map_err(|e| {
        CheckpointError::corrupt(path, format!("truncated or corrupt safetensors: {e}"))
    })?;
    let meta = header.metadata().clone().unwrap_or_default();
    let found = meta.get("step").and_then(|s| s.parse::<u64>().ok());
    if found != Some(step) {
        return Err(CheckpointError::corrupt(
            path,
            format!(
                "belongs to step {found:?} but state.json is at step {step}: the checkpoint is inconsistent (a write was interrupted)"
            ),
        ));
    }
    Ok((bytes, meta))
}

/// Read `path`, requiring its `step` metadata to equal `step`.
pub fn read_safetensors(path: &Path, step: u64) -> Result<SafeFile, CheckpointError> {
    let (bytes, meta) = read_checked(path, step)?;
    Ok(SafeFile {
        path: path.to_path_buf(),
        bytes,
        meta,
    })
}

impl SafeFile {
    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    /// Names of the tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.bytes).expect("checked when read");
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        names
    }

    /// Tensor `name` as f32 values and its shape.
    pub fn take(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        let st = SafeTensors::deserialize(&self.bytes).expect("checked when read");
        let view = st
            .tensor(name)
            .map_err(|e| CheckpointError::corrupt(&self.path, format!("tensor `{name}`: {e}")))?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::corrupt(
                &self.path,
                format!("tensor `{name}` is {:?}, not F32", view.dtype()),
            ));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((values, view.shape().to_vec()))
    }
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
        }
    }
}

/// Current run-directory format.
pub const FORMAT_VERSION: u32 = 1;

/// Save the model weights through burn-store, with `step` in the header, atomically.
pub fn save_model<M: Module>(model: &M, path: &Path, step: u64) -> Result<(), CheckpointError> {
    let mut store = SafetensorsStore::from_bytes(None).metadata("step", step.to_string());
    model
        .save_into(&mut store)
        .map_err(|e| CheckpointError::corrupt(path, format!("serialising the model: {e}")))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| CheckpointError::corrupt(path, format!("serialising the model: {e}")))?;
    write_atomic(path, &bytes)
}

/// Load weights saved by [`save_model`] into `model` (built from the same config). With
/// `step` given, the file must belong to that step.
pub fn load_model<M: Module>(
    mut model: M,
    path: &Path,
    step: Option<u64>,
) -> Result<M, CheckpointError> {
    let bytes = match step {
        Some(s) => read_checked(path, s)?.0,
        None => {
            let b = std::fs::read(path).map_err(|e| CheckpointError::io(path, e))?;
            SafeTensors::deserialize(&b).map_err(|e| {
                CheckpointError::corrupt(path, format!("not a safetensors file: {e}"))
            })?;
            b
        }
    };
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = model
        .load_from(&mut store)
        .map_err(|e| CheckpointError::corrupt(path, format!("loading weights: {e}")))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(CheckpointError::corrupt(
            path,
            format!(
                "weights do not fit the model in config.toml: {} errors ({:?}), missing {:?}, unused {:?}",
                result.errors.len(),
                result.errors.first().map(|e| e.to_string()),
                result.missing.iter().map(|m| &m.0).collect::<Vec<_>>(),
                result.unused
            ),
        ));
    }
    Ok(model)
}

/// Whether every parameter of `model` is finite (a NaN never reaches a saved model).
pub fn params_finite<M: Module>(model: &M) -> bool {
    struct Sums(Vec<Tensor<1>>);
    impl ModuleVisitor for Sums {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().inner();
            let n = t.dims().iter().product::<usize>();
            self.0.push(t.reshape([n]).abs().sum());
        }
    }
    let mut sums = Sums(Vec::new());
    model.visit(&mut sums);
    if sums.0.is_empty() {
        return true;
    }
    let all: Vec<f32> = Tensor::cat(sums.0, 0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    all.iter().all(|v| v.is_finite())
}

/// The staged name of a checkpoint file (`model.safetensors` -> `model.safetensors.next`).
pub fn staged(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

/// The step a safetensors file belongs to, if it can be read.
fn file_step(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let (_, header) = SafeTensors::read_metadata(&bytes).ok()?;
    SafeTensors::deserialize(&bytes).ok()?;
    header.metadata().as_ref()?.get("step")?.parse().ok()
}

/// Bring `dir` to its last committed checkpoint and return that checkpoint's state: staged
/// files of the committed step are moved into place, staged files of any other step (an
/// uncommitted checkpoint) are removed.
pub fn recover(dir: &Path) -> Result<RunState, CheckpointError> {
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

/// Read a run directory's `config.toml`.
pub fn load_config(dir: &Path) -> crate::Result<crate::config::TrainConfig> {
    let path = dir.join(files::CONFIG);
    if !path.exists() {
        return Err(CheckpointError::NotARun {
            dir: dir.to_path_buf(),
            file: files::CONFIG,
        }
        .into());
    }
    crate::config::TrainConfig::from_file(&path)
}

/// Write `state.json` atomically (the last file of a checkpoint).
pub fn save_state(dir: &Path, state: &RunState) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(state).expect("RunState serialises");
    write_atomic(&dir.join(files::STATE), text.as_bytes())
}

/// Read `state.json`.
pub fn load_state(dir: &Path) -> Result<RunState, CheckpointError> {
    let path = dir.join(files::STATE);
    if !path.exists() {
        return Err(CheckpointError::NotARun {
            dir: dir.to_path_buf(),
            file: files::STATE,
        });
    }
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
