//! Training without sampling: a learned Stein discrepancy (Grathwohl et al., "Learning the
//! Stein Discrepancy for Training and Evaluating Energy-Based Models without Sampling", ICML
//! 2020), as a hybrid with cross-entropy like JEM.
//!
//! For data `x ~ p` and the model's score `s_q(x) = d lse(f(x))/dx`, a critic
//! `g: R^D -> R^D` gives the Stein discrepancy
//! `SD = E_p[ s_q(x) . g(x) + tr(d g(x)/dx) ]`. The critic maximises
//! `SD - lambda * E_p ||g(x)||^2`; the classifier minimises `ce + w * SD / D`.
//!
//! Both are taken per input dimension (divided by `D = c h w`): at its optimum the critic's
//! objective is a Fisher divergence, a sum over the `D` pixels that for images with data noise
//! `s` grows like `D / s^2` (hundreds of thousands for 28x28 images), and unscaled it swamps
//! the cross-entropy (the classifier then drives its energies off to `-1e3` and its accuracy
//! down). Per dimension it is of the order of the cross-entropy. `metrics.jsonl`'s `stein` is
//! this per-dimension value.
//!
//! burn has no double backward (a gradient is a plain tensor, burn issue #1942), so both
//! terms that differentiate through a derivative use central finite differences of
//! directional derivatives (Pang et al. 2020), which need forward passes only:
//! - `s_q(x) . g = |g| * (lse f(x + e u) - lse f(x - e u)) / 2e` with `u = g / |g|`;
//! - the trace by Hutchinson's estimator, `tr(J) ~ v' J v` for `v ~ N(0, I)`, with
//!   `J v = |v| * (g(x + e w) - g(x - e w)) / 2e` for `w = v / |v|`.
//!
//! Each is exact for a function linear along the direction and has an `O(e^2)` error
//! otherwise; tests check both against exact values.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::leaky_relu;
use serde::{Deserialize, Serialize};

use crate::energy::logsumexp;
use crate::error::ConfigError;
use crate::model::{Classifier, LEAKY_SLOPE};
use crate::optim::Optimizer;
use crate::rng::Rng;

/// Settings of `--objective lsd`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LsdConfig {
    /// Channel widths of the critic's hidden 3x3 convolutions (stride 1, LeakyReLU); a last
    /// 3x3 convolution maps back to the image's channels.
    pub critic_widths: Vec<usize>,
    /// `lambda`, the weight of the critic's L2 penalty `E ||g(x)||^2`.
    pub critic_l2: f32,
    /// Learning rate of the critic's optimiser (same algorithm as the model's; no warm-up).
    pub critic_lr: f64,
    /// Critic updates per model update.
    pub critic_steps: usize,
    /// Step `e` of the finite differences, in pixel units of `[-1, 1]` images.
    pub fd_eps: f32,
}

impl Default for LsdConfig {
    fn default() -> Self {
        LsdConfig {
            critic_widths: vec![16, 16],
            critic_l2: 0.5,
            critic_lr: 1e-4,
            critic_steps: 1,
            fd_eps: 0.01,
        }
    }
}

impl LsdConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.critic_widths.is_empty() || self.critic_widths.contains(&0) {
            return Err(ConfigError::field(
                "loss.lsd.critic_widths",
                format!(
                    "{:?}: needs at least one width, all positive",
                    self.critic_widths
                ),
            ));
        }
        if !(self.critic_l2.is_finite() && self.critic_l2 > 0.0) {
            return Err(ConfigError::field(
                "loss.lsd.critic_l2",
                format!(
                    "{}: must be positive (without it the critic is unbounded)",
                    self.critic_l2
                ),
            ));
        }
        if !(self.critic_lr.is_finite() && self.critic_lr > 0.0) {
            return Err(ConfigError::field(
                "loss.lsd.critic_lr",
                format!("{}: must be positive and finite", self.critic_lr),
            ));
        }
        if self.critic_steps == 0 {
            return Err(ConfigError::field(
                "loss.lsd.critic_steps",
                "must be at least 1",
            ));
        }
        if !(self.fd_eps.is_finite() && self.fd_eps > 0.0 && self.fd_eps <= 0.5) {
            return Err(ConfigError::field(
                "loss.lsd.fd_eps",
                format!("{}: must be in (0, 0.5]", self.fd_eps),
            ));
        }
        Ok(())
    }

    /// Build the critic for images with `channels` channels, its initial weights drawn
    /// from `rng` on the host ([`crate::weights`]).
    pub fn init_critic(&self, channels: usize, device: &Device, rng: &mut Rng) -> Critic {
        let mut convs = Vec::with_capacity(self.critic_widths.len() + 1);
        let mut cin = channels;
        for &w in self.critic_widths.iter().chain(std::iter::once(&channels)) {
            convs.push(
                Conv2dConfig::new([cin, w], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            cin = w;
        }
        let critic = crate::weights::draw_on_host(Critic { convs }, rng)
            .expect("the critic's layers have a host initialisation (tested)");
        crate::model::materialize(&critic);
        critic
    }
}

/// The Stein critic `g`: an image-to-image network of stride-1 convolutions.
#[derive(Module, Debug)]
pub struct Critic {
    convs: Vec<Conv2d>,
}

impl Critic {
    /// `g(x)`.
    ///
    /// # Shapes
    /// `[b, c, h, w] -> [b, c, h, w]`
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(x); // [b, w_i, h, w]
            if i < last {
                x = leaky_relu(x, LEAKY_SLOPE);
            }
        }
        x
    }
}

/// Per-image L2 norms and unit directions of `v`.
///
/// # Shapes
/// `[b, c, h, w] -> ([b, 1] norms, [b, c, h, w] unit directions)`
pub fn unit(v: Tensor<4>) -> (Tensor<2>, Tensor<4>) {
    let dims = v.dims();
    let b = dims[0];
    let flat = v.clone().reshape([b, dims[1] * dims[2] * dims[3]]); // [b, D]
    let n = flat
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .add_scalar(1e-12); // [b, 1]
    let u = (flat / n.clone()).reshape(dims); // [b, c, h, w]
    (n, u)
}

/// Central-difference directional derivative of `lse(f(x))` along `g`, per image:
/// `g . d lse f(x)/dx ~ |g| (lse f(x + e u) - lse f(x - e u)) / 2e`, `u = g / |g|`.
/// Gradients flow into the model's parameters and through `g` (no double backward).
///
/// # Shapes
/// `x, g: [b, c, h, w] -> [b]`
pub fn score_dot(model: &Classifier, x: Tensor<4>, g: Tensor<4>, eps: f32) -> Tensor<1> {
    let b = x.dims()[0];
    let (n, u) = unit(g); // [b, 1], [b, c, h, w]
    let shifted = Tensor::cat(
        vec![x.clone() + u.clone().mul_scalar(eps), x - u.mul_scalar(eps)],
        0,
    ); // [2b, c, h, w]
    let lse = logsumexp(model.forward(shifted)); // [2b]
    let diff = lse.clone().slice(0..b) - lse.slice(b..2 * b); // [b]
    diff.div_scalar(2.0 * eps) * n.squeeze_dim(1) // [b]
}

/// Hutchinson estimate of `tr(d g(x)/dx)` with probe `v` by a central difference,
/// `v' J v ~ |v|^2 w . (g(x + e w) - g(x - e w)) / 2e`, `w = v / |v|`. Also returns `g(x)`,
/// from the same batched forward pass.
///
/// # Shapes
/// `x, v: [b, c, h, w] -> ([b] trace estimates, [b, c, h, w] g(x))`
pub fn hutchinson_trace(
    critic: &Critic,
    x: Tensor<4>,
    v: Tensor<4>,
    eps: f32,
) -> (Tensor<1>, Tensor<4>) {
    let dims = x.dims();
    let b = dims[0];
    let d = dims[1] * dims[2] * dims[3];
    let (n, w) = unit(v); // [b, 1], [b, c, h, w]
    let inputs = Tensor::cat(
        vec![
            x.clone(),
            x.clone() + w.clone().mul_scalar(eps),
            x - w.clone().mul_scalar(eps),
        ],
        0,
    ); // [3b, c, h, w]
    let out = critic.forward(inputs); // [3b, c, h, w]
    let g = out.clone().slice(0..b); // [b, c, h, w]
    let jw = (out.clone().slice(b..2 * b) - out.slice(2 * b..3 * b)).div_scalar(2.0 * eps); // [b, c, h, w]
    let wjw = (w * jw).reshape([b, d]).sum_dim(1); // [b, 1]
    let trace = (wjw * n.powi_scalar(2)).squeeze_dim(1); // [b]
    (trace, g)
}

/// `mean ||g||^2` over the batch.
///
/// # Shapes
/// `[b, c, h, w] -> [1]`
pub fn mean_sq_norm(g: Tensor<4>) -> Tensor<1> {
    let b = g.dims()[0];
    g.reshape([b as i32, -1]).powi_scalar(2).sum_dim(1).mean() // [1]
}

/// The critic and its optimiser, checkpointed with the run.
#[derive(Clone, Debug)]
pub struct CriticState {
    /// The critic network.
    pub critic: Critic,
    /// Its optimiser.
    pub optim: Optimizer,
}
