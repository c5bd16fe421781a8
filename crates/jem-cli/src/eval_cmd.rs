//! `jem eval ...`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use jem::data::Split;
use jem::eval::accuracy::accuracy;
use jem::eval::run::Run;
use jem::rng::Rng;

#[derive(Subcommand)]
pub(crate) enum EvalCommand {
    /// Accuracy and NLL on the test or validation split.
    Accuracy(AccuracyArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SplitArg {
    Test,
    Valid,
}

#[derive(Args)]
pub(crate) struct AccuracyArgs {
    /// Run directory.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    pub(crate) split: SplitArg,
    /// SGLD steps on log p(x) applied to each input before classifying.
    #[arg(long, default_value_t = 0)]
    pub(crate) sgld_refine_steps: usize,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn eval_accuracy(a: AccuracyArgs, device: &jem::Device) -> Result<()> {
    let run = Run::open(&a.run, device)?;
    let split = match a.split {
        SplitArg::Test => Split::Test,
        SplitArg::Valid => Split::Valid,
    };
    let mut data = run.data(split)?;
    if let Some(n) = a.limit {
        let idx: Vec<usize> = (0..n.min(data.len())).collect();
        data = data.subset(&idx);
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let refine = (a.sgld_refine_steps > 0).then(|| {
        let mut p = run.config.sgld.clone();
        p.steps = a.sgld_refine_steps;
        p
    });
    let r = accuracy(
        &run.model,
        &data,
        a.batch_size,
        refine.as_ref(),
        &mut Rng::new(0, 3),
    )?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["split"] = serde_json::json!(match split {
            Split::Test => "test",
            _ => "valid",
        });
        v["step"] = serde_json::json!(run.state.step);
        println!("{v}");
    } else {
        println!(
            "{}: step {}, {} images, accuracy {:.4}, nll {:.4}{}",
            a.run.display(),
            run.state.step,
            r.n,
            r.accuracy,
            r.nll,
            if r.refine_steps > 0 {
                format!(" (after {} SGLD refinement steps)", r.refine_steps)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
