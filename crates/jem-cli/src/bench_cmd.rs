//! `jem bench`.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Timed SGLD steps.
    #[arg(long, default_value_t = 20)]
    pub(crate) sgld_reps: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    pub(crate) iter_reps: usize,
}

pub(crate) fn bench(a: BenchArgs, device: &jem::Device, threads: usize) -> Result<()> {
    if a.sgld_reps == 0 || a.iter_reps == 0 {
        bail!("--sgld-reps and --iter-reps must be positive");
    }
    let r = jem::bench::run(device, a.sgld_reps, a.iter_reps, threads);
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "batch {}, {} threads: SGLD step {:.2} ms ({:.1} GFLOP/s), iteration {:.1} ms ({:.1} GFLOP/s)",
            r.batch, r.threads, r.sgld_step_ms, r.sgld_gflops, r.iteration_ms, r.gflops
        );
    }
    Ok(())
}
