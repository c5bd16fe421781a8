//! `jem sample`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use jem::eval::run::Run;
use jem::eval::samples::{Classes, Start, draw_samples};
use jem::rng::Rng;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FromArg {
    Buffer,
    Noise,
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
    /// SGLD steps (default: 20 from the buffer, 200 from noise).
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Where chains start.
    #[arg(long, value_enum, default_value = "buffer")]
    pub(crate) from: FromArg,
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
    let start = match a.from {
        FromArg::Buffer => Start::Buffer,
        FromArg::Noise => Start::Noise,
    };
    let classes = match (a.class, a.per_class) {
        (Some(k), _) => Classes::One(k),
        (None, true) => Classes::All,
        (None, false) => Classes::Unconditional,
    };
    let mut params = run.config.sgld.clone();
    params.steps = a.steps.unwrap_or(match start {
        Start::Buffer => 20,
        Start::Noise => 200,
    });
    let s = draw_samples(
        &run,
        a.n,
        &classes,
        start,
        &params,
        &mut Rng::new(a.seed, 4),
    )?;
    jem::image::save_grid(&a.out, &s.images, s.n, run.shape(), s.cols, a.scale)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} samples to {}", s.n, a.out.display());
    Ok(())
}
