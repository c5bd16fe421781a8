//! `jem bench`.

use anyhow::{Result, bail};
use clap::Args;
use jem::bench::BenchSpec;
use jem::data::DatasetKind;
use jem::model::{Arch, ModelConfig};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Timed SGLD chains (20 steps each; reported per step).
    #[arg(long, default_value_t = 20)]
    pub(crate) sgld_reps: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    pub(crate) iter_reps: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Network (default: the benchmark CNN).
    #[arg(long, value_enum, default_value = "cnn")]
    pub(crate) arch: Arch,
    /// Wide-ResNet depth (6n + 4).
    #[arg(long, default_value_t = 28)]
    pub(crate) wrn_depth: usize,
    /// Wide-ResNet widen factor.
    #[arg(long, default_value_t = 10)]
    pub(crate) wrn_widen: usize,
    /// Also measure the FP32 peak: a 2048 x 2048 matrix product.
    #[arg(long)]
    pub(crate) gemm: bool,
    /// Image shape and classes of this data set (no data is read: inputs are random).
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub(crate) dataset: DatasetKind,
}

pub(crate) fn bench(a: BenchArgs, device: &jem::Device, threads: usize) -> Result<()> {
    if a.sgld_reps == 0 || a.iter_reps == 0 || a.batch == 0 {
        bail!("--sgld-reps, --iter-reps and --batch must be positive");
    }
    let model = ModelConfig::from_arch(a.arch, a.wrn_depth, a.wrn_widen);
    model.validate()?;
    let kind = a.dataset;
    let spec = BenchSpec {
        model,
        shape: kind.shape(),
        classes: kind.num_classes(),
        batch: a.batch,
        sgld_reps: a.sgld_reps,
        iter_reps: a.iter_reps,
    };
    let r = jem::bench::run(device, &spec, threads);
    let peak = a
        .gemm
        .then(|| jem::bench::gemm_gflops(&device.clone(), 2048, 5));
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(p) = peak {
            v["gemm_gflops"] = serde_json::json!(p);
            v["sgld_fraction_of_peak"] = serde_json::json!(r.sgld_gflops / p);
            v["iteration_fraction_of_peak"] = serde_json::json!(r.gflops / p);
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "batch {}, {} threads, engine {}{}: SGLD step {:.2} ms ({:.1} GFLOP/s; {:.2} ms through autodiff), iteration {:.1} ms ({:.1} GFLOP/s)",
            r.batch,
            r.threads,
            r.engine,
            r.instructions
                .as_ref()
                .map_or(String::new(), |i| format!(" ({i})")),
            r.sgld_step_ms,
            r.sgld_gflops,
            r.sgld_step_autodiff_ms,
            r.iteration_ms,
            r.gflops
        );
        println!(
            "inference forward pass: {:.2} ms per batch of {} ({:.0} images/s)",
            r.forward_ms,
            r.batch,
            r.batch as f64 / r.forward_ms * 1e3
        );
        if r.engine != jem::Engine::CnnCpu.name() {
            println!(
                "the CPU kernel does not run here{}: training, SGLD and evaluations go through burn's autodiff",
                if jem::cnn_cpu::supports(jem::sgld::Precision::F32) {
                    " (not the benchmark CNN on the CPU device)"
                } else {
                    " (this CPU has neither AVX-512 nor AVX2 with FMA)"
                }
            );
        }
        if let (Some(s), Some(i)) = (r.sgld_step_bf16_ms, r.iteration_bf16_ms) {
            println!(
                "bf16 chains: SGLD step {s:.2} ms ({:.2}x f32), iteration {i:.1} ms ({:.2}x f32)",
                r.sgld_step_ms / s,
                r.iteration_ms / i
            );
        }
        if let Some(p) = peak {
            println!(
                "FP32 GEMM peak (2048^3): {p:.1} GFLOP/s; SGLD step at {:.0}%, iteration at {:.0}% of it",
                100.0 * r.sgld_gflops / p,
                100.0 * r.gflops / p
            );
        }
    }
    Ok(())
}
