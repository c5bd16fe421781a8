//! End to end on the real Fashion-MNIST files (Debian package `dataset-fashion-mnist`, which
//! `.ci/run` installs): a few hundred steps beat chance (10%) by a wide margin.

use std::path::Path;

use burn::prelude::*;
use jem::config::TrainConfig;
use jem::data::{DatasetKind, Split};
use jem::eval::accuracy::accuracy;
use jem::eval::run::Run;
use jem::loss::Objective;
use jem::rng::Rng;
use jem::train::{NoObserver, Trainer};

fn require_data() {
    let dir = DatasetKind::FashionMnist.default_dir();
    assert!(
        Path::new(&dir).join("train-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST is not installed in {}: run `apt-get install -y dataset-fashion-mnist` (.ci/run does)",
        dir.display()
    );
}

fn test_accuracy(dir: &Path) -> f64 {
    let run = Run::open(dir, &Device::flex()).unwrap();
    let test = run.data(Split::Test).unwrap();
    let idx: Vec<usize> = (0..2000).collect();
    accuracy(
        run.engine,
        &run.model,
        &test.subset(&idx),
        500,
        None,
        &mut Rng::new(0, 0),
    )
    .unwrap()
    .accuracy
}

#[test]
fn softmax_and_jem_learn_fashion_mnist() {
    require_data();
    let runs = tempfile::tempdir().unwrap();

    let mut c = TrainConfig::default();
    c.loss.objective = Objective::Softmax;
    c.optim.lr = 1e-3;
    c.optim.warmup_steps = 50;
    c.schedule.max_steps = Some(300);
    c.schedule.eval_valid = false;
    let dir = runs.path().join("softmax");
    Trainer::create(c, &dir, &Device::flex())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    let acc = test_accuracy(&dir);
    assert!(acc > 0.65, "softmax test accuracy {acc} after 300 steps");

    // The paper's recipe, shortened: Adam 1e-4 (warm-up 100 instead of 1000), 5 SGLD steps (with
    // 10 the whole test took 292 s on a 2-core Zen 3 without AVX-512, with 5 it takes 223 s).
    let mut c = TrainConfig::default();
    c.optim.warmup_steps = 100;
    c.sgld.steps = 5;
    c.schedule.max_steps = Some(200);
    c.schedule.eval_valid = false;
    let dir = runs.path().join("jem");
    let mut t = Trainer::create(c, &dir, &Device::flex()).unwrap();
    let s = t.run(&mut NoObserver).unwrap();
    let m = s.last.unwrap();
    assert!(m.lse_sample.unwrap().is_finite() && m.sgld_grad_norm.unwrap().is_finite());
    let acc = test_accuracy(&dir);
    // 200 steps at 1e-4 is early: with 10 SGLD steps seeds 0, 1, 2 (host-drawn initial weights)
    // gave 0.29, 0.37, 0.37; with 5, seed 0 (this test's) gave 0.30. A JEM that does not learn
    // stays at chance.
    assert!(
        acc > 0.25,
        "jem test accuracy {acc} after 200 steps (chance: 0.1)"
    );
}
