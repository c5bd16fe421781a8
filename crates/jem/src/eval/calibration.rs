//! Calibration of a run's classifier: ECE, MCE, NLL and Brier score over confidence bins.

use crate::Result;
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
    let mut probs = Vec::with_capacity(l.len());
    for row in l.chunks_exact(k) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&v| ((v - m) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        probs.extend(e.iter().map(|&v| (v / z) as f32));
    }
    let labels: Vec<usize> = data.labels.iter().map(|&y| y as usize).collect();
    Ok(calibration(&probs, &labels, k, bins))
}
