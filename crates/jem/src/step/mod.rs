//! One training iteration, for every objective: draw chains from the buffer and run them
//! (JEM, IGEBM), one forward/backward pass on data and samples together, one optimiser
//! step; or the critic and classifier updates of `--objective lsd` (`step/lsd.rs`).
//!
//! [`iteration`] is the one entry point. It takes the model and one [`StepInputs`], and
//! dispatches once on the objective and the compute engine: the CPU kernel of the CNN
//! (`step/kernel.rs`: the loss and its gradient in the logits in closed form, weight gradients
//! by GEMM) or burn's autodiff (`step/autodiff.rs`); both give the same step up to float rounding.
//! [`iteration_on`] runs it data parallel over several devices (`step/parallel.rs`).

mod autodiff;
mod kernel;
mod lsd;
mod parallel;

use std::time::Instant;

use burn::prelude::*;

use crate::buffer::ReplayBuffer;
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::energy::{Target, one_hot};
use crate::engine::Engine;
use crate::loss::Objective;
use crate::lsd::CriticState;
use crate::metrics::{Divergence, StepMetrics};
use crate::model::Classifier;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::sgld::{Precision, SgldConfig, SgldOutput};

/// What one iteration reads, and the state it updates besides the model.
pub struct StepInputs<'a> {
    /// The run's config, with the recovery back-off already applied to the sampler.
    pub cfg: &'a TrainConfig,
    /// Where gradients are computed.
    pub engine: Engine,
    /// The data batch.
    pub batch: &'a Batch,
    /// Image shape `[c, h, w]`.
    pub shape: [usize; 3],
    /// Classes of the data set.
    pub num_classes: usize,
    /// The model's learning rate for this step.
    pub lr: f64,
    /// The Stein critic's learning rate (`--objective lsd`).
    pub critic_lr: f64,
    /// The model's optimiser.
    pub optim: &'a mut Optimizer,
    /// The replay buffer (objectives that sample).
    pub buffer: Option<&'a mut ReplayBuffer>,
    /// The Stein critic and its optimiser (`--objective lsd`).
    pub critic: Option<&'a mut CriticState>,
    /// The run's generator.
    pub rng: &'a mut Rng,
    /// The model's (autodiff) device.
    pub device: &'a Device,
}

/// The step's update is kept (`Ok`), or the divergence it detected is returned and nothing
/// was updated.
pub type StepResult = std::result::Result<(Classifier, StepMetrics), Divergence>;

/// One training iteration on `inputs.batch`: returns the updated model and the step's
/// metrics, or the divergence it detected (in which case no update was applied).
pub fn iteration(model: Classifier, mut inputs: StepInputs) -> StepResult {
    let t0 = Instant::now();
    if inputs.cfg.loss.objective == Objective::Lsd {
        let critic = inputs
            .critic
            .take()
            .expect("an lsd run always has a critic");
        return lsd::iteration(model, &mut inputs, critic, t0);
    }
    let (engine, k, inner) = (
        inputs.engine,
        inputs.num_classes,
        inputs.device.clone().inner(),
    );
    let chains = sample_chains(&mut inputs, &mut |start, ys, params, rng| {
        let target = match ys {
            Some(ys) => Target::Joint(one_hot(ys, k, &inner)),
            None => Target::Marginal,
        };
        engine.sgld(&model, start, &target, params, rng)
    });
    let mut out = match inputs.engine.kernel(&model, Precision::F32) {
        Some(kernel) => kernel::iteration(model, &mut inputs, kernel, &chains),
        None => autodiff::iteration(model, &mut inputs, &chains),
    };
    if let Ok((_, m)) = &mut out {
        m.sgld_grad_norm = chains.grad_norm;
        m.n_reinit = chains.n_reinit;
        m.ms = t0.elapsed().as_secs_f64() * 1e3;
    }
    out
}

/// [`iteration`] data parallel over `devices` (autodiff devices, the first the model's and
/// `inputs.device`): each computes its share of the batch and of the chains, and the averaged
/// gradients make one optimiser step. One device is [`iteration`] itself. The shares must be
/// equal ([`TrainConfig::validate`] checks `schedule.batch_size` and `sgld.chains`); the Stein
/// objective and SAM run on one device only.
pub fn iteration_on(model: Classifier, mut inputs: StepInputs, devices: &[Device]) -> StepResult {
    if devices.len() <= 1 {
        return iteration(model, inputs);
    }
    let t0 = Instant::now();
    let models = parallel::replicas(&model, devices);
    let k = inputs.num_classes;
    let chains = sample_chains(&mut inputs, &mut |start, ys, params, rng| {
        parallel::sharded_sgld(&models, devices, start, ys, k, params, rng)
    });
    let mut out = parallel::iteration(model, &models, devices, &mut inputs, &chains);
    if let Ok((_, m)) = &mut out {
        m.sgld_grad_norm = chains.grad_norm;
        m.n_reinit = chains.n_reinit;
        m.ms = t0.elapsed().as_secs_f64() * 1e3;
    }
    out
}

/// Runs SGLD from a start (`[m, c, h, w]`) for the classes given (`None`: `log p(x)`).
type Sampler<'a> = dyn FnMut(Tensor<4>, Option<&[usize]>, &SgldConfig, &mut Rng) -> SgldOutput + 'a;

/// The inputs of the loss: the data batch, then its plain copies (JEM with
/// [`crate::loss::PxData::Plain`]), then the `log p(x)` chains, then the `log p(x, y)`
/// chains (those the objective asks for), as tensors and as host rows.
struct Chains {
    /// Data and samples as autodiff tensors, `[b, c, h, w]` each.
    tensors: Vec<Tensor<4>>,
    /// The same rows on the host, `[b + plain_rows + px_rows + pxy_rows, c, h, w]` row-major.
    host_rows: Vec<f32>,
    /// Rows of plain copies of the data batch: `b` or 0.
    plain_rows: usize,
    /// Rows of `log p(x)` samples.
    px_rows: usize,
    /// Rows of `log p(x, y)` samples (the batch's classes).
    pxy_rows: usize,
    /// Mean SGLD gradient norm at the last step of the last chains run.
    grad_norm: Option<f64>,
    /// Chains restarted from noise.
    n_reinit: Option<usize>,
}

/// Draw chains from the buffer, run them, store them back: JEM by its weights; IGEBM one
/// kind, conditional with a conditional buffer.
fn sample_chains(inputs: &mut StepInputs, sgld: &mut Sampler) -> Chains {
    let (cfg, batch) = (inputs.cfg, inputs.batch);
    let b = batch.labels.len();
    let [c, h, w] = inputs.shape;
    let tensor = |rows: &[f32]| {
        Tensor::<4>::from_data(TensorData::new(rows.to_vec(), [b, c, h, w]), inputs.device)
    }; // [b, c, h, w]
    // The plain copies are the generative data rows: IGEBM's only data rows; JEM's besides
    // the augmented rows of its cross-entropy.
    let plain = batch
        .plain
        .as_deref()
        .filter(|_| cfg.loss.has_generative_data_term());
    let igebm = cfg.loss.objective == Objective::Igebm;
    let data = match plain {
        Some(p) if igebm => p,
        _ => &batch.images,
    };
    let mut out = Chains {
        tensors: vec![tensor(data)],
        host_rows: data.to_vec(),
        plain_rows: 0,
        px_rows: 0,
        pxy_rows: 0,
        grad_norm: None,
        n_reinit: None,
    };
    if let Some(p) = plain.filter(|_| !igebm) {
        out.tensors.push(tensor(p));
        out.host_rows.extend_from_slice(p);
        out.plain_rows = b;
    }
    let (want_px, want_pxy) = match cfg.loss.objective {
        Objective::Igebm => (!cfg.buffer.conditional, cfg.buffer.conditional),
        _ => (cfg.loss.px_weight > 0.0, cfg.loss.pxy_weight > 0.0),
    };
    let Some(buffer) = inputs.buffer.as_deref_mut() else {
        return out;
    };
    if !cfg.loss.needs_sampling() {
        return out;
    }
    let m = cfg.sgld.chains_for(b);
    let mut run = |labels: Option<&[usize]>, out: &mut Chains| {
        let draw = buffer.draw(m, labels, cfg.buffer.reinit_freq, inputs.rng);
        let inner = inputs.device.clone().inner();
        let start =
            Tensor::<4>::from_data(TensorData::new(draw.start.clone(), [m, c, h, w]), &inner);
        let ys = draw.labels.as_deref().or(labels);
        let s = sgld(start, ys, &cfg.sgld, inputs.rng);
        let values: Vec<f32> = s
            .samples
            .to_data()
            .try_to_vec::<f32>()
            .expect("samples are f32");
        buffer.store(&draw.slots, &values);
        out.host_rows.extend_from_slice(&values);
        *out.n_reinit.get_or_insert(0) += draw.n_reinit;
        out.grad_norm = Some(s.grad_norm as f64);
        out.tensors.push(s.samples.autodiff());
    };
    if want_px {
        run(None, &mut out);
        out.px_rows = m;
    }
    if want_pxy {
        run(Some(&batch.labels[..m]), &mut out);
        out.pxy_rows = m;
    }
    out
}
