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
/// divergence it detected (in which case no update was applied). Softmax and JEM iterations
/// of the CNN on the CPU run through [`crate::cnn_cpu`]; everything else through burn's
/// autodiff ([`iteration_autodiff`]).
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
    iteration_impl(
        cfg,
        model,
        optim,
        buffer,
        batch,
        (shape, num_classes),
        lr,
        rng,
        device,
        true,
    )
}

/// [`iteration`] with the loss and update through burn's autodiff whatever the model (the
/// reference the CPU kernel is tested against; the chains still use [`sgld`]).
#[allow(clippy::too_many_arguments)]
pub fn iteration_autodiff(
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
    iteration_impl(
        cfg,
        model,
        optim,
        buffer,
        batch,
        (shape, num_classes),
        lr,
        rng,
        device,
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn iteration_impl(
    cfg: &TrainConfig,
    model: Classifier,
    optim: &mut Optimizer,
    buffer: Option<&mut ReplayBuffer>,
    batch: &Batch,
    (shape, num_classes): ([usize; 3], usize),
    lr: f64,
    rng: &mut Rng,
    device: &Device,
    kernel: bool,
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
    let mut host_rows = batch.images.clone();
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
            host_rows.extend_from_slice(&values);
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
    if kernel
        && matches!(
            objective,
            Objective::Softmax | Objective::Jem | Objective::Igebm
        )
        && crate::cnn_cpu::available(&model)
    {
        let kernel_step = KernelStep {
            cfg,
            batch,
            shape,
            num_classes,
            px_rows,
            pxy_rows: if pxy_oh.is_some() { b } else { 0 },
        };
        return kernel_step.run(model, optim, &host_rows, lr, t0, grad_norm, n_reinit);
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

/// The forward/backward pass and update of a softmax or JEM iteration through
/// [`crate::cnn_cpu`] (the CNN on the CPU): the loss and its gradient in the logits in
/// closed form, weight gradients by GEMM.
struct KernelStep<'a> {
    cfg: &'a TrainConfig,
    batch: &'a Batch,
    shape: [usize; 3],
    num_classes: usize,
    px_rows: usize,
    pxy_rows: usize,
}

impl KernelStep<'_> {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        model: Classifier,
        optim: &mut Optimizer,
        rows: &[f32],
        lr: f64,
        t0: Instant,
        grad_norm: Option<f64>,
        n_reinit: Option<usize>,
    ) -> std::result::Result<(Classifier, StepMetrics), Divergence> {
        let l = &self.cfg.loss;
        let jem = l.objective == Objective::Jem;
        let (k, b) = (self.num_classes, self.batch.labels.len());
        let n = b + self.px_rows + self.pxy_rows;
        let mut kernel =
            crate::cnn_cpu::CnnKernel::from_model(&model).expect("available() checked the model");
        let logits = kernel.forward(rows, n, self.shape);
        if l.objective == Objective::Igebm {
            let (dl, metrics) = self.igebm(&logits, kernel.outputs(), lr)?;
            return Ok(self.finish(model, optim, kernel, &dl, metrics, t0, grad_norm, n_reinit));
        }
        let px = if jem && self.px_rows > 0 {
            l.px_weight
        } else {
            0.0
        };
        let pxy = if jem && self.pxy_rows > 0 {
            l.pxy_weight
        } else {
            0.0
        };
        let inv_b = 1.0 / b as f32;
        let mut dl = vec![0.0f32; n * k];
        let (mut ce, mut lse_d, mut lse_s, mut fy_d, mut fy_s, mut correct) =
            (0f64, 0f64, 0f64, 0f64, 0f64, 0usize);
        for i in 0..n {
            let row = &logits[i * k..(i + 1) * k];
            let (lse, p) = crate::cnn_cpu::softmax(row);
            let d = &mut dl[i * k..(i + 1) * k];
            if i < b {
                let y = self.batch.labels[i];
                ce += (lse - row[y]) as f64;
                lse_d += lse as f64;
                fy_d += row[y] as f64;
                let pred = (0..k).fold(0, |m, j| if row[j] > row[m] { j } else { m });
                correct += usize::from(pred == y);
                for j in 0..k {
                    d[j] = (l.pyx_weight - px) * p[j] * inv_b;
                }
                d[y] -= (l.pyx_weight + pxy) * inv_b;
            } else if i < b + self.px_rows {
                lse_s += lse as f64;
                for j in 0..k {
                    d[j] = px * p[j] / self.px_rows as f32;
                }
            } else {
                let y = self.batch.labels[i - b - self.px_rows];
                fy_s += row[y] as f64;
                d[y] += pxy / self.pxy_rows as f32;
            }
        }
        let bf = b as f64;
        let mut total = l.pyx_weight as f64 * ce / bf;
        let lse_sample = (self.px_rows > 0 && jem).then(|| lse_s / self.px_rows as f64);
        if let Some(ls) = lse_sample.filter(|_| px > 0.0) {
            total += px as f64 * (ls - lse_d / bf);
        }
        if pxy > 0.0 {
            total += pxy as f64 * (fy_s / self.pxy_rows as f64 - fy_d / bf);
        }
        if !total.is_finite() || total.abs() > LOSS_LIMIT {
            return Err(Divergence {
                what: "loss".into(),
                value: total,
            });
        }
        let metrics = StepMetrics {
            step: 0,
            epoch: 0,
            loss: total,
            ce: Some(ce / bf),
            lse_data: lse_d / bf,
            lse_sample,
            acc: Some(correct as f64 / bf),
            lr,
            sgld_grad_norm: None,
            stein: None,
            critic_loss: None,
            n_reinit: None,
            ms: 0.0,
        };
        Ok(self.finish(model, optim, kernel, &dl, metrics, t0, grad_norm, n_reinit))
    }

    /// The IGEBM loss of [`crate::loss::igebm_loss`] on the kernel's logits (`outputs` per
    /// row: 1 for the scalar energy) and its gradient in them.
    fn igebm(
        &self,
        logits: &[f32],
        outputs: usize,
        lr: f64,
    ) -> std::result::Result<(Vec<f32>, StepMetrics), Divergence> {
        let alpha = self.cfg.loss.energy_l2 as f64;
        let b = self.batch.labels.len();
        let m = self.px_rows + self.pxy_rows;
        let conditional = self.pxy_rows > 0;
        let energy = |i: usize| -> (usize, f64) {
            let row = &logits[i * outputs..(i + 1) * outputs];
            if conditional {
                let y = self.batch.labels[if i < b { i } else { i - b }];
                (y, row[y] as f64)
            } else {
                (0, row[0] as f64)
            }
        };
        let mut dl = vec![0.0f32; (b + m) * outputs];
        let (mut sd, mut ss, mut qd, mut qs) = (0f64, 0f64, 0f64, 0f64);
        for i in 0..b + m {
            let (j, f) = energy(i);
            let (count, sign) = if i < b { (b, -1.0) } else { (m, 1.0) };
            dl[i * outputs + j] = ((sign + 2.0 * alpha * f) / count as f64) as f32;
            if i < b {
                sd += f;
                qd += f * f;
            } else {
                ss += f;
                qs += f * f;
            }
        }
        let (md, ms) = (sd / b as f64, ss / m as f64);
        let total = ms - md + alpha * (qd / b as f64 + qs / m as f64);
        if !total.is_finite() || total.abs() > LOSS_LIMIT {
            return Err(Divergence {
                what: "loss".into(),
                value: total,
            });
        }
        let (mut ce, mut correct) = (None, None);
        if outputs > 1 {
            let (mut c, mut ok) = (0f64, 0usize);
            for i in 0..b {
                let row = &logits[i * outputs..(i + 1) * outputs];
                let y = self.batch.labels[i];
                c += (crate::cnn_cpu::softmax(row).0 - row[y]) as f64;
                let pred = (0..outputs).fold(0, |m, j| if row[j] > row[m] { j } else { m });
                ok += usize::from(pred == y);
            }
            ce = Some(c / b as f64);
            correct = Some(ok as f64 / b as f64);
        }
        let metrics = StepMetrics {
            step: 0,
            epoch: 0,
            loss: total,
            ce,
            lse_data: md,
            lse_sample: Some(ms),
            acc: correct,
            lr,
            sgld_grad_norm: None,
            stein: None,
            critic_loss: None,
            n_reinit: None,
            ms: 0.0,
        };
        Ok((dl, metrics))
    }

    /// Backward from `dl`, the update, and the step's remaining metrics.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        model: Classifier,
        optim: &mut Optimizer,
        mut kernel: crate::cnn_cpu::CnnKernel,
        dl: &[f32],
        mut metrics: StepMetrics,
        t0: Instant,
        grad_norm: Option<f64>,
        n_reinit: Option<usize>,
    ) -> (Classifier, StepMetrics) {
        let n = dl.len() / kernel.outputs();
        let (_, grads) = kernel.backward(n, self.shape, dl, false, true);
        let device = crate::eval::accuracy::model_device(&model).inner();
        let grads = crate::cnn_cpu::gradients_params(
            &model,
            &grads.expect("weight gradients requested"),
            &device,
        );
        let model = optim.step(metrics.lr, model, grads);
        metrics.sgld_grad_norm = grad_norm;
        metrics.n_reinit = n_reinit;
        metrics.ms = t0.elapsed().as_secs_f64() * 1e3;
        (model, metrics)
    }
}
