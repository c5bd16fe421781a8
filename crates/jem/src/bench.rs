//! Timing of one SGLD step and one JEM iteration of the benchmark model at batch 64, the same
//! work as `shared/bench/torch_jem_iteration.py` (random data, a 10,000-chain buffer).

use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::buffer::ReplayBuffer;
use crate::config::TrainConfig;
use crate::data::Batch;
use crate::energy::{Target, input_grad};
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::train::iteration;

/// GFLOP of one SGLD step of the benchmark model at batch 64 (forward + input gradient).
pub const SGLD_STEP_GFLOP: f64 = 2.51;
/// GFLOP of one JEM iteration (20 SGLD steps, forward/backward on 128 images, Adam).
pub const ITERATION_GFLOP: f64 = 57.7;

/// Bench results (medians).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Median ms of one SGLD step.
    pub sgld_step_ms: f64,
    /// Median ms of one training iteration.
    pub iteration_ms: f64,
    /// GFLOP/s of the iteration.
    pub gflops: f64,
    /// GFLOP/s of the SGLD step.
    pub sgld_gflops: f64,
    /// Threads of the compute pool.
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time `sgld_reps` SGLD steps and `iter_reps` iterations (after warm-up) on `device`.
pub fn run(device: &Device, sgld_reps: usize, iter_reps: usize, threads: usize) -> BenchReport {
    let cfg = TrainConfig::default();
    let device = device.clone().autodiff();
    device.seed(0);
    let (shape, k, b) = ([1, 28, 28], 10, 64);
    let mut model = cfg.model.init(1, k, &device);
    let mut rng = Rng::new(0, 0);
    let mut x0 = vec![0.0f32; b * 784];
    rng.fill_uniform(&mut x0, -1.0, 1.0);
    let inner = device.clone().inner();
    let x = Tensor::<4>::from_data(TensorData::new(x0.clone(), [b, 1, 28, 28]), &inner);
    let mut times = Vec::new();
    for i in 0..sgld_reps + 3 {
        let t = Instant::now();
        let (g, _) = input_grad(&model, x.clone(), &Target::Marginal);
        let _: Vec<f32> = (x.clone() + g)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let sgld_ms = median(times);
    let mut buffer = ReplayBuffer::uniform(&cfg.buffer, shape, k, &mut rng);
    let mut optim = Optimizer::new(&cfg.optim);
    let batch = Batch {
        images: x0,
        labels: (0..b).map(|_| rng.below(k)).collect(),
    };
    let mut times = Vec::new();
    for i in 0..iter_reps + 2 {
        let t = Instant::now();
        let out = iteration(
            &cfg,
            model.clone(),
            &mut optim,
            Some(&mut buffer),
            &batch,
            shape,
            k,
            1e-4,
            &mut rng,
            &device,
        );
        if let Ok((m, _)) = out {
            model = m;
        }
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let iter_ms = median(times);
    BenchReport {
        sgld_step_ms: sgld_ms,
        iteration_ms: iter_ms,
        gflops: ITERATION_GFLOP / iter_ms * 1e3,
        sgld_gflops: SGLD_STEP_GFLOP / sgld_ms * 1e3,
        threads,
        batch: b,
    }
}
