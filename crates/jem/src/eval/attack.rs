//! Adversarial robustness: PGD (L-inf and L2, random start, restarts) against the plain
//! classifier or against the JEM defence, SGLD refinement of the input averaged over noisy
//! chains (the paper's JEM-n).
//!
//! burn has no double backward, so the attack cannot differentiate through the SGLD
//! refinement exactly. It uses the standard first-order substitute: BPDA (the refinement is
//! treated as the identity in the backward pass, the gradient taken at the refined input)
//! with expectation over transformation (the gradient averaged over the noisy chains), as in
//! SADA-JEM's evaluation. Epsilons are in `[0, 1]` pixel units (8/255 means 8/255 of the
//! pixel range), as in the literature; images live in `[-1, 1]`, so they are doubled inside.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::energy::{Target, cross_entropy, one_hot};
use crate::engine::Engine;
use crate::model::Classifier;
use crate::rng::Rng;
use crate::sgld::SgldConfig;
use crate::{Error, Result};

/// The threat model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// Max-norm ball; steps follow the gradient's sign.
    Linf,
    /// Euclidean ball; steps follow the normalised gradient.
    L2,
}

/// The JEM defence: SGLD refinement of each input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Defence {
    /// SGLD parameters (`steps` = 0 means plain classification).
    pub sgld: SgldConfig,
    /// Noisy chains averaged per input.
    pub chains: usize,
    /// Standard deviation of the Gaussian noise each chain starts with (pixel range `[-1, 1]`).
    pub start_noise: f32,
}

/// PGD settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackConfig {
    /// Threat model.
    pub norm: Norm,
    /// Radii to attack with, in `[0, 1]` pixel units.
    pub eps: Vec<f32>,
    /// PGD steps per restart.
    pub steps: usize,
    /// Step size as a fraction of epsilon per step (default 2.5 / steps).
    pub step_fraction: Option<f32>,
    /// Random restarts (each from a random point of the ball).
    pub restarts: usize,
    /// Start from a random point of the ball (off only for tests of the step itself).
    pub random_start: bool,
}

impl Default for AttackConfig {
    fn default() -> Self {
        AttackConfig {
            norm: Norm::Linf,
            eps: vec![0.0, 2.0 / 255.0, 8.0 / 255.0],
            steps: 40,
            step_fraction: None,
            restarts: 1,
            random_start: true,
        }
    }
}

/// Robust accuracy at one radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsResult {
    /// Radius, `[0, 1]` pixel units.
    pub eps: f32,
    /// Fraction of all images still classified correctly after the attack.
    pub robust_accuracy: f64,
    /// Fraction of the attacked (initially correct) images the attack flipped.
    pub success_rate: f64,
}

/// The whole attack report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// Accuracy without attack (under the defence, if any).
    pub clean_accuracy: f64,
    /// Images evaluated.
    pub n: usize,
    /// One result per radius, in the order given.
    pub results: Vec<EpsResult>,
    /// The built-in sanity check: robust accuracy at radius 0 equals the clean accuracy and
    /// never rises as the radius grows. `false` means the attack is broken or too weak (more
    /// steps or restarts), and the numbers should not be trusted.
    pub sane: bool,
}

/// Class probabilities of the (defended) classifier, averaged over the chains.
///
/// # Shapes
/// `x: [b, c, h, w] -> [b, k]`
pub fn defended_probs(
    engine: Engine,
    model: &Classifier,
    x: &Tensor<4>,
    defence: &Defence,
    rng: &mut Rng,
) -> Tensor<2> {
    let plain = model.valid();
    let chains = refined_inputs(engine, model, x, defence, rng);
    let n = chains.len() as f64;
    let mut sum: Option<Tensor<2>> = None;
    for xr in chains {
        let p = burn::tensor::activation::softmax(plain.forward(xr), 1); // [b, k]
        sum = Some(match sum {
            Some(s) => s + p,
            None => p,
        });
    }
    sum.expect("at least one chain").div_scalar(n)
}

fn refined_inputs(
    engine: Engine,
    model: &Classifier,
    x: &Tensor<4>,
    defence: &Defence,
    rng: &mut Rng,
) -> Vec<Tensor<4>> {
    if defence.sgld.steps == 0 {
        return vec![x.clone()];
    }
    let dims = x.dims();
    let numel: usize = dims.iter().product();
    (0..defence.chains.max(1))
        .map(|_| {
            let mut noise = vec![0.0f32; numel];
            rng.fill_normal(&mut noise, defence.start_noise);
            let start =
                x.clone() + Tensor::<4>::from_data(TensorData::new(noise, dims), &x.device());
            engine
                .sgld(model, start, &Target::Marginal, &defence.sgld, rng)
                .samples
        })
        .collect()
}

/// Gradient of the cross-entropy of the defended classifier with respect to its input
/// (BPDA + EOT; exact when the defence has 0 refinement steps).
///
/// # Shapes
/// `x: [b, c, h, w] -> [b, c, h, w]`
pub fn loss_grad(
    engine: Engine,
    model: &Classifier,
    x: &Tensor<4>,
    labels: &[usize],
    k: usize,
    defence: &Defence,
    rng: &mut Rng,
) -> Tensor<4> {
    let frozen = model.clone().no_grad();
    let device = x.device();
    let oh = one_hot(labels, k, &device).autodiff();
    let chains = refined_inputs(engine, model, x, defence, rng);
    let n = chains.len() as f64;
    let mut sum: Option<Tensor<4>> = None;
    for xr in chains {
        let xr = xr.detach().autodiff().require_grad(); // [b, c, h, w]
        // Sum (not mean) over the batch so that each image gets its own gradient.
        let loss =
            cross_entropy(frozen.forward(xr.clone()), oh.clone()).mul_scalar(labels.len() as f64);
        let g = xr.grad(&loss.backward()).expect("input requires grad"); // [b, c, h, w]
        sum = Some(match sum {
            Some(s) => s + g,
            None => g,
        });
    }
    sum.expect("at least one chain").div_scalar(n)
}

fn predictions(
    engine: Engine,
    model: &Classifier,
    x: &Tensor<4>,
    defence: &Defence,
    rng: &mut Rng,
) -> Vec<usize> {
    let p = defended_probs(engine, model, x, defence, rng).argmax(1); // [b, 1]
    p.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("argmax gives integers")
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

/// Per-image L2 norms, `[b, 1, 1, 1]` for broadcasting.
fn l2(t: &Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = t.dims();
    t.clone()
        .reshape([b, c * h * w])
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .reshape([b, 1, 1, 1])
}

/// Project `x` onto the `norm` ball of radius `eps` around `x0`, then onto `[-1, 1]`.
fn project(x: Tensor<4>, x0: &Tensor<4>, norm: Norm, eps: f32) -> Tensor<4> {
    let d = x - x0.clone();
    let d = match norm {
        Norm::Linf => d.clamp(-eps, eps),
        Norm::L2 => {
            let n = l2(&d).clamp_min(1e-12);
            let scale = n.clone().recip().mul_scalar(eps).clamp_max(1.0);
            d * scale
        }
    };
    (x0.clone() + d).clamp(-1.0, 1.0)
}

/// One PGD step from `x` (a function of the gradient only: exposed for tests).
///
/// # Shapes
/// `x, grad, x0: [b, c, h, w] -> [b, c, h, w]`
pub fn pgd_step(
    x: Tensor<4>,
    grad: Tensor<4>,
    x0: &Tensor<4>,
    norm: Norm,
    eps: f32,
    alpha: f32,
) -> Tensor<4> {
    let step = match norm {
        Norm::Linf => grad.sign().mul_scalar(alpha),
        Norm::L2 => grad.clone() / l2(&grad).clamp_min(1e-12) * alpha,
    };
    project(x + step, x0, norm, eps)
}

fn random_start(x0: &Tensor<4>, norm: Norm, eps: f32, rng: &mut Rng) -> Tensor<4> {
    let dims = x0.dims();
    let numel: usize = dims.iter().product();
    let mut v = vec![0.0f32; numel];
    let per = numel / dims[0];
    match norm {
        Norm::Linf => rng.fill_uniform(&mut v, -eps, eps),
        Norm::L2 => {
            rng.fill_normal(&mut v, 1.0);
            for img in v.chunks_exact_mut(per) {
                let n = img.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                let r = eps * rng.uniform().powf(1.0 / per as f32);
                img.iter_mut().for_each(|a| *a *= r / n);
            }
        }
    }
    let d = Tensor::<4>::from_data(TensorData::new(v, dims), &x0.device());
    project(x0.clone() + d, x0, norm, eps)
}

/// What one attack needs besides the images.
struct Attacker<'a> {
    engine: Engine,
    model: &'a Classifier,
    cfg: &'a AttackConfig,
    defence: &'a Defence,
    k: usize,
}

impl Attacker<'_> {
    /// How many of `x0` (classified correctly as `ys`) some restart of PGD at radius `eps01`
    /// (in `[0, 1]` pixel units) gets misclassified.
    fn broken_at(&self, x0: &Tensor<4>, ys: &[usize], eps01: f32, rng: &mut Rng) -> usize {
        let (cfg, engine, model, defence) = (self.cfg, self.engine, self.model, self.defence);
        let eps = 2.0 * eps01; // [0, 1] pixel units -> the [-1, 1] range
        if eps == 0.0 {
            return 0; // nothing can move; robust accuracy is the clean accuracy
        }
        let alpha = eps * cfg.step_fraction.unwrap_or(2.5 / cfg.steps.max(1) as f32);
        let mut fooled = vec![false; ys.len()];
        for _ in 0..cfg.restarts.max(1) {
            let mut x = if cfg.random_start {
                random_start(x0, cfg.norm, eps, rng)
            } else {
                x0.clone()
            };
            for _ in 0..cfg.steps {
                let g = loss_grad(engine, model, &x, ys, self.k, defence, rng);
                x = pgd_step(x, g, x0, cfg.norm, eps, alpha);
            }
            let pred = predictions(engine, model, &x, defence, rng);
            for (f, (p, y)) in fooled.iter_mut().zip(pred.into_iter().zip(ys)) {
                *f |= p != *y;
            }
        }
        fooled.iter().filter(|&&f| f).count()
    }
}

/// The report of `n_images` attacked, `correct_total` of them classified correctly, of which
/// `broken[i]` were misclassified at radius `eps[i]`; with the sanity check.
fn report(eps: &[f32], broken: &[usize], correct_total: usize, n_images: usize) -> AttackReport {
    let n = n_images.max(1) as f64;
    let results: Vec<EpsResult> = eps
        .iter()
        .zip(broken)
        .map(|(&eps, &b)| EpsResult {
            eps,
            robust_accuracy: (correct_total - b) as f64 / n,
            success_rate: if correct_total > 0 {
                b as f64 / correct_total as f64
            } else {
                0.0
            },
        })
        .collect();
    let clean_accuracy = correct_total as f64 / n;
    let mut by_eps: Vec<&EpsResult> = results.iter().collect();
    by_eps.sort_by(|a, b| a.eps.total_cmp(&b.eps));
    let sane = by_eps
        .windows(2)
        .all(|w| w[1].robust_accuracy <= w[0].robust_accuracy)
        && results
            .iter()
            .filter(|e| e.eps == 0.0)
            .all(|e| e.robust_accuracy == clean_accuracy);
    AttackReport {
        clean_accuracy,
        n: n_images,
        results,
        sane,
    }
}

/// Attack `data` (images the defended classifier gets right) at every radius of `cfg`.
pub fn attack(
    engine: Engine,
    model: &Classifier,
    data: &Dataset,
    cfg: &AttackConfig,
    defence: &Defence,
    batch_size: usize,
    rng: &mut Rng,
) -> Result<AttackReport> {
    if cfg.eps.iter().any(|e| !(e.is_finite() && *e >= 0.0)) {
        return Err(Error::Shape(format!(
            "attack radii must be non-negative: {:?}",
            cfg.eps
        )));
    }
    let device = model.device().inner();
    let attacker = Attacker {
        engine,
        model,
        cfg,
        defence,
        k: data.num_classes,
    };
    let [c, h, w] = data.shape;
    let len = data.image_len();
    let mut correct_total = 0usize;
    let mut broken = vec![0usize; cfg.eps.len()];
    for start in (0..data.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(data.len());
        let labels: Vec<usize> = data.labels[start..end]
            .iter()
            .map(|&y| y as usize)
            .collect();
        let x_all = Tensor::<4>::from_data(
            TensorData::new(
                data.images[start * len..end * len].to_vec(),
                [end - start, c, h, w],
            ),
            &device,
        );
        let pred = predictions(engine, model, &x_all, defence, rng);
        let keep: Vec<usize> = (0..labels.len())
            .filter(|&i| pred[i] == labels[i])
            .collect();
        correct_total += keep.len();
        if keep.is_empty() {
            continue;
        }
        let mut imgs = Vec::with_capacity(keep.len() * len);
        for &i in &keep {
            imgs.extend_from_slice(data.image(start + i));
        }
        let ys: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
        let x0 = Tensor::<4>::from_data(TensorData::new(imgs, [keep.len(), c, h, w]), &device);
        for (e, &eps01) in cfg.eps.iter().enumerate() {
            broken[e] += attacker.broken_at(&x0, &ys, eps01, rng);
        }
    }
    Ok(report(&cfg.eps, &broken, correct_total, data.len()))
}
