//! The Mahalanobis OOD score (Lee et al. 2018): class-conditional Gaussians with one shared
//! covariance fitted to the classifier's penultimate features of labelled in-distribution
//! images (the validation split), and the score `-min_c (f - mu_c)^T S^-1 (f - mu_c)` of an
//! input's features `f`. It reads the classifier's features, not its density: it works as
//! well for a softmax classifier as for a JEM, and is offered beside the density scores so
//! that a comparison can say so. The fit is stored whitened (`W = L^-1/2 V^T` from the
//! eigen-decomposition `S = V L V^T`, with the means as `W mu_c`), so a score is one
//! matrix-vector product and `k` squared distances.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::{DataError, Dataset};
use crate::eval::fid::symmetric_eigen;
use crate::eval::ood::Score;
use crate::model::Classifier;

/// Ridge added to the covariance's eigenvalues, relative to their mean: keeps directions the
/// validation features do not span (dead units) from dominating the distance.
pub const RIDGE: f64 = 1e-3;

/// A fitted Mahalanobis detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MahalanobisFit {
    /// Feature dimension `d`.
    pub dim: usize,
    /// Class means `k` (the classes with at least one fitting image).
    pub classes: usize,
    /// Images it was fitted on.
    pub n: usize,
    /// The whitening matrix `W`, `[d, d]` row-major.
    pub whiten: Vec<f32>,
    /// The whitened class means `W mu_c`, `[k, d]` row-major.
    pub means: Vec<f32>,
}

impl MahalanobisFit {
    /// Fit on `features` (`[n, d]` row-major) with their `labels` in `0..classes`, from at
    /// least 2 images whose features vary; a class without images is left out.
    pub fn fit(features: &[f32], labels: &[u8], dim: usize, classes: usize) -> Result<Self> {
        let n = labels.len();
        let invalid = |why: String| DataError::Invalid(format!("the Mahalanobis score: {why}"));
        if dim == 0 || features.len() != n * dim || n < 2 {
            return Err(invalid(format!(
                "{n} labels for {} feature values of dimension {dim}",
                features.len()
            ))
            .into());
        }
        let mut mu = vec![0.0f64; classes * dim];
        let mut count = vec![0usize; classes];
        for (f, &y) in features.chunks_exact(dim).zip(labels) {
            let y = usize::from(y);
            if y >= classes {
                return Err(invalid(format!("label {y} of {classes} classes")).into());
            }
            count[y] += 1;
            mu[y * dim..(y + 1) * dim]
                .iter_mut()
                .zip(f)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        for (m, &c) in mu.chunks_exact_mut(dim).zip(&count) {
            m.iter_mut().for_each(|v| *v /= c.max(1) as f64);
        }
        let mut cov = vec![0.0f64; dim * dim];
        let mut r = vec![0.0f64; dim];
        for (f, &y) in features.chunks_exact(dim).zip(labels) {
            let m = &mu[usize::from(y) * dim..][..dim];
            r.iter_mut()
                .zip(f)
                .zip(m)
                .for_each(|((r, &v), m)| *r = f64::from(v) - m);
            for i in 0..dim {
                let ri = r[i];
                cov[i * dim..(i + 1) * dim]
                    .iter_mut()
                    .zip(&r)
                    .for_each(|(c, rj)| *c += ri * rj);
            }
        }
        cov.iter_mut().for_each(|c| *c /= n as f64);
        let (lambda, v) = symmetric_eigen(&cov, dim);
        let ridge = RIDGE * lambda.iter().map(|l| l.max(0.0)).sum::<f64>() / dim as f64;
        if !(ridge.is_finite() && ridge > 0.0) {
            return Err(invalid("the features do not vary".into()).into());
        }
        // Row e of W is v_e / sqrt(lambda_e + ridge) (v_e the e-th eigenvector, a column of v).
        let mut whiten = vec![0.0f32; dim * dim];
        for e in 0..dim {
            let s = 1.0 / (lambda[e].max(0.0) + ridge).sqrt();
            for j in 0..dim {
                whiten[e * dim + j] = (v[j * dim + e] * s) as f32;
            }
        }
        // A class without images has no mean: the nearest of the others is taken.
        let absent: Vec<usize> = (0..classes).filter(|&c| count[c] == 0).collect();
        if !absent.is_empty() {
            tracing::warn!(
                ?absent,
                "Mahalanobis score: classes without a fitting image are left out"
            );
        }
        let means: Vec<f32> = mu
            .chunks_exact(dim)
            .zip(&count)
            .filter(|(_, c)| **c > 0)
            .flat_map(|(m, _)| apply(&whiten, dim, m.iter().map(|&x| x as f32)))
            .collect();
        let classes = means.len() / dim;
        Ok(MahalanobisFit {
            dim,
            classes,
            n,
            whiten,
            means,
        })
    }

    /// The score of one image's features `f` (`d` values): minus its squared distance to the
    /// nearest class mean.
    pub fn score(&self, f: &[f32]) -> f64 {
        let w = apply(&self.whiten, self.dim, f.iter().copied());
        let nearest = self
            .means
            .chunks_exact(self.dim)
            .map(|m| {
                w.iter()
                    .zip(m)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum::<f64>()
            })
            .fold(f64::INFINITY, f64::min);
        -nearest
    }
}

/// Serde for the fit inside [`Score::Mahalanobis`] (shared, not copied, between the scores
/// of one evaluation).
pub(crate) mod shared_fit {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::MahalanobisFit;

    pub fn serialize<S: Serializer>(
        v: &Option<Arc<MahalanobisFit>>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        v.as_deref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<Arc<MahalanobisFit>>, D::Error> {
        Ok(Option::<MahalanobisFit>::deserialize(d)?.map(Arc::new))
    }
}

/// `W x` for a `[d, d]` row-major `W`.
fn apply(w: &[f32], d: usize, x: impl Iterator<Item = f32>) -> Vec<f32> {
    let x: Vec<f32> = x.collect();
    w.chunks_exact(d)
        .map(|row| row.iter().zip(&x).map(|(a, b)| a * b).sum())
        .collect()
}

/// `scores` with every unfitted [`Score::Mahalanobis`] fitted on `reference`'s features and
/// labels; the others returned as they are, and nothing computed when none is unfitted.
pub fn fit_scores(
    model: &Classifier,
    reference: &Dataset,
    scores: &[Score],
    batch_size: usize,
) -> Result<Vec<Score>> {
    if !scores.contains(&Score::Mahalanobis(None)) {
        return Ok(scores.to_vec());
    }
    let o = model.outputs(&reference.images, reference.shape, batch_size);
    let (f, d) = (o.features, o.dim);
    let k = usize::from(reference.labels.iter().copied().max().unwrap_or(0)) + 1;
    let fit = Arc::new(MahalanobisFit::fit(&f, &reference.labels, d, k)?);
    Ok(scores
        .iter()
        .map(|s| match s {
            Score::Mahalanobis(None) => Score::Mahalanobis(Some(fit.clone())),
            s => s.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-min_c (f - mu_c)^T (S + r I)^-1 (f - mu_c)` in two dimensions, by the closed-form
    /// inverse.
    fn direct(feats: &[[f32; 2]], labels: &[u8], f: [f32; 2]) -> f64 {
        let n = feats.len() as f64;
        let mut mu = [[0.0f64; 2]; 2];
        let mut count = [0.0f64; 2];
        for (x, &y) in feats.iter().zip(labels) {
            let y = usize::from(y);
            count[y] += 1.0;
            mu[y][0] += f64::from(x[0]);
            mu[y][1] += f64::from(x[1]);
        }
        for (m, c) in mu.iter_mut().zip(count) {
            m[0] /= c;
            m[1] /= c;
        }
        let mut s = [0.0f64; 4];
        for (x, &y) in feats.iter().zip(labels) {
            let m = mu[usize::from(y)];
            let r = [f64::from(x[0]) - m[0], f64::from(x[1]) - m[1]];
            s[0] += r[0] * r[0] / n;
            s[1] += r[0] * r[1] / n;
            s[3] += r[1] * r[1] / n;
        }
        s[2] = s[1];
        let ridge = RIDGE * (s[0] + s[3]) / 2.0;
        let (a, b, d) = (s[0] + ridge, s[1], s[3] + ridge);
        let det = a * d - b * b;
        let p = [d / det, -b / det, a / det];
        let nearest = mu
            .iter()
            .map(|m| {
                let r = [f64::from(f[0]) - m[0], f64::from(f[1]) - m[1]];
                p[0] * r[0] * r[0] + 2.0 * p[1] * r[0] * r[1] + p[2] * r[1] * r[1]
            })
            .fold(f64::INFINITY, f64::min);
        -nearest
    }

    #[test]
    fn the_fit_gives_the_mahalanobis_distance_to_the_nearest_class_mean() {
        // Two correlated classes around (0, 0) and (6, 2).
        let mut rng = crate::rng::Rng::new(3, 0);
        let mut feats = Vec::new();
        let mut labels = Vec::new();
        for i in 0..400 {
            let (u, v) = (rng.uniform_in(-1.0, 1.0), rng.uniform_in(-1.0, 1.0));
            let c = (i % 2) as u8;
            let shift = if c == 0 { [0.0, 0.0] } else { [6.0, 2.0] };
            feats.push([shift[0] + 2.0 * u + v, shift[1] + 0.5 * v]);
            labels.push(c);
        }
        let flat: Vec<f32> = feats.iter().flatten().copied().collect();
        let fit = MahalanobisFit::fit(&flat, &labels, 2, 2).unwrap();
        assert_eq!((fit.dim, fit.classes, fit.n), (2, 2, 400));
        for f in [
            [0.0, 0.0],
            [6.0, 2.0],
            [3.0, 1.0],
            [-4.0, 3.0],
            [10.0, -1.0],
        ] {
            let (got, want) = (fit.score(&f), direct(&feats, &labels, f));
            assert!(
                (got - want).abs() < 1e-4 * want.abs().max(1.0),
                "{f:?}: {got} vs {want}"
            );
        }
        // The nearer a class mean, the higher the score.
        assert!(fit.score(&[6.0, 2.0]) > fit.score(&[3.0, 1.0]));
        // A class without images is left out; labels beyond the classes and constant
        // features are errors.
        let one = MahalanobisFit::fit(&flat, &vec![0; 400], 2, 2).unwrap();
        assert_eq!(one.classes, 1);
        assert!(MahalanobisFit::fit(&flat, &vec![2; 400], 2, 2).is_err());
        let e = MahalanobisFit::fit(&[1.0; 8], &[0, 0, 1, 1], 2, 2).unwrap_err();
        assert!(e.to_string().contains("do not vary"), "{e}");
    }
}
