//! Calibration and OOD evaluations on a small trained model and generated sets.

use burn::prelude::*;
use jem::Engine;
use jem::data::{Dataset, DatasetKind};
use jem::eval::calibration::evaluate_calibration;
use jem::eval::ood::{
    OodReport, OodRow, OodSet, OodSpec, Score, SetHalf, evaluate_ood, ood_images, score_images,
};
use jem::eval::ood_fused::{FusedFit, fit_scores};
use jem::eval::ood_select::{choose, evaluate_selected};
use jem::model::Classifier;
use jem::rng::Rng;

mod common;

fn trained(data: &Dataset) -> Classifier {
    common::trained_softmax(data).0
}

fn synthetic() -> (Dataset, Dataset) {
    common::synthetic(512, 200, 4)
}

#[test]
fn generated_sets_are_what_they_claim() {
    let (_, te) = synthetic();
    let mut rng = Rng::new(1, 0);
    let len = te.image_len();
    let inv = ood_images(OodSet::Invert, &te, None, SetHalf::All, &mut rng).unwrap();
    assert!(inv.iter().zip(&te.images).all(|(a, b)| *a == -*b));
    let flip = ood_images(OodSet::Vflip, &te, None, SetHalf::All, &mut rng).unwrap();
    assert_eq!(flip[..28], te.images[27 * 28..28 * 28]);
    let shuf = ood_images(OodSet::Shuffle, &te, None, SetHalf::All, &mut rng).unwrap();
    let mut a: Vec<u32> = shuf[..len].iter().map(|v| v.to_bits()).collect();
    let mut b: Vec<u32> = te.images[..len].iter().map(|v| v.to_bits()).collect();
    assert_ne!(a, b);
    a.sort();
    b.sort();
    assert_eq!(a, b, "a shuffled image keeps its pixels");
    let cst = ood_images(OodSet::Constant, &te, None, SetHalf::All, &mut rng).unwrap();
    assert!(cst[..len].iter().all(|&v| v == cst[0]));
    for set in [OodSet::Uniform, OodSet::Gaussian, OodSet::Interp] {
        let v = ood_images(set, &te, None, SetHalf::All, &mut rng).unwrap();
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
        SetHalf::All,
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
    let c = evaluate_calibration(Engine::for_model(&model), &model, &te, 20, 64).unwrap();
    assert!(c.accuracy > 0.6, "accuracy {}", c.accuracy);
    assert!((0.0..=1.0).contains(&c.ece) && c.mce >= c.ece);
    assert_eq!(c.bins.iter().map(|b| b.count).sum::<usize>(), te.len());

    let scores = [Score::Logp, Score::Py, Score::Pxgrad, Score::EnergyT(1.0)];
    let report = evaluate_ood(
        Engine::for_model(&model),
        &model,
        &te,
        &OodSpec {
            sets: &[OodSet::Uniform, OodSet::Invert],
            dir: None,
            scores: &scores,
            batch_size: 64,
            half: SetHalf::All,
        },
        &mut Rng::new(2, 0),
    )
    .unwrap();
    assert_eq!(report.histograms.len(), 4);
    for h in &report.histograms {
        assert_eq!(h.edges.len(), 41);
        assert_eq!(h.sets.len(), 2);
        let width = h.edges[1] - h.edges[0];
        let mass: f64 = h.inside.iter().map(|d| d * width).sum();
        assert!(
            (0.95..=1.0 + 1e-9).contains(&mass),
            "{} in-dist mass {mass}",
            h.score
        );
    }
    let rows = report.rows;
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

    // pxgrad is minus the input-gradient norm, whose square sums the per-pixel squares, and
    // gradnorm the norm itself.
    let s = score_images(
        Engine::for_model(&model),
        &model,
        &te.images[..2 * 784],
        [1, 28, 28],
        &[Score::Pxgrad, Score::Gradnorm],
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
    assert!(
        (s[1][0] - norm).abs() < 1e-4 * norm.max(1.0),
        "{} vs {norm}",
        s[1][0]
    );
    assert_eq!(s[1][1], -s[0][1]);
}

#[test]
fn a_data_set_ood_set_splits_into_two_disjoint_halves() {
    let (_, te) = synthetic();
    let dir = tempfile::tempdir().unwrap();
    for d in 0..10 {
        // 20 images of digit d, image j all of value (d * 20 + j) / 200 (distinct images).
        let data: Vec<String> = (0..20 * 784)
            .map(|i| format!("{}", (d * 20 + i / 784) as f32 / 200.0))
            .collect();
        std::fs::write(
            dir.path().join(format!("{d}.json")),
            format!("{{\"data\": [{}]}}", data.join(",")),
        )
        .unwrap();
    }
    let set = OodSet::Dataset(DatasetKind::Mnist);
    let mut rng = Rng::new(0, 0);
    let mut get = |half| ood_images(set, &te, Some(dir.path()), half, &mut rng).unwrap();
    let (all, select, report) = (
        get(SetHalf::All),
        get(SetHalf::Select),
        get(SetHalf::Report),
    );
    let firsts = |v: &[f32]| -> Vec<u32> { v.chunks_exact(784).map(|i| i[0].to_bits()).collect() };
    let (all, select, report) = (firsts(&all), firsts(&select), firsts(&report));
    assert_eq!(all.len(), 20, "the test split: a tenth of each digit");
    assert_eq!((select.len(), report.len()), (10, 10));
    assert!(select.iter().all(|v| !report.contains(v)), "disjoint");
    let mut both: Vec<u32> = select.iter().chain(&report).copied().collect();
    let mut want = all.clone();
    both.sort();
    want.sort();
    assert_eq!(both, want, "together the whole set");
}

fn row(score: &str, set: &str, auroc: f64) -> OodRow {
    OodRow {
        score: score.into(),
        set: set.into(),
        auroc,
        aupr_in: 0.5,
        aupr_out: 0.5,
        fpr95: 0.5,
        n_ood: 10,
    }
}

#[test]
fn the_chosen_score_is_the_one_with_the_best_worst_set() {
    let report = |rows| OodReport {
        rows,
        histograms: vec![],
        selected: None,
        fused: None,
        values: vec![],
    };
    // logp is best on average, py on its worst set: py is chosen.
    let r = report(vec![
        row("logp", "uniform", 1.0),
        row("logp", "mnist", 0.6),
        row("py", "uniform", 0.8),
        row("py", "mnist", 0.7),
        row("pxgrad", "uniform", f64::NAN),
    ]);
    let s = choose(&r).unwrap();
    assert_eq!(s.score, "py");
    let names: Vec<&str> = s.candidates.iter().map(|c| c.score.as_str()).collect();
    assert_eq!(
        names,
        ["py", "logp"],
        "best first; a score without AUROC left out"
    );
    assert_eq!(s.candidates[1].worst_set, "mnist");
    assert!((s.candidates[1].mean_auroc - 0.8).abs() < 1e-12);
    // Equal worst sets: the higher mean wins.
    let r = report(vec![
        row("a", "x", 0.7),
        row("a", "y", 0.8),
        row("b", "x", 0.7),
        row("b", "y", 0.9),
    ]);
    assert_eq!(choose(&r).unwrap().score, "b");
    assert!(choose(&report(vec![])).is_none());
}

#[test]
fn a_score_chosen_on_validation_data_is_reported_on_the_test_split() {
    let (tr, te) = synthetic();
    let model = trained(&tr);
    let valid = tr.subset(&(0..200).collect::<Vec<_>>());
    let scores = [Score::Logp, Score::Py];
    let spec = OodSpec {
        sets: &[OodSet::Uniform, OodSet::Invert],
        dir: None,
        scores: &scores,
        batch_size: 64,
        half: SetHalf::All,
    };
    let engine = Engine::for_model(&model);
    let r = evaluate_selected(
        engine,
        &model,
        (&valid, &te),
        &spec,
        &[],
        &mut Rng::new(3, 0),
    )
    .unwrap();
    let sel = r.selected.as_ref().unwrap();
    assert_eq!(sel.candidates.len(), 2);
    assert_eq!(sel.score, sel.candidates[0].score);
    // The candidates are the validation figures: they match a plain validation evaluation.
    let v = evaluate_ood(engine, &model, &valid, &spec, &mut Rng::new(3, 0)).unwrap();
    assert_eq!(choose(&v).unwrap(), *sel);
    // The rows are the test split's: four (score, set) pairs of 200 images each.
    assert_eq!(r.rows.len(), 4);
    assert!(r.rows.iter().all(|x| x.n_ood == te.len()));
    // Chosen against invert alone: the candidates' worst set is invert, the report has both.
    let only = [OodSet::Invert];
    let r = evaluate_selected(
        engine,
        &model,
        (&valid, &te),
        &spec,
        &only,
        &mut Rng::new(3, 0),
    )
    .unwrap();
    let sel = r.selected.unwrap();
    assert!(sel.candidates.iter().all(|c| c.worst_set == "invert"));
    assert_eq!(sel.sets, ["invert"]);
    assert_eq!(r.rows.len(), 4);
}

/// A spec of `sets` and `scores`, 64 images a batch.
fn two_sets<'a>(sets: &'a [OodSet], scores: &'a [Score]) -> OodSpec<'a> {
    OodSpec {
        sets,
        dir: None,
        scores,
        batch_size: 64,
        half: SetHalf::All,
    }
}

/// `spec` evaluated on the test split with a score chosen on the validation split.
fn selected(model: &Classifier, data: (&Dataset, &Dataset), spec: &OodSpec) -> OodReport {
    let engine = Engine::for_model(model);
    evaluate_selected(engine, model, data, spec, &[], &mut Rng::new(3, 0)).unwrap()
}

#[test]
fn the_fused_score_is_standardised_on_validation_data_and_is_the_lower_z_score() {
    let (tr, te) = synthetic();
    let model = trained(&tr);
    let engine = Engine::for_model(&model);
    let valid = tr.subset(&(0..200).collect::<Vec<_>>());
    let parts = [Score::Logp, Score::Gradnorm];
    let on = |d: &Dataset, s: &[Score]| score_images(engine, &model, &d.images, d.shape, s, 64);
    let v = on(&valid, &parts);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let fitted = fit_scores(engine, &model, &valid, &[Score::Py, Score::Fused(None)], 64).unwrap();
    let Score::Fused(Some(fit)) = fitted[1] else {
        panic!("not fitted: {fitted:?}")
    };
    assert_eq!(fitted[0], Score::Py);
    assert_eq!(fit.n, valid.len());
    assert!((fit.logp.mean - mean(&v[0])).abs() < 1e-9, "{fit:?}");
    assert!((fit.gradnorm.mean - mean(&v[1])).abs() < 1e-9, "{fit:?}");
    let sd = (v[1].iter().map(|g| (g - mean(&v[1])).powi(2)).sum::<f64>() / 200.0).sqrt();
    assert!((fit.gradnorm.std - sd).abs() < 1e-9 * sd, "{fit:?}");
    // On test images: min of the two standardised scores, image by image.
    let t = on(
        &te,
        &[Score::Logp, Score::Gradnorm, Score::Fused(Some(fit))],
    );
    assert_eq!(t[2].len(), te.len());
    for (i, ((&l, &g), &f)) in t[0].iter().zip(&t[1]).zip(&t[2]).enumerate() {
        let want = fit.logp.z(l).min(fit.gradnorm.z(g));
        assert!((f - want).abs() < 1e-9, "image {i}: {f} vs {want}");
    }
    // Unfitted, it scores NaN; a constant score cannot be standardised.
    assert!(on(&te, &[Score::Fused(None)])[0].iter().all(|v| v.is_nan()));
    let e = FusedFit::fit(&[1.0; 4], &[1.0, 2.0, 3.0, 4.0]).unwrap_err();
    assert!(e.to_string().contains("logp"), "{e}");
    // Chosen on validation data, the report's fit is the validation split's, not the test's.
    let scores = [Score::Logp, Score::Fused(None)];
    let spec = two_sets(&[OodSet::Uniform, OodSet::Invert], &scores);
    let r = selected(&model, (&valid, &te), &spec);
    assert_eq!(r.fused, Some(fit));
    assert_eq!(r.rows.iter().filter(|x| x.score == "fused").count(), 2);
    assert!(
        r.selected
            .unwrap()
            .candidates
            .iter()
            .any(|c| c.score == "fused")
    );
    // Evaluated alone, it is fitted on the in-distribution images it is given.
    let alone = evaluate_ood(engine, &model, &te, &spec, &mut Rng::new(3, 0)).unwrap();
    assert_eq!(alone.fused.unwrap().n, te.len());
}

#[test]
fn the_mahalanobis_score_is_fitted_on_validation_labels_and_separates_noise() {
    let (tr, te) = synthetic();
    let model = trained(&tr);
    let engine = Engine::for_model(&model);
    let valid = tr.subset(&(0..200).collect::<Vec<_>>());
    let scores = [Score::Logp, Score::Mahalanobis(None)];
    let spec = two_sets(&[OodSet::Uniform, OodSet::Constant], &scores);
    let r = selected(&model, (&valid, &te), &spec);
    let rows: Vec<_> = r.rows.iter().filter(|x| x.score == "mahalanobis").collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|x| x.auroc > 0.9), "{rows:?}");
    // Unfitted, it scores NaN; fitted, it is finite and at most 0 (minus a squared distance).
    let on = |s: Score| score_images(engine, &model, &te.images, te.shape, &[s], 64).remove(0);
    assert!(on(Score::Mahalanobis(None)).iter().all(|v| v.is_nan()));
    let fitted = jem::eval::ood_maha::fit_scores(&model, &valid, &[Score::Mahalanobis(None)], 64);
    let s = on(fitted.unwrap().remove(0));
    assert!(
        s.iter().all(|v| v.is_finite() && *v <= 0.0),
        "{:?}",
        &s[..4]
    );
}

mod attack {
    use super::*;
    use jem::eval::accuracy::accuracy;
    use jem::eval::attack::{
        AttackConfig, Defence, Norm, attack, defended_probs, loss_grad, pgd_step,
    };
    use jem::sgld::SgldConfig;

    fn t(v: Vec<f32>, dims: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, dims), &Device::flex())
    }
    fn vals(x: Tensor<4>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }
    fn plain() -> Defence {
        Defence {
            sgld: SgldConfig {
                steps: 0,
                ..SgldConfig::default()
            },
            chains: 5,
            start_noise: 0.03,
        }
    }

    #[test]
    fn pgd_steps_follow_known_gradients_and_stay_in_the_ball() {
        let x0 = t(vec![0.0, 0.5, 0.99, -0.2], [1, 1, 2, 2]);
        let g = t(vec![3.0, -0.1, 2.0, 0.0], [1, 1, 2, 2]);
        // L-inf: alpha * sign(g), clipped to the eps ball and to [-1, 1].
        let x = vals(pgd_step(x0.clone(), g.clone(), &x0, Norm::Linf, 0.1, 0.05));
        let want = [0.05, 0.45, 1.0, -0.2];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?}");
        }
        let x = vals(pgd_step(x0.clone(), g.clone(), &x0, Norm::Linf, 0.02, 0.05));
        assert!((x[0] - 0.02).abs() < 1e-6 && (x[1] - 0.48).abs() < 1e-6);
        // L2: alpha along g / |g|; a step longer than eps is pulled back onto the sphere.
        let x0 = t(vec![0.0; 4], [1, 1, 2, 2]);
        let g = t(vec![3.0, 4.0, 0.0, 0.0], [1, 1, 2, 2]);
        let x = vals(pgd_step(x0.clone(), g.clone(), &x0, Norm::L2, 1.0, 0.5));
        assert!((x[0] - 0.3).abs() < 1e-6 && (x[1] - 0.4).abs() < 1e-6);
        let x = vals(pgd_step(x0.clone(), g, &x0, Norm::L2, 0.25, 0.5));
        let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 0.25).abs() < 1e-5, "{x:?}");
    }

    #[test]
    fn zero_refinement_is_plain_classification_and_its_gradient_is_exact() {
        let (tr, te) = synthetic();
        let model = trained(&tr);
        let x = Tensor::<4>::from_data(
            TensorData::new(te.images[..4 * 784].to_vec(), [4, 1, 28, 28]),
            &Device::flex(),
        );
        let p = vals4(defended_probs(
            Engine::for_model(&model),
            &model,
            &x,
            &plain(),
            &mut Rng::new(0, 0),
        ));
        let q = vals4(burn::tensor::activation::softmax(
            model.valid().forward(x.clone()),
            1,
        ));
        assert_eq!(p, q);
        // The attack gradient against finite differences of the summed cross-entropy.
        let ys: Vec<usize> = te.labels[..4].iter().map(|&y| y as usize).collect();
        let g = vals(loss_grad(
            Engine::for_model(&model),
            &model,
            &x,
            &ys,
            10,
            &plain(),
            &mut Rng::new(0, 0),
        ));
        let xs = te.images[..4 * 784].to_vec();
        let ce = |v: &[f32]| -> f64 {
            let xt = Tensor::<4>::from_data(
                TensorData::new(v.to_vec(), [4, 1, 28, 28]),
                &Device::flex(),
            );
            let oh = jem::energy::one_hot(&ys, 10, &Device::flex());
            jem::energy::cross_entropy(model.valid().forward(xt), oh).into_scalar::<f32>() as f64
                * 4.0
        };
        let mut bad = 0;
        let idx: Vec<usize> = (0..xs.len()).step_by(211).collect();
        for &i in &idx {
            let (mut a, mut b) = (xs.clone(), xs.clone());
            a[i] += 1e-2;
            b[i] -= 1e-2;
            let fd = (ce(&a) - ce(&b)) / 2e-2;
            // The f32 loss resolves differences of about 2e-4 here: an absolute floor of 1e-3.
            if (fd - g[i] as f64).abs() > (0.05 * fd.abs().max(g[i].abs() as f64)).max(1e-3) {
                bad += 1;
            }
        }
        assert!(
            bad * 10 <= idx.len(),
            "{bad} of {} coordinates disagree",
            idx.len()
        );
    }

    fn vals4(x: Tensor<2>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn robust_accuracy_starts_at_clean_accuracy_and_falls_with_epsilon() {
        let (tr, te) = synthetic();
        let model = trained(&tr);
        let idx: Vec<usize> = (0..60).collect();
        let te = te.subset(&idx);
        let clean = accuracy(
            Engine::for_model(&model),
            &model,
            &te,
            64,
            None,
            &mut Rng::new(0, 0),
        )
        .unwrap()
        .accuracy;
        let cfg = AttackConfig {
            eps: vec![0.0, 0.01, 0.3],
            steps: 10,
            ..AttackConfig::default()
        };
        let r = attack(
            Engine::for_model(&model),
            &model,
            &te,
            &cfg,
            &plain(),
            32,
            &mut Rng::new(1, 0),
        )
        .unwrap();
        assert_eq!(r.clean_accuracy, clean);
        assert_eq!(r.results[0].robust_accuracy, clean);
        assert_eq!(r.results[0].success_rate, 0.0);
        let acc: Vec<f64> = r.results.iter().map(|e| e.robust_accuracy).collect();
        assert!(acc[1] <= acc[0] && acc[2] <= acc[1], "{acc:?}");
        assert!(r.sane);
        assert!(
            acc[2] < clean * 0.5,
            "a 0.3 L-inf attack should break most images: {acc:?}"
        );
        // The defence runs end to end (1 refinement step, 2 chains) and reports sane numbers.
        let defence = Defence {
            sgld: SgldConfig {
                steps: 1,
                ..SgldConfig::default()
            },
            chains: 2,
            start_noise: 0.03,
        };
        let cfg = AttackConfig {
            eps: vec![0.0, 0.05],
            steps: 3,
            norm: Norm::L2,
            ..AttackConfig::default()
        };
        let r = attack(
            Engine::for_model(&model),
            &model,
            &te,
            &cfg,
            &defence,
            32,
            &mut Rng::new(2, 0),
        )
        .unwrap();
        assert_eq!(r.results[0].robust_accuracy, r.clean_accuracy);
        assert!(r.results[1].robust_accuracy <= r.clean_accuracy);
        assert!(
            attack(
                Engine::for_model(&model),
                &model,
                &te,
                &AttackConfig {
                    eps: vec![-1.0],
                    ..cfg
                },
                &defence,
                32,
                &mut Rng::new(0, 0)
            )
            .is_err()
        );
    }
}
