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
//! panels ([`gemm`], AVX-512 micro-kernels of our own, and an AVX2 + FMA one for CPUs
//! without AVX-512; bias and LeakyReLU fused into the store), and its input gradient one product of the output gradient with the weights
//! followed by the adjoint additions. No weight gradient is formed inside SGLD, every buffer
//! is reused from step to step, and images are split across threads in blocks whose column
//! rows stay in the core's cache.
//!
//! [`Precision::Bf16`] runs the same passes with bf16 inputs to every product (activations,
//! column rows, output gradients, weights) and f32 accumulation (`vdpbf16ps`); everything
//! between the products (bias, LeakyReLU, the adjoint sums, the SGLD update) stays f32.
//!
//! The kernel is one of the compute engines of [`crate::engine`], which chooses it once per
//! trainer or evaluation; nothing else calls [`available`].
//!
//! The f32 result equals the autodiff path up to float rounding; tests compare the two on
//! random inputs and weights (relative error under 1e-4 in f32, 1e-2 in bf16).

pub mod cols;
pub mod gemm;
mod kernel;

use burn::prelude::*;

use crate::energy::Target;
use crate::model::Classifier;
pub use crate::sgld::Precision;
use gemm::Isa;
pub use kernel::CnnKernel;

/// Whether this CPU runs the kernel at `precision` (f32 needs AVX-512, or AVX2 with FMA; the
/// bf16 modes AVX512-BF16; `auto` runs wherever f32 does, as the best of the two).
pub fn supports(precision: Precision) -> bool {
    let isa = Isa::detect();
    match precision {
        Precision::F32 | Precision::Auto => isa.f32(),
        Precision::Bf16 | Precision::MixedBf16 => isa.bf16,
    }
}

/// The instructions of the kernel's f32 products on this CPU: `"avx512"`, `"avx2"` (AVX2 with
/// FMA, where AVX-512 is missing), or `None` where the kernel cannot run.
pub fn instructions() -> Option<&'static str> {
    let isa = Isa::detect();
    if isa.avx512 {
        Some("avx512")
    } else if isa.avx2 {
        Some("avx2")
    } else {
        None
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
    cpu_device(&model.device()) && supports(Precision::F32)
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
