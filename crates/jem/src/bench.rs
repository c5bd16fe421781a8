//! Timing of one SGLD step and one JEM iteration, by default of the benchmark model at batch
//! 64, the same work as `shared/bench/torch_jem_iteration.py` (random data, a 10,000-chain
//! buffer). Other models, image shapes and batch sizes are [`BenchSpec`]s; their FLOP counts
//! come from [`forward_flops`].

use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::buffer::ReplayBuffer;
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::energy::{Target, input_grad};
use crate::engine::Engine;
use crate::model::{Classifier, ModelConfig};
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::sgld::{Precision, SgldConfig};
use crate::step::{StepInputs, iteration};

/// GFLOP of one SGLD step of the benchmark model at batch 64 (forward + input gradient).
pub const SGLD_STEP_GFLOP: f64 = 2.51;
/// GFLOP of one JEM iteration (20 SGLD steps, forward/backward on 128 images, Adam).
pub const ITERATION_GFLOP: f64 = 57.7;

/// Multiply-adds counted as 2 FLOP, of one forward pass of one image through `model` (the
/// convolutions and the head; activations, pooling and norms are not counted). For the
/// benchmark CNN on 28x28x1 this is 19.6 MFLOP, so an SGLD step at batch 64 (forward and
/// input gradient, twice the forward) is [`SGLD_STEP_GFLOP`].
pub fn forward_flops(model: &ModelConfig, shape: [usize; 3], classes: usize) -> f64 {
    let conv = |cin: usize, cout: usize, k: usize, h: usize, w: usize| {
        2.0 * (cin * cout * k * k * h * w) as f64
    };
    let down = |n: usize| n.div_ceil(2);
    let [c, mut h, mut w] = shape;
    match model {
        ModelConfig::Cnn { widths, strides } => {
            let mut f = 0.0;
            let mut cin = c;
            let strides = crate::model::cnn_strides(widths.len(), strides);
            for (&cout, &s) in widths.iter().zip(&strides) {
                if s == 2 {
                    (h, w) = (down(h), down(w));
                }
                f += conv(cin, cout, 3, h, w);
                cin = cout;
            }
            f + 2.0 * (cin * classes) as f64
        }
        ModelConfig::Wrn { depth, widen, .. } => {
            let n = (depth - 4) / 6;
            let mut f = conv(c, 16, 3, h, w);
            let mut cin = 16;
            for (g, width) in [16 * widen, 32 * widen, 64 * widen].into_iter().enumerate() {
                for i in 0..n {
                    let stride2 = i == 0 && g > 0;
                    if stride2 {
                        (h, w) = (down(h), down(w));
                    }
                    f += conv(cin, width, 3, h, w) + conv(width, width, 3, h, w);
                    if cin != width || stride2 {
                        f += conv(cin, width, 1, h, w);
                    }
                    cin = width;
                }
            }
            f + 2.0 * (cin * classes) as f64
        }
    }
}

/// What to time.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchSpec {
    /// The network.
    pub model: ModelConfig,
    /// Image shape `[c, h, w]`.
    pub shape: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// Images per batch (the iteration also samples as many chains).
    pub batch: usize,
    /// Timed SGLD chains of the paper's 20 steps (after 3 untimed); the step time is a chain's over its steps.
    pub sgld_reps: usize,
    /// Timed iterations (after 2 untimed).
    pub iter_reps: usize,
}

impl Default for BenchSpec {
    /// The benchmark CNN on 28x28x1 at batch 64, 20 SGLD steps and 10 iterations timed.
    fn default() -> Self {
        BenchSpec {
            model: ModelConfig::default(),
            shape: [1, 28, 28],
            classes: 10,
            batch: 64,
            sgld_reps: 20,
            iter_reps: 10,
        }
    }
}

/// Bench results (medians).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The engine training runs on this device ([`Engine::name`]: `cnn-cpu`, the kernel, or
    /// `autodiff`, where the model, the device or the CPU, with neither AVX-512 nor AVX2 and
    /// FMA, rules the kernel out; then `sgld_step_ms` and `sgld_step_autodiff_ms` time the
    /// same path).
    #[serde(default)]
    pub engine: String,
    /// The kernel's f32 instructions with the `cnn-cpu` engine ([`crate::cnn_cpu::instructions`]:
    /// `avx512` or `avx2`), else `None`.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Median ms of one SGLD step as training runs it.
    pub sgld_step_ms: f64,
    /// Median ms of the same step through burn's autodiff (the reference path).
    pub sgld_step_autodiff_ms: f64,
    /// Median ms of one training iteration.
    pub iteration_ms: f64,
    /// Median ms of one inference forward pass (logits of the batch), as `jem predict` and
    /// `jem serve` run it.
    #[serde(default)]
    pub forward_ms: f64,
    /// GFLOP/s of the iteration.
    pub gflops: f64,
    /// GFLOP/s of the SGLD step.
    pub sgld_gflops: f64,
    /// Threads of the compute pool.
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
    /// GFLOP of one SGLD step of this model and batch.
    pub sgld_step_gflop: f64,
    /// GFLOP of one iteration.
    pub iteration_gflop: f64,
    /// Median ms of the SGLD step with bf16 products (`None` where the kernel or the CPU
    /// cannot run it).
    pub sgld_step_bf16_ms: Option<f64>,
    /// Median ms of the iteration with bf16 chains (the training step itself in f32).
    pub iteration_bf16_ms: Option<f64>,
}

/// The median of timings (`NaN` for none: every caller times at least one repetition).
fn median(v: Vec<f64>) -> f64 {
    crate::metrics::median(v).unwrap_or(f64::NAN)
}

/// Milliseconds per step of `reps` chains of `params` (median, after 3 untimed), each chain
/// the paper's 20 steps as training runs them (the kernel built once per chain).
fn time_chains(
    engine: Engine,
    model: &Classifier,
    x: &Tensor<4>,
    params: &SgldConfig,
    reps: usize,
    rng: &mut Rng,
) -> f64 {
    let times: Vec<f64> = (0..reps + 3)
        .map(|_| {
            let t = Instant::now();
            let out = engine.sgld(model, x.clone(), &Target::Marginal, params, rng);
            let _: Vec<f32> = out.samples.into_data().try_to_vec::<f32>().expect("f32");
            t.elapsed().as_secs_f64() * 1e3 / params.steps.max(1) as f64
        })
        .skip(3)
        .collect();
    median(times)
}

/// Milliseconds of one SGLD step through burn's autodiff (median of `reps`, after 3 untimed).
fn time_autodiff_step(model: &Classifier, x: &Tensor<4>, reps: usize) -> f64 {
    let times: Vec<f64> = (0..reps + 3)
        .map(|_| {
            let t = Instant::now();
            let (g, _) = input_grad(model, x.clone(), &Target::Marginal);
            let _: Vec<f32> = (x.clone() + g)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32");
            t.elapsed().as_secs_f64() * 1e3
        })
        .skip(3)
        .collect();
    median(times)
}

/// Milliseconds of one JEM iteration (median of `reps`, after 2 untimed); `model` is
/// trained on.
fn time_iterations(
    cfg: &TrainConfig,
    engine: Engine,
    model: &mut Classifier,
    buffer: &mut ReplayBuffer,
    batch: &Batch,
    (shape, k, reps): ([usize; 3], usize, usize),
    rng: &mut Rng,
) -> f64 {
    let device = model.device();
    let mut optim = Optimizer::new(&cfg.optim);
    let mut times = Vec::new();
    for i in 0..reps + 2 {
        let t = Instant::now();
        let inputs = StepInputs {
            cfg,
            engine,
            batch,
            shape,
            num_classes: k,
            lr: 1e-4,
            critic_lr: 0.0,
            optim: &mut optim,
            buffer: Some(&mut *buffer),
            critic: None,
            rng: &mut *rng,
            device: &device,
        };
        if let Ok((m, _)) = iteration(model.clone(), inputs) {
            *model = m;
        }
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(times)
}

/// Milliseconds of one inference forward pass of `x` (`b` images of `shape`, median of
/// `reps` after 2 untimed): the CPU kernel where it serves the model, else burn's forward.
fn time_forward(engine: Engine, model: &Classifier, x: &Tensor<4>, reps: usize) -> f64 {
    let [b, c, h, w] = x.dims();
    let host: Vec<f32> = x.clone().into_data().try_to_vec().expect("f32 images");
    let mut kernel = engine.kernel(model, Precision::F32);
    let plain = model.valid();
    let mut times = Vec::new();
    for i in 0..reps + 2 {
        let t = Instant::now();
        let logits: Vec<f32> = match &mut kernel {
            Some(k) => k.forward(&host, b, [c, h, w]),
            None => plain
                .forward(x.clone())
                .into_data()
                .try_to_vec()
                .expect("f32"),
        };
        std::hint::black_box(logits);
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(times)
}

/// Time `spec.sgld_reps` SGLD chains (per step) and `spec.iter_reps` JEM iterations (paper settings:
/// 20 SGLD steps, a 10,000-chain buffer, Adam) after warm-up, on `device`.
pub fn run(device: &Device, spec: &BenchSpec, threads: usize) -> BenchReport {
    let cfg = TrainConfig {
        model: spec.model.clone(),
        ..TrainConfig::default()
    };
    let device = device.clone().autodiff();
    let (shape, k, b) = (spec.shape, spec.classes, spec.batch);
    let [c, h, w] = shape;
    let mut model = cfg.model.init_seeded(c, k, &device, 0);
    let engine = Engine::for_model(&model);
    let mut rng = Rng::new(0, 0);
    let mut x0 = vec![0.0f32; b * c * h * w];
    rng.fill_uniform(&mut x0, -1.0, 1.0);
    let x = Tensor::<4>::from_data(TensorData::new(x0.clone(), [b, c, h, w]), &device.inner());
    // The sampler as training runs it (the CPU kernel for the CNN on the CPU), per step of the
    // paper's 20-step chains; and one step through burn's autodiff.
    let chain = cfg.sgld.clone();
    let sgld_ms = time_chains(engine, &model, &x, &chain, spec.sgld_reps, &mut rng);
    let sgld_autodiff_ms = time_autodiff_step(&model, &x, spec.sgld_reps);
    let forward_ms = time_forward(engine, &model, &x, spec.sgld_reps);
    let bf16 = engine.check_chains(Precision::Bf16).is_ok();
    let sgld_bf16_ms = bf16.then(|| {
        let params = SgldConfig {
            precision: Precision::Bf16,
            ..chain.clone()
        };
        time_chains(engine, &model, &x, &params, spec.sgld_reps, &mut rng)
    });
    let mut buffer = ReplayBuffer::uniform(&cfg.buffer, shape, k, &mut rng);
    let batch = Batch {
        images: x0,
        labels: (0..b).map(|_| rng.below(k)).collect(),
        plain: None,
    };
    let mut time = |cfg: &TrainConfig, model: &mut Classifier| {
        let dims = (shape, k, spec.iter_reps);
        time_iterations(cfg, engine, model, &mut buffer, &batch, dims, &mut rng)
    };
    let iter_ms = time(&cfg, &mut model);
    let iter_bf16_ms = bf16.then(|| {
        let mut cfg = cfg.clone();
        cfg.sgld.precision = Precision::Bf16;
        time(&cfg, &mut model)
    });
    let f = forward_flops(&spec.model, shape, k) * b as f64 / 1e9; // forward GFLOP per batch
    // SGLD step: forward + input gradient (2x forward). Iteration: the SGLD steps, then
    // forward + backward (input and weight gradients, 3x forward) on data and samples.
    let sgld_gflop = 2.0 * f;
    let iteration_gflop = cfg.sgld.steps as f64 * sgld_gflop + 3.0 * 2.0 * f;
    BenchReport {
        engine: engine.name().to_string(),
        instructions: engine.instructions().map(str::to_string),
        sgld_step_ms: sgld_ms,
        sgld_step_autodiff_ms: sgld_autodiff_ms,
        iteration_ms: iter_ms,
        forward_ms,
        gflops: iteration_gflop / iter_ms * 1e3,
        sgld_gflops: sgld_gflop / sgld_ms * 1e3,
        threads,
        batch: b,
        sgld_step_gflop: sgld_gflop,
        iteration_gflop,
        sgld_step_bf16_ms: sgld_bf16_ms,
        iteration_bf16_ms: iter_bf16_ms,
    }
}

/// GFLOP/s of an `n x n` by `n x n` f32 matrix product on `device` (median of `reps` after
/// one untimed): the practical FP32 peak the other figures are compared with.
pub fn gemm_gflops(device: &Device, n: usize, reps: usize) -> f64 {
    let mut rng = Rng::new(1, 0);
    let mut v = vec![0.0f32; n * n];
    rng.fill_uniform(&mut v, -1.0, 1.0);
    let a = Tensor::<2>::from_data(TensorData::new(v.clone(), [n, n]), device);
    let b = Tensor::<2>::from_data(TensorData::new(v, [n, n]), device);
    let mut times = Vec::new();
    for i in 0..reps + 1 {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        let _: Vec<f32> = c.slice([0..1, 0..1]).into_data().try_to_vec().expect("f32");
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    2.0 * (n as f64).powi(3) / median(times) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts_match_the_benchmark_figures() {
        let f = forward_flops(&ModelConfig::default(), [1, 28, 28], 10) * 64.0 / 1e9;
        assert!((2.0 * f - SGLD_STEP_GFLOP).abs() < 0.01, "{}", 2.0 * f);
        assert!((20.0 * 2.0 * f + 6.0 * f - ITERATION_GFLOP).abs() < 0.1);
        // WRN-28-10 on CIFAR: about 5.25 GFLOP per image (2 x 2.62 G multiply-adds).
        let wrn = ModelConfig::Wrn {
            depth: 28,
            widen: 10,
            norm: Default::default(),
            dropout: 0.0,
        };
        let g = forward_flops(&wrn, [3, 32, 32], 10) / 1e9;
        assert!((g - 10.5).abs() < 0.5, "{g}");
    }
}
