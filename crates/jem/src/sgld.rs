//! Stochastic gradient Langevin dynamics on the input: `x <- x + a * d target/dx + s * noise`,
//! and JEM++'s proximal variant (Yang & Ji, ICCV 2021), which clamps each gradient component
//! to `[-clip, clip]` and projects the chains back onto the data range `[-1, 1]` after every
//! step: `x <- clamp(x + a * clamp(d target/dx, -clip, clip) + s * noise, -1, 1)` (the clamp
//! to the box is the proximal operator of its indicator).
//!
//! [`sgld`] is a pure function of (model, start, rng, params): it freezes the parameters
//! itself, draws all its noise from the generator passed in, and changes nothing else.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cnn_cpu::Precision;
use crate::config::ConfigError;
use crate::energy::{Target, input_grad_autodiff};
use crate::model::Classifier;
use crate::rng::Rng;

/// The update rule of the chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }
}

impl SgldConfig {
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
        }
    }

    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if self.precision != Precision::F32 && !self.precision.supported() {
            return Err(ConfigError::field(
                "sgld.precision",
                "bf16 chains need a CPU with AVX512-BF16, which this one lacks (use f32)",
            ));
        }
        Ok(())
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

/// Run `params.steps` SGLD (or proximal SGLD) steps from `start` on `target` (use
/// [`Target::Marginal`] for `log p(x)`, [`Target::Joint`] for `log p(x, y)`).
///
/// # Shapes
/// `start: [b, c, h, w] -> samples [b, c, h, w]`
pub fn sgld(
    model: &Classifier,
    start: Tensor<4>,
    target: &Target,
    params: &SgldConfig,
    rng: &mut Rng,
) -> SgldOutput {
    if let Some(out) = sgld_cpu_kernel(model, &start, target, params, rng) {
        return out;
    }
    if params.precision != Precision::F32 {
        tracing::warn!("bf16 chains need the CPU kernel of the CNN; these run in f32");
    }
    sgld_autodiff(model, start, target, params, rng)
}

/// [`sgld`] through burn's autodiff on any backend and model: the reference the CPU kernel
/// of the CNN is tested against.
///
/// # Shapes
/// `start: [b, c, h, w] -> samples [b, c, h, w]`
pub fn sgld_autodiff(
    model: &Classifier,
    start: Tensor<4>,
    target: &Target,
    params: &SgldConfig,
    rng: &mut Rng,
) -> SgldOutput {
    let dims = start.dims();
    let device = start.device().inner();
    let numel: usize = dims.iter().product();
    let mut x = start.detach().inner(); // [b, c, h, w]
    let mut noise = vec![0.0f32; numel];
    let mut last_grad: Option<Tensor<4>> = None;
    for _ in 0..params.steps {
        let (g, _) = input_grad_autodiff(model, x.clone(), target); // [b, c, h, w]
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
        if params.sampler == SamplerKind::Pyld {
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

/// The same chains through [`crate::cnn_cpu`] when the model is the CNN on the CPU backend
/// (`None` otherwise): identical updates and noise draws, gradients equal up to rounding.
fn sgld_cpu_kernel(
    model: &Classifier,
    start: &Tensor<4>,
    target: &Target,
    params: &SgldConfig,
    rng: &mut Rng,
) -> Option<SgldOutput> {
    if !crate::cnn_cpu::available(model) {
        return None;
    }
    let mut kernel = crate::cnn_cpu::CnnKernel::with_precision(model, params.precision)?;
    let dims = start.dims();
    let [b, c, h, w] = dims;
    let device = start.device();
    let labels = crate::cnn_cpu::labels_of(target);
    let host_target = match &labels {
        None => crate::cnn_cpu::HostTarget::Marginal,
        Some(ys) => crate::cnn_cpu::HostTarget::Joint(ys),
    };
    let mut x: Vec<f32> = start.clone().into_data().try_to_vec().ok()?;
    let mut noise = vec![0.0f32; x.len()];
    let mut grad_norm = 0.0;
    for step in 0..params.steps {
        let (g, _) = kernel.input_grad(&x, b, [c, h, w], host_target);
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
        if params.sampler == SamplerKind::Pyld {
            x.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        }
        if step + 1 == params.steps {
            let per = c * h * w;
            grad_norm = g
                .chunks_exact(per)
                .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
                .sum::<f32>()
                / b as f32;
        }
    }
    Some(SgldOutput {
        samples: Tensor::<4>::from_data(TensorData::new(x, dims), &device.inner()),
        grad_norm,
    })
}
