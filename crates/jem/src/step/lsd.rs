//! One `--objective lsd` iteration: `critic_steps` critic updates (ascent on
//! `(SD - lambda E|g|^2) / D`, the classifier frozen), then one classifier update on
//! `pyx_weight * ce + px_weight * SD / D` with the critic's output held fixed (the
//! finite-difference terms are in [`crate::lsd`]).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;

use super::{StepInputs, StepResult};
use crate::energy::{cross_entropy, logsumexp, one_hot};
use crate::lsd::{Critic, CriticState, hutchinson_trace, mean_sq_norm, score_dot};
use crate::metrics::{Divergence, StepMetrics};
use crate::model::Classifier;

/// The critic's updates on the batch `x`, the classifier frozen: the updated critic, its
/// output at the last update (held fixed for the classifier's step) and the last values of
/// the Stein discrepancy and the critic's loss.
struct CriticPass {
    next: Critic,
    g: Tensor<4>,
    sd: f64,
    loss: f64,
}

fn critic_updates(
    model: &Classifier,
    inputs: &mut StepInputs,
    critic: &mut CriticState,
    x: &Tensor<4>,
) -> Result<CriticPass, Divergence> {
    let l = &inputs.cfg.loss.lsd;
    let [c, h, w] = inputs.shape;
    let b = inputs.batch.labels.len();
    let dim = c * h * w;
    let frozen = model.clone().no_grad();
    let mut probe = vec![0.0f32; b * dim];
    let mut g_fixed = None;
    let (mut sd_value, mut critic_value) = (0.0, 0.0);
    let mut next = critic.critic.clone();
    for _ in 0..l.critic_steps {
        inputs.rng.fill_normal(&mut probe, 1.0);
        let v = Tensor::<4>::from_data(TensorData::new(probe.clone(), [b, c, h, w]), inputs.device); // [b, c, h, w]
        let (trace, g) = hutchinson_trace(&next, x.clone(), v, l.fd_eps); // [b], [b, c, h, w]
        let score = score_dot(&frozen, x.clone(), g.clone(), l.fd_eps); // [b]
        let sd = (score + trace).mean().div_scalar(dim as f32); // [1], per dimension
        let closs = mean_sq_norm(g.clone()).mul_scalar(l.critic_l2 / dim as f32) - sd.clone(); // [1]
        let vals: Vec<f32> = Tensor::cat(vec![sd.detach(), closs.clone().detach()], 0)
            .into_data()
            .try_to_vec()
            .expect("f32 scalars");
        sd_value = vals[0] as f64;
        critic_value = Divergence::check("Stein critic loss", vals[1] as f64)?;
        let grads = GradientsParams::from_grads(closs.backward(), &next);
        next = critic.optim.step(inputs.critic_lr, next, grads);
        g_fixed = Some(g.detach());
    }
    Ok(CriticPass {
        next,
        g: g_fixed.expect("critic_steps >= 1 is validated"),
        sd: sd_value,
        loss: critic_value,
    })
}

/// The critic's updates, then the classifier's; nothing is updated if either diverges.
pub(super) fn iteration(
    model: Classifier,
    inputs: &mut StepInputs,
    critic: &mut CriticState,
    t0: Instant,
) -> StepResult {
    let (cfg, device) = (inputs.cfg, inputs.device);
    let labels = &inputs.batch.labels;
    let b = labels.len();
    let [c, h, w] = inputs.shape;
    let dim = c * h * w;
    let x = Tensor::<4>::from_data(
        TensorData::new(inputs.batch.images.clone(), [b, c, h, w]),
        device,
    ); // [b, c, h, w]
    let data_oh = one_hot(labels, inputs.num_classes, device); // [b, k]
    let pass = critic_updates(&model, inputs, critic, &x)?;
    let logits = model.forward(x.clone()); // [b, k]
    let ce = cross_entropy(logits.clone(), data_oh.clone()); // [1]
    let lse_data = logsumexp(logits.clone()).mean(); // [1]
    let score = score_dot(&model, x, pass.g, cfg.loss.lsd.fd_eps)
        .mean()
        .div_scalar(dim as f32); // [1]
    let total = ce.clone().mul_scalar(cfg.loss.pyx_weight) + score.mul_scalar(cfg.loss.px_weight); // [1]
    let correct = logits.argmax(1).equal(data_oh.argmax(1)).float().mean(); // [1]
    let vals: Vec<f32> = Tensor::cat(
        vec![
            total.clone().detach(),
            ce.detach(),
            lse_data.detach(),
            correct,
        ],
        0,
    )
    .into_data()
    .try_to_vec()
    .expect("f32 scalars"); // [4]
    let loss_value = Divergence::check("loss", vals[0] as f64)?;
    let grads = GradientsParams::from_grads(total.backward(), &model);
    let model = inputs.optim.step(inputs.lr, model, grads);
    critic.critic = pass.next;
    let mut m = StepMetrics::new(loss_value, vals[2] as f64, inputs.lr);
    m.ce = Some(vals[1] as f64);
    m.acc = Some(vals[3] as f64);
    m.stein = Some(pass.sd);
    m.critic_loss = Some(pass.loss);
    m.ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok((model, m))
}
