//! The methods users compare JEM with: JEM++ (proximal SGLD, informative initialisation),
//! IGEBM (scalar energy, spectral normalisation) and learned-Stein-discrepancy training.
//! Finite-difference estimates are checked against exact values on small models, samplers
//! against their formulas, and every method's run against its resumed twin.

use jem::Engine;
use std::path::Path;

use burn::prelude::*;
use jem::checkpoint::files;
use jem::config::TrainConfig;
use jem::data::{Dataset, DatasetKind};
use jem::energy::Target;
use jem::eval::accuracy::mean_log_px;
use jem::eval::run::Run;
use jem::init::{ChainInit, ChainStart, ClassGaussians};
use jem::loss::{Objective, igebm_loss};
use jem::lsd::{hutchinson_trace, score_dot};
use jem::model::{Classifier, ModelConfig};
use jem::optim::{spectral_norm, spectral_normalize};
use jem::rng::Rng;
use jem::sgld::{SamplerKind, SgldConfig};
use jem::train::{NoObserver, Trainer};

fn ad() -> Device {
    Device::flex().autodiff()
}

fn small_model(seed: u64) -> Classifier {
    let d = ad();
    ModelConfig::cnn(vec![4, 8]).init_seeded(1, 10, &d, seed)
}

fn tensor(v: Vec<f32>, dims: [usize; 4], d: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, dims), d)
}

fn random(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    Rng::new(seed, 0).fill_normal(&mut v, std);
    v
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

mod common;

#[test]
fn the_finite_difference_score_term_matches_the_exact_directional_derivative() {
    // A trained model: an untrained one's lse is nearly flat, and f32 rounding of the
    // difference would dominate a derivative that small.
    let (data, _) = common::synthetic(512, 16, 1);
    let (model, _) = common::trained_softmax(&data);
    let d = ad();
    let dims = [4, 1, 28, 28];
    let x = tensor(random(4 * 784, 2, 0.5), dims, &d);
    let g = tensor(random(4 * 784, 3, 1.0), dims, &d);
    // Exact: g . d lse f(x)/dx with the input gradient from autodiff.
    let (grad, _) = Engine::for_model(&model).input_grad(&model, x.clone(), &Target::Marginal);
    let exact = to_vec((grad * g.clone().inner()).reshape([4, 784]).sum_dim(1));
    let est = to_vec(score_dot(&model, x, g, 1e-2));
    // f32 rounding of lse bounds the absolute error near |g| ulp(lse) / 2e (about 1e-3
    // here), so the tolerance is relative to the largest derivative of the batch. The step
    // (1e-2 g, norm about 0.28) also crosses LeakyReLU kinks, so the quotient is a mean slope
    // over it: within 1% of the largest derivative for the fixture the CPU kernel trains,
    // 3% for the one burn's autodiff trains on a CPU without AVX-512. A wrong sign, factor or
    // step size is off by the derivative itself.
    let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.1, "the fixture should have real gradients");
    for (e, x) in est.iter().zip(&exact) {
        assert!(
            (e - x).abs() <= 5e-2 * scale,
            "finite difference {e} vs exact {x}"
        );
    }
}

#[test]
fn the_finite_difference_hutchinson_term_matches_v_j_v_exactly() {
    let cfg = jem::lsd::LsdConfig::default();
    let d = ad();
    d.seed(4);
    let critic = cfg.init_critic(1, &d, &mut jem::rng::Rng::new(0, 0));
    let dims = [3, 1, 28, 28];
    let x = tensor(random(3 * 784, 5, 0.5), dims, &d);
    let v = tensor(random(3 * 784, 6, 1.0), dims, &d);
    // Exact v' J v = v . d (v . g(x))/dx, one backward pass.
    let xr = x.clone().require_grad();
    let vg = (critic.forward(xr.clone()) * v.clone()).sum();
    let jtv = xr.grad(&vg.backward()).unwrap();
    let exact = to_vec((jtv * v.clone().inner()).reshape([3, 784]).sum_dim(1));
    let (est, g) = hutchinson_trace(&critic, x.clone(), v, 1e-2);
    let est = to_vec(est);
    for (e, x) in est.iter().zip(&exact) {
        assert!(
            (e - x).abs() <= 1e-2 * x.abs().max(1e-2),
            "finite difference {e} vs exact {x}"
        );
    }
    // The g(x) returned is the critic's output on x.
    let direct = to_vec(critic.forward(x));
    let from_batch = to_vec(g);
    for (a, b) in direct.iter().zip(&from_batch) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn proximal_sgld_is_its_formula_and_stays_in_the_data_range() {
    let model = small_model(7);
    let d = Device::flex();
    let dims = [8, 1, 28, 28];
    let x0: Vec<f32> = random(8 * 784, 8, 0.9)
        .into_iter()
        .map(|v| v.clamp(-1.0, 1.0))
        .collect();
    let (g, _) = Engine::for_model(&model).input_grad(
        &model,
        tensor(x0.clone(), dims, &d),
        &Target::Marginal,
    );
    let g = to_vec(g);
    let clip = 0.5 * g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let params = SgldConfig {
        steps: 1,
        step_size: 0.2 / clip,
        grad_clip: clip,
        ..SgldConfig::jem_pp()
    };
    let out = Engine::for_model(&model).sgld(
        &model,
        tensor(x0.clone(), dims, &d),
        &Target::Marginal,
        &params,
        &mut Rng::new(0, 0),
    );
    let got = to_vec(out.samples.clone());
    let (mut clamped, mut projected) = (false, false);
    for i in 0..x0.len() {
        let moved = x0[i] + params.step_size * g[i].clamp(-clip, clip);
        let want = moved.clamp(-1.0, 1.0);
        assert!(
            (got[i] - want).abs() < 1e-5,
            "pixel {i}: {} vs {want}",
            got[i]
        );
        clamped |= g[i].abs() > clip;
        projected |= moved.abs() > 1.0;
    }
    assert!(clamped && projected, "the test should exercise both clamps");
    // Many noisy steps with a large step: still inside [-1, 1]; plain SGLD leaves it.
    let wild = SgldConfig {
        steps: 10,
        step_size: 1e3,
        noise_std: 0.5,
        ..params
    };
    let pyld = Engine::for_model(&model).sgld(
        &model,
        tensor(x0.clone(), dims, &d),
        &Target::Marginal,
        &wild,
        &mut Rng::new(1, 0),
    );
    assert!(to_vec(pyld.samples).iter().all(|v| v.abs() <= 1.0));
    let plain = SgldConfig {
        sampler: SamplerKind::Sgld,
        ..wild
    };
    let s = Engine::for_model(&model).sgld(
        &model,
        tensor(x0, dims, &d),
        &Target::Marginal,
        &plain,
        &mut Rng::new(1, 0),
    );
    assert!(to_vec(s.samples).iter().any(|v| v.abs() > 1.0));
}

/// Two classes on 2x2 images drawn from known Gaussians.
fn gaussian_classes() -> (Dataset, [[f32; 4]; 2], [[f32; 4]; 2]) {
    let means = [[0.3, -0.2, 0.1, 0.0], [-0.3, 0.2, 0.0, 0.25]];
    let stds = [[0.05, 0.1, 0.08, 0.02], [0.1, 0.03, 0.06, 0.09]];
    let mut rng = Rng::new(11, 0);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..8000 {
        let k = i % 2;
        // Correlate pixels 0 and 1: p1 += 0.5 * (p0 - mean0).
        let z: Vec<f32> = (0..4).map(|_| rng.normal()).collect();
        let p0 = means[k][0] + stds[k][0] * z[0];
        images.push(p0);
        images.push(means[k][1] + stds[k][1] * z[1] + 0.5 * (p0 - means[k][0]));
        images.push(means[k][2] + stds[k][2] * z[2]);
        images.push(means[k][3] + stds[k][3] * z[3]);
        labels.push(k as u8);
    }
    let data = Dataset {
        images,
        labels,
        shape: [1, 2, 2],
        num_classes: 2,
    };
    (data, means, stds)
}

#[test]
fn informative_initialisation_draws_from_the_fitted_class_gaussians() {
    let (data, means, stds) = gaussian_classes();
    let g = ClassGaussians::fit(&data, &Device::flex()).unwrap();
    let n = 20000;
    for k in 0..2 {
        let mut out = vec![0.0f32; n * 4];
        g.sample_into(&vec![k; n], &mut out, &mut Rng::new(12 + k as u64, 0));
        let mean: Vec<f64> = (0..4)
            .map(|j| {
                out.iter()
                    .skip(j)
                    .step_by(4)
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / n as f64
            })
            .collect();
        let cov = |a: usize, b: usize| {
            out.chunks_exact(4)
                .map(|r| (r[a] as f64 - mean[a]) * (r[b] as f64 - mean[b]))
                .sum::<f64>()
                / n as f64
        };
        for j in 0..4 {
            assert!(
                (mean[j] - means[k][j] as f64).abs() < 0.01,
                "class {k} mean {j}"
            );
            let want_var = (stds[k][j] as f64).powi(2)
                + if j == 1 {
                    0.25 * (stds[k][0] as f64).powi(2)
                } else {
                    0.0
                }
                + jem::init::COV_RIDGE;
            assert!(
                (cov(j, j) - want_var).abs() < 0.1 * want_var,
                "class {k} var {j}: {} vs {want_var}",
                cov(j, j)
            );
        }
        let want01 = 0.5 * (stds[k][0] as f64).powi(2);
        assert!(
            (cov(0, 1) - want01).abs() < 0.15 * want01,
            "class {k} covariance"
        );
    }
    // A conditional buffer starts partition k from class k; restarts keep to the class.
    let cfg = jem::buffer::BufferConfig {
        size: 400,
        reinit_freq: 1.0,
        conditional: true,
        init: ChainInit::Informative,
    };
    let start = ChainStart::Gaussians(std::sync::Arc::new(g));
    let mut rng = Rng::new(13, 0);
    let buf = jem::buffer::ReplayBuffer::new(&cfg, [1, 2, 2], 2, start, &mut rng);
    let part_mean = |range: std::ops::Range<usize>| {
        range.clone().map(|i| buf.chain(i)[0] as f64).sum::<f64>() / range.len() as f64
    };
    assert!((part_mean(0..200) - 0.3).abs() < 0.02);
    assert!((part_mean(200..400) + 0.3).abs() < 0.02);
    let draw = buf.draw(64, Some(&[1; 64]), 1.0, &mut rng);
    assert_eq!(draw.n_reinit, 64);
    let m = draw.start.iter().step_by(4).map(|&v| v as f64).sum::<f64>() / 64.0;
    assert!(
        (m + 0.3).abs() < 0.05,
        "restarted chains of class 1 have mean {m}"
    );
}

#[test]
fn the_igebm_loss_is_contrastive_divergence_plus_the_energy_penalty() {
    let d = Device::flex();
    let data = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 3.0], [2, 1]), &d);
    let samples = Tensor::<2>::from_data(TensorData::new(vec![-1.0f32, 0.5], [2, 1]), &d);
    let (total, md, ms) = igebm_loss(0.1, data, samples, None);
    // mean f(s) - mean f(d) + 0.1 * (mean f(d)^2 + mean f(s)^2)
    let want = (-0.25 - 2.0) + 0.1 * ((1.0 + 9.0) / 2.0 + (1.0 + 0.25) / 2.0);
    assert!((total.into_scalar::<f32>() - want).abs() < 1e-6);
    assert_eq!(md.into_scalar::<f32>(), 2.0);
    assert_eq!(ms.into_scalar::<f32>(), -0.25);
    // Conditional: the energies are the logits of each image's class.
    let data = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 5.0, 2.0, 0.0], [2, 2]), &d);
    let samples = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0, 3.0, 4.0], [2, 2]), &d);
    let oh_d = jem::energy::one_hot(&[1, 0], 2, &d);
    let oh_s = jem::energy::one_hot(&[0, 1], 2, &d);
    let (total, md, ms) = igebm_loss(0.0, data, samples, Some((oh_d, oh_s)));
    assert_eq!(md.into_scalar::<f32>(), 3.5);
    assert_eq!(ms.into_scalar::<f32>(), 2.0);
    assert_eq!(total.into_scalar::<f32>(), -1.5);
}

#[test]
fn spectral_normalisation_gives_every_weight_matrix_unit_norm() {
    // [[3, 0], [4, 5]]: W'W = [[25, 20], [20, 25]], largest eigenvalue 45.
    let s = spectral_norm(&[3.0, 0.0, 4.0, 5.0], 2, 2);
    assert!((s - 45f32.sqrt()).abs() < 1e-4, "{s}");
    let model = spectral_normalize(small_model(9));
    struct Check(Vec<f32>);
    impl burn::module::ModuleVisitor for Check {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if D >= 2 {
                let t = p.val();
                let rows = t.dims()[0];
                let v: Vec<f32> = t.into_data().try_to_vec().unwrap();
                self.0.push(spectral_norm(&v, rows, v.len() / rows));
            }
        }
    }
    let mut c = Check(Vec::new());
    burn::module::Module::visit(&model, &mut c);
    assert_eq!(c.0.len(), 3, "two convolutions and the head");
    for s in c.0 {
        assert!(
            (s - 1.0).abs() < 1e-3,
            "spectral norm {s} after normalising"
        );
    }
}

fn tiny(data: &Path) -> TrainConfig {
    common::tiny_config(data, 5)
}

fn data_dir(n_train: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(d.path(), n_train, 32, 3).unwrap();
    d
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect();
    out.sort();
    out
}

/// 10 steps straight and 5 + resume + 5 give the same files.
fn resumes_exactly(cfg: TrainConfig, files: &[&str]) {
    let runs = tempfile::tempdir().unwrap();
    let (a, b) = (runs.path().join("a"), runs.path().join("b"));
    let mut c = cfg.clone();
    c.schedule.max_steps = Some(10);
    Trainer::create(c.clone(), &a, &Device::flex())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    c.schedule.max_steps = Some(5);
    Trainer::create(c, &b, &Device::flex())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    Trainer::resume(&b, &Device::flex(), |c| c.schedule.max_steps = Some(10))
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    for f in files {
        assert!(a.join(f).exists(), "{f} was not written");
        assert_eq!(tensors(&a.join(f)), tensors(&b.join(f)), "{f} differs");
    }
}

#[test]
fn jem_pp_igebm_and_lsd_runs_resume_exactly() {
    let data = data_dir(160);
    // JEM++: proximal SGLD from class Gaussians, class-conditional buffer.
    let mut c = tiny(data.path());
    c.sgld = SgldConfig {
        steps: 3,
        ..SgldConfig::jem_pp()
    };
    c.buffer.init = ChainInit::Informative;
    c.buffer.conditional = true;
    c.loss.pxy_weight = 0.5;
    resumes_exactly(c, &[files::MODEL, files::OPTIM, files::BUFFER]);
    // IGEBM: scalar energy with spectral normalisation.
    let mut c = tiny(data.path());
    c.loss.objective = Objective::Igebm;
    c.optim.spectral_norm = true;
    resumes_exactly(c, &[files::MODEL, files::OPTIM, files::BUFFER]);
    // LSD: the critic and its optimiser are part of the checkpoint.
    let mut c = tiny(data.path());
    c.loss.objective = Objective::Lsd;
    c.loss.lsd.critic_widths = vec![4];
    resumes_exactly(
        c,
        &[
            files::MODEL,
            files::OPTIM,
            files::CRITIC,
            files::CRITIC_OPTIM,
        ],
    );
}

#[test]
fn an_igebm_learns_an_energy_that_prefers_data_to_noise() {
    let data = data_dir(512);
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("igebm");
    let mut c = tiny(data.path());
    c.loss.objective = Objective::Igebm;
    c.model = ModelConfig::cnn(vec![8, 16]);
    c.schedule.batch_size = 32;
    c.schedule.max_steps = Some(80);
    c.sgld.steps = 10;
    c.sgld.step_size = 1.0;
    c.sgld.noise_std = 0.005;
    c.buffer.size = 500;
    c.optim.lr = 1e-3;
    let mut t = Trainer::create(c, &dir, &Device::flex()).unwrap();
    t.run(&mut NoObserver).unwrap();
    let run = Run::open(&dir, &Device::flex()).unwrap();
    assert!(!run.is_classifier());
    let test = run.data(jem::data::Split::Test).unwrap();
    let d = Device::flex().autodiff();
    let x = tensor(test.images.clone(), [test.len(), 1, 28, 28], &d);
    let mut noise = vec![0.0f32; test.len() * 784];
    Rng::new(3, 0).fill_uniform(&mut noise, -1.0, 1.0);
    let f_data = mean_log_px(&run.model, x);
    let f_noise = mean_log_px(&run.model, tensor(noise, [test.len(), 1, 28, 28], &d));
    assert!(
        f_data > f_noise + 0.1,
        "negative energy of data {f_data} vs noise {f_noise}"
    );
    // Accuracy-based evaluations refuse a scalar energy, naming the run.
    let e = run.classifier("accuracy").err().unwrap().to_string();
    assert!(e.contains("scalar energy") && e.contains("igebm"), "{e}");
}

#[test]
fn the_stein_critic_learns_to_raise_the_discrepancy() {
    let data = data_dir(160);
    let cfg = {
        let mut c = tiny(data.path());
        c.loss.objective = Objective::Lsd;
        c.loss.lsd.critic_lr = 3e-3;
        c
    };
    let (train, _) = {
        let all =
            jem::data::load_files(DatasetKind::FashionMnist, Some(data.path()), false).unwrap();
        (all, ())
    };
    let d = ad();
    let mut model = cfg.model.init_seeded(1, 10, &d, 1);
    let mut optim = jem::optim::Optimizer::new(&cfg.optim);
    let mut critic = jem::lsd::CriticState {
        critic: cfg
            .loss
            .lsd
            .init_critic(1, &d, &mut jem::rng::Rng::new(1, 0)),
        optim: jem::optim::Optimizer::new(&cfg.optim),
    };
    let idx: Vec<usize> = (0..16).collect();
    let batch = train.batch(&idx, &Default::default(), &mut Rng::new(0, 0));
    let mut rng = Rng::new(2, 0);
    let mut sd = Vec::new();
    for _ in 0..40 {
        // Model learning rate 0: the classifier stays fixed while the critic trains.
        let inputs = jem::step::StepInputs {
            cfg: &cfg,
            engine: Engine::Autodiff,
            batch: &batch,
            shape: [1, 28, 28],
            num_classes: 10,
            lr: 0.0,
            critic_lr: cfg.loss.lsd.critic_lr,
            optim: &mut optim,
            buffer: None,
            critic: Some(&mut critic),
            rng: &mut rng,
            device: &d,
        };
        let (m, metrics) = jem::step::iteration(model, inputs)
            .map_err(|e| format!("{} {}", e.what, e.value))
            .unwrap();
        model = m;
        sd.push(metrics.stein.unwrap());
    }
    let first: f64 = sd[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = sd[35..].iter().sum::<f64>() / 5.0;
    assert!(
        last > first && last > 0.0,
        "Stein discrepancy {first} -> {last}: the critic did not learn"
    );
}

#[test]
fn a_run_trained_from_class_gaussians_samples_its_classes_from_them() {
    use jem::eval::samples::{Classes, Start, draw_samples};
    let data = data_dir(256);
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("informative");
    let mut c = tiny(data.path());
    c.buffer.init = ChainInit::Informative;
    c.schedule.max_steps = Some(2);
    let mut t = Trainer::create(c, &dir, &Device::flex()).unwrap();
    t.run(&mut NoObserver).unwrap();
    let run = Run::open(&dir, &Device::flex()).unwrap();
    // Class-conditional chains start where training started them.
    assert_eq!(Start::for_classes(&run), Start::Informative);
    assert_eq!(Start::Informative.default_steps(), 200);

    // One step of a vanishing size and no noise: the samples are the starts themselves, so
    // their mean is the class's mean in the training images (up to the clamp to [-1, 1] and
    // the spread of 64 draws), nearer to it than to any other class's mean.
    let train = run.data(jem::data::Split::Train).unwrap();
    let g = ClassGaussians::fit(&train, &Device::flex().inner()).unwrap();
    let params = SgldConfig {
        steps: 1,
        step_size: 1e-9,
        noise_std: 0.0,
        ..run.config.sgld.clone()
    };
    let n = 64;
    let dim = 784;
    for class in [1, 3] {
        let s = draw_samples(
            &run,
            n,
            &Classes::One(class),
            Start::Informative,
            &params,
            &mut Rng::new(7, 0),
        )
        .unwrap();
        assert_eq!(s.images.len(), n * dim);
        assert!(s.images.iter().all(|v| (-1.0..=1.0).contains(v)));
        let mean: Vec<f32> = (0..dim)
            .map(|i| s.images.iter().skip(i).step_by(dim).sum::<f32>() / n as f32)
            .collect();
        let dist = |k: usize| -> f32 {
            mean.iter()
                .zip(g.mean(k))
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        for k in (0..g.num_classes()).filter(|&k| k != class) {
            assert!(
                dist(class) < dist(k),
                "samples of class {class} are {} from its mean and {} from class {k}'s",
                dist(class),
                dist(k)
            );
        }
    }
    // A run trained from uniform noise keeps noise as its class-conditional start.
    let dir2 = runs.path().join("uniform");
    let mut c = tiny(data.path());
    c.schedule.max_steps = Some(1);
    Trainer::create(c, &dir2, &Device::flex())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    let run2 = Run::open(&dir2, &Device::flex()).unwrap();
    assert_eq!(Start::for_classes(&run2), Start::Noise);
}
