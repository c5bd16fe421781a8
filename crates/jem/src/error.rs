use std::path::PathBuf;

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::data::DataError;

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is missing or malformed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A configuration value is impossible.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A run directory or checkpoint cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Training produced a non-finite or exploding loss; the last checkpoint is intact.
    #[error(
        "training diverged at step {step}: {what} = {value}; the last good checkpoint (step {last_checkpoint}) in {run_dir} is intact; resume it with a lower learning rate or smaller SGLD step size"
    )]
    Diverged {
        /// Step at which the divergence was seen.
        step: u64,
        /// Which quantity diverged.
        what: String,
        /// Its value.
        value: f64,
        /// Step of the last checkpoint on disk.
        last_checkpoint: u64,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An evaluation that needs `p(y|x)` on a run whose model is a scalar energy.
    #[error(
        "{run_dir}: {what} needs a classifier, but this run's model is a scalar energy (objective igebm without --conditional); use `jem eval ood` (scores logp, pxgrad) or `jem eval samples`"
    )]
    NotAClassifier {
        /// The run directory.
        run_dir: PathBuf,
        /// The evaluation asked for.
        what: String,
    },
    /// Inputs of the wrong shape for a model or an evaluation.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
