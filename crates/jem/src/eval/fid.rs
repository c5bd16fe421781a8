//! Fréchet distance between Gaussians fitted to feature sets, the classifier-based
//! Inception-style score, and per-class sample diversity.
//!
//! These are not the Inception-v3 numbers of the paper: no Inception weights can be had
//! here. jem computes them in the feature space of a classifier the user trains (the
//! penultimate activations of a `softmax` run, `--feature-run`). Within one feature network
//! the numbers are comparable between runs (same features, same formula), which is what a
//! comparison of samplers or objectives needs; across feature networks they are not.

/// Symmetric eigen-decomposition by cyclic Jacobi rotations: returns (eigenvalues, eigenvectors
/// as columns of a row-major `n x n` matrix).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum();
        let scale: f64 = (0..n)
            .map(|i| m[i * n + i] * m[i * n + i])
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-22 * scale || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| m[i * n + i]).collect(), v)
}

/// Mean and covariance (unbiased) of `rows` vectors of dimension `d`.
pub fn mean_cov(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut mu = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mu.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut cov = scatter(x.chunks_exact(d).map(|row| (row, &mu[..])), d);
    let denom = (n.max(2) - 1) as f64;
    cov.iter_mut().for_each(|c| *c /= denom);
    (mu, cov)
}

/// The scatter matrix `sum_i (x_i - m_i)(x_i - m_i)^T` (`[d, d]`, row-major) of the rows
/// `x_i`, each with its own centre `m_i` (the set's mean for a covariance, the class mean
/// for a pooled within-class covariance).
pub fn scatter<'a>(rows: impl Iterator<Item = (&'a [f32], &'a [f64])>, d: usize) -> Vec<f64> {
    let mut s = vec![0.0f64; d * d];
    let mut c = vec![0.0f64; d];
    for (row, centre) in rows {
        c.iter_mut()
            .zip(row.iter().zip(centre))
            .for_each(|(c, (&v, m))| *c = f64::from(v) - m);
        for i in 0..d {
            let ci = c[i];
            s[i * d + i..(i + 1) * d]
                .iter_mut()
                .zip(&c[i..])
                .for_each(|(s, cj)| *s += ci * cj);
        }
    }
    for i in 0..d {
        for j in i + 1..d {
            s[j * d + i] = s[i * d + j];
        }
    }
    s
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// Fréchet distance `|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))` between two Gaussians.
pub fn frechet_distance(mu1: &[f64], s1: &[f64], mu2: &[f64], s2: &[f64]) -> f64 {
    let d = mu1.len();
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    // Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD matrix.
    let (w, v) = symmetric_eigen(s1, d);
    let mut root = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            root[i * d + j] = (0..d)
                .map(|k| v[i * d + k] * w[k].max(0.0).sqrt() * v[j * d + k])
                .sum();
        }
    }
    let inner = matmul(&matmul(&root, s2, d), &root, d);
    let sym: Vec<f64> = (0..d * d)
        .map(|k| 0.5 * (inner[k] + inner[(k % d) * d + k / d]))
        .collect();
    let (ev, _) = symmetric_eigen(&sym, d);
    let tr_sqrt: f64 = ev.iter().map(|&e| e.max(0.0).sqrt()).sum();
    let tr1: f64 = (0..d).map(|i| s1[i * d + i]).sum();
    let tr2: f64 = (0..d).map(|i| s2[i * d + i]).sum();
    (mean_term + tr1 + tr2 - 2.0 * tr_sqrt).max(0.0)
}

/// FID between two feature sets (`[n, d]` row-major each).
pub fn fid(a: &[f32], b: &[f32], d: usize) -> f64 {
    let (m1, s1) = mean_cov(a, d);
    let (m2, s2) = mean_cov(b, d);
    frechet_distance(&m1, &s1, &m2, &s2)
}

/// Inception-style score `exp(E_x KL(p(y|x) || p(y)))` from class probabilities `[n, k]`.
pub fn inception_score(probs: &[f32], k: usize) -> f64 {
    let n = probs.len() / k;
    let mut marginal = vec![0.0f64; k];
    for row in probs.chunks_exact(k) {
        for (m, &p) in marginal.iter_mut().zip(row) {
            *m += p as f64 / n as f64;
        }
    }
    let kl: f64 = probs
        .chunks_exact(k)
        .map(|row| {
            row.iter()
                .zip(&marginal)
                .filter(|(p, _)| **p > 0.0)
                .map(|(&p, &m)| p as f64 * ((p as f64).ln() - m.max(1e-300).ln()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n.max(1) as f64;
    kl.exp()
}

/// Mean pairwise Euclidean distance between the `[n, d]` rows (0 for fewer than 2 rows).
pub fn mean_pairwise_distance(x: &[f32], d: usize) -> f64 {
    let rows: Vec<&[f32]> = x.chunks_exact(d).collect();
    let (mut sum, mut pairs) = (0.0f64, 0usize);
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            sum += rows[i]
                .iter()
                .zip(rows[j])
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            pairs += 1;
        }
    }
    if pairs == 0 { 0.0 } else { sum / pairs as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let (mut w, v) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        w.sort_by(f64::total_cmp);
        assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 3.0).abs() < 1e-12);
        let c0 = [v[0], v[2]];
        assert!((c0[0].abs() - 0.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn scatter_and_covariance_by_hand() {
        // Rows (1, 2), (3, 6) around their mean (2, 4): residuals (-1, -2), (1, 2), scatter
        // [[2, 4], [4, 8]], unbiased covariance the same (n - 1 = 1).
        let (mu, cov) = mean_cov(&[1.0, 2.0, 3.0, 6.0], 2);
        assert_eq!(mu, vec![2.0, 4.0]);
        assert_eq!(cov, vec![2.0, 4.0, 4.0, 8.0]);
        // Each row around its own centre, as the pooled within-class covariance uses it:
        // residuals (1, 0, -1) and (0, 2, 1) give the sum of their outer products.
        let rows = [[2.0f32, 1.0, 0.0], [1.0, 3.0, 2.0]];
        let centres = [[1.0f64, 1.0, 1.0], [1.0, 1.0, 1.0]];
        let s = scatter(rows.iter().zip(&centres).map(|(r, c)| (&r[..], &c[..])), 3);
        let want = [1.0, 0.0, -1.0, 0.0, 4.0, 2.0, -1.0, 2.0, 2.0];
        assert_eq!(s, want);
    }

    #[test]
    fn frechet_distance_matches_the_closed_form_for_diagonal_covariances() {
        let mu1 = [0.0, 1.0, 2.0];
        let mu2 = [1.0, 1.0, 0.0];
        let s1 = [4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 9.0];
        let s2 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0];
        // |dmu|^2 = 1 + 0 + 4; sum (s1 + s2 - 2 sqrt(s1 s2)) = (4+1-4) + 0 + (9+4-12) = 2.
        assert!((frechet_distance(&mu1, &s1, &mu2, &s2) - 7.0).abs() < 1e-9);
        // A rotated pair: S2 = R S1 R^T with the same spectrum still has distance from traces.
        let s = [2.0, 1.0, 1.0, 2.0];
        assert!(frechet_distance(&[0.0, 0.0], &s, &[0.0, 0.0], &s).abs() < 1e-9);
    }

    #[test]
    fn fid_is_zero_on_identical_sets_and_grows_with_a_shift() {
        let mut r = crate::rng::Rng::new(0, 0);
        let mut a = vec![0.0f32; 2000 * 4];
        r.fill_normal(&mut a, 1.0);
        assert!(fid(&a, &a, 4) < 1e-9);
        let b: Vec<f32> = a.iter().map(|v| v + 1.0).collect();
        assert!((fid(&a, &b, 4) - 4.0).abs() < 1e-6); // a shift of 1 in 4 dimensions
    }

    #[test]
    fn inception_score_and_diversity_by_hand() {
        // Confident and uniform over classes: IS = k. All the same: IS = 1.
        let eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert!((inception_score(&eye, 3) - 3.0).abs() < 1e-9);
        let same = [0.2, 0.8, 0.2, 0.8];
        assert!((inception_score(&same, 2) - 1.0).abs() < 1e-9);
        let pts = [0.0, 0.0, 3.0, 4.0, 0.0, 0.0];
        // Distances 5, 0, 5: mean 10 / 3.
        assert!((mean_pairwise_distance(&pts, 2) - 10.0 / 3.0).abs() < 1e-9);
    }
}
