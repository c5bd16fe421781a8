//! Every error type of the library, in one leaf module that imports nothing else of jem:
//! [`DataError`] (data files), [`ConfigError`] (impossible settings, named by their field),
//! [`CheckpointError`] (run directories and tensor files) and [`Error`], which wraps them
//! and adds the run-level failures (divergence, a scalar-energy run asked for `p(y|x)`,
//! inputs of the wrong shape). Modules re-export the error they raise next to their code.

use std::path::{Path, PathBuf};

/// A malformed or missing data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file does not exist or cannot be read.
    #[error("{path}: cannot read: {source}{hint}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
        /// How to obtain the data, when known.
        hint: String,
    },
    /// The file's content is not what its format requires.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Images and labels do not go together.
    #[error("{images} has {n_images} images but {labels} has {n_labels} labels")]
    CountMismatch {
        /// Image file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// Label file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// A split or option cannot be applied to this data set.
    #[error("data: {0}")]
    Invalid(String),
    /// Images of another shape than the run's (the CNN's global pooling would accept them
    /// and report numbers on the wrong inputs, so they are refused when loaded).
    #[error(
        "{path}: images of shape {found:?}, but the run takes {expected:?} ([channels, height, width]; images of another shape are refused, not resized)"
    )]
    Shape {
        /// The file (or directory) the images came from.
        path: PathBuf,
        /// Their shape `[c, h, w]`.
        found: [usize; 3],
        /// The shape the run takes.
        expected: [usize; 3],
    },
}

impl DataError {
    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// An impossible configuration value, named by its field path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field with an impossible value.
    #[error("config field `{field}`: {reason}")]
    Field {
        /// Dotted path, e.g. `sgld.steps`.
        field: String,
        /// Why it is impossible.
        reason: String,
    },
    /// A config file that is not valid TOML for [`TrainConfig`].
    #[error("{path}: not a valid jem config: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

impl ConfigError {
    /// An error on `field`.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
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
    /// A saved tensor holding NaN or infinite values (weights, optimiser moments, chains).
    #[error(
        "{path}: tensor `{tensor}` holds {count} non-finite values (NaN or infinite); this file cannot be used: resume from an earlier copy or train again"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// How many of its values are not finite.
        count: usize,
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
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

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
    /// Runs summarised as seeds of one recipe whose configs differ in more than the seed.
    #[error(
        "{other} is not another seed of {first}: their configs differ in `{field}` (seeds of one recipe differ in `seed` only)"
    )]
    NotSeeds {
        /// The first run.
        first: PathBuf,
        /// The run that differs from it.
        other: PathBuf,
        /// The first differing config field, dotted (e.g. `optim.lr`).
        field: String,
    },
    /// A sweep directory that cannot be used as asked.
    #[error("sweep {dir}: {reason}")]
    Sweep {
        /// The sweep directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A device that this binary cannot open (its backend not compiled in, no adapter, ...).
    #[error("device `{device}`: {reason}")]
    Device {
        /// The device asked for (`--device`, `device` in the config, or `JEM_DEVICE`).
        device: String,
        /// Why it cannot be opened, and what to install or set.
        reason: String,
    },
    /// A model that cannot be written in an export format.
    #[error("export: {0}")]
    Export(String),
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
