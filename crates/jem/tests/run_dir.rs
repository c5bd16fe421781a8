//! Run directories: exact resume, divergence stop with an intact checkpoint, refusal to
//! overwrite, and clear errors on damaged files.

use std::path::Path;

use burn::prelude::*;
use jem::checkpoint::files;
use jem::config::TrainConfig;
use jem::loss::Objective;
use jem::model::ModelConfig;
use jem::train::{NoObserver, Trainer};
use jem::{Error, eval::run::Run};

mod common;

fn tiny_config(data: &Path) -> TrainConfig {
    let mut c = common::tiny_config(data, 42);
    c.buffer.conditional = true;
    c.loss.pxy_weight = 0.5;
    c.data.augment.crop_pad = 2;
    c
}

fn device() -> Device {
    Device::flex()
}

fn data_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(d.path(), 160, 32, 3).unwrap();
    d
}

/// Every tensor of a safetensors file, by name, as raw bytes (header metadata order is not
/// part of the content).
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort();
    assert!(!out.is_empty());
    out
}

fn without_ms(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("ms");
            v
        })
        .collect()
}

#[test]
fn n_steps_straight_equal_half_then_resume_then_half() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let (a, b) = (runs.path().join("a"), runs.path().join("b"));
    // 8 steps per epoch (128 / 16): 12 steps cross an epoch boundary, validation included.
    let mut cfg = tiny_config(data.path());
    cfg.schedule.max_steps = Some(12);
    let mut straight = Trainer::create(cfg.clone(), &a, &device()).unwrap();
    assert_eq!(straight.steps_per_epoch(), 8);
    straight.run(&mut NoObserver).unwrap();

    cfg.schedule.max_steps = Some(6);
    Trainer::create(cfg, &b, &device())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    let mut resumed = Trainer::resume(&b, &device(), |c| c.schedule.max_steps = Some(12)).unwrap();
    assert_eq!(resumed.step(), 6);
    let s = resumed.run(&mut NoObserver).unwrap();
    assert_eq!(s.step, 12);

    for f in [files::MODEL, files::OPTIM, files::BUFFER] {
        assert_eq!(
            tensors(&a.join(f)),
            tensors(&b.join(f)),
            "{f} differs between the straight and the resumed run"
        );
    }
    let sa: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join(files::STATE)).unwrap()).unwrap();
    let sb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join(files::STATE)).unwrap()).unwrap();
    assert_eq!(sa["rng"], sb["rng"]);
    assert_eq!(sa["step"], 12);
    assert_eq!(
        without_ms(&a.join(files::METRICS)),
        without_ms(&b.join(files::METRICS))
    );

    // Resuming a finished run does nothing; the step bound counts the whole run.
    let mut again = Trainer::resume(&b, &device(), |_| {}).unwrap();
    assert_eq!(again.run(&mut NoObserver).unwrap().last, None);

    // Fixed parts of a run cannot change on resume.
    let e = Trainer::resume(&b, &device(), |c| c.seed = 1)
        .err()
        .unwrap();
    assert!(e.to_string().contains("seed"), "{e}");

    // The saved run opens for evaluation with the same weights.
    let run = Run::open(&a, &device()).unwrap();
    assert_eq!(run.state.step, 12);
    assert!(jem::tensor_file::params_finite(&run.model));
}

#[test]
fn an_existing_run_directory_is_never_overwritten() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("r");
    let mut cfg = tiny_config(data.path());
    cfg.schedule.max_steps = Some(1);
    Trainer::create(cfg.clone(), &dir, &device()).unwrap();
    let before = std::fs::read(dir.join(files::MODEL)).unwrap();
    let e = Trainer::create(cfg, &dir, &device()).err().unwrap();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(before, std::fs::read(dir.join(files::MODEL)).unwrap());
}

#[test]
fn damaged_checkpoints_are_clear_errors() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("r");
    let mut cfg = tiny_config(data.path());
    cfg.schedule.max_steps = Some(2);
    Trainer::create(cfg, &dir, &device())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();

    let e = Trainer::resume(&runs.path().join("nope"), &device(), |_| {})
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a jem run directory"), "{e}");

    let model = std::fs::read(dir.join(files::MODEL)).unwrap();
    std::fs::write(dir.join(files::MODEL), &model[..model.len() - 100]).unwrap();
    let e = Trainer::resume(&dir, &device(), |_| {}).err().unwrap();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    std::fs::write(dir.join(files::MODEL), &model).unwrap();

    // A state file from another step: the mix is detected, not resumed.
    let state = std::fs::read_to_string(dir.join(files::STATE)).unwrap();
    std::fs::write(
        dir.join(files::STATE),
        state.replace("\"step\": 2", "\"step\": 1"),
    )
    .unwrap();
    let e = Trainer::resume(&dir, &device(), |_| {}).err().unwrap();
    assert!(e.to_string().contains("inconsistent"), "{e}");
    std::fs::write(dir.join(files::STATE), "{ not json").unwrap();
    let e = Trainer::resume(&dir, &device(), |_| {}).err().unwrap();
    assert!(e.to_string().contains("state.json"), "{e}");
    std::fs::write(dir.join(files::STATE), state).unwrap();
    std::fs::write(
        dir.join(files::CONFIG),
        "[model]\narch = \"cnn\"\nwidths = [6, 8]\nbogus = 1\n",
    )
    .unwrap();
    let e = Trainer::resume(&dir, &device(), |_| {}).err().unwrap();
    assert!(e.to_string().contains("config.toml"), "{e}");
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("r");
    let mut cfg = tiny_config(data.path());
    cfg.loss.objective = Objective::Softmax;
    cfg.optim.algorithm = jem::optim::Algorithm::Sgd;
    cfg.optim.lr = 1e12;
    cfg.optim.warmup_steps = 0;
    cfg.schedule.checkpoint_every = 1;
    cfg.schedule.max_steps = Some(50);
    cfg.recovery.max_recoveries = 2;
    let mut t = Trainer::create(cfg, &dir, &device()).unwrap();
    match t.run(&mut NoObserver) {
        Err(Error::Diverged {
            step,
            last_checkpoint,
            what,
            ..
        }) => {
            assert!(what.contains("after 2 recoveries"), "{what}");
            assert!(last_checkpoint < step);
            let run = Run::open(&dir, &device()).unwrap();
            assert_eq!(run.state.step, last_checkpoint);
            assert!(
                jem::tensor_file::params_finite(&run.model),
                "a non-finite model was saved"
            );
        }
        other => panic!("expected divergence, got {:?}", other.map(|s| s.step)),
    }
}

#[test]
fn config_validation_names_the_field() {
    let base = TrainConfig::default();
    type Edit = Box<dyn Fn(&mut TrainConfig)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c| c.schedule.batch_size = 0),
            "schedule.batch_size",
        ),
        (Box::new(|c| c.optim.lr = -1.0), "optim.lr"),
        (Box::new(|c| c.optim.lr = f64::NAN), "optim.lr"),
        (Box::new(|c| c.sgld.steps = 0), "sgld.steps"),
        (Box::new(|c| c.sgld.step_size = 0.0), "sgld.step_size"),
        (Box::new(|c| c.sgld.noise_std = -0.1), "sgld.noise_std"),
        (
            Box::new(|c| {
                c.buffer.conditional = true;
                c.buffer.size = 10_005;
            }),
            "buffer.size",
        ),
        (Box::new(|c| c.buffer.size = 10), "buffer.size"),
        (
            Box::new(|c| c.buffer.reinit_freq = 1.5),
            "buffer.reinit_freq",
        ),
        (
            Box::new(|c| {
                c.model = ModelConfig::Wrn {
                    depth: 11,
                    widen: 2,
                    norm: Default::default(),
                    dropout: 0.0,
                }
            }),
            "model.depth",
        ),
        (
            Box::new(|c| c.model = ModelConfig::cnn(vec![])),
            "model.widths",
        ),
        (
            Box::new(|c| {
                c.model = ModelConfig::Cnn {
                    widths: vec![8, 16],
                    strides: vec![1, 3],
                }
            }),
            "model.strides",
        ),
        (
            Box::new(|c| {
                c.model = ModelConfig::Cnn {
                    widths: vec![8, 16],
                    strides: vec![1],
                }
            }),
            "model.strides",
        ),
        (Box::new(|c| c.loss.px_weight = -1.0), "loss.px_weight"),
        (
            Box::new(|c| c.schedule.max_steps = Some(0)),
            "schedule.max_steps",
        ),
        (
            Box::new(|c| c.data.augment.crop_pad = 28),
            "data.augment.crop_pad",
        ),
        (Box::new(|c| c.optim.beta2 = 1.0), "optim.beta2"),
    ];
    for (f, field) in cases {
        let mut c = base.clone();
        f(&mut c);
        let e = c.validate().expect_err(field);
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // Softmax needs no sampler, so sampler settings do not matter there.
    let mut c = base.clone();
    c.loss.objective = Objective::Softmax;
    c.sgld.steps = 0;
    c.validate().unwrap();
    let e = TrainConfig::from_toml("[sgld]\nstpes = 3\n").unwrap_err();
    assert!(e.contains("stpes"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_checkpoint_interrupted_at_any_point_leaves_one_complete_checkpoint() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(data.path());
    cfg.schedule.max_steps = Some(2);
    let two = runs.path().join("two");
    Trainer::create(cfg.clone(), &two, &device())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    let four = runs.path().join("four");
    copy_dir(&two, &four);
    Trainer::resume(&four, &device(), |c| c.schedule.max_steps = Some(4))
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    let staged = |p: &Path| jem::checkpoint::staged(p);

    // Killed before the commit: the staged files of step 4 are discarded, step 2 resumes.
    let before = runs.path().join("before");
    copy_dir(&two, &before);
    for f in [files::MODEL, files::OPTIM, files::BUFFER] {
        std::fs::copy(four.join(f), staged(&before.join(f))).unwrap();
    }
    // A half-written staged file is discarded too.
    let model = std::fs::read(four.join(files::MODEL)).unwrap();
    std::fs::write(
        staged(&before.join(files::MODEL)),
        &model[..model.len() / 3],
    )
    .unwrap();
    let t = Trainer::resume(&before, &device(), |_| {}).unwrap();
    assert_eq!(t.step(), 2);
    assert!(!staged(&before.join(files::OPTIM)).exists());
    drop(t);
    Trainer::resume(&before, &device(), |c| c.schedule.max_steps = Some(4))
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    assert_eq!(
        tensors(&before.join(files::MODEL)),
        tensors(&four.join(files::MODEL))
    );

    // Killed after the commit, while moving files into place: step 4 is completed.
    let after = runs.path().join("after");
    copy_dir(&two, &after);
    std::fs::copy(four.join(files::STATE), after.join(files::STATE)).unwrap();
    std::fs::copy(four.join(files::OPTIM), after.join(files::OPTIM)).unwrap();
    std::fs::copy(four.join(files::MODEL), staged(&after.join(files::MODEL))).unwrap();
    std::fs::copy(four.join(files::BUFFER), staged(&after.join(files::BUFFER))).unwrap();
    let run = Run::open(&after, &device()).unwrap();
    assert_eq!(run.state.step, 4);
    for f in [files::MODEL, files::OPTIM, files::BUFFER] {
        assert_eq!(tensors(&after.join(f)), tensors(&four.join(f)), "{f}");
        assert!(!staged(&after.join(f)).exists());
    }
}

#[test]
fn an_unstable_learning_rate_is_recovered_from_and_the_run_finishes() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("r");
    let mut cfg = tiny_config(data.path());
    cfg.loss.objective = Objective::Softmax;
    // Healthy for the first epoch (8 steps), then the schedule multiplies the learning rate by
    // 1e4: the loss spikes, the run rolls back to the epoch's checkpoint and backs off.
    cfg.optim.lr = 3e-3;
    cfg.optim.warmup_steps = 0;
    cfg.optim.decay_epochs = vec![1];
    cfg.optim.decay_fractions = Vec::new();
    cfg.optim.decay_rate = 1e4;
    cfg.schedule.checkpoint_every = 100;
    cfg.schedule.epochs = 5;
    cfg.schedule.max_steps = Some(40);
    cfg.recovery.lr_factor = 0.1;
    cfg.recovery.max_recoveries = 10;
    let mut t = Trainer::create(cfg, &dir, &device()).unwrap();
    let s = t.run(&mut NoObserver).unwrap();
    assert_eq!(s.step, 40);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join(files::METRICS))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recoveries: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "recovery").collect();
    assert!(!recoveries.is_empty(), "lr 30 should have diverged");
    assert!(recoveries.iter().all(|r| r["step"] == 8), "{recoveries:?}");
    let last = recoveries.last().unwrap();
    assert!(last["lr_scale"].as_f64().unwrap() <= 0.1, "{last}");
    let run = Run::open(&dir, &device()).unwrap();
    assert!(jem::tensor_file::params_finite(&run.model));
    assert_eq!(run.state.recoveries as usize, recoveries.len());
    // The model still learns after its recoveries: accuracy on the 128 training images (the
    // 32 test images are too few to tell) well above chance (0.1). Over seeds 0-4 and 42 it
    // is 0.20-0.36 with the host-drawn initial weights.
    let train = run.data(jem::data::Split::Train).unwrap();
    let acc = jem::eval::accuracy::accuracy(
        run.engine,
        &run.model,
        &train,
        64,
        None,
        &mut jem::rng::Rng::new(0, 0),
    )
    .unwrap();
    assert!(
        acc.accuracy > 0.15,
        "accuracy {} after recovering",
        acc.accuracy
    );
}

#[test]
fn nan_samples_in_the_buffer_are_recovered_from() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("r");
    let mut cfg = tiny_config(data.path());
    cfg.buffer.conditional = false;
    cfg.loss.pxy_weight = 0.0;
    cfg.schedule.max_steps = Some(2);
    Trainer::create(cfg.clone(), &dir, &device())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    // Poison half of the saved chains with NaN, as a sampler gone wrong would.
    let path = dir.join(files::BUFFER);
    let mut buf = jem::buffer::ReplayBuffer::load(&path, 2, &cfg.buffer, [1, 28, 28], 10).unwrap();
    let slots: Vec<usize> = (0..50).collect();
    buf.store(&slots, &vec![f32::NAN; 50 * 784]);
    buf.save(&path, 2).unwrap();
    let mut t = Trainer::resume(&dir, &device(), |c| c.schedule.max_steps = Some(12)).unwrap();
    let s = t.run(&mut NoObserver).unwrap();
    assert_eq!(s.step, 12);
    let text = std::fs::read_to_string(dir.join(files::METRICS)).unwrap();
    let rec: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == "recovery")
        .collect();
    assert!(!rec.is_empty(), "NaN chains went unnoticed");
    assert!(
        rec[0]["reinit_chains"].as_u64().unwrap() >= 50,
        "{}",
        rec[0]
    );
    let run = Run::open(&dir, &device()).unwrap();
    let buf = run.buffer().unwrap().unwrap();
    assert!((0..buf.len()).all(|i| buf.chain(i).iter().all(|v| v.is_finite())));
    assert!(jem::tensor_file::params_finite(&run.model));
}

#[test]
fn drifting_energies_are_flagged_and_the_run_gives_up_with_its_checkpoint_intact() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("drift");
    let mut cfg = tiny_config(data.path());
    cfg.loss.objective = Objective::Softmax;
    cfg.schedule.max_steps = Some(20);
    // The untrained model's lse of the data is about log(10) = 2.3: above this limit.
    cfg.recovery.max_abs_energy = 1.0;
    cfg.recovery.max_recoveries = 2;
    let mut t = Trainer::create(cfg, &dir, &device()).unwrap();
    let e = t.run(&mut NoObserver).unwrap_err().to_string();
    assert!(
        e.contains("data energy") && e.contains("after 2 recoveries"),
        "{e}"
    );
    let recoveries = std::fs::read_to_string(dir.join(files::METRICS))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"event\":\"recovery\""))
        .count();
    assert_eq!(recoveries, 2);
    let run = Run::open(&dir, &device()).unwrap();
    assert_eq!(run.state.step, 0);
    assert!(jem::tensor_file::params_finite(&run.model));
}
