//! Classification accuracy and negative log-likelihood, optionally after SGLD refinement of
//! the inputs.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::Dataset;
use crate::energy::{Target, logsumexp};
use crate::engine::Engine;
use crate::model::Classifier;
use crate::rng::Rng;
use crate::sgld::SgldConfig;

/// Accuracy and NLL of a model on a data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyReport {
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean negative log-likelihood `-log p(y|x)`.
    pub nll: f64,
    /// Images evaluated.
    pub n: usize,
    /// Images classified correctly.
    pub correct: usize,
    /// SGLD refinement steps applied to each input first (0 = none).
    pub refine_steps: usize,
}

/// Logits of every image, `[n, k]` row-major, in batches of `batch_size`. With `refine`, each
/// batch is first moved by SGLD on `log p(x)` with those parameters (draws from `rng`).
pub fn logits(
    engine: Engine,
    model: &Classifier,
    data: &Dataset,
    batch_size: usize,
    refine: Option<&SgldConfig>,
    rng: &mut Rng,
) -> Vec<f32> {
    let device = model.device();
    let plain = model.valid();
    let [c, h, w] = data.shape;
    let n = data.image_len();
    let mut out = Vec::new();
    for start in (0..data.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(data.len());
        let b = end - start;
        let x = Tensor::<4>::from_data(
            TensorData::new(data.images[start * n..end * n].to_vec(), [b, c, h, w]),
            &device.clone().inner(),
        ); // [b, c, h, w]
        let x = match refine {
            Some(p) if p.steps > 0 => engine.sgld(model, x, &Target::Marginal, p, rng).samples,
            _ => x,
        };
        let l: Vec<f32> = plain
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .expect("logits are f32"); // [b, k]
        out.extend(l);
    }
    out
}

/// Accuracy and NLL from logits `[n, k]` and labels.
pub fn accuracy_from_logits(logits: &[f32], labels: &[u8], k: usize) -> (usize, f64) {
    let mut correct = 0;
    let mut nll = 0.0f64;
    for (row, &y) in logits.chunks_exact(k).zip(labels) {
        let (arg, &max) = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("k > 0");
        if arg == y as usize {
            correct += 1;
        }
        let lse = max as f64
            + row
                .iter()
                .map(|&v| ((v - max) as f64).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[y as usize] as f64;
    }
    (correct, nll / labels.len().max(1) as f64)
}

/// Evaluate `model` on `data`.
pub fn accuracy(
    engine: Engine,
    model: &Classifier,
    data: &Dataset,
    batch_size: usize,
    refine: Option<&SgldConfig>,
    rng: &mut Rng,
) -> Result<AccuracyReport> {
    let l = logits(engine, model, data, batch_size, refine, rng);
    let (correct, nll) = accuracy_from_logits(&l, &data.labels, data.num_classes);
    Ok(AccuracyReport {
        accuracy: correct as f64 / data.len().max(1) as f64,
        nll,
        n: data.len(),
        correct,
        refine_steps: refine.map_or(0, |p| p.steps),
    })
}

/// Mean unnormalised `log p(x)` of a batch (a quick energy probe).
///
/// # Shapes
/// `x: [b, c, h, w] -> scalar`
pub fn mean_log_px(model: &Classifier, x: Tensor<4>) -> f32 {
    logsumexp(model.valid().forward(x.inner()))
        .mean()
        .into_scalar::<f32>()
}
