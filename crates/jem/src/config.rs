//! The nested run configuration, saved as `config.toml` in the run directory. Command-line
//! flags only override it; [`TrainConfig::validate`] runs before any work starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::buffer::BufferConfig;
use crate::data::{Augment, DatasetKind};
use crate::loss::LossConfig;
use crate::model::ModelConfig;
use crate::optim::OptimConfig;
use crate::sgld::SgldConfig;

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

/// Which data, and how it is prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The data set.
    pub dataset: DatasetKind,
    /// Directory of its files (default: [`DatasetKind::default_dir`]).
    pub dir: Option<PathBuf>,
    /// Images held out from the training files for validation.
    pub n_valid: usize,
    /// Augmentation and data noise.
    pub augment: Augment,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetKind::FashionMnist,
            dir: None,
            n_valid: 5000,
            augment: Augment::default(),
        }
    }
}

/// How long and how often.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Images per batch (paper: 64).
    pub batch_size: usize,
    /// Epochs to train (an epoch is `floor(train images / batch)` steps).
    pub epochs: u64,
    /// Bound on the run's total steps, counted over the whole run (also after a resume).
    pub max_steps: Option<u64>,
    /// Write a line to `metrics.jsonl` every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and at the end of every epoch and the run).
    pub checkpoint_every: u64,
    /// Evaluate validation accuracy at the end of every epoch.
    pub eval_valid: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            batch_size: 64,
            epochs: 200,
            max_steps: None,
            log_every: 10,
            checkpoint_every: 500,
            eval_valid: true,
        }
    }
}

/// What counts as a diverging run, and how it is recovered: roll back to the last
/// checkpoint, multiply the learning rate and SGLD step size by their factors, optionally add
/// SGLD steps, and go on; give up after `max_recoveries`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Recoveries before giving up (0: stop at the first divergence).
    pub max_recoveries: u32,
    /// Learning-rate factor per recovery.
    pub lr_factor: f64,
    /// SGLD step-size factor per recovery.
    pub sgld_step_factor: f32,
    /// SGLD steps added per recovery.
    pub extra_sgld_steps: usize,
    /// Flag a step whose `|mean lse(data) - mean lse(samples)|` exceeds this (the gap explodes
    /// before a JEM run dies; healthy runs stay within tens).
    pub max_energy_gap: f64,
    /// Flag a step whose mean SGLD input-gradient norm exceeds this.
    pub max_sgld_grad_norm: f64,
    /// Flag a step whose `|mean lse(f(x_data))|` exceeds this: energies drifting off by
    /// thousands mean a run is being lost even while its loss looks calm (healthy runs stay
    /// within tens; an unscaled Stein-discrepancy run drifted to -4000 and lost its accuracy).
    pub max_abs_energy: f64,
    /// Flag a step whose `|loss|` exceeds this factor times (1 + the median `|loss|` of the
    /// last 50 steps), once 5 steps are known.
    pub loss_spike_factor: f64,
    /// On a recovery, buffer chains with a non-finite value or one beyond this magnitude are
    /// restarted from noise (images live in `[-1, 1]`).
    pub chain_saturation: f32,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_recoveries: 5,
            lr_factor: 0.5,
            sgld_step_factor: 0.5,
            extra_sgld_steps: 0,
            max_energy_gap: 1000.0,
            max_sgld_grad_norm: 1e4,
            max_abs_energy: 1e3,
            loss_spike_factor: 20.0,
            chain_saturation: 100.0,
        }
    }
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Data set and preparation.
    pub data: DataConfig,
    /// Network.
    pub model: ModelConfig,
    /// Optimiser and learning-rate schedule.
    pub optim: OptimConfig,
    /// Sampler.
    pub sgld: SgldConfig,
    /// Replay buffer.
    pub buffer: BufferConfig,
    /// Objective and its weights.
    pub loss: LossConfig,
    /// Length, logging and checkpoints.
    pub schedule: ScheduleConfig,
    /// Divergence detection and recovery.
    pub recovery: RecoveryConfig,
    /// The one seed of every random generator of the run.
    pub seed: u64,
}

impl TrainConfig {
    /// Outputs of the network: one per class, or one for an unconditional IGEBM (a scalar
    /// energy).
    pub fn model_outputs(&self, num_classes: usize) -> usize {
        if self.loss.objective == crate::loss::Objective::Igebm && !self.buffer.conditional {
            1
        } else {
            num_classes
        }
    }

    /// Read a TOML config file; missing fields take their defaults, unknown fields are errors.
    pub fn from_file(path: &Path) -> Result<Self, crate::Error> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        Self::from_toml(&text).map_err(|reason| {
            ConfigError::Parse {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        })
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Check every field before any work starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.schedule;
        if s.batch_size == 0 {
            return Err(ConfigError::field(
                "schedule.batch_size",
                "must be positive",
            ));
        }
        if s.epochs == 0 {
            return Err(ConfigError::field("schedule.epochs", "must be positive"));
        }
        if s.max_steps == Some(0) {
            return Err(ConfigError::field("schedule.max_steps", "must be positive"));
        }
        if s.log_every == 0 {
            return Err(ConfigError::field("schedule.log_every", "must be positive"));
        }
        if s.checkpoint_every == 0 {
            return Err(ConfigError::field(
                "schedule.checkpoint_every",
                "must be positive",
            ));
        }
        let a = &self.data.augment;
        if !(a.noise_std.is_finite() && a.noise_std >= 0.0) {
            return Err(ConfigError::field(
                "data.augment.noise_std",
                format!("{}: must be non-negative and finite", a.noise_std),
            ));
        }
        let [_, h, w] = self.data.dataset.shape();
        if a.crop_pad >= h.min(w) {
            return Err(ConfigError::field(
                "data.augment.crop_pad",
                format!("{} must be smaller than the image size {h}x{w}", a.crop_pad),
            ));
        }
        let r = &self.recovery;
        if !(r.lr_factor > 0.0 && r.lr_factor <= 1.0) {
            return Err(ConfigError::field(
                "recovery.lr_factor",
                format!("{}: must be in (0, 1]", r.lr_factor),
            ));
        }
        if !(r.sgld_step_factor > 0.0 && r.sgld_step_factor <= 1.0) {
            return Err(ConfigError::field(
                "recovery.sgld_step_factor",
                format!("{}: must be in (0, 1]", r.sgld_step_factor),
            ));
        }
        if !(r.max_energy_gap > 0.0
            && r.max_sgld_grad_norm > 0.0
            && r.max_abs_energy > 0.0
            && r.loss_spike_factor > 1.0)
        {
            return Err(ConfigError::field(
                "recovery",
                "max_energy_gap, max_sgld_grad_norm and max_abs_energy must be positive, loss_spike_factor above 1",
            ));
        }
        self.model.validate()?;
        self.optim.validate()?;
        self.loss.validate()?;
        if self.loss.needs_sampling() {
            self.sgld.validate()?;
            if self.sgld.precision != crate::cnn_cpu::Precision::F32
                && !matches!(self.model, crate::model::ModelConfig::Cnn { .. })
            {
                return Err(ConfigError::field(
                    "sgld.precision",
                    "bf16 chains run in the CPU kernel of the CNN only; use f32 for this model",
                ));
            }
            if self.sgld.steps == 0 {
                return Err(ConfigError::field(
                    "sgld.steps",
                    "must be at least 1 for an objective that samples (use --objective softmax to train without)",
                ));
            }
            self.buffer
                .validate(self.data.dataset.num_classes(), s.batch_size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let c = TrainConfig::default();
        let back = TrainConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(c, back);
        c.validate().unwrap();
    }

    /// bf16 chains: saved and read back in the config, refused for a model the kernel does
    /// not run (naming the field).
    #[test]
    fn sgld_precision_round_trips_and_is_validated() {
        let mut c = TrainConfig::default();
        c.sgld.precision = crate::cnn_cpu::Precision::MixedBf16;
        let text = c.to_toml();
        assert!(text.contains("precision = \"mixed-bf16\""), "{text}");
        assert_eq!(TrainConfig::from_toml(&text).unwrap(), c);
        c.model = crate::model::ModelConfig::Wrn {
            depth: 10,
            widen: 1,
            dropout: 0.0,
            norm: Default::default(),
        };
        if crate::cnn_cpu::Precision::MixedBf16.supported() {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("sgld.precision"), "{e}");
        }
    }
}
