//! logsumexp and input gradients against exact values and finite differences.

use burn::prelude::*;
use jem::Engine;
use jem::energy::{Target, log_pxy, logsumexp, one_hot};
use jem::model::ModelConfig;
use jem::rng::Rng;

fn device() -> Device {
    Device::flex().autodiff()
}

fn naive_lse(row: &[f32]) -> f64 {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

#[test]
fn logsumexp_matches_f64_reference_and_is_stable_for_large_logits() {
    let d = device().inner();
    let rows: Vec<f32> = vec![
        0.0, 1.0, 2.0, 3.0, //
        1000.0, 999.0, -5.0, 1000.0, //
        -1000.0, -1001.0, -1002.0, -999.5, //
        0.1, 0.1, 0.1, 0.1,
    ];
    let t = Tensor::<2>::from_data(TensorData::new(rows.clone(), [4, 4]), &d);
    let got: Vec<f32> = logsumexp(t).into_data().try_to_vec::<f32>().unwrap();
    for (i, row) in rows.chunks(4).enumerate() {
        let want = naive_lse(row);
        assert!(
            (got[i] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
            "row {i}: {} vs {want}",
            got[i]
        );
        assert!(got[i].is_finite());
    }
}

#[test]
fn logsumexp_gradient_is_softmax() {
    let d = device();
    let vals = vec![0.5f32, -1.0, 2.0, 700.0, 699.0, 0.0];
    let x = Tensor::<2>::from_data(TensorData::new(vals.clone(), [2, 3]), &d).require_grad();
    let g = logsumexp(x.clone()).sum().backward();
    let grad: Vec<f32> = x.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap();
    for (r, row) in vals.chunks(3).enumerate() {
        let lse = naive_lse(row);
        for (j, &v) in row.iter().enumerate() {
            let want = (v as f64 - lse).exp();
            assert!((grad[r * 3 + j] as f64 - want).abs() < 1e-5, "{r},{j}");
        }
    }
}

/// A small smooth-enough model: central finite differences of `sum lse(f(x))` in f64 terms
/// match the autodiff input gradient.
fn check_input_grad(
    target_of: impl Fn(&Device) -> Target,
    value_of: impl Fn(Tensor<2>, &Device) -> Tensor<1>,
) {
    let d = device();
    let model = ModelConfig::cnn(vec![6, 8]).init_seeded(1, 10, &d, 3);
    let inner = d.clone().inner();
    let mut rng = Rng::new(11, 0);
    let mut x = vec![0.0f32; 2 * 28 * 28];
    rng.fill_uniform(&mut x, -1.0, 1.0);
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [2, 1, 28, 28]), &inner);
    let (g, _) = Engine::for_model(&model).input_grad(&model, xt, &target_of(&inner));
    let g: Vec<f32> = g.into_data().try_to_vec::<f32>().unwrap();
    let plain = model.valid();
    let f = |v: &[f32]| -> f64 {
        let t = Tensor::<4>::from_data(TensorData::new(v.to_vec(), [2, 1, 28, 28]), &inner);
        value_of(plain.forward(t), &inner)
            .sum()
            .into_scalar::<f32>() as f64
    };
    let eps = 1e-2f32;
    let mut checked = 0;
    let mut bad = Vec::new();
    for idx in (0..x.len()).step_by(97) {
        let mut plus = x.clone();
        plus[idx] += eps;
        let mut minus = x.clone();
        minus[idx] -= eps;
        let fd = (f(&plus) - f(&minus)) / (2.0 * eps as f64);
        let ad = g[idx] as f64;
        let scale = fd.abs().max(ad.abs()).max(1e-3);
        if (fd - ad).abs() / scale > 0.05 {
            bad.push((idx, fd, ad));
        }
        checked += 1;
    }
    // LeakyReLU kinks can spoil a rare difference quotient; the gradient itself must agree.
    assert!(
        bad.len() * 10 <= checked,
        "{} of {checked} coordinates disagree: {bad:?}",
        bad.len()
    );
}

#[test]
fn input_gradient_of_log_px_matches_finite_differences() {
    check_input_grad(|_| Target::Marginal, |l, _| logsumexp(l));
}

#[test]
fn input_gradient_of_log_pxy_matches_finite_differences() {
    let ys = [3usize, 7];
    check_input_grad(
        |d| Target::Joint(one_hot(&ys, 10, d)),
        |l, d| log_pxy(l, one_hot(&ys, 10, d)),
    );
}
