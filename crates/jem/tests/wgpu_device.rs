//! The GPU code path run for real: burn's wgpu backend (WGSL) on a software adapter (Mesa's
//! lavapipe in CI: `mesa-vulkan-drivers`, `VK_ICD_FILENAMES`), checked against the CPU engine
//! (jem's kernel of the CNN) from the same weights and inputs.
//!
//! Bounds (max elementwise error over the largest magnitude): 1e-4 everywhere, 1e-3 for the
//! loss curves of whole runs. Single passes (logits, input gradients, scores, one PGD step)
//! differ only by f32 sums taken in another order (measured on lavapipe 22.3: under 1e-6).
//! Chains, training steps that sample and runs feed each step's rounding into the next
//! (measured: up to 3e-6 for 20-step chains and single steps, 2e-7 for the losses of 20-step
//! runs), so the bounds leave two orders of magnitude for other drivers and still sit far
//! below what a wrong gradient, share or update gives (O(1e-1) and more).
//!
//! Run: `cargo test --release -p jem --features wgpu --test wgpu_device`. scripts/test.sh
//! builds every test with `--features jem/wgpu` where lavapipe is installed, so it runs here.
#![cfg(feature = "wgpu")]

mod common;

use burn::prelude::*;
use common::flat;
use jem::Engine;
use jem::buffer::ReplayBuffer;
use jem::config::TrainConfig;
use jem::device::{Adapter, DeviceSpec};
use jem::energy::Target;
use jem::loss::Objective;
use jem::model::{Classifier, ModelConfig};
use jem::optim::{Algorithm, Optimizer};
use jem::rng::Rng;
use jem::sgld::{SamplerKind, SgldConfig};
use jem::step::StepInputs;
use jem::train::{NoObserver, Observer, StepMetrics, Trainer};

/// The software wgpu device (`--device wgpu:cpu`).
fn gpu() -> Device {
    DeviceSpec::Wgpu(Adapter::Cpu)
        .open()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn cpu() -> Device {
    Device::flex()
}

/// A second runtime of its own on the software adapter (the second `wgpu:cpu` of
/// `--devices wgpu:cpu,wgpu:cpu`).
fn gpu2() -> Device {
    DeviceSpec::Wgpu(Adapter::Cpu)
        .open_nth(1)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn vec4(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// Max elementwise `|a - b|` over the largest `|b|` (1 at least).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Assert `e <= bound`, and print both for the agreement table (`--nocapture`).
fn check(what: &str, e: f32, bound: f32) {
    println!("agreement | {what} | {e:.2e} | {bound:.0e}");
    assert!(e <= bound, "{what}: relative error {e} above {bound}");
}

/// The default CNN's four layers at a quarter of its widths: the same layers and code paths
/// at a sixteenth of the multiply-adds, for the tests that run many passes on the software
/// adapter (with the default widths these tests took 191 of the file's 227 s on a 2-core
/// Zen 3). The single passes above run the default CNN itself.
fn narrow() -> ModelConfig {
    ModelConfig::cnn(vec![8, 16, 32, 32])
}

fn model_on(cfg: &ModelConfig, outputs: usize, device: &Device, seed: u64) -> Classifier {
    cfg.init_seeded(1, outputs, &device.clone().autodiff(), seed)
}

fn images(b: usize, seed: u64, device: &Device) -> Tensor<4> {
    let mut x = vec![0.0f32; b * 784];
    Rng::new(seed, 0).fill_uniform(&mut x, -1.0, 1.0);
    Tensor::from_data(TensorData::new(x, [b, 1, 28, 28]), device)
}

#[test]
fn one_seed_gives_the_same_weights_on_every_device() {
    let wrn = ModelConfig::Wrn {
        depth: 10,
        widen: 1,
        norm: jem::model::NormKind::Batch,
        dropout: 0.0,
    };
    for cfg in [ModelConfig::default(), wrn] {
        let a = flat(&model_on(&cfg, 10, &cpu(), 3));
        let b = flat(&model_on(&cfg, 10, &gpu(), 3));
        assert_eq!(a, b, "{cfg:?}");
        assert_ne!(a, flat(&model_on(&cfg, 10, &cpu(), 4)));
    }
    let lsd = jem::lsd::LsdConfig::default();
    let c = |d: &Device| flat(&lsd.init_critic(1, &d.clone().autodiff(), &mut Rng::new(5, 0)));
    assert_eq!(c(&cpu()), c(&gpu()));
}

#[test]
fn logits_input_gradients_and_scores_agree_with_the_cpu_kernel() {
    let cfg = ModelConfig::default();
    let (mc, mg) = (model_on(&cfg, 10, &cpu(), 7), model_on(&cfg, 10, &gpu(), 7));
    let (xc, xg) = (images(8, 8, &cpu()), images(8, 8, &gpu()));
    let logits = |m: &Classifier, x: Tensor<4>| -> Vec<f32> {
        m.valid().forward(x).into_data().try_to_vec().unwrap()
    };
    let e = rel_err(&logits(&mg, xg.clone()), &logits(&mc, xc.clone()));
    check("logits", e, 1e-4);
    let kernel = Engine::for_model(&mc);
    for labels in [None, Some((0..8).map(|i| i % 10).collect::<Vec<usize>>())] {
        let target = |d: &Device| match &labels {
            Some(ys) => Target::Joint(jem::energy::one_hot(ys, 10, d)),
            None => Target::Marginal,
        };
        let (gc, vc) = kernel.input_grad(&mc, xc.clone(), &target(&cpu()));
        let (gg, vg) = Engine::Autodiff.input_grad(&mg, xg.clone(), &target(&gpu()));
        let name = if labels.is_none() {
            "log p(x)"
        } else {
            "log p(x, y)"
        };
        check(
            &format!("input gradient of {name}"),
            rel_err(&vec4(gg), &vec4(gc)),
            1e-4,
        );
        let (vc, vg): (Vec<f32>, Vec<f32>) = (
            vc.into_data().try_to_vec().unwrap(),
            vg.into_data().try_to_vec().unwrap(),
        );
        check(name, rel_err(&vg, &vc), 1e-4);
    }
    use jem::eval::ood::{Score, score_images};
    let x: Vec<f32> = vec4(xc);
    let scores = [Score::Logp, Score::Py, Score::Pxgrad, Score::EnergyT(2.0)];
    let sc = score_images(kernel, &mc, &x, [1, 28, 28], &scores, 4);
    let sg = score_images(Engine::Autodiff, &mg, &x, [1, 28, 28], &scores, 4);
    for (s, (a, b)) in scores.iter().zip(sg.iter().zip(&sc)) {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&v| v as f32).collect(),
            b.iter().map(|&v| v as f32).collect(),
        );
        check(&format!("OOD score {s:?}"), rel_err(&a, &b), 1e-4);
    }
}

/// SGLD and proximal SGLD chains of 20 steps from the same start and noise.
#[test]
fn sgld_chains_agree_with_the_cpu_kernel() {
    let cfg = narrow();
    let (mc, mg) = (model_on(&cfg, 10, &cpu(), 9), model_on(&cfg, 10, &gpu(), 9));
    for sampler in [SamplerKind::Sgld, SamplerKind::Pyld] {
        let params = SgldConfig {
            sampler,
            steps: 20,
            ..SgldConfig::default()
        };
        let run = |m: &Classifier, d: &Device, engine: Engine| {
            let out = engine.sgld(
                m,
                images(6, 10, d),
                &Target::Marginal,
                &params,
                &mut Rng::new(11, 0),
            );
            vec4(out.samples)
        };
        let a = run(&mc, &cpu(), Engine::for_model(&mc));
        let b = run(&mg, &gpu(), Engine::Autodiff);
        let start = vec4(images(6, 10, &cpu()));
        assert!(
            rel_err(&a, &start) > 1e-2,
            "{sampler:?}: the chains did not move"
        );
        check(
            &format!("20-step {sampler:?} chains"),
            rel_err(&b, &a),
            1e-4,
        );
    }
}

/// The config of the single steps: the narrow CNN, 5 SGLD steps, a 200-image buffer, SGD.
fn step_config() -> TrainConfig {
    let mut c = TrainConfig {
        model: narrow(),
        ..TrainConfig::default()
    };
    c.sgld.steps = 5;
    c.buffer.size = 200;
    c.optim.algorithm = Algorithm::Sgd;
    c
}

/// The change of every parameter in one SGD step (learning rate 1), its metrics.
fn one_step(cfg: &TrainConfig, device: &Device, kernel: bool) -> (Vec<f32>, StepMetrics) {
    one_step_on(cfg, std::slice::from_ref(device), kernel)
}

/// [`one_step`] data parallel over `devices` (the first holds the model).
fn one_step_on(cfg: &TrainConfig, devices: &[Device], kernel: bool) -> (Vec<f32>, StepMetrics) {
    let device = &devices[0];
    let d = device.clone().autodiff();
    let all: Vec<Device> = devices.iter().map(|x| x.clone().autodiff()).collect();
    let model = model_on(&cfg.model, cfg.model_outputs(10), device, 12);
    let batch = common::random_batch(13);
    let mut buffer = ReplayBuffer::uniform(&cfg.buffer, [1, 28, 28], 10, &mut Rng::new(14, 0));
    let mut critic = (cfg.loss.objective == Objective::Lsd).then(|| jem::lsd::CriticState {
        critic: cfg.loss.lsd.init_critic(1, &d, &mut Rng::new(15, 0)),
        optim: Optimizer::new(&cfg.optim),
    });
    let mut opt = Optimizer::new(&cfg.optim);
    let mut rng = Rng::new(16, 0);
    let engine = if kernel {
        Engine::for_model(&model)
    } else {
        Engine::Autodiff
    };
    let inputs = StepInputs {
        cfg,
        engine,
        batch: &batch,
        shape: [1, 28, 28],
        num_classes: 10,
        lr: 1.0,
        critic_lr: 1e-3,
        optim: &mut opt,
        buffer: cfg.loss.needs_sampling().then_some(&mut buffer),
        critic: critic.as_mut(),
        rng: &mut rng,
        device: &d,
    };
    let (m, metrics) = jem::step::iteration_on(model.clone(), inputs, &all)
        .map_err(|e| e.what)
        .unwrap();
    (common::param_delta(&model, &m), metrics)
}

/// One training step of each method on wgpu against the CPU: JEM, JEM++ (proximal SGLD),
/// IGEBM, the learned Stein discrepancy and softmax.
#[test]
fn training_steps_of_every_method_agree_with_the_cpu() {
    let base = step_config();
    let mut cases = Vec::new();
    cases.push(("jem", base.clone()));
    let mut c = base.clone();
    c.sgld.sampler = SamplerKind::Pyld;
    c.sgld.step_size = 0.1;
    cases.push(("jem++", c));
    let mut c = base.clone();
    c.loss.objective = Objective::Igebm;
    c.loss.energy_l2 = 0.5;
    cases.push(("igebm", c));
    let mut c = base.clone();
    c.loss.objective = Objective::Lsd;
    c.loss.lsd.critic_widths = vec![4];
    cases.push(("lsd", c));
    let mut c = base.clone();
    c.loss.objective = Objective::Softmax;
    cases.push(("softmax", c));
    for (name, cfg) in cases {
        let (dc, mc) = one_step(&cfg, &cpu(), true);
        let (dg, mg) = one_step(&cfg, &gpu(), false);
        assert!(dc.iter().any(|v| *v != 0.0), "{name}: no update");
        check(
            &format!("one {name} step: parameter update"),
            rel_err(&dg, &dc),
            1e-4,
        );
        assert!(
            (mg.loss - mc.loss).abs() < 1e-4 * mc.loss.abs().max(1.0),
            "{name}: loss {} vs {}",
            mg.loss,
            mc.loss
        );
    }
}

/// One PGD step (the gradient of the cross-entropy through the model) on both devices.
#[test]
fn a_pgd_step_agrees_with_the_cpu() {
    use jem::eval::attack::{Defence, Norm, loss_grad, pgd_step};
    let cfg = narrow();
    let defence = Defence {
        sgld: SgldConfig {
            steps: 0,
            ..SgldConfig::default()
        },
        chains: 1,
        start_noise: 0.0,
    };
    let labels: Vec<usize> = (0..6).map(|i| (3 * i) % 10).collect();
    let step = |d: &Device, engine: Option<Engine>| {
        let m = model_on(&cfg, 10, d, 17);
        let engine = engine.unwrap_or(Engine::for_model(&m));
        let x = images(6, 18, d);
        let g = loss_grad(engine, &m, &x, &labels, 10, &defence, &mut Rng::new(0, 0));
        let grad = vec4(g.clone());
        (vec4(pgd_step(x.clone(), g, &x, Norm::L2, 0.5, 0.1)), grad)
    };
    let (xc, gc) = step(&cpu(), None);
    let (xg, gg) = step(&gpu(), Some(Engine::Autodiff));
    check("PGD input gradient", rel_err(&gg, &gc), 1e-4);
    check("one PGD step", rel_err(&xg, &xc), 1e-4);
}

struct Losses(Vec<f64>);
impl Observer for Losses {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.loss);
    }
}

/// 20 JEM steps trained on wgpu from the seed's weights track the CPU run of the same config
/// (loss per step within 1e-3), and a CPU run resumed on wgpu
/// says so in `state.json` and goes on along the same curve.
#[test]
fn a_training_run_on_wgpu_tracks_the_cpu_run_and_moves_between_devices() {
    let data = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(data.path(), 160, 40, 0).unwrap();
    let mut cfg = common::tiny_config(data.path(), 3);
    cfg.schedule.max_steps = Some(20);
    cfg.schedule.checkpoint_every = 10;
    let runs = tempfile::tempdir().unwrap();
    let train = |dir: &str, d: &Device, steps: u64, resume: bool| {
        let dir = runs.path().join(dir);
        let mut t = if resume {
            Trainer::resume(&dir, d, |c| c.schedule.max_steps = Some(steps)).unwrap()
        } else {
            let mut c = cfg.clone();
            c.schedule.max_steps = Some(steps);
            Trainer::create(c, &dir, d).unwrap()
        };
        let mut obs = Losses(Vec::new());
        t.run(&mut obs).unwrap();
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap())
                .unwrap();
        (obs.0, state["device"].as_str().unwrap().to_string())
    };
    let (on_cpu, dev) = train("cpu", &cpu(), 20, false);
    assert_eq!(dev, "cpu");
    let (on_gpu, dev) = train("gpu", &gpu(), 20, false);
    assert_eq!(dev, "wgpu:cpu");
    assert_eq!(on_gpu.len(), 20);
    let track = |a: &[f64], b: &[f64], what: &str| {
        let e = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0f64, f64::max);
        check(&format!("{what}: loss per step"), e as f32, 1e-3);
    };
    track(&on_gpu, &on_cpu, "wgpu run");
    // Half on the CPU, then resumed on wgpu.
    train("moved", &cpu(), 10, false);
    let (rest, dev) = train("moved", &gpu(), 20, true);
    assert_eq!(dev, "wgpu:cpu");
    assert_eq!(rest.len(), 10);
    track(&rest, &on_cpu[10..], "resumed on wgpu");
    let _ = NoObserver;
}

/// Data parallel over the CPU and the wgpu device (`--devices cpu,wgpu:cpu`), and over two
/// runtimes on the one software adapter (`--devices wgpu:cpu,wgpu:cpu`): one step equals the
/// single-device step of the same global batch and chains (JEM with p(x) and p(x, y) chains,
/// JEM++, IGEBM).
#[test]
fn data_parallel_steps_over_two_devices_equal_the_single_device_step() {
    assert!(gpu2() != gpu(), "the second wgpu:cpu is the first");
    assert!(
        gpu2() == gpu2(),
        "opening the second wgpu:cpu again made a third"
    );
    let base = step_config();
    for (name, cfg) in common::parallel_cases(&base) {
        let (single, ms) = one_step_on(&cfg, &[cpu()], false);
        for (pair, devices) in [
            ("cpu + wgpu", [cpu(), gpu()]),
            ("wgpu + wgpu", [gpu(), gpu2()]),
        ] {
            let (two, mt) = one_step_on(&cfg, &devices, false);
            check(
                &format!("data parallel {name} step over {pair}"),
                rel_err(&two, &single),
                1e-4,
            );
            assert!(
                (mt.loss - ms.loss).abs() < 1e-4 * ms.loss.abs().max(1.0),
                "{name} over {pair}"
            );
            assert_eq!(mt.acc.is_some(), ms.acc.is_some());
        }
    }
}

/// A data-parallel training run (`devices = [cpu, wgpu:cpu]`, and `[wgpu:cpu, wgpu:cpu]`,
/// two runtimes on the software adapter) tracks the single-device run.
#[test]
fn a_data_parallel_run_tracks_the_single_device_run() {
    let data = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(data.path(), 160, 40, 0).unwrap();
    let mut cfg = common::tiny_config(data.path(), 4);
    cfg.schedule.max_steps = Some(10);
    let runs = tempfile::tempdir().unwrap();
    let losses = |name: &str, devices: Vec<DeviceSpec>| {
        let mut c = cfg.clone();
        let home = devices.first().map_or_else(cpu, |d| d.open().unwrap());
        c.devices = devices;
        let mut obs = Losses(Vec::new());
        Trainer::create(c, &runs.path().join(name), &home)
            .unwrap()
            .run(&mut obs)
            .unwrap();
        obs.0
    };
    let single = losses("one", Vec::new());
    let lvp = DeviceSpec::Wgpu(Adapter::Cpu);
    for (pair, devices) in [
        ("cpu + wgpu", vec![DeviceSpec::Cpu, lvp]),
        ("wgpu + wgpu", vec![lvp, lvp]),
    ] {
        let two = losses(pair, devices);
        assert_eq!(two.len(), 10);
        let e = two
            .iter()
            .zip(&single)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f64, f64::max);
        check(
            &format!("10-step data-parallel run over {pair}: loss per step"),
            e as f32,
            1e-3,
        );
    }
}
