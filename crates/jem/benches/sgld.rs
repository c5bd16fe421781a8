//! Criterion benches of the benchmark model at batch 64: one SGLD step (forward + input
//! gradient, parameters frozen) and one JEM training iteration (20 SGLD steps, forward and
//! backward on 64 real + 64 sampled images, Adam). `jem bench` reports the same work as
//! medians with GFLOP/s; see `jem::bench` for the FLOP counts.

use std::hint::black_box;

use burn::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use jem::Engine;
use jem::buffer::ReplayBuffer;
use jem::config::TrainConfig;
use jem::data::Batch;
use jem::energy::{Target, input_grad};
use jem::optim::Optimizer;
use jem::rng::Rng;
use jem::step::{StepInputs, iteration};

fn benches(c: &mut Criterion) {
    let cfg = TrainConfig::default();
    let device = Device::flex().autodiff();
    let mut model = cfg.model.init_seeded(1, 10, &device, 0);
    let mut rng = Rng::new(0, 0);
    let mut x0 = vec![0.0f32; 64 * 784];
    rng.fill_uniform(&mut x0, -1.0, 1.0);
    let x = Tensor::<4>::from_data(
        TensorData::new(x0.clone(), [64, 1, 28, 28]),
        &device.clone().inner(),
    );
    let engine = Engine::for_model(&model);
    let mut group = c.benchmark_group("benchmark-cnn-batch-64");
    group.sample_size(10);
    let one = jem::sgld::SgldConfig {
        steps: 1,
        ..cfg.sgld.clone()
    };
    group.bench_function("sgld_step_cpu_kernel", |b| {
        let mut r = Rng::new(1, 0);
        b.iter(|| {
            let out = engine.sgld(&model, x.clone(), &Target::Marginal, &one, &mut r);
            black_box(out.samples.into_data())
        })
    });
    group.bench_function("sgld_step_autodiff", |b| {
        b.iter(|| {
            let (g, _) = input_grad(&model, x.clone(), &Target::Marginal);
            black_box((x.clone() + g).into_data())
        })
    });
    let mut buffer = ReplayBuffer::uniform(&cfg.buffer, [1, 28, 28], 10, &mut rng);
    let mut optim = Optimizer::new(&cfg.optim);
    let batch = Batch {
        images: x0,
        labels: (0..64).map(|i| i % 10).collect(),
        plain: None,
    };
    group.bench_function("jem_iteration", |b| {
        b.iter(|| {
            let inputs = StepInputs {
                cfg: &cfg,
                engine,
                batch: &batch,
                shape: [1, 28, 28],
                num_classes: 10,
                lr: 1e-4,
                critic_lr: 0.0,
                optim: &mut optim,
                buffer: Some(&mut buffer),
                critic: None,
                rng: &mut rng,
                device: &device,
            };
            let out = iteration(model.clone(), inputs);
            if let Ok((m, metrics)) = out {
                model = m;
                black_box(metrics);
            }
        })
    });
    group.finish();
}

criterion_group!(jem_benches, benches);
criterion_main!(jem_benches);
