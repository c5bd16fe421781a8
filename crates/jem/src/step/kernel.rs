//! The forward/backward pass and update of a softmax, JEM or IGEBM iteration through the CPU
//! kernel of the CNN: the loss and its gradient in the logits in closed form, weight
//! gradients by GEMM.

use super::{Chains, StepInputs, StepResult};
use crate::cnn_cpu::{self, CnnKernel};
use crate::loss::{LossConfig, Objective};
use crate::metrics::{Divergence, StepMetrics};
use crate::model::Classifier;
use crate::optim::sam_perturb;
use burn::optim::GradientsParams;

/// Forward data and samples, the closed-form loss gradient, backward, one optimiser step (with
/// SAM's second pass at the perturbed weights when `optim.sam_rho > 0`).
pub(super) fn iteration(
    model: Classifier,
    inputs: &mut StepInputs,
    mut kernel: CnnKernel,
    chains: &Chains,
) -> StepResult {
    let (metrics, mut grads) = loss_and_grads(&model, &mut kernel, inputs, chains)?;
    let rho = inputs.cfg.optim.sam_rho;
    if rho > 0.0 {
        let adv = sam_perturb(model.clone(), &grads, rho);
        let mut at_adv = CnnKernel::from_model(&adv).expect("the same CNN, moved");
        let (_, g) = loss_and_grads(&adv, &mut at_adv, inputs, chains).map_err(|d| Divergence {
            what: format!("{} at SAM's perturbed weights", d.what),
            value: d.value,
        })?;
        grads = g;
    }
    let model = inputs.optim.step(metrics.lr, model, grads);
    Ok((model, metrics))
}

/// The step's metrics and the gradient of its loss in `model`'s weights (`kernel` is
/// `model`'s).
fn loss_and_grads(
    model: &Classifier,
    kernel: &mut CnnKernel,
    inputs: &StepInputs,
    chains: &Chains,
) -> Result<(StepMetrics, GradientsParams), Divergence> {
    let labels = &inputs.batch.labels;
    let rows = Rows {
        b: labels.len(),
        plain: chains.plain_rows,
        px: chains.px_rows,
        pxy: chains.pxy_rows,
    };
    let n = rows.b + rows.plain + rows.px + rows.pxy;
    let logits = kernel.forward(&chains.host_rows, n, inputs.shape); // [n, outputs]
    let (dl, metrics) = match inputs.cfg.loss.objective {
        Objective::Igebm => igebm(
            inputs.cfg.loss.energy_l2 as f64,
            labels,
            &logits,
            kernel.outputs(),
            rows,
            inputs.lr,
        )?,
        _ => jem(
            &inputs.cfg.loss,
            labels,
            &logits,
            inputs.num_classes,
            rows,
            inputs.lr,
        )?,
    };
    let (_, grads) = kernel.backward(n, inputs.shape, &dl, false, true);
    let device = model.device().inner();
    let grads =
        cnn_cpu::gradients_params(model, &grads.expect("weight gradients requested"), &device);
    Ok((metrics, grads))
}

/// Rows of the kernel's batch: data, then the data's plain copies (`plain`: `b` or 0), then
/// `log p(x)` samples, then `log p(x, y)` samples.
#[derive(Clone, Copy)]
struct Rows {
    b: usize,
    plain: usize,
    px: usize,
    pxy: usize,
}

/// Sums over the data and sample rows of a softmax or JEM loss.
#[derive(Default)]
struct Sums {
    ce: f64,
    lse_data: f64,
    lse_sample: f64,
    lse2_data: f64,
    lse2_sample: f64,
    fy_data: f64,
    fy_sample: f64,
    correct: usize,
}

/// The softmax or JEM loss of [`crate::loss::loss`] on the kernel's logits (`k` per row)
/// and its gradient in them.
fn jem(
    l: &LossConfig,
    labels: &[usize],
    logits: &[f32],
    k: usize,
    rows: Rows,
    lr: f64,
) -> Result<(Vec<f32>, StepMetrics), Divergence> {
    let jem = l.objective == Objective::Jem;
    let px = if jem && rows.px > 0 { l.px_weight } else { 0.0 };
    let pxy = if jem && rows.pxy > 0 {
        l.pxy_weight
    } else {
        0.0
    };
    let Rows { b, .. } = rows;
    let beta = if jem { l.lse_l2 } else { 0.0 };
    let weights = Weights {
        pyx: l.pyx_weight,
        px,
        pxy,
        beta,
    };
    let (dl, s) = jem_gradient(weights, labels, logits, k, rows);
    let bf = b as f64;
    let mut total = l.pyx_weight as f64 * s.ce / bf;
    let lse_sample = (rows.px > 0 && jem).then(|| s.lse_sample / rows.px as f64);
    if let Some(ls) = lse_sample.filter(|_| px > 0.0) {
        total += px as f64 * (ls - s.lse_data / bf);
    }
    if beta > 0.0 {
        total += beta as f64 * s.lse2_data / bf;
        if px > 0.0 {
            total += beta as f64 * s.lse2_sample / rows.px as f64;
        }
    }
    if pxy > 0.0 {
        total += pxy as f64 * (s.fy_sample / rows.pxy as f64 - s.fy_data / bf);
    }
    let total = Divergence::check("loss", total)?;
    let mut m = StepMetrics::new(total, s.lse_data / bf, lr);
    m.ce = Some(s.ce / bf);
    m.lse_sample = lse_sample;
    m.acc = Some(s.correct as f64 / bf);
    Ok((dl, m))
}

/// The weights of a softmax or JEM loss's terms (0 for a term not in the step).
#[derive(Clone, Copy)]
struct Weights {
    pyx: f32,
    px: f32,
    pxy: f32,
    /// The energy-magnitude penalty `lse_l2`.
    beta: f32,
}

/// The gradient of the weighted loss in every row's logits, and the sums of its terms.
fn jem_gradient(
    Weights { pyx, px, pxy, beta }: Weights,
    labels: &[usize],
    logits: &[f32],
    k: usize,
    Rows {
        b,
        plain,
        px: px_rows,
        pxy: pxy_rows,
    }: Rows,
) -> (Vec<f32>, Sums) {
    let n = b + plain + px_rows + pxy_rows;
    let inv_b = 1.0 / b as f32;
    // The generative terms' data rows: the plain copies when there are any.
    let gen_data = if plain > 0 { b..b + plain } else { 0..b };
    let samples = b + plain;
    let mut dl = vec![0.0f32; n * k];
    let mut s = Sums::default();
    for i in 0..n {
        let row = &logits[i * k..(i + 1) * k];
        let (lse, p) = cnn_cpu::softmax(row);
        let d = &mut dl[i * k..(i + 1) * k];
        if i < b {
            let y = labels[i];
            s.ce += (lse - row[y]) as f64;
            s.correct += usize::from(argmax(row) == y);
            for j in 0..k {
                d[j] = pyx * p[j] * inv_b;
            }
            d[y] -= pyx * inv_b;
        }
        if gen_data.contains(&i) {
            let y = labels[i - gen_data.start];
            s.lse_data += lse as f64;
            s.fy_data += row[y] as f64;
            s.lse2_data += (lse * lse) as f64;
            let pen = 2.0 * beta * lse;
            for j in 0..k {
                d[j] += (pen - px) * p[j] * inv_b;
            }
            d[y] -= pxy * inv_b;
        } else if (samples..samples + px_rows).contains(&i) {
            s.lse_sample += lse as f64;
            s.lse2_sample += (lse * lse) as f64;
            let pen = if px > 0.0 { 2.0 * beta * lse } else { 0.0 };
            for j in 0..k {
                d[j] = (px + pen) * p[j] / px_rows as f32;
            }
        } else if i >= samples + px_rows {
            let y = labels[i - samples - px_rows];
            s.fy_sample += row[y] as f64;
            d[y] += pxy / pxy_rows as f32;
        }
    }
    (dl, s)
}

/// The first index of a row's largest value.
fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |m, j| if row[j] > row[m] { j } else { m })
}

/// The IGEBM loss of [`crate::loss::igebm_loss`] on the kernel's logits (`outputs` per row:
/// 1 for the scalar energy) and its gradient in them.
fn igebm(
    alpha: f64,
    labels: &[usize],
    logits: &[f32],
    outputs: usize,
    Rows { b, px, pxy, .. }: Rows,
    lr: f64,
) -> Result<(Vec<f32>, StepMetrics), Divergence> {
    let m = px + pxy;
    let conditional = pxy > 0;
    let energy = |i: usize| -> (usize, f64) {
        let row = &logits[i * outputs..(i + 1) * outputs];
        if conditional {
            let y = labels[if i < b { i } else { i - b }];
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
    let total = Divergence::check("loss", ms - md + alpha * (qd / b as f64 + qs / m as f64))?;
    let mut metrics = StepMetrics::new(total, md, lr);
    metrics.lse_sample = Some(ms);
    if outputs > 1 {
        let (mut c, mut ok) = (0f64, 0usize);
        for (i, &y) in labels.iter().enumerate() {
            let row = &logits[i * outputs..(i + 1) * outputs];
            c += (cnn_cpu::softmax(row).0 - row[y]) as f64;
            ok += usize::from(argmax(row) == y);
        }
        metrics.ce = Some(c / b as f64);
        metrics.acc = Some(ok as f64 / b as f64);
    }
    Ok((dl, metrics))
}
