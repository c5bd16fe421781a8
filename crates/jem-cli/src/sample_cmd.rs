//! `jem sample`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use jem::eval::run::Run;
use jem::eval::samples::{ChainSpec, Classes, Start, draw_samples, sample_quality};
use jem::rng::Rng;

/// Overrides of the run's sampler for drawing samples (the run's `[sgld]` otherwise).
#[derive(Args)]
pub(crate) struct ChainArgs {
    /// SGLD steps (default: 20 from the buffer, 200 from noise or the class Gaussians).
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Step size on the gradient of the target (default: the run's `sgld.step_size`).
    #[arg(long)]
    pub(crate) step_size: Option<f32>,
    /// Standard deviation of the noise added per step (default: the run's `sgld.noise_std`).
    #[arg(long)]
    pub(crate) noise_std: Option<f32>,
}

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Run directory.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Samples of this class (log p(x, y)).
    #[arg(long, conflicts_with = "per_class")]
    pub(crate) class: Option<usize>,
    /// One row per class.
    #[arg(long)]
    pub(crate) per_class: bool,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Where chains start (default: the buffer; for --class and --per-class, the buffer if
    /// it is class-conditional, else the class Gaussians of a run trained from them, else
    /// noise).
    #[arg(long, value_enum)]
    pub(crate) from: Option<Start>,
    /// Number of samples (per class with --per-class).
    #[arg(long, default_value_t = 64)]
    pub(crate) n: usize,
    /// Pixel size in the PNG (each image pixel becomes SCALE x SCALE).
    #[arg(long, default_value_t = 3)]
    pub(crate) scale: usize,
    /// Seed of the chains.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

pub(crate) fn sample(a: SampleArgs, device: &jem::Device) -> Result<()> {
    let run = Run::open(&a.run, device)?;
    if a.n == 0 {
        bail!("--n must be positive");
    }
    let classes = match (a.class, a.per_class) {
        (Some(k), _) => Classes::One(k),
        (None, true) => Classes::All,
        (None, false) => Classes::Unconditional,
    };
    let spec = match classes {
        Classes::Unconditional => chains(&run, a.from.unwrap_or(Start::Buffer), &a.chain)?,
        _ => chains(&run, a.from.unwrap_or(Start::for_classes(&run)), &a.chain)?,
    };
    let (start, params) = (spec.start, &spec.params);
    let s = draw_samples(&run, a.n, &classes, start, params, &mut Rng::new(a.seed, 4))?;
    jem::image::save_grid(&a.out, &s.images, s.n, run.shape(), s.cols, a.scale)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} samples to {}", s.n, a.out.display());
    Ok(())
}

#[derive(Args)]
pub(crate) struct QualityArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// A trained classifier run (typically `--objective softmax`) whose penultimate features
    /// define the FID and whose predictions define the Inception-style score.
    #[arg(long)]
    feature_run: PathBuf,
    /// Unconditional samples for FID and the score.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Conditional samples per class for the diversity.
    #[arg(long, default_value_t = 50)]
    per_class: usize,
    /// Where chains start (default: the buffer for the unconditional samples; for the
    /// class-conditional ones, the buffer if it is class-conditional, else the class
    /// Gaussians of a run trained from them, else noise).
    #[arg(long, value_enum)]
    from: Option<Start>,
    #[command(flatten)]
    chain: ChainArgs,
    /// Also write the unconditional samples as a PNG grid.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the chains.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn eval_samples(a: QualityArgs, device: &jem::Device) -> Result<()> {
    if a.n < 2 || a.per_class < 2 {
        bail!("--n and --per-class must be at least 2");
    }
    let run = Run::open(&a.run, device)?;
    let feature_run = Run::open(&a.feature_run, device)?;
    let uncond = chains(&run, a.from.unwrap_or(Start::Buffer), &a.chain)?;
    let by_class = chains(&run, a.from.unwrap_or(Start::for_classes(&run)), &a.chain)?;
    let (start, params) = (uncond.start, &uncond.params);
    let (r, s) = sample_quality(
        &run,
        &feature_run,
        a.n,
        a.per_class,
        &uncond,
        &by_class,
        &mut Rng::new(a.seed, 7),
    )?;
    if let Some(out) = &a.out {
        jem::image::save_grid(out, &s.images, s.n, run.shape(), s.cols, 2)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let mut v = serde_json::to_value(&r)?;
    v["run"] = serde_json::json!(a.run.display().to_string());
    v["feature_run"] = serde_json::json!(a.feature_run.display().to_string());
    v["steps"] = serde_json::json!(params.steps);
    v["class_steps"] = serde_json::json!(by_class.params.steps);
    v["step_size"] = serde_json::json!(params.step_size);
    v["noise_std"] = serde_json::json!(params.noise_std);
    v["step"] = serde_json::json!(run.state.step);
    jem::eval::store::save_result(&a.run, "samples", &v)?;
    let grid = jem::eval::store::eval_dir(&a.run).join("samples.png");
    let shown = s.n.min(100);
    let len: usize = run.shape().iter().product();
    jem::image::save_grid(&grid, &s.images[..shown * len], shown, run.shape(), 10, 2)?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "{}: {} samples ({} SGLD steps of {} with noise {} from {}), features of {}",
        a.run.display(),
        r.n,
        params.steps,
        params.step_size,
        params.noise_std,
        start.name(),
        a.feature_run.display()
    );
    println!(
        "  FID {:.3} (test half vs half: {:.3})",
        r.fid, r.fid_test_halves
    );
    println!(
        "  Inception-style score {:.3} (test images: {:.3})",
        r.inception_score, r.inception_score_test
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|d| format!("{d:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if r.diversity.is_empty() {
        println!("  diversity per class: none (a scalar-energy model samples no classes)");
    } else {
        println!("  diversity per class {}", fmt(&r.diversity));
        println!("  test images         {}", fmt(&r.diversity_test));
    }
    if let Some(acc) = r.sample_accuracy {
        println!(
            "  sample accuracy {acc:.3} (class-conditional samples, {} SGLD steps from {}, that the feature run assigns to their class); per class {}",
            by_class.params.steps,
            by_class.start.name(),
            fmt(&r.sample_accuracy_per_class)
        );
    }
    Ok(())
}

/// Chains from `start`, with the run's sampler, `steps` (default: 20 from the buffer, 200
/// from noise or the class Gaussians) and the step size and noise where given, validated as the config file's
/// `[sgld]` is.
fn chains(run: &Run, start: Start, over: &ChainArgs) -> Result<ChainSpec> {
    let mut params = run.config.sgld.clone();
    params.steps = over.steps.unwrap_or(start.default_steps());
    // The run's own sampler passed validation when it was trained, so an override that fails
    // it is named by its flag: each is checked as it is applied.
    if let Some(a) = over.step_size {
        params.step_size = a;
        params
            .validate()
            .map_err(|e| anyhow::anyhow!("--step-size: {e}"))?;
    }
    if let Some(s) = over.noise_std {
        params.noise_std = s;
        params
            .validate()
            .map_err(|e| anyhow::anyhow!("--noise-std: {e}"))?;
    }
    Ok(ChainSpec { start, params })
}
