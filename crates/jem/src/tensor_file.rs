//! Tensor files: atomic writes, and safetensors files whose header carries the checkpoint
//! step they belong to. Every f32 tensor read back is checked finite, so a NaN or infinite
//! value in a weight, optimiser or buffer file is an error that names the file and tensor
//! instead of a run that silently computes NaN.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::CheckpointError;

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
                "belongs to step {found:?} but the files saved with it are at step {step}: the checkpoint is inconsistent (a write was interrupted)"
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

    /// Tensor `name` as f32 values and its shape; a NaN or infinite value is an error that
    /// names the file and tensor.
    pub fn take(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
        let (values, shape) = self.take_any(name)?;
        check_finite(&self.path, name, &values)?;
        Ok((values, shape))
    }

    /// [`SafeFile::take`] without the finiteness check (for values that may be repaired,
    /// such as replay-buffer chains).
    pub fn take_any(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), CheckpointError> {
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
        Ok((f32_values(view.data()), view.shape().to_vec()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `Err` naming `path` and `tensor` when `values` hold NaN or infinite entries.
pub fn check_finite(path: &Path, tensor: &str, values: &[f32]) -> Result<(), CheckpointError> {
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(CheckpointError::NonFinite {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            count,
        });
    }
    Ok(())
}

/// Every f32 tensor of a safetensors file checked finite (tensors of other types are left to
/// the loader, which refuses them).
fn check_all_finite(path: &Path, st: &SafeTensors) -> Result<(), CheckpointError> {
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for name in &names {
        let view = st
            .tensor(name)
            .map_err(|e| CheckpointError::corrupt(path, format!("tensor `{name}`: {e}")))?;
        if view.dtype() == Dtype::F32 {
            check_finite(path, name, &f32_values(view.data()))?;
        }
    }
    Ok(())
}

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
/// `step` given, the file must belong to that step. A NaN or infinite weight is an error
/// naming the file and tensor.
pub fn load_model<M: Module>(
    mut model: M,
    path: &Path,
    step: Option<u64>,
) -> Result<M, CheckpointError> {
    let bytes = match step {
        Some(s) => read_checked(path, s)?.0,
        None => std::fs::read(path).map_err(|e| CheckpointError::io(path, e))?,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| CheckpointError::corrupt(path, format!("not a safetensors file: {e}")))?;
    check_all_finite(path, &st)?;
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

/// The step a safetensors file belongs to, if it can be read.
pub fn file_step(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let (_, header) = SafeTensors::read_metadata(&bytes).ok()?;
    SafeTensors::deserialize(&bytes).ok()?;
    header.metadata().as_ref()?.get("step")?.parse().ok()
}
