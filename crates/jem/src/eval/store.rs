//! Evaluation results kept with the run: each evaluation writes `eval/NAME.json` (and its
//! figures `eval/NAME*.png`) into the run directory, where `jem report` finds them.

use std::path::{Path, PathBuf};

use crate::error::CheckpointError;
use crate::tensor_file::write_atomic;

/// The folder of a run's evaluation results.
pub fn eval_dir(run: &Path) -> PathBuf {
    run.join("eval")
}

/// Save one evaluation's JSON as `eval/NAME.json`, atomically.
pub fn save_result(
    run: &Path,
    name: &str,
    value: &serde_json::Value,
) -> Result<PathBuf, CheckpointError> {
    let dir = eval_dir(run);
    std::fs::create_dir_all(&dir).map_err(|e| CheckpointError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Every saved evaluation of a run, sorted by name (unreadable files are reported as errors).
pub fn load_results(run: &Path) -> Result<Vec<(String, serde_json::Value)>, CheckpointError> {
    let dir = eval_dir(run);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
        let v = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::corrupt(&path, format!("not JSON: {e}")))?;
        out.push((name, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
