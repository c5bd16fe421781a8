//! `jem`: train, evaluate and sample Joint Energy-based Models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use jem::config::TrainConfig;
use jem::data::{DatasetKind, Split};
use jem::eval::accuracy::accuracy;
use jem::eval::run::Run;
use jem::eval::samples::{Classes, Start, draw_samples};
use jem::loss::Objective;
use jem::model::ModelConfig;
use jem::rng::Rng;
use jem::train::{EvalLine, Observer, StepMetrics, Trainer};

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
    /// Print the default configuration as TOML (a starting point for --config).
    Config,
}

#[derive(Clone, Copy, ValueEnum)]
enum DatasetArg {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
}

impl From<DatasetArg> for DatasetKind {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::FashionMnist => DatasetKind::FashionMnist,
            DatasetArg::Mnist => DatasetKind::Mnist,
            DatasetArg::Cifar10 => DatasetKind::Cifar10,
            DatasetArg::Cifar100 => DatasetKind::Cifar100,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Softmax,
    Jem,
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchArg {
    /// The benchmark CNN.
    Cnn,
    /// Wide-ResNet (--wrn-depth, --wrn-widen).
    Wrn,
}

#[derive(Args)]
struct TrainArgs {
    /// Run directory to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// TOML config file (see `jem config`); flags override it.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Data set.
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
    /// Directory of the data files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Objective.
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    /// Network architecture.
    #[arg(long, value_enum)]
    arch: Option<ArchArg>,
    /// Wide-ResNet depth (6n + 4).
    #[arg(long, default_value_t = 28)]
    wrn_depth: usize,
    /// Wide-ResNet widen factor.
    #[arg(long, default_value_t = 10)]
    wrn_widen: usize,
    /// Bound on the run's total steps (counted over the whole run, also after --resume).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u64>,
    /// Seed of every random generator.
    #[arg(long)]
    seed: Option<u64>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Validation images held out from the training files.
    #[arg(long)]
    n_valid: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Warm-up iterations.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// SGLD steps per iteration.
    #[arg(long)]
    sgld_steps: Option<usize>,
    /// SGLD step size.
    #[arg(long)]
    sgld_step_size: Option<f32>,
    /// SGLD noise standard deviation.
    #[arg(long)]
    sgld_noise: Option<f32>,
    /// Replay buffer size.
    #[arg(long)]
    buffer_size: Option<usize>,
    /// Fraction of chains restarted from noise.
    #[arg(long)]
    reinit_freq: Option<f32>,
    /// Class-conditional sampling.
    #[arg(long)]
    conditional: bool,
    /// Weight of the p(x, y) term.
    #[arg(long)]
    pxy_weight: Option<f32>,
    /// Weight of the p(x) term.
    #[arg(long)]
    px_weight: Option<f32>,
    /// Data noise standard deviation.
    #[arg(long)]
    data_noise: Option<f32>,
    /// Pad-and-crop augmentation by this many pixels.
    #[arg(long)]
    crop_pad: Option<usize>,
    /// Horizontal-flip augmentation.
    #[arg(long)]
    hflip: bool,
    /// Log to metrics.jsonl every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    /// Overrides that may change on resume (length and logging, optimiser and sampler).
    fn apply_run_overrides(&self, c: &mut TrainConfig) {
        if let Some(v) = self.max_steps {
            c.schedule.max_steps = Some(v);
        }
        if let Some(v) = self.epochs {
            c.schedule.epochs = v;
        }
        if let Some(v) = self.lr {
            c.optim.lr = v;
        }
        if let Some(v) = self.warmup_steps {
            c.optim.warmup_steps = v;
        }
        if let Some(v) = self.sgld_steps {
            c.sgld.steps = v;
        }
        if let Some(v) = self.sgld_step_size {
            c.sgld.step_size = v;
        }
        if let Some(v) = self.sgld_noise {
            c.sgld.noise_std = v;
        }
        if let Some(v) = self.log_every {
            c.schedule.log_every = v;
        }
        if let Some(v) = self.checkpoint_every {
            c.schedule.checkpoint_every = v;
        }
    }

    /// Every override, for a new run.
    fn apply_all(&self, c: &mut TrainConfig) {
        self.apply_run_overrides(c);
        if let Some(d) = self.dataset {
            c.data.dataset = d.into();
            c.data.augment.hflip = c.data.dataset.flip_by_default();
        }
        if let Some(d) = &self.data_dir {
            c.data.dir = Some(d.clone());
        }
        if let Some(o) = self.objective {
            c.loss.objective = match o {
                ObjectiveArg::Softmax => Objective::Softmax,
                ObjectiveArg::Jem => Objective::Jem,
            };
        }
        match self.arch {
            Some(ArchArg::Cnn) => c.model = ModelConfig::default(),
            Some(ArchArg::Wrn) => {
                c.model = ModelConfig::Wrn {
                    depth: self.wrn_depth,
                    widen: self.wrn_widen,
                    norm: Default::default(),
                    dropout: 0.0,
                }
            }
            None => {}
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.batch_size {
            c.schedule.batch_size = v;
        }
        if let Some(v) = self.n_valid {
            c.data.n_valid = v;
        }
        if let Some(v) = self.buffer_size {
            c.buffer.size = v;
        }
        if let Some(v) = self.reinit_freq {
            c.buffer.reinit_freq = v;
        }
        if self.conditional {
            c.buffer.conditional = true;
        }
        if let Some(v) = self.pxy_weight {
            c.loss.pxy_weight = v;
        }
        if let Some(v) = self.px_weight {
            c.loss.px_weight = v;
        }
        if let Some(v) = self.data_noise {
            c.data.augment.noise_std = v;
        }
        if let Some(v) = self.crop_pad {
            c.data.augment.crop_pad = v;
        }
        if self.hflip {
            c.data.augment.hflip = true;
        }
    }
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Accuracy and NLL on the test or validation split.
    Accuracy(AccuracyArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Test,
    Valid,
}

#[derive(Args)]
struct AccuracyArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// SGLD steps on log p(x) applied to each input before classifying.
    #[arg(long, default_value_t = 0)]
    sgld_refine_steps: usize,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum FromArg {
    Buffer,
    Noise,
}

#[derive(Args)]
struct SampleArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Samples of this class (log p(x, y)).
    #[arg(long, conflicts_with = "per_class")]
    class: Option<usize>,
    /// One row per class.
    #[arg(long)]
    per_class: bool,
    /// SGLD steps (default: 20 from the buffer, 200 from noise).
    #[arg(long)]
    steps: Option<usize>,
    /// Where chains start.
    #[arg(long, value_enum, default_value = "buffer")]
    from: FromArg,
    /// Number of samples (per class with --per-class).
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Seed of the chains.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct BenchArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Timed SGLD steps.
    #[arg(long, default_value_t = 20)]
    sgld_reps: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iter_reps: usize,
}

struct Progress {
    bar: Option<ProgressBar>,
    per_epoch: u64,
}

impl Observer for Progress {
    fn on_start(&mut self, start: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(start);
            bar.reset_eta();
        }
    }
    fn on_step(&mut self, m: &StepMetrics) {
        if let Some(bar) = &self.bar {
            bar.set_position(m.step);
            let sample = m
                .lse_sample
                .map(|s| format!(" lse d/s {:.2}/{:.2}", m.lse_data, s))
                .unwrap_or_default();
            bar.set_message(format!(
                "epoch {} loss {:.4} ce {:.4} acc {:.3}{sample} lr {:.1e}",
                m.step.saturating_sub(1) / self.per_epoch.max(1) + 1,
                m.loss,
                m.ce,
                m.acc,
                m.lr
            ));
        }
    }
    fn on_eval(&mut self, e: &EvalLine) {
        let line = format!(
            "epoch {} step {}: valid accuracy {:.4}, nll {:.4}",
            e.epoch, e.step, e.valid_acc, e.valid_nll
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn train(args: TrainArgs, device: &jem::Device) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            if args.dataset.is_some()
                || args.data_dir.is_some()
                || args.objective.is_some()
                || args.arch.is_some()
                || args.seed.is_some()
                || args.batch_size.is_some()
                || args.n_valid.is_some()
                || args.buffer_size.is_some()
                || args.reinit_freq.is_some()
                || args.conditional
            {
                bail!(
                    "--resume continues {} with its own data, model, objective, buffer, batch size and seed; only --max-steps, --epochs, --lr, --warmup-steps, --sgld-*, --log-every and --checkpoint-every may change",
                    dir.display()
                );
            }
            Trainer::resume(dir, device, |c| args.apply_run_overrides(c))?
        }
        None => {
            let mut cfg = match &args.config {
                Some(p) => TrainConfig::from_file(p)?,
                None => TrainConfig::default(),
            };
            args.apply_all(&mut cfg);
            cfg.validate()?;
            let out = args
                .out
                .as_ref()
                .expect("clap requires --out without --resume");
            Trainer::create(cfg, out, device)?
        }
    };
    let bar = (!args.quiet).then(|| {
        let bar = ProgressBar::new(trainer.total_steps());
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut obs = Progress {
        bar,
        per_epoch: trainer.steps_per_epoch(),
    };
    let summary = trainer.run(&mut obs);
    if let Some(bar) = &obs.bar {
        bar.finish();
    }
    let summary = summary?;
    if let Some(m) = &summary.last {
        eprintln!(
            "finished at step {}: loss {:.4}, batch accuracy {:.3}",
            summary.step, m.loss, m.acc
        );
    } else {
        eprintln!("nothing to do: the run is already at step {}", summary.step);
    }
    Ok(())
}

fn eval_accuracy(a: AccuracyArgs, device: &jem::Device) -> Result<()> {
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

fn sample(a: SampleArgs, device: &jem::Device) -> Result<()> {
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
    jem::image::save_grid(&a.out, &s.images, s.n, run.shape(), s.cols)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} samples to {}", s.n, a.out.display());
    Ok(())
}

fn bench(a: BenchArgs, device: &jem::Device, threads: usize) -> Result<()> {
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
    let device = jem::default_device();
    match cli.command {
        Command::Train(a) => train(*a, &device),
        Command::Eval(EvalCommand::Accuracy(a)) => eval_accuracy(a, &device),
        Command::Sample(a) => sample(a, &device),
        Command::Bench(a) => bench(a, &device, threads),
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
