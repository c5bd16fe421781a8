//! The loss and update of a softmax, JEM or IGEBM iteration through burn's autodiff: any
//! model, any device (and the reference the CPU kernel's step is tested against).

use burn::optim::GradientsParams;
use burn::prelude::*;

use super::{Chains, StepInputs, StepResult};
use crate::config::TrainConfig;
use crate::energy::{cross_entropy, one_hot};
use crate::loss::{Objective, igebm_loss, loss};
use crate::metrics::{Divergence, StepMetrics};
use crate::model::Classifier;
use crate::optim::sam_perturb;

/// Forward data and samples in one pass, the loss, backward, one optimiser step (with SAM's
/// second pass at the perturbed weights when `optim.sam_rho > 0`).
pub(super) fn iteration(model: Classifier, inputs: &mut StepInputs, chains: &Chains) -> StepResult {
    let shard = Shard::of(inputs, chains);
    let (total, values, has_lse_sample) = forward_loss(&model, &shard, chains);
    let loss_value = Divergence::check("loss", values[0] as f64)?;
    let mut grads = GradientsParams::from_grads(total.backward(), &model);
    let rho = inputs.cfg.optim.sam_rho;
    if rho > 0.0 {
        let adv = sam_perturb(model.clone(), &grads, rho);
        let (total, values, _) = forward_loss(&adv, &shard, chains);
        Divergence::check("loss at SAM's perturbed weights", values[0] as f64)?;
        grads = GradientsParams::from_grads(total.backward(), &adv);
    }
    let model = inputs.optim.step(inputs.lr, model, grads);
    Ok((
        model,
        metrics(loss_value, &values, has_lse_sample, inputs.lr),
    ))
}

/// The step's metrics from the scalars of [`forward_loss`].
pub(super) fn metrics(loss: f64, values: &[f32], has_lse_sample: bool, lr: f64) -> StepMetrics {
    let mut m = StepMetrics::new(loss, values[1] as f64, lr);
    m.lse_sample = has_lse_sample.then_some(values[2] as f64);
    m.ce = values.get(3).map(|&v| v as f64);
    m.acc = values.get(4).map(|&v| v as f64);
    m
}

/// What the loss of a batch (or of one device's share of it) needs besides the rows.
pub(super) struct Shard<'a> {
    /// The run's config.
    pub cfg: &'a TrainConfig,
    /// The (autodiff) device the rows are on.
    pub device: &'a Device,
    /// The labels of the data rows.
    pub labels: &'a [usize],
    /// The classes of the `log p(x, y)` chains (one per chain).
    pub pxy_labels: &'a [usize],
    /// Classes of the data set.
    pub num_classes: usize,
}

impl<'a> Shard<'a> {
    fn of(inputs: &'a StepInputs, chains: &Chains) -> Self {
        let labels = &inputs.batch.labels;
        Shard {
            cfg: inputs.cfg,
            device: inputs.device,
            labels,
            pxy_labels: &labels[..chains.pxy_rows],
            num_classes: inputs.num_classes,
        }
    }
}

/// The loss of `model` on the data and samples (with its graph), and its scalars on the
/// host: total, `mean lse` of the data and of the samples, then cross-entropy and accuracy
/// for a classifier; and whether the loss has a sample term.
pub(super) fn forward_loss(
    model: &Classifier,
    shard: &Shard,
    chains: &Chains,
) -> (Tensor<1>, Vec<f32>, bool) {
    let (cfg, device) = (shard.cfg, shard.device);
    let labels = shard.labels;
    let b = labels.len();
    let (px_rows, k) = (chains.px_rows, shard.num_classes);
    let data_oh = one_hot(labels, k, device); // [b, k]
    let x = Tensor::cat(chains.tensors.clone(), 0); // [b + plain + px_rows + pxy_rows, c, h, w]
    let logits = model.forward(x); // [rows, k]
    let data_logits = logits.clone().slice(0..b); // [b, k]
    let plain = chains.plain_rows;
    let plain_logits = (plain > 0).then(|| logits.clone().slice(b..b + plain)); // [b, k]
    let s0 = b + plain; // the first sample row
    let px_logits = (px_rows > 0).then(|| logits.clone().slice(s0..s0 + px_rows)); // [m, k]
    let m = chains.pxy_rows;
    let pxy = (m > 0).then(|| {
        let oh = one_hot(shard.pxy_labels, k, device); // [m, k]
        (logits.clone().slice(s0 + px_rows..s0 + px_rows + m), oh)
    });
    let scalar = logits.dims()[1] == 1;
    let (total, mut scalars, has_lse_sample) = if cfg.loss.objective == Objective::Igebm {
        let (samples, oh) = match (px_logits, pxy) {
            (Some(s), _) => (s, None),
            (None, Some((s, oh))) => (s, Some((data_oh.clone(), oh))),
            (None, None) => unreachable!("IGEBM always samples"),
        };
        let (total, md, ms) = igebm_loss(cfg.loss.energy_l2, data_logits.clone(), samples, oh);
        let scalars = vec![total.clone().detach(), md.detach(), ms.detach()];
        (total, scalars, true)
    } else {
        let parts = loss(
            &cfg.loss,
            data_logits.clone(),
            data_oh.clone(),
            plain_logits,
            px_logits,
            pxy,
        );
        let has = parts.lse_sample.is_some();
        let lse_data = parts.lse_data.detach();
        let lse_sample = parts.lse_sample.map_or(lse_data.clone(), |t| t.detach());
        let scalars = vec![parts.total.clone().detach(), lse_data, lse_sample];
        (parts.total, scalars, has)
    };
    if !scalar {
        scalars.push(cross_entropy(data_logits.clone(), data_oh.clone()).detach());
        let correct = data_logits
            .argmax(1)
            .equal(data_oh.argmax(1))
            .float()
            .mean(); // [1]
        scalars.push(correct);
    }
    let values: Vec<f32> = Tensor::cat(scalars, 0)
        .into_data()
        .try_to_vec::<f32>()
        .expect("scalars are f32"); // [3 or 5]
    (total, values, has_lse_sample)
}
