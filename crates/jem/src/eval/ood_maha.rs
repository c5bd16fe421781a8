//! The Mahalanobis OOD score (Lee et al. 2018): class-conditional Gaussians with one shared
//! covariance fitted to the classifier's penultimate features of labelled in-distribution
//! images (the validation split), and the score `-min_c (f - mu_c)^T S^-1 (f - mu_c)` of an
//! input's features `f`. It reads the classifier's features, not its density: it works as
//! well for a softmax classifier as for a JEM, and is offered beside the density scores so
//! that a comparison can say so. The fit is stored whitened (`W = L^-1/2 V^T` from the
//! eigen-decomposition `S = V L V^T`, with the means as `W mu_c`), so a score is one
//! matrix-vector product and `k` squared distances.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::{DataError, Dataset};
use crate::error::CheckpointError;
use crate::eval::fid::{scatter, symmetric_eigen};
use crate::eval::ood::Score;
use crate::model::Classifier;
use crate::tensor_file::{read_safetensors, write_safetensors};

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
    /// The whitening matrix `W`, `[d, d]` row-major (empty in a threshold file that keeps
    /// it in its tensor file, [`FitTensors`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whiten: Vec<f32>,
    /// The whitened class means `W mu_c`, `[k, d]` row-major (empty where `whiten` is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
        // The pooled within-class covariance, by maximum likelihood (divided by n), as in
        // Lee et al. (2018).
        let residuals = features
            .chunks_exact(dim)
            .zip(labels)
            .map(|(f, &y)| (f, &mu[usize::from(y) * dim..][..dim]));
        let mut cov = scatter(residuals, dim);
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

/// Where a saved fit keeps its matrices: a safetensors file beside the JSON file that names
/// it (a 256-wide fit is 65,536 numbers, too many to read as JSON), with a hash that ties the
/// two files together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitTensors {
    /// The tensor file's name, in the JSON file's directory.
    pub file: String,
    /// FNV-1a (64-bit, hex) of the matrices' little-endian bytes, `whiten` then `means`.
    pub fnv1a: String,
}

impl MahalanobisFit {
    /// The same fit without its matrices (for a JSON file whose [`FitTensors`] hold them).
    pub fn without_tensors(&self) -> MahalanobisFit {
        MahalanobisFit {
            dim: self.dim,
            classes: self.classes,
            n: self.n,
            whiten: Vec::new(),
            means: Vec::new(),
        }
    }

    /// Write the matrices to `path` (safetensors, atomically, tagged with `step`).
    pub fn write_tensors(&self, path: &Path, step: u64) -> Result<FitTensors> {
        let (d, k) = (self.dim, self.classes);
        write_safetensors(
            path,
            step,
            HashMap::new(),
            &[
                ("whiten", &self.whiten, &[d, d]),
                ("means", &self.means, &[k, d]),
            ],
        )?;
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        Ok(FitTensors {
            file: file.unwrap_or_default(),
            fnv1a: self.fnv1a(),
        })
    }

    /// This fit's matrices read from `tensors` in `dir`, which must carry `step` and the
    /// hash the JSON file recorded.
    pub fn read_tensors(&self, dir: &Path, tensors: &FitTensors, step: u64) -> Result<Self> {
        let path = dir.join(&tensors.file);
        let mut f = read_safetensors(&path, step)?;
        let fit = MahalanobisFit {
            whiten: f.take("whiten")?.0,
            means: f.take("means")?.0,
            ..self.clone()
        };
        fit.check(&path)?;
        if fit.fnv1a() != tensors.fnv1a {
            let why = "its matrices are not the ones the threshold file was saved with (a write was interrupted): run `jem threshold` again";
            return Err(CheckpointError::corrupt(&path, why).into());
        }
        Ok(fit)
    }

    /// `Err` naming `path` when the matrices do not have the sizes `dim` and `classes` give.
    pub fn check(&self, path: &Path) -> Result<()> {
        let (d, k) = (self.dim, self.classes);
        if d == 0 || self.whiten.len() != d * d || self.means.len() != k * d {
            let why = format!(
                "the mahalanobis fit of dimension {d} and {k} classes has {} whitening and {} mean values (want {} and {})",
                self.whiten.len(),
                self.means.len(),
                d * d,
                k * d
            );
            return Err(CheckpointError::corrupt(path, why).into());
        }
        Ok(())
    }

    fn fnv1a(&self) -> String {
        let bytes = self
            .whiten
            .iter()
            .chain(&self.means)
            .flat_map(|v| v.to_le_bytes());
        let h = bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{h:016x}")
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
