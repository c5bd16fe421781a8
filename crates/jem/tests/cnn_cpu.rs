//! The CPU kernel of the CNN's SGLD step against burn's autodiff on random weights and
//! inputs: input gradients, target values and whole SGLD chains agree to 1e-4.

mod common;

use burn::prelude::*;
use common::random_batch;
use jem::Engine;
use jem::cnn_cpu::{CnnKernel, HostTarget, Precision, available};
use jem::energy::{Target, input_grad, one_hot};
use jem::model::ModelConfig;
use jem::rng::Rng;
use jem::sgld::SgldConfig;

fn init(model: &ModelConfig, channels: usize, outputs: usize, seed: u64) -> jem::model::Classifier {
    model.init_seeded(channels, outputs, &Device::flex().autodiff(), seed)
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    num / den.max(1e-30)
}

/// Whether the kernel runs on this CPU (it needs AVX-512, or AVX2 with FMA); the tests that call the kernel
/// itself say so and pass where it does not (everything then runs through autodiff, which the
/// other tests of this file compare with itself).
fn kernel_runs_here(test: &str) -> bool {
    let runs = jem::cnn_cpu::supports(Precision::F32);
    if !runs {
        eprintln!(
            "{test}: this CPU has neither AVX-512 nor AVX2 with FMA, so the CNN kernel cannot run here"
        );
    }
    runs
}

fn check(widths: Vec<usize>, shape: [usize; 3], b: usize, seed: u64) {
    check_model(&ModelConfig::cnn(widths), shape, b, seed);
}

fn check_model(cfg: &ModelConfig, shape: [usize; 3], b: usize, seed: u64) {
    if !kernel_runs_here("kernel gradient against autodiff") {
        return;
    }
    let model = init(cfg, shape[0], 10, seed);
    assert!(available(&model));
    let n: usize = shape.iter().product();
    let mut x = vec![0.0f32; b * n];
    Rng::new(seed, 1).fill_uniform(&mut x, -1.0, 1.0);
    let labels: Vec<usize> = (0..b).map(|i| (i * 7 + seed as usize) % 10).collect();
    let [c, h, w] = shape;
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, h, w]), &Device::flex());
    let mut kernel = CnnKernel::from_model(&model).unwrap();
    for joint in [false, true] {
        let target = if joint {
            Target::Joint(one_hot(&labels, 10, &Device::flex()))
        } else {
            Target::Marginal
        };
        let (g_ref, v_ref) = input_grad(&model, xt.clone(), &target);
        let (g_disp, _) = Engine::for_model(&model).input_grad(&model, xt.clone(), &target);
        let g_disp: Vec<f32> = g_disp.into_data().try_to_vec().unwrap();
        let g_ref: Vec<f32> = g_ref.into_data().try_to_vec().unwrap();
        let v_ref: Vec<f32> = v_ref.into_data().try_to_vec().unwrap();
        let host = if joint {
            HostTarget::Joint(&labels)
        } else {
            HostTarget::Marginal
        };
        let (g, v) = kernel.input_grad(&x, b, shape, host);
        let eg = rel_err(&g, &g_ref);
        assert!(
            rel_err(&g_disp, &g_ref) < 1e-4,
            "input_grad dispatches to the kernel"
        );
        let ev = rel_err(&v, &v_ref);
        assert!(
            eg < 1e-4,
            "gradient relative error {eg} (joint {joint}, {shape:?})"
        );
        assert!(
            ev < 1e-5,
            "value relative error {ev} (joint {joint}, {shape:?})"
        );
    }
}

#[test]
fn the_kernel_gradient_equals_autodiff_for_the_benchmark_cnn() {
    check(vec![32, 64, 128, 128], [1, 28, 28], 16, 1);
}

#[test]
fn the_kernel_gradient_equals_autodiff_for_other_shapes_and_widths() {
    check(vec![8, 16, 24], [3, 32, 32], 5, 2);
    check(vec![4], [1, 9, 7], 3, 3);
    // Stride-1 layers after the first (a deeper net at the same resolution).
    let deeper = ModelConfig::Cnn {
        widths: vec![8, 8, 16, 16],
        strides: vec![1, 1, 2, 1],
    };
    check_model(&deeper, [1, 28, 28], 4, 4);
}

#[test]
fn sgld_chains_through_the_kernel_equal_the_autodiff_chains() {
    let model = init(&ModelConfig::default(), 1, 10, 4);
    let mut x = vec![0.0f32; 8 * 784];
    Rng::new(5, 0).fill_uniform(&mut x, -1.0, 1.0);
    let start = Tensor::<4>::from_data(TensorData::new(x, [8, 1, 28, 28]), &Device::flex());
    for params in [SgldConfig::default(), SgldConfig::jem_pp()] {
        let a = Engine::for_model(&model).sgld(
            &model,
            start.clone(),
            &Target::Marginal,
            &params,
            &mut Rng::new(6, 0),
        );
        let b = Engine::Autodiff.sgld(
            &model,
            start.clone(),
            &Target::Marginal,
            &params,
            &mut Rng::new(6, 0),
        );
        let va: Vec<f32> = a.samples.into_data().try_to_vec().unwrap();
        let vb: Vec<f32> = b.samples.into_data().try_to_vec().unwrap();
        let e = rel_err(&va, &vb);
        assert!(e < 1e-4, "chains differ by {e} ({:?})", params.sampler);
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-4 * b.grad_norm.abs().max(1e-12));
    }
}

/// Every parameter gradient of `sum(logits * d)` through burn's autodiff, in module order.
fn autodiff_weight_grads(
    model: &jem::model::Classifier,
    x: Tensor<4>,
    d: Tensor<2>,
) -> Vec<Vec<f32>> {
    let loss = (model.forward(x) * d).sum();
    let grads = loss.backward();
    struct Collect<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let g = p
                .val()
                .grad(self.0)
                .expect("every parameter has a gradient");
            self.1.push(g.into_data().try_to_vec().unwrap());
        }
    }
    let mut c = Collect(&grads, Vec::new());
    burn::module::Module::visit(model, &mut c);
    c.1
}

#[test]
fn the_kernel_weight_gradients_equal_autodiff() {
    weight_grads_match(&ModelConfig::default());
    weight_grads_match(&ModelConfig::Cnn {
        widths: vec![8, 8, 16, 16],
        strides: vec![1, 1, 2, 1],
    });
}

fn weight_grads_match(cfg: &ModelConfig) {
    if !kernel_runs_here("kernel weight gradients against autodiff") {
        return;
    }
    let d = Device::flex().autodiff();
    let model = init(cfg, 1, 10, 8);
    let b = 12;
    let mut x = vec![0.0f32; b * 784];
    Rng::new(9, 0).fill_uniform(&mut x, -1.0, 1.0);
    let mut dl = vec![0.0f32; b * 10];
    Rng::new(10, 0).fill_normal(&mut dl, 1.0);
    let mut kernel = CnnKernel::from_model(&model).unwrap();
    let logits = kernel.forward(&x, b, [1, 28, 28]);
    let (_, g) = kernel.backward(b, [1, 28, 28], &dl, false, true);
    let g = g.unwrap();
    let xt = Tensor::<4>::from_data(TensorData::new(x, [b, 1, 28, 28]), &d);
    let want_logits: Vec<f32> = model.forward(xt.clone()).into_data().try_to_vec().unwrap();
    assert!(rel_err(&logits, &want_logits) < 1e-5);
    let dt = Tensor::<2>::from_data(TensorData::new(dl, [b, 10]), &d);
    let want = autodiff_weight_grads(&model, xt, dt);
    let mut got = Vec::new();
    for (w, bias) in &g.convs {
        got.push(w.clone());
        got.push(bias.clone());
    }
    got.push(g.head_w.clone());
    got.push(g.head_b.clone());
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(a, b);
        assert!(e < 1e-4, "parameter {i}: relative error {e}");
    }
}

/// One training step of `model` from `buffer` on `batch`, through the CPU kernel or autodiff:
/// the change of every parameter, the step's metrics, and how many buffer chains moved.
fn one_step(
    cfg: &jem::config::TrainConfig,
    model: &jem::model::Classifier,
    batch: &jem::data::Batch,
    buffer: &jem::buffer::ReplayBuffer,
    kernel: bool,
) -> (Vec<f32>, jem::train::StepMetrics, usize) {
    use jem::optim::Optimizer;
    use jem::step::{StepInputs, iteration};
    let d = Device::flex().autodiff();
    let mut opt = Optimizer::new(&cfg.optim);
    let mut buf = buffer.clone();
    let mut rng = Rng::new(14, 0);
    let engine = if kernel {
        Engine::for_model(model)
    } else {
        Engine::Autodiff
    };
    let inputs = StepInputs {
        cfg,
        engine,
        batch,
        shape: [1, 28, 28],
        num_classes: 10,
        // Large enough that the update is far above the f32 rounding of the weights it
        // is read back from (with 1e-3 the cancellation alone is about 1e-3 relative).
        lr: 1.0,
        critic_lr: 0.0,
        optim: &mut opt,
        buffer: Some(&mut buf),
        critic: None,
        rng: &mut rng,
        device: &d,
    };
    let (m, metrics) = iteration(model.clone(), inputs)
        .map_err(|e| e.what)
        .unwrap();
    let delta = common::param_delta(model, &m);
    // Chains that moved: at most `sgld.chains` per sampled term.
    let moved = (0..buf.len())
        .filter(|&i| buf.chain(i) != buffer.chain(i))
        .count();
    (delta, metrics, moved)
}

fn kernel_step_equals_autodiff_step(cfg: jem::config::TrainConfig) {
    use jem::buffer::ReplayBuffer;
    let model = init(&cfg.model, 1, cfg.model_outputs(10), 11);
    let mut batch = random_batch(12);
    // Plain copies of the batch: other images, so that a step reading the wrong rows differs.
    if cfg.loss.px_data == jem::loss::PxData::Plain {
        batch.plain = Some(random_batch(15).images);
    }
    let buffer = ReplayBuffer::uniform(&cfg.buffer, [1, 28, 28], 10, &mut Rng::new(13, 0));
    let run = |kernel: bool| one_step(&cfg, &model, &batch, &buffer, kernel);
    let (pk, mk, moved_k) = run(true);
    let (pa, ma, moved_a) = run(false);
    let terms =
        usize::from(cfg.loss.px_weight > 0.0 || cfg.loss.objective == jem::loss::Objective::Igebm)
            + usize::from(cfg.loss.pxy_weight > 0.0);
    let sampled = cfg.loss.needs_sampling();
    assert_eq!(moved_k, moved_a);
    assert!(!sampled || moved_k > 0, "no chain moved");
    assert!(
        moved_k <= terms * cfg.sgld.chains_for(16),
        "{moved_k} chains moved"
    );
    assert!(pa.iter().any(|v| *v != 0.0));
    let e = rel_err(&pk, &pa);
    assert!(e < 1e-4, "updates differ by {e}");
    for (a, b) in [
        (mk.loss, ma.loss),
        (mk.ce.unwrap_or(0.0), ma.ce.unwrap_or(0.0)),
        (mk.lse_data, ma.lse_data),
        (mk.acc.unwrap_or(0.0), ma.acc.unwrap_or(0.0)),
        (mk.lse_sample.unwrap_or(0.0), ma.lse_sample.unwrap_or(0.0)),
    ] {
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert_eq!(mk.lse_sample.is_some(), ma.lse_sample.is_some());
    assert_eq!(mk.ce.is_some(), ma.ce.is_some());
}

#[test]
fn kernel_training_steps_equal_the_autodiff_steps() {
    use jem::config::TrainConfig;
    use jem::loss::Objective;
    let base = {
        let mut c = TrainConfig::default();
        c.sgld.steps = 2;
        c.buffer.size = 200;
        // SGD: the update is the gradient itself (Adam's first step is nearly its sign).
        c.optim.algorithm = jem::optim::Algorithm::Sgd;
        c
    };
    // JEM with p(x) and p(x, y) terms from a class-conditional buffer.
    let mut c = base.clone();
    c.buffer.conditional = true;
    c.loss.pxy_weight = 0.5;
    kernel_step_equals_autodiff_step(c);
    // JEM with the energy-magnitude penalty on data and sample lse.
    let mut c = base.clone();
    c.loss.lse_l2 = 0.3;
    kernel_step_equals_autodiff_step(c);
    // JEM with sharpness-aware minimisation (the second pass at the perturbed weights).
    let mut c = base.clone();
    c.optim.sam_rho = 0.05;
    kernel_step_equals_autodiff_step(c);
    // Fewer chains than data images, for p(x) and for p(x, y) (the batch's first labels).
    let mut c = base.clone();
    c.buffer.conditional = true;
    c.loss.pxy_weight = 0.5;
    c.sgld.chains = Some(5);
    kernel_step_equals_autodiff_step(c);
    // The generative data rows on the batch's plain copies (p(x), p(x, y), lse_l2).
    let mut c = base.clone();
    c.buffer.conditional = true;
    c.loss.pxy_weight = 0.5;
    c.loss.lse_l2 = 0.3;
    c.loss.px_data = jem::loss::PxData::Plain;
    kernel_step_equals_autodiff_step(c);
    // Softmax.
    let mut c = base.clone();
    c.loss.objective = Objective::Softmax;
    kernel_step_equals_autodiff_step(c);
    // IGEBM, scalar and class-conditional.
    let mut c = base.clone();
    c.loss.objective = Objective::Igebm;
    c.loss.energy_l2 = 0.5;
    kernel_step_equals_autodiff_step(c.clone());
    c.buffer.conditional = true;
    kernel_step_equals_autodiff_step(c.clone());
    c.sgld.chains = Some(3);
    kernel_step_equals_autodiff_step(c.clone());
    c.loss.px_data = jem::loss::PxData::Plain;
    kernel_step_equals_autodiff_step(c);
}

#[test]
fn plain_copies_are_the_data_rows_of_the_generative_terms_only() {
    use jem::buffer::ReplayBuffer;
    use jem::loss::{Objective, PxData};
    let mut cfg = jem::config::TrainConfig::default();
    cfg.sgld.steps = 2;
    cfg.buffer.size = 200;
    cfg.buffer.conditional = true;
    cfg.optim.algorithm = jem::optim::Algorithm::Sgd;
    cfg.loss.pxy_weight = 0.5;
    cfg.loss.lse_l2 = 0.3;
    let model = init(&cfg.model, 1, 10, 11);
    let buffer = ReplayBuffer::uniform(&cfg.buffer, [1, 28, 28], 10, &mut Rng::new(13, 0));
    let batch = random_batch(12);
    let mut same = batch.clone();
    same.plain = Some(batch.images.clone());
    let mut other = batch.clone();
    other.plain = Some(random_batch(15).images);
    let mut plain_cfg = cfg.clone();
    plain_cfg.loss.px_data = PxData::Plain;
    for kernel in [true, false] {
        let (base, mb, _) = one_step(&cfg, &model, &batch, &buffer, kernel);
        // Plain copies equal to the batch: the step of the augmented batch alone.
        let (d, m, _) = one_step(&plain_cfg, &model, &same, &buffer, kernel);
        assert!(rel_err(&d, &base) < 1e-4, "kernel {kernel}");
        assert!((m.loss - mb.loss).abs() < 1e-4 * mb.loss.abs().max(1.0));
        // Other plain copies: another step, the same cross-entropy and accuracy (augmented
        // rows), another data lse (plain rows).
        let (d, m, _) = one_step(&plain_cfg, &model, &other, &buffer, kernel);
        assert!(
            rel_err(&d, &base) > 1e-2,
            "kernel {kernel}: the plain rows were not read"
        );
        assert!((m.ce.unwrap() - mb.ce.unwrap()).abs() < 1e-5);
        assert_eq!(m.acc, mb.acc);
        assert_ne!(m.lse_data, mb.lse_data);
    }
    // Softmax has no generative term: the plain copies change nothing.
    cfg.loss.objective = Objective::Softmax;
    plain_cfg.loss.objective = Objective::Softmax;
    let (base, _, _) = one_step(&cfg, &model, &batch, &buffer, true);
    let (d, _, _) = one_step(&plain_cfg, &model, &other, &buffer, true);
    assert_eq!(d, base);
}

#[test]
fn ood_scores_through_the_kernel_equal_autodiff() {
    use jem::energy::logsumexp;
    use jem::eval::ood::{Score, score_images};
    let model = init(&ModelConfig::default(), 1, 10, 15);
    let b = 10;
    let mut x = vec![0.0f32; b * 784];
    Rng::new(16, 0).fill_uniform(&mut x, -1.0, 1.0);
    let fit = jem::eval::ood_fused::FusedFit::fit(&[10.0, 12.0], &[0.5, 1.5]).unwrap();
    let scores = [
        Score::Logp,
        Score::Py,
        Score::Pxgrad,
        Score::Gradnorm,
        Score::EnergyT(2.0),
        Score::Fused(Some(fit)),
    ];
    let got = score_images(
        Engine::for_model(&model),
        &model,
        &x,
        [1, 28, 28],
        &scores,
        4,
    );
    let xt = Tensor::<4>::from_data(TensorData::new(x, [b, 1, 28, 28]), &Device::flex());
    let logits = model.valid().forward(xt.clone());
    let f = |t: Tensor<1>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
    let (g, _) = input_grad(&model, xt, &Target::Marginal);
    let norm = g.reshape([b, 784]).powi_scalar(2).sum_dim(1).sqrt(); // [b, 1]
    let want: Vec<Vec<f32>> = vec![
        f(logsumexp(logits.clone())),
        f(burn::tensor::activation::softmax(logits.clone(), 1)
            .max_dim(1)
            .squeeze_dim(1)),
        f(norm.clone().neg().squeeze_dim(1)),
        f(norm.squeeze_dim(1)),
        f(logsumexp(logits.div_scalar(2.0)).mul_scalar(2.0)),
    ];
    let fused: Vec<f32> = want[0]
        .iter()
        .zip(&want[3])
        .map(|(&l, &g)| fit.score(f64::from(l), f64::from(g)) as f32)
        .collect();
    let want = [want, vec![fused]].concat();
    for (s, (a, w)) in scores.iter().zip(got.iter().zip(&want)) {
        let a: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        assert!(rel_err(&a, w) < 1e-4, "{s:?}: {a:?} vs {w:?}");
    }
}

/// The bf16 kernels against autodiff in f32, for the benchmark CNN and for widths that
/// exercise odd channel counts (padded bf16 rows) and partial panels. `mixed-bf16` (f32
/// forward, bf16 input-gradient products): gradients within 1e-2. `bf16` (every product):
/// values within 1e-2; gradients within 10% and at cosine above 0.99, because rounding in the
/// forward pass moves a few pre-activations across zero where the LeakyReLU's slope switches
/// (with the slopes held exact, as in `mixed-bf16`, the products alone stay under 1e-2).
#[test]
fn the_bf16_kernels_are_close_to_autodiff() {
    if !jem::cnn_cpu::supports(Precision::Bf16) {
        eprintln!("this CPU has no AVX512-BF16: the bf16 kernel cannot run here");
        return;
    }
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    };
    for (widths, shape, b, seed) in [
        (vec![32, 64, 128, 128], [1, 28, 28], 16, 11),
        (vec![8, 15, 40], [3, 16, 12], 5, 12),
        (vec![6], [2, 9, 7], 3, 13),
    ] {
        let model = init(&ModelConfig::cnn(widths), shape[0], 10, seed);
        let n: usize = shape.iter().product();
        let mut x = vec![0.0f32; b * n];
        Rng::new(seed, 1).fill_uniform(&mut x, -1.0, 1.0);
        let [c, h, w] = shape;
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, h, w]), &Device::flex());
        let (g_ref, v_ref) = input_grad(&model, xt, &Target::Marginal);
        let g_ref: Vec<f32> = g_ref.into_data().try_to_vec().unwrap();
        let v_ref: Vec<f32> = v_ref.into_data().try_to_vec().unwrap();
        let (g32, _) =
            CnnKernel::from_model(&model)
                .unwrap()
                .input_grad(&x, b, shape, HostTarget::Marginal);
        for precision in [Precision::MixedBf16, Precision::Bf16] {
            let mut kernel = CnnKernel::with_precision(&model, precision).unwrap();
            assert_eq!(kernel.precision(), precision);
            let (g, v) = kernel.input_grad(&x, b, shape, HostTarget::Marginal);
            let (eg, ev, cos) = (rel_err(&g, &g_ref), rel_err(&v, &v_ref), cosine(&g, &g_ref));
            assert!(
                ev < 1e-2,
                "{precision:?} value relative error {ev} ({shape:?})"
            );
            if precision == Precision::MixedBf16 {
                assert!(
                    eg < 1e-2,
                    "{precision:?} gradient relative error {eg} ({shape:?})"
                );
            } else {
                assert!(
                    eg < 0.1 && cos > 0.99,
                    "{precision:?} gradient error {eg}, cosine {cos} ({shape:?})"
                );
            }
            // Not the f32 result: the products really ran in bf16.
            assert!(
                rel_err(&g, &g32) > 1e-6,
                "{precision:?} equals f32 ({shape:?})"
            );
        }
    }
}

/// bf16 chains climb `lse f(x)` as the f32 chains do: same noise, final samples close.
#[test]
fn bf16_sgld_chains_follow_the_f32_chains() {
    if !jem::cnn_cpu::supports(Precision::Bf16) {
        eprintln!("this CPU has no AVX512-BF16: the bf16 kernel cannot run here");
        return;
    }
    let model = init(&ModelConfig::default(), 1, 10, 21);
    let b = 8;
    let mut x = vec![0.0f32; b * 784];
    Rng::new(3, 3).fill_uniform(&mut x, -1.0, 1.0);
    let start = Tensor::<4>::from_data(TensorData::new(x, [b, 1, 28, 28]), &Device::flex());
    let run = |precision| {
        let params = SgldConfig {
            precision,
            ..SgldConfig::default()
        };
        let out = Engine::for_model(&model).sgld(
            &model,
            start.clone(),
            &Target::Marginal,
            &params,
            &mut Rng::new(5, 0),
        );
        out.samples.into_data().try_to_vec::<f32>().unwrap()
    };
    let (a, b16) = (run(Precision::F32), run(Precision::Bf16));
    let x0: Vec<f32> = start.into_data().try_to_vec().unwrap();
    let moved: Vec<f32> = a.iter().zip(&x0).map(|(a, x)| a - x).collect();
    let diff: Vec<f32> = a.iter().zip(&b16).map(|(a, b)| a - b).collect();
    let r = rel_err(&diff, &vec![0.0; diff.len()]) / rel_err(&moved, &vec![0.0; moved.len()]);
    assert!(
        r < 2e-2,
        "bf16 chains drift {r} of the f32 chains' movement"
    );
}

/// The batch is split into blocks of images across the compute threads; the input gradient
/// (f32 and bf16) is the same bit for bit on 1, 2 and 3 threads, and for batches that do not
/// divide into equal blocks.
#[test]
fn kernel_results_do_not_depend_on_the_thread_count() {
    if !kernel_runs_here("kernel_results_do_not_depend_on_the_thread_count") {
        return;
    }
    let model = init(&ModelConfig::default(), 1, 10, 31);
    for b in [64usize, 13] {
        let mut x = vec![0.0f32; b * 784];
        Rng::new(31, b as u64).fill_uniform(&mut x, -1.0, 1.0);
        let mut precisions = vec![Precision::F32];
        if jem::cnn_cpu::supports(Precision::Bf16) {
            precisions.push(Precision::Bf16);
        }
        for precision in precisions {
            let grad = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut kernel = CnnKernel::with_precision(&model, precision).unwrap();
                    kernel.input_grad(&x, b, [1, 28, 28], HostTarget::Marginal)
                })
            };
            let one = grad(1);
            for threads in [2, 3] {
                assert_eq!(
                    grad(threads),
                    one,
                    "{precision:?}, batch {b}, {threads} threads"
                );
            }
        }
    }
}
