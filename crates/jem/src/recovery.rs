//! Divergence detection and recovery: [`RecoveryConfig`] says what counts as a run being
//! lost and how to back off; [`DivergenceMonitor`] owns the checks of every finished step and
//! the back-off arithmetic, applied to the counters kept in [`RunState`] (so they are
//! checkpointed and resume exactly). The training loop only asks it and acts: roll back to
//! the last checkpoint with the backed-off state, or give up.

use serde::{Deserialize, Serialize};

use crate::checkpoint::RunState;
use crate::error::ConfigError;
use crate::metrics::{Divergence, StepMetrics};

/// Steps of `|loss|` kept as the baseline of the loss-spike check.
const RECENT: usize = 50;
/// Steps known before the loss-spike check starts.
const SPIKE_MIN_STEPS: usize = 5;

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

impl RecoveryConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.lr_factor > 0.0 && self.lr_factor <= 1.0) {
            return Err(ConfigError::field(
                "recovery.lr_factor",
                format!("{}: must be in (0, 1]", self.lr_factor),
            ));
        }
        if !(self.sgld_step_factor > 0.0 && self.sgld_step_factor <= 1.0) {
            return Err(ConfigError::field(
                "recovery.sgld_step_factor",
                format!("{}: must be in (0, 1]", self.sgld_step_factor),
            ));
        }
        if !(self.max_energy_gap > 0.0
            && self.max_sgld_grad_norm > 0.0
            && self.max_abs_energy > 0.0
            && self.loss_spike_factor > 1.0)
        {
            return Err(ConfigError::field(
                "recovery",
                "max_energy_gap, max_sgld_grad_norm and max_abs_energy must be positive, loss_spike_factor above 1",
            ));
        }
        Ok(())
    }
}

/// The watch over a run's steps and its back-off after a divergence.
#[derive(Clone, Debug)]
pub struct DivergenceMonitor {
    cfg: RecoveryConfig,
}

impl DivergenceMonitor {
    /// A monitor with these limits.
    pub fn new(cfg: RecoveryConfig) -> Self {
        DivergenceMonitor { cfg }
    }

    /// Its settings.
    pub fn config(&self) -> &RecoveryConfig {
        &self.cfg
    }

    /// Flag a finished step whose numbers show a run about to be lost (`state` holds the
    /// recent losses).
    pub fn watch(&self, m: &StepMetrics, state: &RunState) -> Option<Divergence> {
        let r = &self.cfg;
        let recent = &state.recent_losses;
        if recent.len() >= SPIKE_MIN_STEPS {
            let mut sorted = recent.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            if m.loss.abs() > r.loss_spike_factor * (1.0 + median) {
                return Some(Divergence {
                    what: format!("loss spike (recent median |loss| {median:.4})"),
                    value: m.loss,
                });
            }
        }
        if !m.lse_data.is_finite() || m.lse_data.abs() > r.max_abs_energy {
            return Some(Divergence {
                what: "data energy |mean lse(data)|".into(),
                value: m.lse_data,
            });
        }
        if let Some(s) = m.lse_sample {
            let gap = (m.lse_data - s).abs();
            if !gap.is_finite() || gap > r.max_energy_gap {
                return Some(Divergence {
                    what: "energy gap |lse(data) - lse(samples)|".into(),
                    value: gap,
                });
            }
        }
        match m.sgld_grad_norm {
            Some(g) if !g.is_finite() || g > r.max_sgld_grad_norm => Some(Divergence {
                what: "SGLD input-gradient norm".into(),
                value: g,
            }),
            _ => None,
        }
    }

    /// Record the loss of a step that was kept.
    pub fn record(&self, state: &mut RunState, loss: f64) {
        let recent = &mut state.recent_losses;
        recent.push(loss.abs());
        if recent.len() > RECENT {
            recent.remove(0);
        }
    }

    /// Whether the run has used up its recoveries.
    pub fn exhausted(&self, state: &RunState) -> bool {
        state.recoveries >= self.cfg.max_recoveries
    }

    /// The state to continue from after a divergence: the checkpoint's `restored` state
    /// with one more recovery and the back-off of `current` multiplied by the factors.
    pub fn back_off(&self, current: &RunState, restored: RunState) -> RunState {
        let r = &self.cfg;
        RunState {
            recoveries: current.recoveries + 1,
            lr_scale: current.lr_scale * r.lr_factor,
            sgld_scale: current.sgld_scale * r.sgld_step_factor,
            extra_sgld_steps: current.extra_sgld_steps + r.extra_sgld_steps,
            device: current.device.clone(),
            ..restored
        }
    }
}
