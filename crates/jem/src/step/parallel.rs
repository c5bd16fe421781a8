//! Data parallel over several devices (`jem train --devices wgpu:0,wgpu:1`): each device holds
//! a replica of the model and computes its share of every batch and of the SGLD chains; the
//! gradients are all-reduced (averaged) and one optimiser step updates the model, which the
//! replicas then copy. Equal shares make the average of the shares' gradients the gradient
//! of the whole batch, so the run equals the single-device run of the same global batch up to
//! rounding (the SGLD update and its noise are drawn once, on the host, for all chains).
//!
//! The all-reduce goes through the host. burn's collective `all_reduce`
//! (`burn::tensor::distributed`) is implemented only by the CUDA runtime (NCCL) in burn 0.22;
//! the wgpu and CPU runtimes have no device transport, so the host path is what runs on
//! them, and it works across any mix of devices.

use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::autodiff::{Shard, forward_loss, metrics};
use super::{Chains, StepInputs, StepResult};
use crate::energy::{self, Target, one_hot};
use crate::metrics::Divergence;
use crate::model::Classifier;
use crate::sgld::{self, SgldConfig, SgldOutput};

/// Rows `[i n / k, (i + 1) n / k)` of `n` rows: share `i` of `k`.
fn share(n: usize, i: usize, k: usize) -> std::ops::Range<usize> {
    i * n / k..(i + 1) * n / k
}

/// The model on every device: the model itself on the first, forks on the others.
pub(super) fn replicas(model: &Classifier, devices: &[Device]) -> Vec<Classifier> {
    let mut v = vec![model.clone()];
    v.extend(devices[1..].iter().map(|d| model.clone().fork(d)));
    v
}

/// SGLD chains from `start` with each device computing the input gradient of its share of
/// the chains; the update and noise are those of a single device's chains
/// ([`sgld::chains_host`]).
///
/// # Shapes
/// `start: [m, c, h, w] -> samples [m, c, h, w]` (on `start`'s device)
pub(super) fn sharded_sgld(
    models: &[Classifier],
    devices: &[Device],
    start: Tensor<4>,
    labels: Option<&[usize]>,
    k_classes: usize,
    params: &SgldConfig,
    rng: &mut crate::rng::Rng,
) -> SgldOutput {
    let dims = start.dims();
    let [m, c, h, w] = dims;
    let per = c * h * w;
    let home = start.device();
    let x: Vec<f32> = start.into_data().try_to_vec().expect("f32 chains");
    let k = devices.len();
    // Each share's target, on its device, once for all the steps.
    let targets: Vec<Target> = (0..k)
        .map(|i| match labels {
            Some(l) => {
                let device = devices[i].clone().inner();
                Target::Joint(one_hot(&l[share(m, i, k)], k_classes, &device))
            }
            None => Target::Marginal,
        })
        .collect();
    let (x, grad_norm) = sgld::chains_host(x, per, params, rng, |x| {
        let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..k)
                .map(|i| {
                    let rows = share(m, i, k);
                    let (model, device) = (models[i].clone(), devices[i].clone().inner());
                    let target = targets[i].clone();
                    let xs = x[rows.start * per..rows.end * per].to_vec();
                    s.spawn(move || {
                        let n = rows.len();
                        let xt = Tensor::<4>::from_data(TensorData::new(xs, [n, c, h, w]), &device);
                        let (g, _) = energy::input_grad(&model, xt, &target);
                        g.into_data().try_to_vec::<f32>().expect("f32 gradients")
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a device's share of the chains panicked"))
                .collect()
        });
        parts.concat()
    });
    SgldOutput {
        samples: Tensor::from_data(TensorData::new(x, dims), &home),
        grad_norm,
    }
}

/// Share `i` of `k` of the loss rows: each block (data, plain copies, p(x) chains, p(x, y)
/// chains) split alike, as tensors on `device`.
fn chains_share(
    chains: &Chains,
    per: usize,
    shape: [usize; 3],
    i: usize,
    k: usize,
    device: &Device,
) -> Chains {
    let b = chains.tensors[0].dims()[0];
    let blocks = [b, chains.plain_rows, chains.px_rows, chains.pxy_rows];
    let mut out = Chains {
        tensors: Vec::new(),
        host_rows: Vec::new(),
        plain_rows: chains.plain_rows / k,
        px_rows: chains.px_rows / k,
        pxy_rows: chains.pxy_rows / k,
        grad_norm: chains.grad_norm,
        n_reinit: chains.n_reinit,
    };
    let mut first = 0;
    for n in blocks.into_iter().filter(|&n| n > 0) {
        let rows = share(n, i, k);
        let r = &chains.host_rows[(first + rows.start) * per..(first + rows.end) * per];
        let [c, h, w] = shape;
        out.tensors.push(Tensor::from_data(
            TensorData::new(r.to_vec(), [rows.len(), c, h, w]),
            device,
        ));
        out.host_rows.extend_from_slice(r);
        first += n;
    }
    out
}

/// One data-parallel iteration after the chains ran: each device's loss and gradients on its
/// share, their average applied by one optimiser step on the first device.
pub(super) fn iteration(
    model: Classifier,
    models: &[Classifier],
    devices: &[Device],
    inputs: &mut StepInputs,
    chains: &Chains,
) -> StepResult {
    let k = devices.len();
    let shape = inputs.shape;
    let per: usize = shape.iter().product();
    let labels = &inputs.batch.labels;
    let (b, m) = (labels.len(), chains.pxy_rows);
    let (cfg, num_classes) = (inputs.cfg, inputs.num_classes);
    let results: Vec<(GradientsParams, Vec<f32>, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..k)
            .map(|i| {
                let (model, device) = (&models[i], &devices[i]);
                let home = devices[0].clone();
                s.spawn(move || {
                    let part = chains_share(chains, per, shape, i, k, device);
                    let shard = Shard {
                        cfg,
                        device,
                        labels: &labels[share(b, i, k)],
                        pxy_labels: &labels[..m][share(m, i, k)],
                        num_classes,
                    };
                    let (total, values, has) = forward_loss(model, &shard, &part);
                    let grads = GradientsParams::from_grads(total.backward(), model);
                    (grads.to_device(&home.inner(), model), values, has)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a device's share of the batch panicked"))
            .collect()
    });
    let has_lse_sample = results[0].2;
    let mut values = vec![0.0f32; results[0].1.len()];
    for (_, v, _) in &results {
        values
            .iter_mut()
            .zip(v)
            .for_each(|(a, b)| *a += b / k as f32);
    }
    let loss_value = Divergence::check("loss", values[0] as f64)?;
    let grads = all_reduce_mean(results.into_iter().map(|r| r.0).collect(), &model);
    let model = inputs.optim.step(inputs.lr, model, grads);
    Ok((
        model,
        metrics(loss_value, &values, has_lse_sample, inputs.lr),
    ))
}

/// The mean of the shares' gradients (all on the first device), parameter by parameter.
fn all_reduce_mean(mut shares: Vec<GradientsParams>, model: &Classifier) -> GradientsParams {
    struct Mean<'a> {
        shares: &'a mut [GradientsParams],
        out: GradientsParams,
    }
    impl ModuleVisitor for Mean<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let k = self.shares.len() as f64;
            let sum = self
                .shares
                .iter_mut()
                .filter_map(|g| g.remove::<D>(p.id))
                .reduce(|a, b| a + b);
            if let Some(sum) = sum {
                self.out.register(p.id, sum.div_scalar(k));
            }
        }
    }
    let mut mean = Mean {
        shares: &mut shares,
        out: GradientsParams::new(),
    };
    burn::module::Module::visit(model, &mut mean);
    mean.out
}
