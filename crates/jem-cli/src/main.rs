//! `jem`: train, evaluate and sample Joint Energy-based Models.

use std::process::ExitCode;

mod bench_cmd;
mod eval_cmd;
mod predict_cmd;
mod sample_cmd;
mod serve_cmd;
mod sweep_cmd;
mod train_cmd;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jem::config::TrainConfig;

use bench_cmd::{BenchArgs, bench};
use eval_cmd::{EvalCommand, eval_accuracy, eval_attack, eval_calibration, eval_ood};
use predict_cmd::{ExportArgs, PredictArgs, ThresholdArgs, export, predict, threshold};
use sample_cmd::{SampleArgs, eval_samples, sample};
use serve_cmd::{ServeArgs, serve};
use sweep_cmd::{SweepArgs, sweep};
use train_cmd::{TrainArgs, train};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "jem",
    version,
    about = "Joint Energy-based Models: train, evaluate, sample"
)]
struct Cli {
    /// Compute threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Compute device: auto, cpu, wgpu, wgpu:N, wgpu:cpu (software Vulkan), vulkan[:N],
    /// cuda[:N]. Default: a run's `device` when training, else auto (JEM_DEVICE, else the first
    /// GPU backend built in, else the CPU).
    #[arg(long, global = true, value_name = "DEVICE")]
    device: Option<jem::config::DeviceSpec>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model into a run directory, or resume one.
    #[command(args_override_self = true)]
    Train(Box<TrainArgs>),
    /// Evaluate a trained run.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Draw samples from a trained run into a PNG grid.
    Sample(SampleArgs),
    /// Time one SGLD step and one JEM iteration of the benchmark model at batch 64.
    Bench(BenchArgs),
    /// Write one self-contained HTML report of a run (and a baseline beside it).
    Report(ReportArgs),
    /// One table row per run: method, accuracy, ECE, OOD AUROC, ms per step, recoveries
    /// (from the runs' saved evaluations; run `jem eval ...` first).
    Compare(CompareArgs),
    /// Set a run's OOD threshold on its validation split (`RUN/ood-threshold.json`).
    Threshold(ThresholdArgs),
    /// Classify image files (PNG, IDX, .npy) and flag out-of-distribution ones.
    Predict(PredictArgs),
    /// Serve a run over HTTP: POST /v1/predict, GET /v1/model, GET /healthz.
    Serve(ServeArgs),
    /// Export a run's classifier (ONNX) for other runtimes.
    Export(ExportArgs),
    /// Train and evaluate a grid of config values (`--grid optim.lr=1e-4,1e-3`), one run per
    /// cell and seed; `jem sweep status DIR`, `jem sweep plot DIR --x KEY --y KEY`.
    Sweep(Box<SweepArgs>),
    /// Print the default configuration as TOML (a starting point for --config).
    Config,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Run directories.
    #[arg(required = true)]
    runs: Vec<std::path::PathBuf>,
    /// Only these OOD scores (comma-separated, e.g. `logp,py`; default: all saved).
    #[arg(long, value_delimiter = ',')]
    scores: Vec<String>,
    /// Only these OOD sets (comma-separated, e.g. `mnist`; default: all saved).
    #[arg(long, value_delimiter = ',')]
    sets: Vec<String>,
    /// Only the OOD score each run chose on validation data (`jem eval ood --select`).
    #[arg(long)]
    chosen: bool,
    /// The runs are seeds of one recipe (configs equal but for `seed`): print the mean,
    /// spread and range of every figure instead of one row per run.
    #[arg(long)]
    seeds: bool,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Run directory.
    #[arg(long)]
    run: std::path::PathBuf,
    /// A second run shown beside it.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
    /// Output HTML file.
    #[arg(long)]
    out: std::path::PathBuf,
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli
        .threads
        .or_else(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--threads must be positive");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("setting up the compute threads")?;
    if let Command::Train(a) = cli.command {
        return train(*a, cli.device);
    }
    let device = match cli.device {
        Some(spec) => spec.open()?,
        None => jem::default_device(),
    };
    match cli.command {
        Command::Train(_) => unreachable!("handled above"),
        Command::Eval(EvalCommand::Accuracy(a)) => eval_accuracy(a, &device),
        Command::Eval(EvalCommand::Calibration(a)) => eval_calibration(a, &device),
        Command::Eval(EvalCommand::Ood(a)) => eval_ood(a, &device),
        Command::Eval(EvalCommand::Attack(a)) => eval_attack(a, &device),
        Command::Eval(EvalCommand::Samples(a)) => eval_samples(a, &device),
        Command::Sample(a) => sample(a, &device),
        Command::Threshold(a) => threshold(a, &device),
        Command::Predict(a) => predict(a, &device),
        Command::Serve(a) => serve(a, &device),
        Command::Export(a) => export(a, &device),
        Command::Bench(a) => bench(a, &device, threads),
        Command::Sweep(a) => sweep(*a, &device, cli.device, threads),
        Command::Report(a) => {
            let html = jem::report::render_report(&a.run, a.baseline.as_deref())?;
            jem::tensor_file::write_atomic(&a.out, html.as_bytes())?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Compare(a) => {
            let keep = |r: &mut jem::report::compare::Row| {
                if a.chosen {
                    r.only_chosen();
                }
                r.auroc.retain(|(score, set, _)| {
                    (a.chosen || a.scores.is_empty() || a.scores.contains(score))
                        && (a.sets.is_empty() || a.sets.contains(set))
                });
            };
            if a.seeds {
                let s = jem::report::seeds::summarise(&a.runs, keep)?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", jem::report::seeds::markdown(&s));
                }
                return Ok(());
            }
            let mut rows = jem::report::compare::compare(&a.runs)?;
            rows.iter_mut().for_each(keep);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", jem::report::compare::markdown(&rows));
            }
            Ok(())
        }
        Command::Config => {
            print!("{}", TrainConfig::default().to_toml());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
