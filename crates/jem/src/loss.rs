//! Objectives: `softmax` (cross-entropy) and `jem`, a weighted sum of
//! `-log p(y|x)`, the contrastive `log p(x)` term and the contrastive `log p(x, y)` term.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::energy::{cross_entropy, log_pxy, logsumexp};

/// The training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Cross-entropy only: the plain classifier baseline.
    Softmax,
    /// Joint energy-based model.
    Jem,
}

/// Objective and weights (paper defaults: `p(y|x)` 1, `p(x)` 1, `p(x, y)` 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Which objective.
    pub objective: Objective,
    /// Weight of the cross-entropy `-log p(y|x)`.
    pub pyx_weight: f32,
    /// Weight of `-mean(lse(f(x_data))) + mean(lse(f(x_sample)))`.
    pub px_weight: f32,
    /// Weight of `-mean(f(x_data)[y]) + mean(f(x_sample|y)[y])`, samples conditioned on `y`.
    pub pxy_weight: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            objective: Objective::Jem,
            pyx_weight: 1.0,
            px_weight: 1.0,
            pxy_weight: 0.0,
        }
    }
}

impl LossConfig {
    /// Whether the objective needs SGLD samples.
    pub fn needs_sampling(&self) -> bool {
        self.objective == Objective::Jem && (self.px_weight > 0.0 || self.pxy_weight > 0.0)
    }

    /// Check the weights.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, w) in [
            ("loss.pyx_weight", self.pyx_weight),
            ("loss.px_weight", self.px_weight),
            ("loss.pxy_weight", self.pxy_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(ConfigError::field(
                    name,
                    format!("{w}: must be non-negative and finite"),
                ));
            }
        }
        let active = match self.objective {
            Objective::Softmax => self.pyx_weight,
            Objective::Jem => self.pyx_weight + self.px_weight + self.pxy_weight,
        };
        if active == 0.0 {
            return Err(ConfigError::field(
                "loss",
                "every weight of the objective is 0",
            ));
        }
        Ok(())
    }
}

/// The loss and its parts, as device tensors (`total` carries the graph).
#[derive(Clone, Debug)]
pub struct LossParts {
    /// The weighted objective.
    pub total: Tensor<1>,
    /// Cross-entropy on the data batch.
    pub ce: Tensor<1>,
    /// `mean(lse(f(x_data)))`.
    pub lse_data: Tensor<1>,
    /// `mean(lse(f(x_sample)))` over the `p(x)` samples (0 without).
    pub lse_sample: Option<Tensor<1>>,
    /// Fraction of the data batch classified correctly.
    pub correct: Tensor<1>,
}

/// Combine the logits of the data batch and of the samples.
///
/// # Shapes
/// - `data: [b, k]`, `data_oh: [b, k]`
/// - `px_samples: [m, k]` (logits of the `p(x)` samples)
/// - `pxy: ([n, k] logits of samples conditioned on `y`, [n, k] their one-hot `y`)`
pub fn loss(
    cfg: &LossConfig,
    data: Tensor<2>,
    data_oh: Tensor<2>,
    px_samples: Option<Tensor<2>>,
    pxy: Option<(Tensor<2>, Tensor<2>)>,
) -> LossParts {
    let ce = cross_entropy(data.clone(), data_oh.clone()); // [1]
    let lse_data_all = logsumexp(data.clone()); // [b]
    let lse_data = lse_data_all.clone().mean(); // [1]
    let mut total = ce.clone().mul_scalar(cfg.pyx_weight);
    let mut lse_sample = None;
    if cfg.objective == Objective::Jem {
        if let Some(s) = px_samples.filter(|_| cfg.px_weight > 0.0) {
            let ls = logsumexp(s).mean(); // [1]
            total = total + (ls.clone() - lse_data.clone()).mul_scalar(cfg.px_weight);
            lse_sample = Some(ls);
        }
        if let Some((s, s_oh)) = pxy.filter(|_| cfg.pxy_weight > 0.0) {
            let e_s = log_pxy(s, s_oh).mean(); // [1]
            let e_d = log_pxy(data.clone(), data_oh.clone()).mean(); // [1]
            total = total + (e_s - e_d).mul_scalar(cfg.pxy_weight);
        }
    }
    let pred = data.argmax(1); // [b, 1]
    let truth = data_oh.argmax(1); // [b, 1]
    let correct = pred.equal(truth).float().mean(); // [1]
    LossParts {
        total,
        ce,
        lse_data,
        lse_sample,
        correct,
    }
}
