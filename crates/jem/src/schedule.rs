//! When things happen in a run: its length in steps, and at which steps it logs,
//! validates and checkpoints. [`ScheduleConfig`] is the `schedule` table of a run's config.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

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

impl ScheduleConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("schedule.batch_size", self.batch_size as u64),
            ("schedule.epochs", self.epochs),
            ("schedule.max_steps", self.max_steps.unwrap_or(1)),
            ("schedule.log_every", self.log_every),
            ("schedule.checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(ConfigError::field(field, "must be positive"));
            }
        }
        Ok(())
    }

    /// Total steps of a run with `per_epoch` steps per epoch: `epochs * per_epoch`, bounded
    /// by `max_steps`.
    pub fn total_steps(&self, per_epoch: u64) -> u64 {
        let by_epochs = self.epochs * per_epoch;
        self.max_steps.map_or(by_epochs, |m| m.min(by_epochs))
    }

    /// What the loop does after completing `step` of `total` steps.
    pub fn after(&self, step: u64, total: u64, per_epoch: u64) -> Due {
        let end_of_epoch = step.is_multiple_of(per_epoch);
        let last = step == total;
        Due {
            log: step.is_multiple_of(self.log_every) || last,
            validate: end_of_epoch && self.eval_valid,
            checkpoint: step.is_multiple_of(self.checkpoint_every) || end_of_epoch || last,
            last,
        }
    }
}

/// What is due after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// Write the step's metrics line.
    pub log: bool,
    /// Evaluate on the validation split (the end of an epoch).
    pub validate: bool,
    /// Take a checkpoint.
    pub checkpoint: bool,
    /// The run's last step.
    pub last: bool,
}
