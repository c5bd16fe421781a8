//! Stochastic gradient Langevin dynamics on the input: `x <- x + a * d target/dx + s * noise`,
//! and JEM++'s proximal variant (Yang & Ji, ICCV 2021), which clamps each gradient component
//! to `[-clip, clip]` and projects the chains back onto the data range `[-1, 1]` after every
//! step: `x <- clamp(x + a * clamp(d target/dx, -clip, clip) + s * noise, -1, 1)` (the clamp
//! to the box is the proximal operator of its indicator).
//!
//! This module owns the sampler's settings ([`SgldConfig`], including the number format of
//! the chains' gradient passes, [`Precision`]) and the update rule, written once for chains
//! held as tensors ([`chains_tensor`]) and once for chains held on the host
//! ([`chains_host`]). Where the gradient comes from is the caller's: the compute engine
//! ([`crate::engine::Engine::sgld`]) passes burn's autodiff or the CPU kernel of the CNN.
//! A run of the chains is a pure function of (engine, model, start, rng, params): the
//! parameters are frozen, all noise is drawn from the generator passed in, nothing else
//! changes.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::rng::Rng;

/// The number format of the chains' gradient passes (the CPU kernel of the CNN's matrix
/// products; every other engine computes in f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 inputs to every product, f32 accumulation (CNN on a CPU with AVX512-BF16). The
    /// fastest; rounding moves a few pre-activations across zero, where the LeakyReLU's slope
    /// switches, so input gradients differ from f32 by a few percent (cosine above 0.99).
    Bf16,
    /// f32 forward pass (exact LeakyReLU slopes), bf16 products in the input gradient only:
    /// gradients within 1e-2 of f32, less of the speed-up.
    MixedBf16,
    /// `bf16` where the run's chains can run it (the CPU kernel of the CNN on a CPU with
    /// AVX512-BF16) and it is timed faster than f32 there, `f32` everywhere else. A run
    /// resolves it once, when it is created or resumed
    /// ([`crate::engine::Engine::chains_precision`]), logs which it chose and the measured
    /// speed-up, and saves that one in its `config.toml`; the passes themselves never see
    /// `auto` (a kernel built directly with `auto` takes bf16 where it runs, untimed). A
    /// run whose objective draws no chains (softmax, LSD) saves `f32` untimed.
    Auto,
}

impl Precision {
    /// Whether these chains need bf16 products (the CPU kernel on AVX512-BF16): `bf16` and
    /// `mixed-bf16`; `f32` and `auto` run everywhere.
    pub fn needs_bf16(self) -> bool {
        matches!(self, Precision::Bf16 | Precision::MixedBf16)
    }

    /// `auto` resolved: `Bf16` when `bf16_runs`, else `F32`; any other value as it is.
    pub fn resolve(self, bf16_runs: bool) -> Precision {
        match self {
            Precision::Auto if bf16_runs => Precision::Bf16,
            Precision::Auto => Precision::F32,
            p => p,
        }
    }
}

/// The update rule of the chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Plain SGLD, unconstrained (JEM).
    #[default]
    Sgld,
    /// Proximal SGLD (JEM++): clamped gradient, chains kept in `[-1, 1]`.
    Pyld,
}

/// SGLD parameters (paper defaults: 20 steps, step size 1, noise 0.01).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgldConfig {
    /// The update rule.
    pub sampler: SamplerKind,
    /// Number of steps per chain and training iteration.
    pub steps: usize,
    /// Step size `a` on the gradient of the target.
    pub step_size: f32,
    /// Standard deviation `s` of the Gaussian noise added per step.
    pub noise_std: f32,
    /// Proximal SGLD only: each gradient component is clamped to `[-grad_clip, grad_clip]`.
    pub grad_clip: f32,
    /// Number format of the chains' gradient passes: f32, or bf16 products with f32
    /// accumulation (the CPU kernel of the CNN on a CPU with AVX512-BF16 only; the update
    /// itself stays f32).
    pub precision: Precision,
    /// Chains run per training iteration, drawn from the replay buffer (default, and when
    /// absent from a config file: the batch size). Fewer chains than data images make an
    /// iteration cheaper (the chains' passes cost `steps` times the data's) at the price of a
    /// noisier estimate of `mean(lse(f(x_sample)))`; at most the batch size, because chains
    /// conditioned on `y` take the first labels of the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<usize>,
    /// Keep plain SGLD's chains in the data range `[-1, 1]` after every step, as proximal
    /// SGLD always does. Unclamped chains drift outside the range, and pixels no image has
    /// are an easy feature for the model to tell samples from data by.
    pub clamp: bool,
}

impl Default for SgldConfig {
    fn default() -> Self {
        SgldConfig {
            sampler: SamplerKind::Sgld,
            steps: 20,
            step_size: 1.0,
            noise_std: 0.01,
            grad_clip: 0.1,
            precision: Precision::F32,
            chains: None,
            clamp: false,
        }
    }
}

impl SgldConfig {
    /// The settings of a sampler: the paper's SGLD, or JEM++'s proximal SGLD.
    pub fn for_sampler(kind: SamplerKind) -> Self {
        match kind {
            SamplerKind::Sgld => SgldConfig::default(),
            SamplerKind::Pyld => SgldConfig::jem_pp(),
        }
    }

    /// JEM++'s sampler settings: proximal SGLD, 10 steps of size 0.2 with gradient
    /// components clamped to 0.1, no noise.
    pub fn jem_pp() -> Self {
        SgldConfig {
            sampler: SamplerKind::Pyld,
            steps: 10,
            step_size: 0.2,
            noise_std: 0.0,
            grad_clip: 0.1,
            precision: Precision::F32,
            chains: None,
            clamp: false,
        }
    }

    /// Whether the chains are projected onto `[-1, 1]` after every step: always for proximal
    /// SGLD, and for plain SGLD where [`SgldConfig::clamp`] asks for it.
    pub fn keeps_data_range(&self) -> bool {
        self.sampler == SamplerKind::Pyld || self.clamp
    }

    /// Check the values (whether this machine runs the chosen [`Precision`] is checked when
    /// the compute engine is chosen, [`crate::engine::Engine::check_chains`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chains == Some(0) {
            return Err(ConfigError::field(
                "sgld.chains",
                "must be at least 1 (leave it out for one chain per data image)",
            ));
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(ConfigError::field(
                "sgld.step_size",
                format!("{}: must be positive and finite", self.step_size),
            ));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(ConfigError::field(
                "sgld.noise_std",
                format!("{}: must be non-negative and finite", self.noise_std),
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
            return Err(ConfigError::field(
                "sgld.grad_clip",
                format!("{}: must be positive and finite", self.grad_clip),
            ));
        }
        Ok(())
    }

    /// Chains per training iteration for a data batch of `batch` images.
    pub fn chains_for(&self, batch: usize) -> usize {
        self.chains.unwrap_or(batch)
    }
}

/// What a run of the chains produced.
#[derive(Clone, Debug)]
pub struct SgldOutput {
    /// Final samples, detached, on the non-autodiff device.
    ///
    /// # Shapes
    /// `[b, c, h, w]`
    pub samples: Tensor<4>,
    /// Mean over chains of the L2 norm of the target's input gradient at the last step.
    pub grad_norm: f32,
}

/// Run `params.steps` SGLD (or proximal SGLD) steps from `start`, with `grad(x)` the input
/// gradient of the target at `x` (detached, on the non-autodiff device).
///
/// # Shapes
/// `start: [b, c, h, w] -> samples [b, c, h, w]`; `grad: [b, c, h, w] -> [b, c, h, w]`
pub fn chains_tensor(
    start: Tensor<4>,
    params: &SgldConfig,
    rng: &mut Rng,
    mut grad: impl FnMut(Tensor<4>) -> Tensor<4>,
) -> SgldOutput {
    let dims = start.dims();
    let device = start.device().inner();
    let numel: usize = dims.iter().product();
    let mut x = start.detach().inner(); // [b, c, h, w]
    let mut noise = vec![0.0f32; numel];
    let mut last_grad: Option<Tensor<4>> = None;
    for _ in 0..params.steps {
        let g = grad(x.clone()); // [b, c, h, w]
        let drift = match params.sampler {
            SamplerKind::Sgld => g.clone(),
            SamplerKind::Pyld => g.clone().clamp(-params.grad_clip, params.grad_clip),
        }; // [b, c, h, w]
        x = x + drift.mul_scalar(params.step_size);
        if params.noise_std > 0.0 {
            rng.fill_normal(&mut noise, params.noise_std);
            let n = Tensor::<4>::from_data(TensorData::new(noise.clone(), dims), &device);
            x = x + n;
        }
        if params.keeps_data_range() {
            x = x.clamp(-1.0, 1.0);
        }
        last_grad = Some(g);
    }
    let grad_norm = last_grad.map_or(0.0, |g| {
        let b = dims[0];
        g.reshape([b, numel / b])
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .mean()
            .into_scalar::<f32>()
    });
    SgldOutput {
        samples: x,
        grad_norm,
    }
}

/// The same chains held on the host: `x` is `[b, c, h, w]` row-major with `per_image =
/// c * h * w`, `grad(x)` the input gradient in the same layout. Returns the final chains and
/// the mean gradient norm at the last step. The update and the noise draws are those of
/// [`chains_tensor`].
pub fn chains_host(
    mut x: Vec<f32>,
    per_image: usize,
    params: &SgldConfig,
    rng: &mut Rng,
    mut grad: impl FnMut(&[f32]) -> Vec<f32>,
) -> (Vec<f32>, f32) {
    let b = x.len() / per_image.max(1);
    let mut noise = vec![0.0f32; x.len()];
    let mut grad_norm = 0.0;
    for step in 0..params.steps {
        let g = grad(&x);
        let (a, clip) = (params.step_size, params.grad_clip);
        match params.sampler {
            SamplerKind::Sgld => x.iter_mut().zip(&g).for_each(|(x, g)| *x += a * g),
            SamplerKind::Pyld => x
                .iter_mut()
                .zip(&g)
                .for_each(|(x, g)| *x += a * g.clamp(-clip, clip)),
        }
        if params.noise_std > 0.0 {
            rng.fill_normal(&mut noise, params.noise_std);
            x.iter_mut().zip(&noise).for_each(|(x, n)| *x += n);
        }
        if params.keeps_data_range() {
            x.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        }
        if step + 1 == params.steps {
            grad_norm = g
                .chunks_exact(per_image)
                .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
                .sum::<f32>()
                / b as f32;
        }
    }
    (x, grad_norm)
}
