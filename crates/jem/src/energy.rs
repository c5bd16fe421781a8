//! The energy view of a classifier: stable logsumexp, `log p(x)` and `log p(x, y)` up to
//! `log Z`, `p(y|x)`, and the input gradient SGLD follows.

use burn::prelude::*;

use crate::model::Classifier;

/// Numerically stable `logsumexp` over the class dimension (burn has no such op).
///
/// The row maximum is subtracted before `exp` and treated as a constant, which leaves the
/// value and its gradient (the softmax) exact.
///
/// # Shapes
/// `[b, k] -> [b]`
pub fn logsumexp(logits: Tensor<2>) -> Tensor<1> {
    let m = logits.clone().max_dim(1).detach(); // [b, 1]
    let s = (logits - m.clone()).exp().sum_dim(1).log(); // [b, 1]
    (s + m).squeeze_dim(1) // [b]
}

/// Unnormalised `log p(x) = logsumexp_y f(x)[y]` (that is, `log p(x) + log Z`).
///
/// # Shapes
/// `[b, k] -> [b]`
pub fn log_px(logits: Tensor<2>) -> Tensor<1> {
    logsumexp(logits)
}

/// One-hot rows for `labels`, on `device`.
///
/// # Shapes
/// `-> [labels.len(), num_classes]`
pub fn one_hot(labels: &[usize], num_classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; labels.len() * num_classes];
    for (i, &y) in labels.iter().enumerate() {
        v[i * num_classes + y] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), num_classes]), device)
}

/// Unnormalised `log p(x, y) = f(x)[y]`, with `y` as one-hot rows.
///
/// # Shapes
/// `[b, k], [b, k] -> [b]`
pub fn log_pxy(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    (logits * one_hot).sum_dim(1).squeeze_dim(1) // [b]
}

/// `p(y|x) = softmax(f(x))`.
///
/// # Shapes
/// `[b, k] -> [b, k]`
pub fn p_y_given_x(logits: Tensor<2>) -> Tensor<2> {
    burn::tensor::activation::softmax(logits, 1)
}

/// Mean cross-entropy `mean(lse(f(x)) - f(x)[y])`.
///
/// # Shapes
/// `[b, k], [b, k] -> [1]`
pub fn cross_entropy(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    (logsumexp(logits.clone()) - log_pxy(logits, one_hot)).mean() // [1]
}

/// What SGLD climbs: `log p(x)` (unconditional) or `log p(x, y)` for given classes.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per chain batch, never stored in bulk
pub enum Target {
    /// `logsumexp_y f(x)[y]`.
    Marginal,
    /// `f(x)[y]` for one class per image (one-hot rows `[b, k]`).
    Joint(Tensor<2>),
}

/// `sum_i target(x_i)` and its gradient with respect to `x` through burn's autodiff, with the
/// parameters frozen (no weight gradients are computed), for any model and backend. `model`
/// must live on an autodiff device. [`crate::engine::Engine::input_grad`] chooses between
/// this and the CPU kernel of the CNN.
///
/// # Shapes
/// `x: [b, c, h, w] -> ([b, c, h, w] gradient, [b] per-image target)`
pub fn input_grad(model: &Classifier, x: Tensor<4>, target: &Target) -> (Tensor<4>, Tensor<1>) {
    let frozen = model.clone().no_grad();
    let x = x.detach().autodiff().require_grad(); // [b, c, h, w]
    let logits = frozen.forward(x.clone()); // [b, k]
    let value = match target {
        Target::Marginal => logsumexp(logits),
        Target::Joint(oh) => log_pxy(logits, oh.clone().autodiff()),
    }; // [b]
    let grads = value.clone().sum().backward();
    let g = x
        .grad(&grads)
        .expect("the input requires grad, so backward yields its gradient"); // [b, c, h, w]
    (g, value.detach().inner())
}
