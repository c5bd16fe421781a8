//! What a run refuses instead of computing silently wrong results: config changes on resume
//! that a run cannot take, images of another shape than the run's, and tensor files that
//! hold NaN or infinite values.

use std::path::Path;

use burn::prelude::*;
use jem::checkpoint::files;
use jem::config::{RESUME_MAY_CHANGE, TrainConfig};
use jem::data::{DataError, DatasetKind, Split, write_idx};
use jem::eval::ood::{OodSet, SetHalf, ood_images};
use jem::eval::run::Run;
use jem::rng::Rng;
use jem::train::{NoObserver, Trainer};
use jem::{Error, error::CheckpointError};

mod common;

fn data_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    jem::data::synthetic::write_synthetic_fashion(d.path(), 160, 32, 3).unwrap();
    d
}

/// A 2-step run in `runs/r` on `data`.
fn short_run(data: &Path, runs: &Path) -> (std::path::PathBuf, TrainConfig) {
    let dir = runs.join("r");
    let mut cfg = common::tiny_config(data, 5);
    cfg.schedule.max_steps = Some(2);
    Trainer::create(cfg.clone(), &dir, &Device::flex())
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    (dir, cfg)
}

#[test]
fn resume_applies_what_may_change_and_refuses_the_rest_by_name() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let (dir, _) = short_run(data.path(), runs.path());
    let before = std::fs::read_to_string(dir.join(files::CONFIG)).unwrap();
    // Fixed for the life of a run: refused, naming the field, and config.toml unchanged.
    for (change, field) in [
        (
            Box::new(|c: &mut TrainConfig| c.loss.px_weight = 5.0) as Box<dyn Fn(&mut TrainConfig)>,
            "loss.px_weight",
        ),
        (
            Box::new(|c| c.buffer.reinit_freq = 0.5),
            "buffer.reinit_freq",
        ),
        (Box::new(|c| c.data.n_valid = 10), "data.n_valid"),
        (
            Box::new(|c| c.optim.algorithm = jem::optim::Algorithm::Sgd),
            "optim.algorithm",
        ),
        (
            Box::new(|c| c.schedule.batch_size = 8),
            "schedule.batch_size",
        ),
    ] {
        let e = Trainer::resume(&dir, &Device::flex(), change)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(field) && e.contains("cannot change when resuming"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(files::CONFIG)).unwrap(),
            before
        );
    }
    // Length, sampler and augmentation may change: applied and recorded in config.toml.
    let mut t = Trainer::resume(&dir, &Device::flex(), |c| {
        c.schedule.max_steps = Some(4);
        c.data.augment.hflip = true;
        c.data.augment.noise_std = 0.5;
        c.sgld.steps = 2;
    })
    .unwrap();
    assert_eq!(t.run(&mut NoObserver).unwrap().step, 4);
    let saved = TrainConfig::load_run(&dir).unwrap();
    assert!(saved.data.augment.hflip);
    assert_eq!(saved.data.augment.noise_std, 0.5);
    assert_eq!(saved.sgld.steps, 2);
    assert_eq!(saved.schedule.max_steps, Some(4));
}

#[test]
fn the_resume_rule_names_every_field_it_allows() {
    // Every listed field exists in the config (a typo would silently allow nothing).
    let fields = serde_json::to_value(TrainConfig::default()).unwrap();
    for f in RESUME_MAY_CHANGE {
        let mut v = &fields;
        for part in f.split('.') {
            v = v
                .get(part)
                .unwrap_or_else(|| panic!("{f} is no config field"));
        }
    }
    assert!(jem::config::may_change_on_resume("sgld.steps"));
    assert!(jem::config::may_change_on_resume("data.augment.hflip"));
    assert!(!jem::config::may_change_on_resume("data.augmentation"));
    assert!(!jem::config::may_change_on_resume("seed"));
}

/// Training files of 28x28 images and test files of 20x20 ones.
fn mixed_shapes() -> tempfile::TempDir {
    let d = data_dir();
    let n = 12;
    let mut rng = Rng::new(1, 0);
    let pixels: Vec<u8> = (0..n * 400).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx(
        &d.path().join("t10k-images-idx3-ubyte.gz"),
        &[n, 20, 20],
        &pixels,
    )
    .unwrap();
    write_idx(&d.path().join("t10k-labels-idx1-ubyte.gz"), &[n], &labels).unwrap();
    d
}

#[test]
fn a_split_of_another_image_shape_is_refused_when_loaded() {
    let data = mixed_shapes();
    let runs = tempfile::tempdir().unwrap();
    let (dir, _) = short_run(data.path(), runs.path());
    let run = Run::open(&dir, &Device::flex()).unwrap();
    let e = run.data(Split::Test).err().unwrap();
    assert!(
        matches!(
            &e,
            Error::Data(DataError::Shape {
                found: [1, 20, 20],
                expected: [1, 28, 28],
                ..
            })
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("t10k-images-idx3-ubyte.gz")
            && text.contains("[1, 20, 20]")
            && text.contains("[1, 28, 28]"),
        "{text}"
    );
    // The training split still loads: its images have the run's shape.
    assert!(run.data(Split::Valid).is_ok());
}

/// Write a CIFAR-10 test batch of `n` random images.
fn write_cifar_test(dir: &Path, n: usize) {
    let mut rng = Rng::new(2, 0);
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072).map(|_| rng.below(256) as u8));
    }
    std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
}

#[test]
fn an_ood_set_of_another_shape_is_refused_naming_its_directory() {
    let data = data_dir();
    let inside = jem::data::load_files(DatasetKind::FashionMnist, Some(data.path()), true).unwrap();
    let cifar = tempfile::tempdir().unwrap();
    write_cifar_test(cifar.path(), 4);
    let set = OodSet::Dataset(DatasetKind::Cifar10);
    let e = ood_images(
        set,
        &inside,
        Some(cifar.path()),
        SetHalf::All,
        &mut Rng::new(0, 0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&cifar.path().display().to_string())
            && e.contains("[3, 32, 32]")
            && e.contains("[1, 28, 28]"),
        "{e}"
    );
}

/// Set the first value of `tensor` in the safetensors file at `path` to `value`, keeping
/// the rest of the file (its step included) as it is.
fn poison(path: &Path, tensor: &str, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let (n, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = header
        .info(tensor)
        .unwrap_or_else(|| panic!("no tensor {tensor}"));
    let at = 8 + n + info.data_offsets.0;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn non_finite_weights_and_optimiser_state_are_refused_on_load_naming_file_and_tensor() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let (dir, _) = short_run(data.path(), runs.path());
    let model = dir.join(files::MODEL);
    let good = std::fs::read(&model).unwrap();
    poison(&model, "Cnn.convs.0.weight", f32::NAN);
    for e in [
        Run::open(&dir, &Device::flex()).err().unwrap(),
        Trainer::resume(&dir, &Device::flex(), |c| c.schedule.max_steps = Some(4))
            .err()
            .unwrap(),
    ] {
        assert!(
            matches!(&e, Error::Checkpoint(CheckpointError::NonFinite { tensor, count: 1, .. }) if tensor == "Cnn.convs.0.weight"),
            "{e:?}"
        );
        assert!(e.to_string().contains("model.safetensors"), "{e}");
    }
    // Nothing was spent on recoveries: the run is where it was.
    assert!(
        !std::fs::read_to_string(dir.join(files::METRICS))
            .unwrap()
            .contains("recovery")
    );
    std::fs::write(&model, good).unwrap();
    let optim = dir.join(files::OPTIM);
    let file = safetensors::SafeTensors::deserialize(&std::fs::read(&optim).unwrap())
        .unwrap()
        .names()
        .into_iter()
        .min()
        .unwrap()
        .to_string();
    poison(&optim, &file, f32::INFINITY);
    let e = Trainer::resume(&dir, &Device::flex(), |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("optim.safetensors") && e.contains(&file), "{e}");
}

#[test]
fn an_evaluation_refuses_a_buffer_with_non_finite_chains() {
    let data = data_dir();
    let runs = tempfile::tempdir().unwrap();
    let (dir, _) = short_run(data.path(), runs.path());
    poison(&dir.join(files::BUFFER), "buffer", f32::NAN);
    let run = Run::open(&dir, &Device::flex()).unwrap();
    let e = run.buffer().err().unwrap().to_string();
    assert!(
        e.contains("buffer.safetensors") && e.contains("`buffer`"),
        "{e}"
    );
}
