//! Data parallel (`jem::step::iteration_on`) on the CPU alone: two shares on one device give
//! the step of the whole batch, so the sharding of rows, chains and labels and the gradient
//! average are right whatever the devices (`tests/wgpu_device.rs` runs it over the CPU and
//! wgpu). Config validation refuses shares of unequal size by field.

mod common;

use burn::prelude::*;
use jem::Engine;
use jem::buffer::ReplayBuffer;
use jem::config::{DeviceSpec, TrainConfig};
use jem::loss::Objective;
use jem::optim::{Algorithm, Optimizer};
use jem::rng::Rng;
use jem::step::{StepInputs, iteration_on};

/// The parameter change of one SGD step over `shares` copies of the CPU device.
fn step(cfg: &TrainConfig, shares: usize) -> (Vec<f32>, f64, Vec<f32>) {
    let d = Device::flex().autodiff();
    let devices = vec![d.clone(); shares];
    let model = cfg.model.init_seeded(1, cfg.model_outputs(10), &d, 2);
    let batch = common::random_batch(3);
    let mut buffer = ReplayBuffer::uniform(&cfg.buffer, [1, 28, 28], 10, &mut Rng::new(4, 0));
    let mut opt = Optimizer::new(&cfg.optim);
    let mut rng = Rng::new(5, 0);
    let inputs = StepInputs {
        cfg,
        engine: Engine::Autodiff,
        batch: &batch,
        shape: [1, 28, 28],
        num_classes: 10,
        lr: 1.0,
        critic_lr: 0.0,
        optim: &mut opt,
        buffer: Some(&mut buffer),
        critic: None,
        rng: &mut rng,
        device: &d,
    };
    let (m, metrics) = iteration_on(model.clone(), inputs, &devices)
        .map_err(|e| e.what)
        .unwrap();
    let delta = common::param_delta(&model, &m);
    let chains = (0..buffer.len())
        .flat_map(|i| buffer.chain(i).to_vec())
        .collect();
    (delta, metrics.loss, chains)
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn two_shares_on_one_device_give_the_step_of_the_whole_batch() {
    let mut base = TrainConfig {
        model: jem::model::ModelConfig::cnn(vec![8, 16]),
        ..TrainConfig::default()
    };
    base.sgld.steps = 3;
    base.buffer.size = 100;
    base.optim.algorithm = Algorithm::Sgd;
    let mut softmax = base.clone();
    softmax.loss.objective = Objective::Softmax;
    let mut cases = common::parallel_cases(&base);
    cases.push(("softmax", softmax));
    for (name, cfg) in cases {
        let (one, l1, chain1) = step(&cfg, 1);
        let (two, l2, chain2) = step(&cfg, 2);
        let (four, _, _) = step(&cfg, 4);
        assert!(one.iter().any(|v| *v != 0.0), "{name}: no update");
        for (k, d) in [(2, &two), (4, &four)] {
            let e = rel_err(d, &one);
            assert!(e < 1e-4, "{name}, {k} shares: update differs by {e}");
        }
        assert!(
            (l1 - l2).abs() < 1e-5 * l1.abs().max(1.0),
            "{name}: loss {l1} vs {l2}"
        );
        // The chains stored back into the buffer are the same too.
        assert!(rel_err(&chain2, &chain1) < 1e-4, "{name}: chains differ");
    }
}

#[test]
fn shares_of_unequal_size_are_refused_by_field() {
    let mut c = TrainConfig {
        devices: vec![DeviceSpec::Cpu; 3],
        ..TrainConfig::default()
    };
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("schedule.batch_size") && e.contains("3 equal shares"),
        "{e}"
    );
    c.schedule.batch_size = 48;
    c.sgld.chains = Some(16);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("sgld.chains"), "{e}");
    c.sgld.chains = Some(15);
    c.validate().unwrap();
    c.loss.objective = Objective::Lsd;
    assert!(c.validate().unwrap_err().to_string().contains("`devices`"));
}
