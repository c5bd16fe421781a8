//! Fixtures shared by the integration tests.
#![allow(dead_code)]

use burn::prelude::*;
use jem::Engine;
use jem::config::TrainConfig;
use jem::data::{Dataset, DatasetKind, load_files};
use jem::loss::Objective;
use jem::model::{Classifier, ModelConfig};
use jem::optim::Optimizer;
use jem::rng::Rng;
use jem::step::{StepInputs, iteration};

/// The synthetic data set (train, test) written to a temporary folder and read back.
pub fn synthetic(n_train: usize, n_test: usize, seed: u64) -> (Dataset, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(dir.path(), n_train, n_test, seed).unwrap();
    let tr = load_files(DatasetKind::FashionMnist, Some(dir.path()), false).unwrap();
    let te = load_files(DatasetKind::FashionMnist, Some(dir.path()), true).unwrap();
    (tr, te)
}

/// A small CNN trained as a softmax classifier on `data` for 200 steps (Adam 3e-3, no
/// warm-up); returns it and the last batch accuracy.
pub fn trained_softmax(data: &Dataset) -> (Classifier, f64) {
    let d = Device::flex().autodiff();
    let mut cfg = TrainConfig::default();
    cfg.loss.objective = Objective::Softmax;
    cfg.model = ModelConfig::cnn(vec![8, 16]);
    cfg.optim.warmup_steps = 0;
    let mut model = cfg.model.init_seeded(1, 10, &d, 0);
    let mut opt = Optimizer::new(&cfg.optim);
    let mut rng = Rng::new(0, 0);
    let mut last_acc = 0.0;
    for step in 0..200 {
        let idx: Vec<usize> = (0..32).map(|i| (step * 32 + i) % data.len()).collect();
        let batch = data.batch(&idx, &cfg.data.augment, &mut rng);
        let inputs = StepInputs {
            cfg: &cfg,
            engine: Engine::for_model(&model),
            batch: &batch,
            shape: [1, 28, 28],
            num_classes: 10,
            lr: 3e-3,
            critic_lr: 0.0,
            optim: &mut opt,
            buffer: None,
            critic: None,
            rng: &mut rng,
            device: &d,
        };
        let (m, metrics) = iteration(model, inputs)
            .map_err(|d| format!("{} {}", d.what, d.value))
            .unwrap();
        model = m;
        last_acc = metrics.acc.expect("a classifier reports accuracy");
    }
    (model, last_acc)
}

/// A small run on the synthetic data in `data`: CNN [6, 8], batch 16, 3 epochs, every step
/// logged, 3 SGLD steps, a 100-chain buffer, Adam 1e-3 with a 2-step warm-up.
pub fn tiny_config(data: &std::path::Path, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.data.dataset = DatasetKind::FashionMnist;
    c.data.dir = Some(data.to_path_buf());
    c.data.n_valid = 32;
    c.model = ModelConfig::cnn(vec![6, 8]);
    c.schedule.batch_size = 16;
    c.schedule.epochs = 3;
    c.schedule.log_every = 1;
    c.schedule.checkpoint_every = 100;
    c.sgld.steps = 3;
    c.buffer.size = 100;
    c.optim.warmup_steps = 2;
    c.optim.lr = 1e-3;
    c.seed = seed;
    c
}

/// Every float parameter of `m`, in the module's order, flattened.
pub fn flat<M: burn::module::Module>(m: &M) -> Vec<f32> {
    struct P<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for P<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let v = p.val().into_data().convert::<f32>();
            self.0.extend(v.try_to_vec::<f32>().unwrap());
        }
    }
    let mut v = Vec::new();
    m.visit(&mut P(&mut v));
    v
}

/// The methods a data-parallel step is checked on, from `base` (SGD, a few SGLD steps): JEM
/// with p(x) and p(x, y) chains, fewer chains than images and the energy penalty; JEM++
/// (proximal SGLD); IGEBM.
pub fn parallel_cases(base: &TrainConfig) -> Vec<(&'static str, TrainConfig)> {
    let mut jem = base.clone();
    jem.buffer.conditional = true;
    jem.loss.pxy_weight = 0.5;
    jem.loss.lse_l2 = 0.1;
    jem.sgld.chains = Some(8);
    let mut pyld = base.clone();
    pyld.sgld.sampler = jem::sgld::SamplerKind::Pyld;
    pyld.sgld.step_size = 0.1;
    let mut igebm = base.clone();
    igebm.loss.objective = Objective::Igebm;
    igebm.loss.energy_l2 = 0.5;
    vec![("jem", jem), ("jem++", pyld), ("igebm", igebm)]
}

/// The change of every parameter from `before` to `after` ([`flat`] order).
pub fn param_delta<M: burn::module::Module>(before: &M, after: &M) -> Vec<f32> {
    flat(after)
        .iter()
        .zip(flat(before))
        .map(|(a, b)| a - b)
        .collect()
}

/// A batch of 16 images in `[-1, 1]` drawn from `seed`, labels `i % 10`, no plain copies.
pub fn random_batch(seed: u64) -> jem::data::Batch {
    let mut x = vec![0.0f32; 16 * 784];
    Rng::new(seed, 0).fill_uniform(&mut x, -1.0, 1.0);
    jem::data::Batch {
        images: x,
        labels: (0..16).map(|i| i % 10).collect(),
        plain: None,
    }
}
