//! Adam and SGD with momentum, weight decay, linear warm-up and step decay.
//!
//! jem keeps its own optimiser (rather than burn's) so that its state is keyed by the order of
//! the parameters in the module, saved exactly, and restored into a freshly built model on
//! resume; and so that Adam's epsilon is PyTorch's 1e-8 rather than burn's 1e-5.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CheckpointError, ConfigError};
use crate::tensor_file::{read_safetensors, write_safetensors};

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Adam (Kingma & Ba), L2 weight decay added to the gradient as in PyTorch's `Adam`.
    Adam,
    /// SGD with (heavy-ball) momentum, PyTorch semantics.
    Sgd,
}

/// Optimiser and schedule (paper defaults: Adam, lr 1e-4, warm-up 1000 iterations, decay
/// by 0.3 at 80% and 90% of the run: epochs 160 and 180 of the paper's 200, and within any
/// `--epochs N`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Update rule.
    pub algorithm: Algorithm,
    /// Base learning rate.
    pub lr: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Adam's epsilon.
    pub eps: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Linear warm-up from 0 over this many iterations.
    pub warmup_steps: u64,
    /// Epochs at which the learning rate is multiplied by `decay_rate`.
    pub decay_epochs: Vec<u64>,
    /// Fractions of the run's planned steps (`epochs` times the steps per epoch; each
    /// fraction in `(0, 1)`) after which the learning rate is multiplied by `decay_rate`: a
    /// schedule that scales with `--epochs`. `--max-steps` only stops a run early and does
    /// not move it, so a run extended by `--resume --max-steps` repeats the straight run.
    pub decay_fractions: Vec<f64>,
    /// Cosine annealing from `lr` to 0 over the planned steps after the warm-up (instead of
    /// step decays).
    pub cosine: bool,
    /// Factor of each decay.
    pub decay_rate: f64,
    /// Spectral normalisation: after every update each weight matrix (a convolution's
    /// kernel reshaped to `[out, in * kh * kw]`, a linear layer's weight) is divided by its
    /// largest singular value, found by power iteration. This is the projected form of
    /// Miyato et al.'s reparametrisation (the same weights after each step; gradients do not
    /// flow through the normalisation).
    pub spectral_norm: bool,
    /// Sharpness-aware minimisation (Foret et al. 2021; SADA-JEM uses it for JEM): with
    /// `rho > 0` every step first moves the weights by `rho * g / |g|` (the gradient over its
    /// global L2 norm), takes the gradient of the same loss there (same data, same SGLD
    /// samples), and updates the original weights with it by `algorithm` (Adam or SGD). It
    /// costs a second forward and backward pass per step; 0 turns it off.
    #[serde(default)]
    pub sam_rho: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            algorithm: Algorithm::Adam,
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup_steps: 1000,
            decay_epochs: Vec::new(),
            decay_fractions: vec![0.8, 0.9],
            cosine: false,
            decay_rate: 0.3,
            spectral_norm: false,
            sam_rho: 0.0,
        }
    }
}

impl OptimConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ConfigError::field(
                    name,
                    format!("{v}: must be positive and finite"),
                ))
            }
        };
        pos("optim.lr", self.lr)?;
        pos("optim.eps", self.eps)?;
        pos("optim.decay_rate", self.decay_rate)?;
        for (name, b) in [
            ("optim.beta1", self.beta1),
            ("optim.beta2", self.beta2),
            ("optim.momentum", self.momentum),
        ] {
            if !(0.0..1.0).contains(&b) {
                return Err(ConfigError::field(name, format!("{b}: must be in [0, 1)")));
            }
        }
        if let Some(f) = self
            .decay_fractions
            .iter()
            .find(|f| !(**f > 0.0 && **f < 1.0))
        {
            return Err(ConfigError::field(
                "optim.decay_fractions",
                format!("{f}: each must be in (0, 1), a fraction of the run's steps"),
            ));
        }
        if self.cosine && !(self.decay_epochs.is_empty() && self.decay_fractions.is_empty()) {
            return Err(ConfigError::field(
                "optim.cosine",
                "cosine annealing replaces the step decays: set decay_epochs and decay_fractions to []",
            ));
        }
        if !(self.sam_rho.is_finite() && self.sam_rho >= 0.0) {
            return Err(ConfigError::field(
                "optim.sam_rho",
                format!("{}: must be non-negative (0 turns SAM off)", self.sam_rho),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError::field(
                "optim.weight_decay",
                format!("{}: must be non-negative", self.weight_decay),
            ));
        }
        Ok(())
    }

    /// Learning rate of (0-based) `step` in `epoch` of a run of `planned` steps (its epochs
    /// times the steps per epoch).
    pub fn lr_at(&self, step: u64, epoch: u64, planned: u64) -> f64 {
        let total = planned;
        let warm = if self.warmup_steps > 0 {
            ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        } else {
            1.0
        };
        if self.cosine {
            let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
            let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
            return self.lr * warm * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        }
        let decays = self.decay_epochs.iter().filter(|&&e| epoch >= e).count()
            + self
                .decay_fractions
                .iter()
                .filter(|&&f| step >= decay_step(f, total))
                .count();
        self.lr * warm * self.decay_rate.powi(decays as i32)
    }
}

/// The first step at or after the fraction `f` of `total` steps (a fraction that lands on a
/// step boundary up to rounding lands on that step).
fn decay_step(f: f64, total: u64) -> u64 {
    (f * total as f64 - 1e-9).ceil().max(0.0) as u64
}

/// Optimiser state: per parameter (in module order) its moment estimates.
#[derive(Clone, Debug)]
pub struct Optimizer {
    cfg: OptimConfig,
    steps: u64,
    first: Vec<Option<Tensor<1>>>,
    second: Vec<Option<Tensor<1>>>,
}

impl Optimizer {
    /// A fresh optimiser.
    pub fn new(cfg: &OptimConfig) -> Self {
        Optimizer {
            cfg: cfg.clone(),
            steps: 0,
            first: Vec::new(),
            second: Vec::new(),
        }
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Apply one update with learning rate `lr` to any module (the classifier, or the Stein
    /// critic of `--objective lsd`, each with its own optimiser).
    pub fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.steps += 1;
        let mut mapper = UpdateMapper {
            opt: self,
            grads,
            lr,
            index: 0,
        };
        let model = model.map(&mut mapper);
        if self.cfg.spectral_norm {
            spectral_normalize(model)
        } else {
            model
        }
    }

    fn update(&mut self, index: usize, p: Tensor<1>, g: Tensor<1>, lr: f64) -> Tensor<1> {
        if self.first.len() <= index {
            self.first.resize(index + 1, None);
            self.second.resize(index + 1, None);
        }
        let c = &self.cfg;
        let g = if c.weight_decay > 0.0 {
            g + p.clone().mul_scalar(c.weight_decay)
        } else {
            g
        };
        match c.algorithm {
            Algorithm::Adam => {
                let m = match self.first[index].take() {
                    Some(m) => m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                    None => g.clone().mul_scalar(1.0 - c.beta1),
                };
                let v = match self.second[index].take() {
                    Some(v) => v.mul_scalar(c.beta2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta2),
                    None => g.powi_scalar(2).mul_scalar(1.0 - c.beta2),
                };
                let t = self.steps as i32;
                let bc1 = 1.0 - c.beta1.powi(t);
                let bc2 = 1.0 - c.beta2.powi(t);
                let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps);
                let upd = m.clone().div(denom).mul_scalar(lr / bc1);
                self.first[index] = Some(m);
                self.second[index] = Some(v);
                p - upd
            }
            Algorithm::Sgd => {
                let buf = match self.first[index].take() {
                    Some(b) => b.mul_scalar(c.momentum) + g,
                    None => g,
                };
                let upd = buf.clone().mul_scalar(lr);
                self.first[index] = Some(buf);
                p - upd
            }
        }
    }

    /// Save the state as safetensors, atomically.
    pub fn save(&self, path: &Path, step: u64) -> Result<(), CheckpointError> {
        let mut meta = HashMap::new();
        meta.insert("updates".to_string(), self.steps.to_string());
        let mut owned: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        for (kind, list) in [("first", &self.first), ("second", &self.second)] {
            for (i, t) in list.iter().enumerate() {
                if let Some(t) = t {
                    let v: Vec<f32> = t
                        .to_data()
                        .try_to_vec::<f32>()
                        .expect("optimiser state is f32");
                    let n = v.len();
                    owned.push((format!("{kind}.{i}"), v, vec![n]));
                }
            }
        }
        let views: Vec<(&str, &[f32], &[usize])> = owned
            .iter()
            .map(|(n, v, s)| (n.as_str(), v.as_slice(), s.as_slice()))
            .collect();
        write_safetensors(path, step, meta, &views)
    }

    /// Load a state saved by [`Optimizer::save`].
    pub fn load(
        path: &Path,
        step: u64,
        cfg: &OptimConfig,
        device: &Device,
    ) -> Result<Self, CheckpointError> {
        let mut file = read_safetensors(path, step)?;
        let steps = file
            .meta("updates")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CheckpointError::corrupt(path, "no `updates` count in the metadata"))?;
        let mut opt = Optimizer {
            cfg: cfg.clone(),
            steps,
            first: Vec::new(),
            second: Vec::new(),
        };
        for name in file.names() {
            let (kind, idx) = name
                .split_once('.')
                .and_then(|(k, i)| Some((k.to_string(), i.parse::<usize>().ok()?)))
                .ok_or_else(|| {
                    CheckpointError::corrupt(path, format!("unexpected tensor `{name}`"))
                })?;
            let (data, dims) = file.take(&name)?;
            let t = Tensor::<1>::from_data(
                TensorData::new(data, [dims.iter().product::<usize>()]),
                device,
            );
            let list = match kind.as_str() {
                "first" => &mut opt.first,
                "second" => &mut opt.second,
                _ => {
                    return Err(CheckpointError::corrupt(
                        path,
                        format!("unexpected tensor `{name}`"),
                    ));
                }
            };
            if list.len() <= idx {
                list.resize(idx + 1, None);
            }
            list[idx] = Some(t);
        }
        let n = opt.first.len().max(opt.second.len());
        opt.first.resize(n, None);
        opt.second.resize(n, None);
        Ok(opt)
    }
}

struct UpdateMapper<'a> {
    opt: &'a mut Optimizer,
    grads: GradientsParams,
    lr: f64,
    index: usize,
}

impl ModuleMapper for UpdateMapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let index = self.index;
        self.index += 1;
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let numel = dims.iter().product::<usize>();
        let p = tensor.inner().reshape([numel]);
        let g = grad.reshape([numel]);
        let updated = self.opt.update(index, p, g, self.lr).reshape(dims);
        let mut t = Tensor::from_inner(updated);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// SAM's ascent step: `model` with every parameter that has a gradient in `grads` moved by
/// `rho * g / |g|`, `|g|` the L2 norm over all of them. Parameter ids are kept, so gradients
/// taken at the result apply to `model`.
pub fn sam_perturb<M: Module>(model: M, grads: &GradientsParams, rho: f64) -> M {
    struct SumSq<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl ModuleVisitor for SumSq<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.sum += g.powi_scalar(2).sum().into_scalar::<f32>() as f64;
            }
        }
    }
    struct Ascent<'a> {
        grads: &'a GradientsParams,
        scale: f64,
    }
    impl ModuleMapper for Ascent<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let Some(g) = self.grads.get::<D>(id) else {
                return Param::from_mapped_value(id, tensor, mapper);
            };
            let require_grad = tensor.is_require_grad();
            let moved = tensor.inner() + g.mul_scalar(self.scale);
            let mut t = Tensor::from_inner(moved);
            if require_grad {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    let mut norm = SumSq { grads, sum: 0.0 };
    model.visit(&mut norm);
    let scale = rho / (norm.sum.sqrt() + 1e-12);
    model.map(&mut Ascent { grads, scale })
}

/// Power iterations per spectral-norm estimate (from a fixed start, so the result is a
/// function of the weights alone and a resumed run normalises identically).
const POWER_ITERATIONS: usize = 30;

/// Largest singular value of the row-major `[rows, cols]` matrix `w`, by power iteration.
pub fn spectral_norm(w: &[f32], rows: usize, cols: usize) -> f32 {
    let mut v = vec![1.0f64 / (cols as f64).sqrt(); cols];
    let mut u = vec![0.0f64; rows];
    let mut sigma = 0.0f64;
    for _ in 0..POWER_ITERATIONS {
        for (r, ur) in u.iter_mut().enumerate() {
            let row = &w[r * cols..(r + 1) * cols];
            *ur = row.iter().zip(&v).map(|(&a, &b)| a as f64 * b).sum();
        }
        let nu = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        if nu == 0.0 {
            return 0.0;
        }
        u.iter_mut().for_each(|x| *x /= nu);
        v.iter_mut().for_each(|x| *x = 0.0);
        for (r, &ur) in u.iter().enumerate() {
            let row = &w[r * cols..(r + 1) * cols];
            for (vc, &a) in v.iter_mut().zip(row) {
                *vc += a as f64 * ur;
            }
        }
        sigma = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if sigma == 0.0 {
            return 0.0;
        }
        v.iter_mut().for_each(|x| *x /= sigma);
    }
    sigma as f32
}

/// Divide every weight of rank 2 or more by its spectral norm (see
/// [`OptimConfig::spectral_norm`]); biases and normalisation parameters are left alone.
pub fn spectral_normalize<M: Module>(model: M) -> M {
    struct Sn;
    impl ModuleMapper for Sn {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D < 2 {
                return param;
            }
            let (id, tensor, mapper) = param.consume();
            let require_grad = tensor.is_require_grad();
            let dims = tensor.dims();
            let inner = tensor.inner();
            let values: Vec<f32> = inner.to_data().try_to_vec().expect("f32 weights");
            let rows = dims[0];
            let sigma = spectral_norm(&values, rows, values.len() / rows.max(1));
            let scaled = if sigma > 0.0 && sigma.is_finite() {
                inner.div_scalar(sigma)
            } else {
                inner
            };
            let mut t = Tensor::from_inner(scaled);
            if require_grad {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    model.map(&mut Sn)
}
