//! A hand-written CPU path for the one thing SGLD does thousands of times: the forward pass of
//! the strided CNN ([`crate::model::Cnn`]) and the gradient of `lse f(x)` (or `f(x)[y]`) with
//! respect to the input, with the parameters frozen; also the weight gradients of a training
//! step.
//!
//! Why: through burn's autodiff every SGLD step allocates a graph, computes the input
//! gradient of each convolution by a direct transposed convolution and zeroes fresh pages
//! for every activation. Here activations are channels-last (`[b, h, w, c]`), so a row of a
//! convolution's column matrix is three contiguous runs of `3 * cin` values ([`cols`]); each
//! convolution is one product of those rows with the weights, packed once per kernel into
//! panels ([`gemm`], AVX-512 micro-kernels of our own, bias and LeakyReLU fused into the
//! store), and its input gradient one product of the output gradient with the weights
//! followed by the adjoint additions. No weight gradient is formed inside SGLD, every buffer
//! is reused from step to step, and images are split across threads in blocks whose column
//! rows stay in the core's cache.
//!
//! [`Precision::Bf16`] runs the same passes with bf16 inputs to every product (activations,
//! column rows, output gradients, weights) and f32 accumulation (`vdpbf16ps`); everything
//! between the products (bias, LeakyReLU, the adjoint sums, the SGLD update) stays f32.
//!
//! The f32 result equals the autodiff path up to float rounding; tests compare the two on
//! random inputs and weights (relative error under 1e-4 in f32, 1e-2 in bf16).

pub mod cols;
pub mod gemm;
mod kernel;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::energy::Target;
use crate::model::Classifier;
use gemm::Isa;
pub use kernel::CnnKernel;

/// The number format of the kernel's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 inputs to every product, f32 accumulation (needs AVX512-BF16). The fastest;
    /// rounding moves a few pre-activations across zero, where the LeakyReLU's slope
    /// switches, so input gradients differ from f32 by a few percent (cosine above 0.99).
    Bf16,
    /// f32 forward pass (exact LeakyReLU slopes), bf16 products in the input gradient only:
    /// gradients within 1e-2 of f32, less of the speed-up.
    MixedBf16,
}

impl Precision {
    /// Whether this CPU runs the kernel at this precision.
    pub fn supported(self) -> bool {
        let isa = Isa::detect();
        match self {
            Precision::F32 => isa.avx512,
            Precision::Bf16 | Precision::MixedBf16 => isa.bf16,
        }
    }
}

/// Gradients of the CNN's parameters, in burn's layouts.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightGrads {
    /// Per convolution: weight `[cout, cin * 9]` (that is `[cout, cin, 3, 3]`) and bias.
    pub convs: Vec<(Vec<f32>, Vec<f32>)>,
    /// Head weight `[features, classes]`.
    pub head_w: Vec<f32>,
    /// Head bias.
    pub head_b: Vec<f32>,
}

/// `lse` of a row and its softmax.
pub fn softmax(l: &[f32]) -> (f32, Vec<f32>) {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = l.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    (m + s.ln(), e.iter().map(|v| v / s).collect())
}

/// What the chains climb, on the host.
#[derive(Clone, Copy, Debug)]
pub enum HostTarget<'a> {
    /// `lse f(x)`.
    Marginal,
    /// `f(x)[y]`, one class per image.
    Joint(&'a [usize]),
}

/// Whether the kernel serves `model`: a CNN whose parameters live on the CPU backend.
pub fn available(model: &Classifier) -> bool {
    if !matches!(model, Classifier::Cnn(_)) {
        return false;
    }
    cpu_device(&crate::eval::accuracy::model_device(model)) && Precision::F32.supported()
}

/// Whether `device` (or its inner device) is the CPU backend the kernel serves.
pub fn cpu_device(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        device.clone().inner() == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// `Err` with the reason when chains at `precision` cannot run on `device`.
pub fn check_precision(
    precision: Precision,
    device: &Device,
) -> Result<(), crate::config::ConfigError> {
    if precision != Precision::F32 && !cpu_device(device) {
        return Err(crate::config::ConfigError::field(
            "sgld.precision",
            "bf16 chains run in the CPU kernel of the CNN only; this run's device is not the CPU",
        ));
    }
    Ok(())
}

/// The class of each row of a [`Target::Joint`] (`None` for the marginal).
pub fn labels_of(target: &Target) -> Option<Vec<usize>> {
    match target {
        Target::Marginal => None,
        Target::Joint(oh) => Some(
            oh.clone()
                .inner()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .expect("class indices")
                .into_iter()
                .map(|v| v as usize)
                .collect(),
        ),
    }
}

/// [`crate::energy::input_grad`] through the kernel, when [`available`].
///
/// # Shapes
/// `x: [b, c, h, w] -> ([b, c, h, w] gradient, [b] per-image target)`
pub fn input_grad(
    model: &Classifier,
    x: &Tensor<4>,
    target: &Target,
) -> Option<(Tensor<4>, Tensor<1>)> {
    if !available(model) {
        return None;
    }
    let mut kernel = CnnKernel::from_model(model)?;
    let dims = x.dims();
    let [b, c, h, w] = dims;
    let labels = labels_of(target);
    let host_target = match &labels {
        None => HostTarget::Marginal,
        Some(ys) => HostTarget::Joint(ys),
    };
    let values: Vec<f32> = x.clone().into_data().try_to_vec().ok()?;
    let (g, v) = kernel.input_grad(&values, b, [c, h, w], host_target);
    let device = x.device().inner();
    Some((
        Tensor::from_data(TensorData::new(g, dims), &device),
        Tensor::from_data(TensorData::new(v, [b]), &device),
    ))
}

/// `grads` as burn's [`GradientsParams`] for `model` (the CNN they were computed for), on
/// `device` (the model's non-autodiff device), ready for [`crate::optim::Optimizer::step`].
pub fn gradients_params(
    model: &Classifier,
    grads: &WeightGrads,
    device: &Device,
) -> burn::optim::GradientsParams {
    let mut out = burn::optim::GradientsParams::new();
    let Classifier::Cnn(cnn) = model else {
        return out;
    };
    let (convs, head) = cnn.parts();
    for (conv, (dw, db)) in convs.iter().zip(&grads.convs) {
        let dims = conv.weight.dims();
        out.register::<4>(
            conv.weight.id,
            Tensor::from_data(TensorData::new(dw.clone(), dims), device),
        );
        if let Some(bias) = &conv.bias {
            out.register::<1>(
                bias.id,
                Tensor::from_data(TensorData::new(db.clone(), [db.len()]), device),
            );
        }
    }
    out.register::<2>(
        head.weight.id,
        Tensor::from_data(
            TensorData::new(grads.head_w.clone(), head.weight.dims()),
            device,
        ),
    );
    if let Some(bias) = &head.bias {
        out.register::<1>(
            bias.id,
            Tensor::from_data(
                TensorData::new(grads.head_b.clone(), [grads.head_b.len()]),
                device,
            ),
        );
    }
    out
}
