//! The fused OOD score: `min(z(logp), z(gradnorm))`, each score standardised by its mean and
//! standard deviation over in-distribution images. An input counts as in-distribution only as
//! far as the less typical of its two scores allows, so it must both sit where the model puts
//! mass (`logp`, which separates noise, constants and pixel-level corruptions) and have the
//! steep density of the model's own data (`gradnorm`, which separates another data set's
//! digits). The standardisation is fitted on the validation split (or, through
//! [`crate::eval::ood::evaluate_ood`] alone, on the in-distribution images it is given) and
//! travels with the score, so a threshold file holds all it needs.

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::{DataError, Dataset};
use crate::engine::Engine;
use crate::eval::ood::{Score, score_images};
use crate::model::Classifier;

/// Mean and standard deviation of one score over in-distribution images.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standard {
    /// Mean.
    pub mean: f64,
    /// Standard deviation (positive).
    pub std: f64,
}

impl Standard {
    /// The moments of `values`; an error when they are not finite or do not vary.
    pub fn of(name: &str, values: &[f64]) -> Result<Self> {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(DataError::Invalid(format!(
                "the fused OOD score cannot be standardised: {name} over {} in-distribution images has mean {mean} and standard deviation {std} (it needs finite values that vary)",
                values.len()
            ))
            .into());
        }
        Ok(Standard { mean, std })
    }

    /// `(v - mean) / std`.
    pub fn z(&self, v: f64) -> f64 {
        (v - self.mean) / self.std
    }
}

/// The standardisation of the fused score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedFit {
    /// Of `logp` (`logsumexp_y f(x)[y]`).
    pub logp: Standard,
    /// Of `gradnorm` (`|| d log p(x) / dx ||_2`).
    pub gradnorm: Standard,
    /// In-distribution images it was fitted on.
    pub n: usize,
}

impl FusedFit {
    /// Fit on the `logp` and `gradnorm` values of the same in-distribution images.
    pub fn fit(logp: &[f64], gradnorm: &[f64]) -> Result<Self> {
        Ok(FusedFit {
            logp: Standard::of("logp", logp)?,
            gradnorm: Standard::of("gradnorm", gradnorm)?,
            n: logp.len(),
        })
    }

    /// The fused score of one image from its `logp` and its input-gradient norm.
    pub fn score(&self, logp: f64, grad_norm: f64) -> f64 {
        self.logp.z(logp).min(self.gradnorm.z(grad_norm))
    }
}

/// `scores` with every unfitted [`Score::Fused`] fitted on `reference` (in-distribution
/// images); the others, and a `scores` without an unfitted one, are returned as they are
/// without scoring anything.
pub fn fit_scores(
    engine: Engine,
    model: &Classifier,
    reference: &Dataset,
    scores: &[Score],
    batch_size: usize,
) -> Result<Vec<Score>> {
    if !scores.contains(&Score::Fused(None)) {
        return Ok(scores.to_vec());
    }
    let parts = score_images(
        engine,
        model,
        &reference.images,
        reference.shape,
        &[Score::Logp, Score::Gradnorm],
        batch_size,
    );
    let fit = FusedFit::fit(&parts[0], &parts[1])?;
    Ok(scores
        .iter()
        .map(|s| match s {
            Score::Fused(None) => Score::Fused(Some(fit)),
            s => s.clone(),
        })
        .collect())
}

/// The fit of the first fitted [`Score::Fused`] of `scores`.
pub fn fit_of(scores: &[Score]) -> Option<FusedFit> {
    scores.iter().find_map(|s| match s {
        Score::Fused(fit) => *fit,
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_score_is_the_lower_standardised_score() {
        let fit = FusedFit::fit(&[1.0, 3.0], &[10.0, 20.0]).unwrap();
        assert_eq!(
            fit.logp,
            Standard {
                mean: 2.0,
                std: 1.0
            }
        );
        assert_eq!(
            fit.gradnorm,
            Standard {
                mean: 15.0,
                std: 5.0
            }
        );
        // z(logp) = 2, z(gradnorm) = -1: the gradient norm is the less typical.
        assert_eq!(fit.score(4.0, 10.0), -1.0);
        assert_eq!(fit.score(0.0, 25.0), -2.0);
        assert!(FusedFit::fit(&[1.0, 1.0], &[1.0, 2.0]).is_err());
        assert!(FusedFit::fit(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
    }
}
