//! One training iteration: draw chains from the buffer, run SGLD, write them back, one
//! forward/backward pass on data and samples together, one optimiser step.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::buffer::ReplayBuffer;
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::energy::{Target, one_hot};
use crate::loss::{LossConfig, Objective, igebm_loss, loss};
use crate::model::Classifier;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::sgld::sgld;

/// A loss beyond this magnitude stops the run as diverged.
pub const LOSS_LIMIT: f64 = 1e8;

/// What one step measured (a line of `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Steps completed, this one included.
    pub step: u64,
    /// Epoch of this step (0-based).
    pub epoch: u64,
    /// The objective.
    pub loss: f64,
    /// Cross-entropy on the data batch (none for a scalar-energy model).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ce: Option<f64>,
    /// `mean(lse(f(x_data)))`: minus the mean energy of the data.
    pub lse_data: f64,
    /// `mean(lse(f(x_sample)))`: minus the mean energy of the samples.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lse_sample: Option<f64>,
    /// Accuracy on the data batch (none for a scalar-energy model).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc: Option<f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Mean input-gradient norm at the last SGLD step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sgld_grad_norm: Option<f64>,
    /// `--objective lsd`: the Stein discrepancy estimate on the batch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stein: Option<f64>,
    /// `--objective lsd`: the critic's loss `lambda E|g|^2 - SD`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub critic_loss: Option<f64>,
    /// Chains restarted from noise.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n_reinit: Option<usize>,
    /// Wall-clock milliseconds of the step.
    pub ms: f64,
}

/// A non-finite or exploding quantity seen during an iteration (no update was applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// Which quantity.
    pub what: String,
    /// Its value.
    pub value: f64,
}

/// One JEM, IGEBM or softmax training iteration on `batch` (`--objective lsd` has its own,
/// [`crate::lsd::lsd_iteration`]): returns the updated model and the step's metrics, or the
/// divergence it detected (in which case no update was applied).
#[allow(clippy::too_many_arguments)]
pub fn iteration(
    cfg: &TrainConfig,
    model: Classifier,
    optim: &mut Optimizer,
    buffer: Option<&mut ReplayBuffer>,
    batch: &Batch,
    shape: [usize; 3],
    num_classes: usize,
    lr: f64,
    rng: &mut Rng,
    device: &Device,
) -> std::result::Result<(Classifier, StepMetrics), Divergence> {
    let t0 = Instant::now();
    let b = batch.labels.len();
    let [c, h, w] = shape;
    let x_data =
        Tensor::<4>::from_data(TensorData::new(batch.images.clone(), [b, c, h, w]), device); // [b, c, h, w]
    let data_oh = one_hot(&batch.labels, num_classes, device); // [b, k]
    let LossConfig {
        px_weight,
        pxy_weight,
        objective,
        ..
    } = cfg.loss;
    // Which chains: JEM by its weights; IGEBM one kind, conditional with a conditional buffer.
    let (want_px, want_pxy) = match objective {
        Objective::Igebm => (!cfg.buffer.conditional, cfg.buffer.conditional),
        _ => (px_weight > 0.0, pxy_weight > 0.0),
    };
    let mut inputs = vec![x_data];
    let mut px_rows = 0;
    let mut pxy_oh = None;
    let mut grad_norm = None;
    let mut n_reinit = None;
    if let (true, Some(buffer)) = (cfg.loss.needs_sampling(), buffer) {
        let inner = device.clone().inner();
        let mut chains = |labels: Option<&[usize]>, buffer: &mut ReplayBuffer| {
            let draw = buffer.draw(b, labels, cfg.buffer.reinit_freq, rng);
            let start =
                Tensor::<4>::from_data(TensorData::new(draw.start.clone(), [b, c, h, w]), &inner);
            let (target, ys) = match (&draw.labels, labels) {
                (Some(ys), _) => (
                    Target::Joint(one_hot(ys, num_classes, &inner)),
                    Some(ys.clone()),
                ),
                (None, Some(ys)) => (
                    Target::Joint(one_hot(ys, num_classes, &inner)),
                    Some(ys.to_vec()),
                ),
                (None, None) => (Target::Marginal, None),
            };
            let out = sgld(&model, start, &target, &cfg.sgld, rng);
            let values: Vec<f32> = out
                .samples
                .to_data()
                .try_to_vec::<f32>()
                .expect("samples are f32");
            buffer.store(&draw.slots, &values);
            *n_reinit.get_or_insert(0) += draw.n_reinit;
            grad_norm = Some(out.grad_norm as f64);
            (out.samples, ys)
        };
        if want_px {
            let (s, _) = chains(None, buffer);
            inputs.push(s.autodiff());
            px_rows = b;
        }
        if want_pxy {
            let (s, _) = chains(Some(&batch.labels), buffer);
            inputs.push(s.autodiff());
            pxy_oh = Some(one_hot(&batch.labels, num_classes, device));
        }
    }
    let x = Tensor::cat(inputs, 0); // [b + px_rows + pxy_rows, c, h, w]
    let logits = model.forward(x); // [rows, k]
    let data_logits = logits.clone().slice(0..b); // [b, k]
    let px_logits = (px_rows > 0).then(|| logits.clone().slice(b..b + px_rows)); // [b, k]
    let pxy = pxy_oh.map(|oh| (logits.clone().slice(b + px_rows..b + px_rows + b), oh));
    let scalar = logits.dims()[1] == 1;
    let mut has_lse_sample = true;
    let (total, mut scalars) = if objective == Objective::Igebm {
        let (samples, oh) = match (px_logits, pxy) {
            (Some(s), _) => (s, None),
            (None, Some((s, oh))) => (s, Some((data_oh.clone(), oh))),
            (None, None) => unreachable!("IGEBM always samples"),
        };
        let (total, md, ms) = igebm_loss(cfg.loss.energy_l2, data_logits.clone(), samples, oh);
        (
            total.clone(),
            vec![total.detach(), md.detach(), ms.detach()],
        )
    } else {
        let parts = loss(
            &cfg.loss,
            data_logits.clone(),
            data_oh.clone(),
            px_logits,
            pxy,
        );
        has_lse_sample = parts.lse_sample.is_some();
        let lse_data = parts.lse_data.detach();
        let lse_sample = parts.lse_sample.map_or(lse_data.clone(), |t| t.detach());
        (
            parts.total.clone(),
            vec![parts.total.detach(), lse_data, lse_sample],
        )
    };
    if !scalar {
        scalars.push(crate::energy::cross_entropy(data_logits.clone(), data_oh.clone()).detach());
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
        .expect("scalars are f32");
    let loss_value = values[0] as f64;
    if !loss_value.is_finite() || loss_value.abs() > LOSS_LIMIT {
        return Err(Divergence {
            what: "loss".into(),
            value: loss_value,
        });
    }
    let grads = total.backward();
    let grads = GradientsParams::from_grads(grads, &model);
    let model = optim.step(lr, model, grads);
    let metrics = StepMetrics {
        step: 0,
        epoch: 0,
        loss: loss_value,
        lse_data: values[1] as f64,
        lse_sample: has_lse_sample.then_some(values[2] as f64),
        ce: values.get(3).map(|&v| v as f64),
        acc: values.get(4).map(|&v| v as f64),
        lr,
        sgld_grad_norm: grad_norm,
        stein: None,
        critic_loss: None,
        n_reinit,
        ms: t0.elapsed().as_secs_f64() * 1e3,
    };
    Ok((model, metrics))
}
