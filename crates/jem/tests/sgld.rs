//! SGLD behaviour: it raises log p(x) (lowers the energy) of noise images for a trained
//! model, it is a pure function of its inputs, and 0 steps change nothing.

use burn::prelude::*;
use jem::Engine;
use jem::energy::Target;
use jem::eval::accuracy::mean_log_px;
use jem::model::Classifier;
use jem::rng::Rng;
use jem::sgld::SgldConfig;

mod common;

fn trained_model() -> (Classifier, Device) {
    let (data, _) = common::synthetic(512, 16, 1);
    let (model, last_acc) = common::trained_softmax(&data);
    assert!(
        last_acc > 0.5,
        "the fixture model did not learn: batch accuracy {last_acc}"
    );
    (model, Device::flex().autodiff())
}

fn noise(b: usize, seed: u64, d: &Device) -> Tensor<4> {
    let mut v = vec![0.0f32; b * 784];
    Rng::new(seed, 0).fill_uniform(&mut v, -1.0, 1.0);
    Tensor::from_data(TensorData::new(v, [b, 1, 28, 28]), &d.clone().inner())
}

#[test]
fn sgld_lowers_the_energy_of_noise_for_a_trained_model_and_is_pure() {
    let (model, d) = trained_model();
    let x0 = noise(32, 5, &d);
    let before = mean_log_px(&model, x0.clone());
    let params = SgldConfig::default();
    let out = Engine::for_model(&model).sgld(
        &model,
        x0.clone(),
        &Target::Marginal,
        &params,
        &mut Rng::new(9, 0),
    );
    let after = mean_log_px(&model, out.samples.clone());
    assert!(
        after > before + 0.5,
        "log p(x) {before} -> {after}: SGLD did not climb"
    );
    assert!(out.grad_norm.is_finite() && out.grad_norm > 0.0);

    // Energy falls step after step when the noise is off and the step small.
    let mut x = x0.clone();
    let mut prev = before;
    let small = SgldConfig {
        steps: 1,
        step_size: 0.05,
        noise_std: 0.0,
        ..SgldConfig::default()
    };
    for _ in 0..5 {
        x = Engine::for_model(&model)
            .sgld(&model, x, &Target::Marginal, &small, &mut Rng::new(0, 0))
            .samples;
        let now = mean_log_px(&model, x.clone());
        assert!(now > prev, "log p(x) fell from {prev} to {now}");
        prev = now;
    }

    // Pure: same inputs, same generator state, same samples; the generator advances.
    let mut r1 = Rng::new(9, 0);
    let again =
        Engine::for_model(&model).sgld(&model, x0.clone(), &Target::Marginal, &params, &mut r1);
    let a: Vec<f32> = out.samples.into_data().try_to_vec::<f32>().unwrap();
    let b: Vec<f32> = again.samples.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(r1, Rng::new(9, 0));

    // Zero steps: the start comes back unchanged.
    let zero = SgldConfig { steps: 0, ..params };
    let same = Engine::for_model(&model).sgld(
        &model,
        x0.clone(),
        &Target::Marginal,
        &zero,
        &mut Rng::new(1, 1),
    );
    let s: Vec<f32> = same.samples.into_data().try_to_vec::<f32>().unwrap();
    let o: Vec<f32> = x0.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(s, o);
}

#[test]
fn clamped_sgld_stays_in_the_data_range_and_is_proximal_sgld_without_a_gradient_clip() {
    let (model, d) = trained_model();
    // Large steps take unclamped chains out of [-1, 1]; clamped ones stay in it.
    let loose = SgldConfig {
        steps: 5,
        step_size: 50.0,
        noise_std: 0.3,
        ..SgldConfig::default()
    };
    let clamped = SgldConfig {
        clamp: true,
        ..loose.clone()
    };
    let run = |p: &SgldConfig| -> Vec<f32> {
        Engine::for_model(&model)
            .sgld(
                &model,
                noise(16, 3, &d),
                &Target::Marginal,
                p,
                &mut Rng::new(4, 0),
            )
            .samples
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let free = run(&loose);
    assert!(
        free.iter().any(|v| v.abs() > 1.0),
        "the unclamped chains never left [-1, 1]: the test shows nothing"
    );
    let boxed = run(&clamped);
    assert!(boxed.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(clamped.keeps_data_range() && !loose.keeps_data_range());
    // The same update as proximal SGLD whose gradient clip never binds.
    let pyld = SgldConfig {
        sampler: jem::sgld::SamplerKind::Pyld,
        grad_clip: f32::MAX,
        clamp: false,
        ..loose.clone()
    };
    assert_eq!(boxed, run(&pyld));
}
