//! A trained run put to work: the image readers of `jem predict`, the OOD threshold, the
//! `Predictor`, and the ONNX export run by a real ONNX runtime (tract).

mod common;

use std::io::Cursor;
use std::path::Path;

use burn::prelude::*;
use jem::data::{DataError, DatasetKind, Images, load_files, read_images};
use jem::eval::ood::Score;
use jem::eval::run::Run;
use jem::eval::threshold::{self, OodThreshold};
use jem::loss::Objective;
use jem::model::{ModelConfig, NormKind};
use jem::predict::Predictor;
use jem::rng::Rng;
use jem::train::{NoObserver, Trainer};

fn npy<T: npyz::AutoSerialize + Clone>(shape: &[u64], data: &[T]) -> Vec<u8> {
    use npyz::WriterBuilder;
    let mut buf = Cursor::new(Vec::new());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut buf)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().cloned()).unwrap();
    w.finish().unwrap();
    buf.into_inner()
}

fn png(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, width, height);
    e.set_color(color);
    e.set_depth(depth);
    e.write_header().unwrap().write_image_data(data).unwrap();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn every_input_format_reads_back_exactly_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 11) as u8).collect();
    let want: Vec<f32> = bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
    // IDX, gzip-compressed like the data sets.
    let idx = d.join("x-idx3-ubyte.gz");
    jem::data::write_idx(&idx, &[2, 3, 4], &bytes).unwrap();
    assert_eq!(
        read_images(&idx).unwrap(),
        Images {
            pixels: want.clone(),
            shape: [1, 3, 4]
        }
    );
    // .npy as uint8 [n, h, w], float32 [n, c, h, w] and float64.
    let p = write(d, "u8.npy", &npy(&[2, 3, 4], &bytes));
    assert_eq!(read_images(&p).unwrap().pixels, want);
    let p = write(d, "f32.npy", &npy(&[1, 2, 3, 4], &want));
    let got = read_images(&p).unwrap();
    assert_eq!((got.shape, got.pixels), ([2, 3, 4], want.clone()));
    let as64: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
    let p = write(d, "f64.npy", &npy(&[2, 3, 4], &as64));
    assert_eq!(read_images(&p).unwrap().pixels, want);
    // PNG: 8-bit grey, 16-bit grey (reduced to 8 bits), RGB (kept as 3 channels).
    let p = write(
        d,
        "g.png",
        &png(
            4,
            3,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &bytes[..12],
        ),
    );
    assert_eq!(
        read_images(&p).unwrap(),
        Images {
            pixels: want[..12].to_vec(),
            shape: [1, 3, 4]
        }
    );
    let wide: Vec<u8> = bytes[..12].iter().flat_map(|&b| [b, 0x37]).collect();
    let p = write(
        d,
        "g16.png",
        &png(
            4,
            3,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &wide,
        ),
    );
    assert_eq!(read_images(&p).unwrap().pixels, want[..12].to_vec());
    let rgb: Vec<u8> = (0..12)
        .flat_map(|i| [bytes[i], 255 - bytes[i], 7])
        .collect();
    let p = write(
        d,
        "c.png",
        &png(4, 3, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
    );
    let colour = read_images(&p).unwrap();
    assert_eq!(colour.shape, [3, 3, 4]);
    assert_eq!(
        colour.pixels[12..24],
        want[..12]
            .iter()
            .map(|v| (255.0 - v * 255.0) / 255.0)
            .collect::<Vec<_>>()[..]
    );
    // Fitting: RGB to grey by luminance, grey to RGB by repetition, sizes refused or resized.
    let grey = colour.clone().fit([1, 3, 4], false, &p).unwrap();
    let lum = 0.299 * colour.pixels[5] + 0.587 * colour.pixels[17] + 0.114 * colour.pixels[29];
    assert!((grey.pixels[5] - lum).abs() < 1e-6);
    let back = grey.clone().fit([3, 3, 4], false, &p).unwrap();
    assert_eq!(back.pixels[..12], back.pixels[24..]);
    let err = grey.clone().fit([1, 28, 28], false, &p).unwrap_err();
    assert!(
        matches!(err, DataError::Shape { .. }) && err.to_string().contains("c.png"),
        "{err}"
    );
    let flat = Images {
        pixels: vec![0.25; 9],
        shape: [1, 3, 3],
    };
    let up = flat.fit([1, 28, 28], true, &p).unwrap();
    assert!(up.pixels.len() == 784 && up.pixels.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    // Bad files: named, never a panic.
    let bad_value = write(d, "big.npy", &npy(&[1, 2, 2], &[0.0f32, 0.5, 1.5, 1.0]));
    let bad_dims = write(d, "dims.npy", &npy(&[4], &[0.0f32; 4]));
    let mut cut = npy(&[2, 3, 4], &bytes);
    cut.truncate(cut.len() - 5);
    let truncated = write(d, "cut.npy", &cut);
    let mut png_cut = png(
        4,
        3,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &bytes[..12],
    );
    png_cut.truncate(30);
    let png_cut = write(d, "cut.png", &png_cut);
    let text = write(d, "notes.txt", b"hello");
    for (path, words) in [
        (bad_value, "1.5"),
        (bad_dims, "[n, h, w]"),
        (truncated, "cut.npy"),
        (png_cut, "PNG"),
        (text, "neither PNG"),
    ] {
        let e = read_images(&path).unwrap_err().to_string();
        assert!(
            e.contains(path.file_name().unwrap().to_str().unwrap()) && e.contains(words),
            "{e}"
        );
    }
}

/// A run trained for a few steps on the synthetic data (`model`, `objective`).
fn trained_run(data: &Path, out: &Path, model: ModelConfig, objective: Objective) -> Run {
    let mut c = common::tiny_config(data, 3);
    c.model = model;
    c.loss.objective = objective;
    c.schedule.max_steps = Some(6);
    let device = Device::flex();
    Trainer::create(c, out, &device)
        .unwrap()
        .run(&mut NoObserver)
        .unwrap();
    Run::open(out, &device).unwrap()
}

#[test]
fn the_threshold_accepts_its_share_of_validation_images_and_the_predictor_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 160, 40, 1).unwrap();
    let out = dir.path().join("run");
    let run = trained_run(&data, &out, ModelConfig::cnn(vec![6, 8]), Objective::Jem);
    let t = threshold::compute(&run, Some(Score::Logp), 0.9, 64, &mut Rng::new(0, 7)).unwrap();
    assert!(
        t.tpr_valid >= 0.9 && t.tpr_valid < 0.9 + 2.0 / 32.0,
        "{t:?}"
    );
    assert_eq!(
        (t.n_valid, t.fpr.len(), t.step),
        (32, jem::eval::ood::OodSet::generated().count(), 6)
    );
    assert!(
        t.fpr
            .iter()
            .all(|f| (0.0..=1.0).contains(&f.fpr) && f.n == 32)
    );
    let bad = threshold::compute(&run, None, 1.5, 64, &mut Rng::new(0, 7)).unwrap_err();
    assert!(bad.to_string().contains("tpr"), "{bad}");
    // Without a saved choice, the default score is chosen now, on validation data.
    let chosen = threshold::compute(&run, None, 0.95, 64, &mut Rng::new(0, 7)).unwrap();
    assert!(
        chosen.chosen_by.contains("validation"),
        "{}",
        chosen.chosen_by
    );
    // The fused score is fitted on the validation split, and its fit travels in the file.
    let fused =
        threshold::compute(&run, Some(Score::Fused(None)), 0.9, 64, &mut Rng::new(0, 7)).unwrap();
    let Score::Fused(Some(fit)) = fused.score else {
        panic!("not fitted: {:?}", fused.score)
    };
    assert_eq!(fit.n, 32);
    fused.save(&out).unwrap();
    assert_eq!(OodThreshold::load(&out).unwrap().as_ref(), Some(&fused));
    let text = std::fs::read_to_string(out.join(threshold::FILE)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["score"]["fused"]["logp"]["std"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    v["score"] = serde_json::json!({ "fused": null });
    let unfitted = v.to_string();
    std::fs::write(out.join(threshold::FILE), unfitted).unwrap();
    let e = OodThreshold::load(&out).unwrap_err().to_string();
    assert!(
        e.contains("ood-threshold.json") && e.contains("fused"),
        "{e}"
    );
    // So is the Mahalanobis score's, and the predictor gives the score the evaluation gives.
    let maha = threshold::compute(
        &run,
        Some(Score::Mahalanobis(None)),
        0.9,
        64,
        &mut Rng::new(0, 7),
    )
    .unwrap();
    let Score::Mahalanobis(Some(fit)) = &maha.score else {
        panic!("not fitted: {:?}", maha.score)
    };
    assert_eq!((fit.n, fit.dim, fit.classes), (32, 8, 10));
    assert!(maha.tpr_valid >= 0.9, "{maha:?}");
    maha.save(&out).unwrap();
    // Its matrices go to a tensor file; the JSON keeps the rest and the matrices' hash.
    let json = std::fs::read_to_string(out.join(threshold::FILE)).unwrap();
    assert!(!json.contains("whiten") && json.contains("fnv1a"), "{json}");
    assert!(out.join(threshold::TENSORS).is_file());
    // The fit comes back exactly; the threshold to the last bits of an f64 (serde_json's
    // parser may differ from the exact value by one unit in the last place).
    let back = OodThreshold::load(&out).unwrap().unwrap();
    assert_eq!(back.score, maha.score);
    assert!((back.threshold - maha.threshold).abs() <= 1e-12 * maha.threshold.abs());
    let valid = run.data(jem::data::Split::Valid).unwrap();
    let want = jem::eval::ood::score_images(
        run.engine,
        &run.model,
        &valid.images,
        valid.shape,
        std::slice::from_ref(&maha.score),
        64,
    );
    let images = Images {
        pixels: valid.images.iter().map(|v| (v + 1.0) / 2.0).collect(),
        shape: valid.shape,
    };
    let preds = Predictor::load(&out).unwrap().predict(&images).unwrap();
    for (p, w) in preds.iter().zip(&want[0]) {
        assert!(
            (p.ood_score - w).abs() < 1e-3 * w.abs().max(1.0),
            "{} vs {w}",
            p.ood_score
        );
    }
    // A tensor file that is not the one the JSON names, or none, is an error naming it; a
    // file of the older format (the matrices inline) still loads.
    let tensors = out.join(threshold::TENSORS);
    let mut other = fit.as_ref().clone();
    other.whiten[0] += 1.0;
    let keep = std::fs::read(&tensors).unwrap();
    other.write_tensors(&tensors, maha.step).unwrap();
    let e = OodThreshold::load(&out).unwrap_err().to_string();
    assert!(
        e.contains(threshold::TENSORS) && e.contains("jem threshold"),
        "{e}"
    );
    std::fs::remove_file(&tensors).unwrap();
    let e = OodThreshold::load(&out).unwrap_err().to_string();
    assert!(e.contains(threshold::TENSORS), "{e}");
    std::fs::write(&tensors, keep).unwrap();
    assert_eq!(OodThreshold::load(&out).unwrap().unwrap().score, maha.score);
    let inline = serde_json::to_string(&maha).unwrap();
    assert!(inline.contains("whiten"));
    std::fs::write(out.join(threshold::FILE), inline).unwrap();
    std::fs::remove_file(&tensors).unwrap();
    assert_eq!(OodThreshold::load(&out).unwrap().unwrap().score, maha.score);
    t.save(&out).unwrap();
    assert_eq!(OodThreshold::load(&out).unwrap().as_ref(), Some(&t));

    // The predictor: softmax of the model's logits, energy -lse, the flag by the threshold.
    let p = Predictor::load(&out).unwrap();
    let valid = run.data(jem::data::Split::Valid).unwrap();
    let images = Images {
        pixels: valid.images.iter().map(|v| (v + 1.0) / 2.0).collect(),
        shape: valid.shape,
    };
    let preds = p.predict(&images).unwrap();
    let x = Tensor::<4>::from_data(
        TensorData::new(valid.images.clone(), [32, 1, 28, 28]),
        &Device::flex(),
    );
    let logits: Vec<f32> = run
        .model
        .valid()
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let mut accepted = 0;
    for (i, pr) in preds.iter().enumerate() {
        let row = &logits[i * 10..(i + 1) * 10];
        let m = row.iter().cloned().fold(f32::MIN, f32::max);
        let lse = m + row.iter().map(|l| (l - m).exp()).sum::<f32>().ln();
        assert!((pr.energy + lse).abs() < 1e-4, "{} vs {}", pr.energy, -lse);
        assert!(((pr.ood_score as f32) - lse).abs() < 1e-4);
        for (q, l) in pr.probs.iter().zip(row) {
            assert!((q - (l - lse).exp()).abs() < 1e-5);
        }
        assert_eq!(
            pr.class,
            (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
        );
        assert_eq!(pr.label, DatasetKind::FashionMnist.class_names()[pr.class]);
        assert_eq!(pr.ood, Some(pr.ood_score < t.threshold));
        accepted += usize::from(pr.ood == Some(false));
    }
    assert_eq!(accepted as f64 / 32.0, t.tpr_valid);
    let wrong = Images {
        pixels: vec![0.5; 3 * 32 * 32],
        shape: [3, 32, 32],
    };
    assert!(
        p.predict(&wrong)
            .unwrap_err()
            .to_string()
            .contains("[3, 32, 32]")
    );
    // A corrupt threshold file is named.
    std::fs::write(out.join(threshold::FILE), "{\"score\": 3").unwrap();
    let e = Predictor::load(&out).err().unwrap().to_string();
    assert!(e.contains(threshold::FILE), "{e}");
}

#[cfg(feature = "onnx")]
/// The logits of tract running the exported file, against jem's, on real Fashion-MNIST test
/// images (the Debian package dataset-fashion-mnist).
fn onnx_matches(run: &Run, with_energy: bool) -> f32 {
    use tract_onnx::prelude::*;
    let test = load_files(DatasetKind::FashionMnist, None, true)
        .expect("the Fashion-MNIST test files (apt-get install -y dataset-fashion-mnist; scripts/test.sh does)");
    let n = 48;
    let x: Vec<f32> = test.images[..n * 784].to_vec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    let model = run.classifier("export").unwrap();
    jem::export::write_onnx(model, run.shape(), 10, with_energy, &path).unwrap();
    let plan = tract_onnx::onnx()
        .model_for_path(&path)
        .unwrap()
        .with_input_fact(0, f32::fact([n, 1, 28, 28]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Vec<f32> = x.iter().map(|v| (v + 1.0) / 2.0).collect();
    let input = tract_ndarray::Array4::from_shape_vec((n, 1, 28, 28), input).unwrap();
    let out = plan.run(tvec!(Tensor::from(input).into())).unwrap();
    let got: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let t =
        burn::tensor::Tensor::<4>::from_data(TensorData::new(x, [n, 1, 28, 28]), &Device::flex());
    let want: Vec<f32> = model
        .valid()
        .forward(t)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if with_energy {
        assert_eq!(out.len(), 2);
        let lse: Vec<f32> = out[1]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        for (i, l) in lse.iter().enumerate() {
            let row = &want[i * 10..(i + 1) * 10];
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let e = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            worst = worst.max((l - e).abs());
        }
    }
    worst
}

#[cfg(feature = "onnx")]
#[test]
fn the_onnx_export_runs_in_tract_with_jems_logits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    jem::data::synthetic::write_synthetic_fashion(&data, 160, 40, 2).unwrap();
    let cases = [
        ("cnn", ModelConfig::cnn(vec![6, 8, 8]), true),
        ("wrn-batch", wrn(NormKind::Batch), false),
        ("wrn-group", wrn(NormKind::Group), true),
        ("wrn-plain", wrn(NormKind::None), false),
    ];
    for (name, model, with_energy) in cases {
        let run = trained_run(&data, &dir.path().join(name), model, Objective::Softmax);
        let worst = onnx_matches(&run, with_energy);
        eprintln!(
            "{name}: max |tract - jem| = {worst:e} (logits{})",
            if with_energy { ", logsumexp" } else { "" }
        );
        assert!(worst < 1e-4, "{name}: max |tract - jem| = {worst}");
    }
}

#[cfg(feature = "onnx")]
fn wrn(norm: NormKind) -> ModelConfig {
    ModelConfig::Wrn {
        depth: 10,
        widen: 1,
        norm,
        dropout: 0.0,
    }
}
