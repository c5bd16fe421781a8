//! Calibration and OOD evaluations on a small trained model and generated sets.

use burn::prelude::*;
use jem::config::TrainConfig;
use jem::data::{Dataset, DatasetKind, load_files};
use jem::eval::calibration::evaluate_calibration;
use jem::eval::ood::{OodSet, Score, evaluate_ood, ood_images, score_images};
use jem::loss::Objective;
use jem::model::{Classifier, ModelConfig};
use jem::optim::Optimizer;
use jem::rng::Rng;
use jem::train::iteration;

fn trained(data: &Dataset) -> Classifier {
    let d = Device::flex().autodiff();
    d.seed(0);
    let mut cfg = TrainConfig::default();
    cfg.loss.objective = Objective::Softmax;
    cfg.model = ModelConfig::Cnn {
        widths: vec![8, 16],
    };
    let mut model = cfg.model.init(1, 10, &d);
    let mut opt = Optimizer::new(&cfg.optim);
    let mut rng = Rng::new(0, 0);
    for step in 0..150 {
        let idx: Vec<usize> = (0..32).map(|i| (step * 32 + i) % data.len()).collect();
        let batch = data.batch(&idx, &cfg.data.augment, &mut rng);
        model = iteration(
            &cfg,
            model,
            &mut opt,
            None,
            &batch,
            [1, 28, 28],
            10,
            3e-3,
            &mut rng,
            &d,
        )
        .unwrap()
        .0;
    }
    model
}

fn synthetic() -> (Dataset, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(dir.path(), 512, 200, 4).unwrap();
    let tr = load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap();
    let te = load_files(DatasetKind::FashionMnist, Some(dir.path()), true).unwrap();
    (tr, te)
}

#[test]
fn generated_sets_are_what_they_claim() {
    let (_, te) = synthetic();
    let mut rng = Rng::new(1, 0);
    let len = te.image_len();
    let inv = ood_images(OodSet::Invert, &te, None, &mut rng).unwrap();
    assert!(inv.iter().zip(&te.images).all(|(a, b)| *a == -*b));
    let flip = ood_images(OodSet::Vflip, &te, None, &mut rng).unwrap();
    assert_eq!(flip[..28], te.images[27 * 28..28 * 28]);
    let shuf = ood_images(OodSet::Shuffle, &te, None, &mut rng).unwrap();
    let mut a: Vec<u32> = shuf[..len].iter().map(|v| v.to_bits()).collect();
    let mut b: Vec<u32> = te.images[..len].iter().map(|v| v.to_bits()).collect();
    assert_ne!(a, b);
    a.sort();
    b.sort();
    assert_eq!(a, b, "a shuffled image keeps its pixels");
    let cst = ood_images(OodSet::Constant, &te, None, &mut rng).unwrap();
    assert!(cst[..len].iter().all(|&v| v == cst[0]));
    for set in [OodSet::Uniform, OodSet::Gaussian, OodSet::Interp] {
        let v = ood_images(set, &te, None, &mut rng).unwrap();
        assert_eq!(v.len(), te.images.len());
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "{set:?}");
    }
    // Images of another shape are an error naming both shapes.
    let cifar = tempfile::tempdir().unwrap();
    std::fs::write(cifar.path().join("test_batch.bin"), vec![0u8; 3073]).unwrap();
    let e = ood_images(
        OodSet::Dataset(DatasetKind::Cifar10),
        &te,
        Some(cifar.path()),
        &mut rng,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("[3, 32, 32]") && e.to_string().contains("[1, 28, 28]"),
        "{e}"
    );
}

#[test]
fn a_trained_model_is_calibrated_somewhat_and_tells_noise_from_data() {
    let (tr, te) = synthetic();
    let model = trained(&tr);
    let c = evaluate_calibration(&model, &te, 20, 64).unwrap();
    assert!(c.accuracy > 0.6, "accuracy {}", c.accuracy);
    assert!((0.0..=1.0).contains(&c.ece) && c.mce >= c.ece);
    assert_eq!(c.bins.iter().map(|b| b.count).sum::<usize>(), te.len());

    let scores = [Score::Logp, Score::Py, Score::Pxgrad, Score::EnergyT(1.0)];
    let rows = evaluate_ood(
        &model,
        &te,
        &[OodSet::Uniform, OodSet::Invert],
        None,
        &scores,
        64,
        &mut Rng::new(2, 0),
    )
    .unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert!(
            (0.0..=1.0).contains(&r.auroc) && (0.0..=1.0).contains(&r.fpr95),
            "{r:?}"
        );
    }
    let logp_uniform = rows
        .iter()
        .find(|r| r.score == "logp" && r.set == "uniform")
        .unwrap();
    assert!(logp_uniform.auroc > 0.9, "{logp_uniform:?}");
    // Energy at T = 1 is log p(x) itself.
    let e = rows
        .iter()
        .find(|r| r.score == "energy-t1" && r.set == "uniform")
        .unwrap();
    assert_eq!(e.auroc, logp_uniform.auroc);

    // pxgrad is minus the input-gradient norm, whose square sums the per-pixel squares.
    let s = score_images(
        &model,
        &te.images[..2 * 784],
        [1, 28, 28],
        &[Score::Pxgrad],
        2,
    );
    let x = Tensor::<4>::from_data(
        TensorData::new(te.images[..784].to_vec(), [1, 1, 28, 28]),
        &Device::flex(),
    );
    let (g, _) = jem::energy::input_grad(&model, x, &jem::energy::Target::Marginal);
    let g: Vec<f32> = g.into_data().try_to_vec::<f32>().unwrap();
    let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    assert!(
        (s[0][0] + norm).abs() < 1e-4 * norm.max(1.0),
        "{} vs -{norm}",
        s[0][0]
    );
}
