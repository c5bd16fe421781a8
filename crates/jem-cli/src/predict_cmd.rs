//! `jem threshold`, `jem predict` and `jem export`: a trained run put to work.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use jem::data::{Images, read_images};
use jem::eval::ood::Score;
use jem::eval::run::Run;
use jem::eval::threshold::{self, OodThreshold};
use jem::predict::{Prediction, Predictor};
use jem::rng::Rng;

#[derive(Args)]
pub(crate) struct ThresholdArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// The OOD score (default: the one `jem eval ood --select` chose on validation data, else
    /// the one that does best on the validation split against generated sets).
    #[arg(long, value_enum)]
    score: Option<Score>,
    /// Temperature of the `energy-t` score.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Fraction of validation images to accept as in-distribution.
    #[arg(long, default_value_t = 0.95)]
    tpr: f64,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Seed of the generated OOD sets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the threshold file's JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn threshold(a: ThresholdArgs, device: &jem::Device) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!("--temperature must be positive");
    }
    let score = a.score.map(|s| match s {
        Score::EnergyT(_) => Score::EnergyT(a.temperature),
        s => s,
    });
    let run = Run::open(&a.run, device)?;
    let t = threshold::compute(&run, score, a.tpr, a.batch_size, &mut Rng::new(a.seed, 7))?;
    let path = t.save(&a.run)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(());
    }
    println!(
        "{}: score {} >= {:.6} is in-distribution ({})",
        a.run.display(),
        t.score.name(),
        t.threshold,
        t.chosen_by
    );
    println!(
        "accepts {:.2}% of {} validation images (asked: {:.2}%)",
        100.0 * t.tpr_valid,
        t.n_valid,
        100.0 * t.tpr_target
    );
    for f in &t.fpr {
        println!(
            "  accepts {:>6.2}% of {:<9} ({} images)",
            100.0 * f.fpr,
            f.set,
            f.n
        );
    }
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[derive(Args)]
pub(crate) struct PredictArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Image files: PNG (8-bit grey or RGB), IDX image files, or `.npy` arrays
    /// (`[n, h, w]` or `[n, c, h, w]`, uint8 or float in [0, 1]).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Resize images of another size to the model's (bilinear) instead of refusing them.
    #[arg(long)]
    resize: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

pub(crate) fn predict(a: PredictArgs, device: &jem::Device) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let predictor = Predictor::load_on(&a.run, device)?.with_batch_size(a.batch_size);
    if predictor.threshold().is_none() {
        eprintln!(
            "note: {} has no {}: OOD flags are left out (set one with `jem threshold --run {}`)",
            a.run.display(),
            threshold::FILE,
            a.run.display()
        );
    }
    let shape = predictor.shape();
    let mut files = Vec::new();
    for path in &a.inputs {
        let images = read_images(path)?
            .fit(shape, a.resize, path)
            .map_err(|e| match e {
                jem::data::DataError::Shape { .. } => {
                    anyhow::anyhow!("{e}; pass --resize to resize it to the run's size")
                }
                e => e.into(),
            })?;
        files.push((path.clone(), images));
    }
    let total: usize = files.iter().map(|(_, i)| i.len()).sum();
    let bar = (total > 2000 && !a.json).then(|| {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images {eta}").expect("template"),
        );
        bar
    });
    let mut out = std::io::stdout().lock();
    for (path, images) in &files {
        for start in (0..images.len()).step_by(a.batch_size) {
            let end = (start + a.batch_size).min(images.len());
            let chunk = Images {
                pixels: images.pixels[start * images.image_len()..end * images.image_len()]
                    .to_vec(),
                shape,
            };
            for (i, p) in predictor.predict(&chunk)?.iter().enumerate() {
                let id = if images.len() == 1 {
                    path.display().to_string()
                } else {
                    format!("{}#{}", path.display(), start + i)
                };
                write_prediction(&mut out, &id, start + i, p, predictor.threshold(), a.json)?;
            }
            if let Some(b) = &bar {
                b.inc((end - start) as u64);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

fn write_prediction(
    out: &mut impl Write,
    id: &str,
    index: usize,
    p: &Prediction,
    threshold: Option<&OodThreshold>,
    json: bool,
) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(p)?;
        v["input"] = id.into();
        v["index"] = index.into();
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let score = threshold.map_or("logp".to_string(), |t| t.score.name());
    let flag = match p.ood {
        Some(true) => "OUT",
        Some(false) => "in",
        None => "-",
    };
    writeln!(
        out,
        "{id}\t{}\t{:.4}\t{score}={:.4}\t{flag}",
        p.label, p.confidence, p.ood_score
    )?;
    Ok(())
}

/// Export formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ExportFormat {
    /// ONNX, opset 13.
    Onnx,
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "onnx")]
    format: ExportFormat,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Also output `logsumexp` (the negative energy, the `logp` OOD score).
    #[arg(long)]
    with_energy: bool,
}

pub(crate) fn export(a: ExportArgs, device: &jem::Device) -> Result<()> {
    let run = Run::open(&a.run, device)?;
    let model = run.classifier("export")?;
    match a.format {
        ExportFormat::Onnx => {
            jem::export::write_onnx(model, run.shape(), run.num_classes(), a.with_energy, &a.out)
                .with_context(|| format!("exporting {}", a.run.display()))?;
        }
    }
    eprintln!(
        "wrote {} (input `images` [n, {}, {}, {}] in [0, 1]; outputs `logits`{})",
        a.out.display(),
        run.shape()[0],
        run.shape()[1],
        run.shape()[2],
        if a.with_energy { ", `logsumexp`" } else { "" }
    );
    Ok(())
}
