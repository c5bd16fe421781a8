//! Where SGLD chains start: uniform noise in `[-1, 1]` (JEM) or JEM++'s informative
//! initialisation, a draw from a Gaussian with full covariance fitted to each class of the
//! training data (Yang & Ji, ICCV 2021), clamped to `[-1, 1]`.
//!
//! For 28x28 images one class's Cholesky factor is 784 x 784 (2.5 MB as f32; 25 MB for ten
//! classes). Fitting computes the covariances as matrix products on the compute device and
//! factors them in f64 on the host.

use std::sync::Arc;

use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::Error;
use crate::rng::Rng;

/// How chains are started (and restarted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ChainInit {
    /// Uniform noise in `[-1, 1]`.
    #[default]
    Uniform,
    /// Class-conditional Gaussians fitted to the training data.
    Informative,
}

/// Ridge added to every covariance's diagonal before it is factored (pixels that never
/// change, such as the borders of MNIST digits, make the raw covariance singular).
pub const COV_RIDGE: f64 = 1e-4;

/// One Gaussian per class: its mean and the lower Cholesky factor of its covariance.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassGaussians {
    dim: usize,
    /// Per class, `[dim]`.
    means: Vec<Vec<f32>>,
    /// Per class, `[dim, dim]` row-major lower triangle (upper part zero).
    chol: Vec<Vec<f32>>,
}

impl ClassGaussians {
    /// Fit mean and covariance (plus [`COV_RIDGE`] on the diagonal) of every class of `data`.
    pub fn fit(data: &Dataset, device: &Device) -> Result<Self, Error> {
        let dim: usize = data.shape.iter().product();
        let mut means = Vec::with_capacity(data.num_classes);
        let mut chol = Vec::with_capacity(data.num_classes);
        for k in 0..data.num_classes {
            let rows: Vec<usize> = (0..data.len())
                .filter(|&i| data.labels[i] as usize == k)
                .collect();
            if rows.len() < 2 {
                return Err(Error::Shape(format!(
                    "informative initialisation needs at least 2 training images of class {k}, found {}",
                    rows.len()
                )));
            }
            let n = rows.len();
            let mut x = Vec::with_capacity(n * dim);
            for &i in &rows {
                x.extend_from_slice(&data.images[i * dim..(i + 1) * dim]);
            }
            let mut mean = vec![0.0f64; dim];
            for r in x.chunks_exact(dim) {
                for (m, &v) in mean.iter_mut().zip(r) {
                    *m += v as f64;
                }
            }
            mean.iter_mut().for_each(|m| *m /= n as f64);
            for r in x.chunks_exact_mut(dim) {
                for (v, &m) in r.iter_mut().zip(&mean) {
                    *v -= m as f32;
                }
            }
            let xt = Tensor::<2>::from_data(TensorData::new(x, [n, dim]), device); // [n, d]
            let cov = xt.clone().transpose().matmul(xt); // [d, d]
            let cov: Vec<f32> = cov.into_data().try_to_vec().expect("f32 covariance");
            let mut a: Vec<f64> = cov.iter().map(|&v| v as f64 / (n - 1) as f64).collect();
            for i in 0..dim {
                a[i * dim + i] += COV_RIDGE;
            }
            let l = cholesky(&mut a, dim).ok_or_else(|| {
                Error::Shape(format!(
                    "the covariance of class {k} is not positive definite even with ridge {COV_RIDGE}"
                ))
            })?;
            means.push(mean.iter().map(|&m| m as f32).collect());
            chol.push(l);
        }
        Ok(ClassGaussians { dim, means, chol })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.means.len()
    }

    /// Mean of class `k`.
    pub fn mean(&self, k: usize) -> &[f32] {
        &self.means[k]
    }

    /// Fill `out` (`[classes.len(), dim]`) with one draw per entry of `classes`, clamped to
    /// `[-1, 1]`. The normal variates come from `rng` in order, so the result depends only on
    /// its state.
    pub fn sample_into(&self, classes: &[usize], out: &mut [f32], rng: &mut Rng) {
        let d = self.dim;
        assert_eq!(out.len(), classes.len() * d, "one image per class entry");
        let mut z = vec![0.0f32; out.len()];
        rng.fill_normal(&mut z, 1.0);
        out.par_chunks_exact_mut(d)
            .zip(z.par_chunks_exact(d))
            .zip(classes.par_iter())
            .for_each(|((o, z), &k)| {
                let l = &self.chol[k];
                let mu = &self.means[k];
                for i in 0..d {
                    let row = &l[i * d..i * d + i + 1];
                    let s: f32 = row.iter().zip(&z[..=i]).map(|(a, b)| a * b).sum();
                    o[i] = (mu[i] + s).clamp(-1.0, 1.0);
                }
            });
    }
}

/// In-place Cholesky factorisation of the symmetric `[n, n]` matrix `a`; the lower factor as
/// f32, or `None` when `a` is not positive definite.
fn cholesky(a: &mut [f64], n: usize) -> Option<Vec<f32>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let rj = &head[j * n..j * n + j];
        tail.par_chunks_exact_mut(n).for_each(|ri| {
            let s: f64 = ri[..j].iter().zip(rj).map(|(x, y)| x * y).sum();
            ri[j] = (ri[j] - s) / d;
        });
    }
    let mut l = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            l[i * n + j] = a[i * n + j] as f32;
        }
    }
    Some(l)
}

/// The chain starting distribution of a buffer.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ChainStart {
    /// Uniform in `[-1, 1]`.
    #[default]
    Uniform,
    /// Fitted class Gaussians.
    Gaussians(Arc<ClassGaussians>),
}

impl ChainStart {
    /// Fill `out` (`[n, dim]`) with `n` starts. `classes` names each chain's class (`None`:
    /// a class drawn uniformly per chain for the Gaussians; ignored by uniform noise).
    pub fn fill(&self, out: &mut [f32], n: usize, classes: Option<&[usize]>, rng: &mut Rng) {
        match self {
            ChainStart::Uniform => rng.fill_uniform(out, -1.0, 1.0),
            ChainStart::Gaussians(g) => {
                let ks: Vec<usize> = match classes {
                    Some(c) => c.to_vec(),
                    None => (0..n).map(|_| rng.below(g.num_classes())).collect(),
                };
                g.sample_into(&ks, out, rng);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_reproduces_the_matrix() {
        let m = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let mut a = m.to_vec();
        let l = cholesky(&mut a, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f32 = (0..3).map(|k| l[i * 3 + k] * l[j * 3 + k]).sum();
                assert!((v as f64 - m[i * 3 + j]).abs() < 1e-5, "({i},{j}) {v}");
            }
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky(&mut bad, 2).is_none());
    }
}
