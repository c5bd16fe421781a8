//! Objectives: `softmax` (cross-entropy); `jem`, a weighted sum of `-log p(y|x)`, the
//! contrastive `log p(x)` term and the contrastive `log p(x, y)` term; `igebm`, Du &
//! Mordatch's contrastive divergence on a scalar (or class-conditional) energy with an L2
//! penalty on the energies; and `lsd`, cross-entropy plus a learned Stein discrepancy
//! (see [`crate::lsd`]).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::energy::{cross_entropy, log_pxy, logsumexp};
use crate::error::ConfigError;

/// The training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Cross-entropy only: the plain classifier baseline.
    Softmax,
    /// Joint energy-based model.
    Jem,
    /// IGEBM (Du & Mordatch 2019): a scalar energy `E(x) = -f(x)` (a 1-unit head), or with
    /// a class-conditional buffer `E(x|y) = -f(x)[y]`, trained by contrastive divergence
    /// with SGLD and a replay buffer; no classifier term.
    Igebm,
    /// Cross-entropy plus a learned Stein discrepancy (Grathwohl et al. 2020): no sampling.
    Lsd,
}

impl Objective {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Softmax => "softmax",
            Objective::Jem => "jem",
            Objective::Igebm => "igebm",
            Objective::Lsd => "lsd",
        }
    }
}

/// Which images the data side of the generative terms sees: the data rows of `log p(x)` and
/// `log p(x, y)`, of the `lse_l2` penalty, and IGEBM's data energies. Cross-entropy always
/// sees the augmented batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PxData {
    /// The augmented batch (pad-crop, flips, data noise), as the paper's code does.
    #[default]
    Augmented,
    /// The same images without pad-crop and flips, with their own draw of data noise: the
    /// energy then models the data set's images, not their augmented copies. With pad-crop or
    /// flips on, a JEM step forwards these rows besides the augmented ones (one more pass
    /// over the batch).
    Plain,
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
    /// IGEBM: weight `alpha` of the energy penalty `alpha * mean(E(x_data)^2 + E(x_sample)^2)`
    /// (Du & Mordatch: 1).
    pub energy_l2: f32,
    /// JEM: weight `beta` of the energy-magnitude penalty
    /// `beta * (mean(lse(f(x_data))^2) + mean(lse(f(x_sample))^2))` (the JEM author's advice
    /// against diverging energies; 0 in the paper).
    #[serde(default)]
    pub lse_l2: f32,
    /// Which images the data side of the generative terms sees (default: the augmented ones).
    #[serde(default, skip_serializing_if = "is_augmented")]
    pub px_data: PxData,
    /// Learned Stein discrepancy settings (`--objective lsd`).
    pub lsd: crate::lsd::LsdConfig,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            objective: Objective::Jem,
            pyx_weight: 1.0,
            px_weight: 1.0,
            pxy_weight: 0.0,
            energy_l2: 1.0,
            lse_l2: 0.0,
            px_data: PxData::Augmented,
            lsd: crate::lsd::LsdConfig::default(),
        }
    }
}

impl LossConfig {
    /// Whether the objective needs SGLD samples.
    pub fn needs_sampling(&self) -> bool {
        match self.objective {
            Objective::Jem => self.px_weight > 0.0 || self.pxy_weight > 0.0,
            Objective::Igebm => true,
            Objective::Softmax | Objective::Lsd => false,
        }
    }

    /// Whether a term of the objective reads the data batch as a density model's data: the
    /// rows [`PxData`] chooses the images of.
    pub fn has_generative_data_term(&self) -> bool {
        match self.objective {
            Objective::Jem => self.px_weight > 0.0 || self.pxy_weight > 0.0 || self.lse_l2 > 0.0,
            Objective::Igebm => true,
            Objective::Softmax | Objective::Lsd => false,
        }
    }

    /// Check the weights.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, w) in [
            ("loss.pyx_weight", self.pyx_weight),
            ("loss.px_weight", self.px_weight),
            ("loss.pxy_weight", self.pxy_weight),
            ("loss.energy_l2", self.energy_l2),
            ("loss.lse_l2", self.lse_l2),
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
            Objective::Igebm => 1.0,
            Objective::Lsd => {
                self.lsd.validate()?;
                self.pyx_weight + self.px_weight
            }
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

/// Serde's test for leaving `px_data` out of saved configs at its default.
fn is_augmented(p: &PxData) -> bool {
    *p == PxData::Augmented
}

/// The loss and its parts, as device tensors (`total` carries the graph).
#[derive(Clone, Debug)]
pub struct LossParts {
    /// The weighted objective.
    pub total: Tensor<1>,
    /// Cross-entropy on the data batch.
    pub ce: Tensor<1>,
    /// `mean(lse(f(x_data)))` over the generative terms' data rows.
    pub lse_data: Tensor<1>,
    /// `mean(lse(f(x_sample)))` over the `p(x)` samples (0 without).
    pub lse_sample: Option<Tensor<1>>,
}

/// Combine the logits of the data batch and of the samples.
///
/// # Shapes
/// - `data: [b, k]`, `data_oh: [b, k]`
/// - `plain: [b, k]`, the logits of the data batch's plain copies ([`PxData::Plain`]): the
///   data rows of the generative terms when given, `data` otherwise
/// - `px_samples: [m, k]` (logits of the `p(x)` samples)
/// - `pxy: ([n, k] logits of samples conditioned on `y`, [n, k] their one-hot `y`)`
pub fn loss(
    cfg: &LossConfig,
    data: Tensor<2>,
    data_oh: Tensor<2>,
    plain: Option<Tensor<2>>,
    px_samples: Option<Tensor<2>>,
    pxy: Option<(Tensor<2>, Tensor<2>)>,
) -> LossParts {
    let ce = cross_entropy(data.clone(), data_oh.clone()); // [1]
    let data = plain.unwrap_or(data); // [b, k]: the generative terms' data rows
    let lse_data_all = logsumexp(data.clone()); // [b]
    let lse_data = lse_data_all.clone().mean(); // [1]
    let mut total = ce.clone().mul_scalar(cfg.pyx_weight);
    let mut lse_sample = None;
    if cfg.objective == Objective::Jem {
        if cfg.lse_l2 > 0.0 {
            let sq = lse_data_all.clone().powi_scalar(2).mean(); // [1]
            total = total + sq.mul_scalar(cfg.lse_l2);
        }
        if let Some(s) = px_samples.filter(|_| cfg.px_weight > 0.0) {
            let ls_all = logsumexp(s); // [m]
            let ls = ls_all.clone().mean(); // [1]
            total = total + (ls.clone() - lse_data.clone()).mul_scalar(cfg.px_weight);
            if cfg.lse_l2 > 0.0 {
                total = total + ls_all.powi_scalar(2).mean().mul_scalar(cfg.lse_l2);
            }
            lse_sample = Some(ls);
        }
        if let Some((s, s_oh)) = pxy.filter(|_| cfg.pxy_weight > 0.0) {
            let e_s = log_pxy(s, s_oh).mean(); // [1]
            let e_d = log_pxy(data.clone(), data_oh.clone()).mean(); // [1]
            total = total + (e_s - e_d).mul_scalar(cfg.pxy_weight);
        }
    }
    LossParts {
        total,
        ce,
        lse_data,
        lse_sample,
    }
}

/// The IGEBM objective: contrastive divergence on the energies `E = -f` of data and samples,
/// plus `alpha` times their squares, `mean(f(x_s)) - mean(f(x_d)) + alpha * mean(f(x_d)^2 +
/// f(x_s)^2)`. With one output `f` is the scalar negative energy; with class outputs and
/// one-hot rows given, `f(x)[y]` of each image's class.
///
/// # Shapes
/// - `data: [b, k]`, `samples: [m, k]` logits (`k = 1` for the unconditional model)
/// - `oh: ([b, k] data one-hot, [m, k] sample one-hot)` for the conditional model
///
/// Returns `(total, mean f(x_data), mean f(x_samples))`, each `[1]`.
pub fn igebm_loss(
    alpha: f32,
    data: Tensor<2>,
    samples: Tensor<2>,
    oh: Option<(Tensor<2>, Tensor<2>)>,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (fd, fs) = match oh {
        Some((od, os)) => (log_pxy(data, od), log_pxy(samples, os)), // [b], [b]
        None => (logsumexp(data), logsumexp(samples)), // one unit: lse is the unit itself
    };
    let reg =
        (fd.clone().powi_scalar(2).mean() + fs.clone().powi_scalar(2).mean()).mul_scalar(alpha); // [1]
    let md = fd.mean(); // [1]
    let ms = fs.mean(); // [1]
    (ms.clone() - md.clone() + reg, md, ms)
}
