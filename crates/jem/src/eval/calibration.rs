//! Calibration of a run's classifier: ECE, MCE, NLL and Brier score over confidence bins.

use crate::Result;
use crate::cnn_cpu;
use crate::data::Dataset;
use crate::engine::Engine;
use crate::eval::accuracy::logits;
use crate::eval::metrics::{Calibration, calibration};
use crate::model::Classifier;
use crate::rng::Rng;

/// Calibration of `model` on `data` with `bins` equal-width confidence bins (the paper's
/// reliability diagrams use 20).
pub fn evaluate_calibration(
    engine: Engine,
    model: &Classifier,
    data: &Dataset,
    bins: usize,
    batch_size: usize,
) -> Result<Calibration> {
    let k = data.num_classes;
    let l = logits(engine, model, data, batch_size, None, &mut Rng::new(0, 0));
    let probs: Vec<f32> = l
        .chunks_exact(k)
        .flat_map(|row| cnn_cpu::softmax(row).1)
        .collect();
    let labels: Vec<usize> = data.labels.iter().map(|&y| y as usize).collect();
    Ok(calibration(&probs, &labels, k, bins))
}
