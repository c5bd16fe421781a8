//! `jem train`: flags, their mapping onto the config, and the progress bar.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jem::config::{DeviceSpec, TrainConfig};
use jem::data::DatasetKind;
use jem::init::ChainInit;
use jem::loss::{Objective, PxData};
use jem::model::{Arch, ModelConfig};
use jem::sgld::{Precision, SamplerKind, SgldConfig};
use jem::train::{EvalLine, Observer, RecoveryLine, StepMetrics, Trainer};

/// `--objective lsd`'s weight of the Stein term unless `--px-weight` is given.
pub(crate) const LSD_PX_WEIGHT: f32 = 30.0;

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Run directory to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// TOML config file (see `jem config`); flags override it.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) config: Option<PathBuf>,
    /// A shipped recipe (`recipes/NAME.toml`): fashion-mnist, paper-cifar10; flags override
    /// it.
    #[arg(long, conflicts_with_all = ["resume", "config"])]
    pub(crate) recipe: Option<String>,
    /// Data set.
    #[arg(long, value_enum)]
    pub(crate) dataset: Option<DatasetKind>,
    /// Directory of the data files.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Objective.
    #[arg(long, value_enum)]
    pub(crate) objective: Option<Objective>,
    /// Network architecture.
    #[arg(long, value_enum)]
    pub(crate) arch: Option<Arch>,
    /// CNN channel widths, comma-separated (e.g. 64,128,256,256): by default the first
    /// convolution keeps the image size and each further one halves it (see --strides).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["arch"])]
    pub(crate) widths: Option<Vec<usize>>,
    /// With --widths: each convolution's stride, 1 or 2, comma-separated (default 1, then 2).
    #[arg(long, value_delimiter = ',', requires = "widths")]
    pub(crate) strides: Option<Vec<usize>>,
    /// Wide-ResNet depth (6n + 4).
    #[arg(long, default_value_t = 28)]
    pub(crate) wrn_depth: usize,
    /// Wide-ResNet widen factor.
    #[arg(long, default_value_t = 10)]
    pub(crate) wrn_widen: usize,
    /// Bound on the run's total steps (counted over the whole run, also after --resume).
    #[arg(long)]
    pub(crate) max_steps: Option<u64>,
    /// Data parallel over these devices, comma-separated (e.g. wgpu:0,wgpu:1): each computes
    /// an equal share of every batch and of the SGLD chains; the first is the run's device.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub(crate) devices: Option<Vec<DeviceSpec>>,
    /// Epochs.
    #[arg(long)]
    pub(crate) epochs: Option<u64>,
    /// Seed of every random generator.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Batch size.
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Validation images held out from the training files.
    #[arg(long)]
    pub(crate) n_valid: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Warm-up iterations.
    #[arg(long)]
    pub(crate) warmup_steps: Option<u64>,
    /// Sharpness-aware minimisation over the optimiser: the neighbourhood radius rho (0: off).
    #[arg(long)]
    pub(crate) sam_rho: Option<f64>,
    /// Chain update rule (sets its defaults; --sgld-* flags override them).
    #[arg(long, value_enum)]
    pub(crate) sampler: Option<SamplerKind>,
    /// Where chains start and restart.
    #[arg(long, value_enum)]
    pub(crate) init: Option<ChainInit>,
    /// SGLD steps per iteration.
    #[arg(long)]
    pub(crate) sgld_steps: Option<usize>,
    /// Proximal SGLD: clamp of each gradient component.
    #[arg(long)]
    pub(crate) sgld_grad_clip: Option<f32>,
    /// SGLD step size.
    #[arg(long)]
    pub(crate) sgld_step_size: Option<f32>,
    /// SGLD noise standard deviation.
    #[arg(long)]
    pub(crate) sgld_noise: Option<f32>,
    /// Keep plain SGLD's chains in the data range [-1, 1] after every step (`sgld.clamp`;
    /// `--sgld-clamp false` turns a config's off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(crate) sgld_clamp: Option<bool>,
    /// Number format of the chains' gradient passes (bf16: about 1.5x faster on CPUs with
    /// AVX512-BF16).
    #[arg(long, value_enum)]
    pub(crate) sgld_precision: Option<Precision>,
    /// Chains run per iteration (default: the batch size); fewer make an iteration cheaper.
    #[arg(long)]
    pub(crate) sgld_chains: Option<usize>,
    /// Replay buffer size.
    #[arg(long)]
    pub(crate) buffer_size: Option<usize>,
    /// Fraction of chains restarted from noise.
    #[arg(long)]
    pub(crate) reinit_freq: Option<f32>,
    /// Class-conditional sampling.
    #[arg(long)]
    pub(crate) conditional: bool,
    /// Weight of the p(x, y) term.
    #[arg(long)]
    pub(crate) pxy_weight: Option<f32>,
    /// Weight of the p(x) term (with --objective lsd: of the Stein term, default 30).
    #[arg(long)]
    pub(crate) px_weight: Option<f32>,
    /// IGEBM: weight of the energy penalty alpha * (E(x_data)^2 + E(x_sample)^2).
    #[arg(long)]
    pub(crate) energy_l2: Option<f32>,
    /// JEM: weight of the energy-magnitude penalty beta * (lse(x_data)^2 + lse(x_sample)^2).
    #[arg(long)]
    pub(crate) lse_l2: Option<f32>,
    /// Which images the data side of p(x), p(x, y) and the energy penalties sees: the
    /// augmented batch, or the same images without pad-crop and flips (data noise kept).
    #[arg(long, value_enum)]
    pub(crate) px_data: Option<PxData>,
    /// Divide every weight matrix by its spectral norm after each update.
    #[arg(long)]
    pub(crate) spectral_norm: bool,
    /// LSD: the critic's learning rate.
    #[arg(long)]
    pub(crate) critic_lr: Option<f64>,
    /// LSD: weight lambda of the critic's L2 penalty.
    #[arg(long)]
    pub(crate) critic_l2: Option<f32>,
    /// LSD: critic updates per model update.
    #[arg(long)]
    pub(crate) critic_steps: Option<usize>,
    /// LSD: finite-difference step of the directional derivatives.
    #[arg(long)]
    pub(crate) fd_eps: Option<f32>,
    /// Data noise standard deviation.
    #[arg(long)]
    pub(crate) data_noise: Option<f32>,
    /// Pad-and-crop augmentation by this many pixels.
    #[arg(long)]
    pub(crate) crop_pad: Option<usize>,
    /// Horizontal-flip augmentation.
    #[arg(long)]
    pub(crate) hflip: bool,
    /// Log to metrics.jsonl every N steps.
    #[arg(long)]
    pub(crate) log_every: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub(crate) checkpoint_every: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// One flag given on the command line and what it sets in the config.
type Override<'a> = (&'static str, Box<dyn Fn(&mut TrainConfig) + 'a>);

/// Push the override of `flag` when it was given with value `v`.
fn value<'a, T: Clone + 'a>(
    o: &mut Vec<Override<'a>>,
    flag: &'static str,
    v: &Option<T>,
    set: impl Fn(&mut TrainConfig, T) + 'a,
) {
    if let Some(v) = v.clone() {
        o.push((flag, Box::new(move |c| set(c, v.clone()))));
    }
}

/// Push the override of the switch `flag` when it was given.
fn switch<'a>(
    o: &mut Vec<Override<'a>>,
    flag: &'static str,
    given: bool,
    set: impl Fn(&mut TrainConfig) + 'a,
) {
    if given {
        o.push((flag, Box::new(set)));
    }
}

impl TrainArgs {
    /// Every flag given, in the order they apply (a sampler's defaults before `--sgld-*`, a
    /// data set's flip default before `--hflip`), each with its change to the config.
    fn overrides(&self) -> Vec<Override<'_>> {
        let mut o = Vec::new();
        self.schedule_overrides(&mut o);
        self.run_overrides(&mut o);
        o
    }

    /// Length, logging, learning rate and sampler.
    fn schedule_overrides<'a>(&'a self, o: &mut Vec<Override<'a>>) {
        value(o, "--max-steps", &self.max_steps, |c, v| {
            c.schedule.max_steps = Some(v)
        });
        value(o, "--epochs", &self.epochs, |c, v| c.schedule.epochs = v);
        value(o, "--devices", &self.devices, |c, v| c.devices = v);
        value(o, "--lr", &self.lr, |c, v| c.optim.lr = v);
        value(o, "--sam-rho", &self.sam_rho, |c, v| c.optim.sam_rho = v);
        value(o, "--warmup-steps", &self.warmup_steps, |c, v| {
            c.optim.warmup_steps = v
        });
        value(o, "--sampler", &self.sampler, |c, v| {
            // The number of chains is the step's, not the sampler's: a recipe's stays.
            c.sgld = SgldConfig {
                chains: c.sgld.chains,
                ..SgldConfig::for_sampler(v)
            }
        });
        value(o, "--sgld-steps", &self.sgld_steps, |c, v| c.sgld.steps = v);
        value(o, "--sgld-grad-clip", &self.sgld_grad_clip, |c, v| {
            c.sgld.grad_clip = v
        });
        value(o, "--sgld-step-size", &self.sgld_step_size, |c, v| {
            c.sgld.step_size = v
        });
        value(o, "--sgld-noise", &self.sgld_noise, |c, v| {
            c.sgld.noise_std = v
        });
        value(o, "--sgld-clamp", &self.sgld_clamp, |c, v| c.sgld.clamp = v);
        value(o, "--sgld-precision", &self.sgld_precision, |c, v| {
            c.sgld.precision = v
        });
        value(o, "--sgld-chains", &self.sgld_chains, |c, v| {
            c.sgld.chains = Some(v)
        });
        value(o, "--log-every", &self.log_every, |c, v| {
            c.schedule.log_every = v
        });
        value(o, "--checkpoint-every", &self.checkpoint_every, |c, v| {
            c.schedule.checkpoint_every = v
        });
    }

    /// Data, model, objective, buffer, seed and augmentation.
    fn run_overrides<'a>(&'a self, o: &mut Vec<Override<'a>>) {
        value(o, "--dataset", &self.dataset, |c, v: DatasetKind| {
            // Another data set brings its own flip default; naming the config's own keeps
            // what the config (or recipe) says.
            if c.data.dataset != v {
                c.data.dataset = v;
                c.data.augment.hflip = v.flip_by_default();
            }
        });
        value(o, "--data-dir", &self.data_dir, |c, v| c.data.dir = Some(v));
        let px_given = self.px_weight.is_some();
        value(o, "--objective", &self.objective, move |c, v| {
            c.loss.objective = v;
            // The per-dimension Stein term needs a larger weight than JEM's p(x) term: 30 gave
            // the best OOD detection at unchanged accuracy in our comparison (1 made it
            // negligible; the unscaled term, 784, collapsed the classifier).
            if v == Objective::Lsd && !px_given {
                c.loss.px_weight = LSD_PX_WEIGHT;
            }
        });
        let (depth, widen) = (self.wrn_depth, self.wrn_widen);
        value(o, "--arch", &self.arch, move |c, v| {
            c.model = ModelConfig::from_arch(v, depth, widen)
        });
        let strides = self.strides.clone().unwrap_or_default();
        value(o, "--widths", &self.widths, move |c, widths| {
            c.model = ModelConfig::Cnn {
                widths,
                strides: strides.clone(),
            }
        });
        value(o, "--seed", &self.seed, |c, v| c.seed = v);
        value(o, "--batch-size", &self.batch_size, |c, v| {
            c.schedule.batch_size = v
        });
        value(o, "--n-valid", &self.n_valid, |c, v| c.data.n_valid = v);
        value(o, "--buffer-size", &self.buffer_size, |c, v| {
            c.buffer.size = v
        });
        value(o, "--reinit-freq", &self.reinit_freq, |c, v| {
            c.buffer.reinit_freq = v
        });
        switch(o, "--conditional", self.conditional, |c| {
            c.buffer.conditional = true
        });
        value(o, "--init", &self.init, |c, v| c.buffer.init = v);
        value(o, "--energy-l2", &self.energy_l2, |c, v| {
            c.loss.energy_l2 = v
        });
        value(o, "--lse-l2", &self.lse_l2, |c, v| c.loss.lse_l2 = v);
        value(o, "--px-data", &self.px_data, |c, v| c.loss.px_data = v);
        switch(o, "--spectral-norm", self.spectral_norm, |c| {
            c.optim.spectral_norm = true
        });
        value(o, "--critic-lr", &self.critic_lr, |c, v| {
            c.loss.lsd.critic_lr = v
        });
        value(o, "--critic-l2", &self.critic_l2, |c, v| {
            c.loss.lsd.critic_l2 = v
        });
        value(o, "--critic-steps", &self.critic_steps, |c, v| {
            c.loss.lsd.critic_steps = v
        });
        value(o, "--fd-eps", &self.fd_eps, |c, v| c.loss.lsd.fd_eps = v);
        value(o, "--pxy-weight", &self.pxy_weight, |c, v| {
            c.loss.pxy_weight = v
        });
        value(o, "--px-weight", &self.px_weight, |c, v| {
            c.loss.px_weight = v
        });
        value(o, "--data-noise", &self.data_noise, |c, v| {
            c.data.augment.noise_std = v
        });
        value(o, "--crop-pad", &self.crop_pad, |c, v| {
            c.data.augment.crop_pad = v
        });
        switch(o, "--hflip", self.hflip, |c| c.data.augment.hflip = true);
    }

    /// Apply every flag given.
    fn apply(&self, c: &mut TrainConfig) {
        for (_, f) in self.overrides() {
            f(c);
        }
    }

    /// With `--resume`: `Err` naming the first flag that would change a field fixed for the
    /// life of the run (the library's `RESUME_MAY_CHANGE` decides which may change).
    fn check_resume(&self, dir: &std::path::Path) -> Result<()> {
        let saved = TrainConfig::load_run(dir)?;
        for (flag, f) in self.overrides() {
            let mut c = saved.clone();
            f(&mut c);
            if let Err(e) = c.check_resume(&saved) {
                bail!(
                    "{flag} cannot be given with --resume {}: {e}",
                    dir.display()
                );
            }
        }
        Ok(())
    }
}

pub(crate) struct Progress {
    pub(crate) bar: Option<ProgressBar>,
    pub(crate) per_epoch: u64,
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
            let ce = m.ce.map(|v| format!(" ce {v:.4}")).unwrap_or_default();
            let acc = m.acc.map(|v| format!(" acc {v:.3}")).unwrap_or_default();
            let stein = m.stein.map(|v| format!(" sd {v:.3}")).unwrap_or_default();
            bar.set_message(format!(
                "epoch {} loss {:.4}{ce}{acc}{sample}{stein} lr {:.1e}",
                m.step.saturating_sub(1) / self.per_epoch.max(1) + 1,
                m.loss,
                m.lr
            ));
        }
    }
    fn on_recovery(&mut self, r: &RecoveryLine) {
        let line = format!(
            "recovery {}: {} = {:.4e} at step {}; rolled back to step {}, lr x{:.3}, SGLD step x{:.3}",
            r.recoveries, r.what, r.value, r.flagged_step, r.step, r.lr_scale, r.sgld_step_scale
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
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

/// Where a run trains, after its flags: `--devices` sets the list (its first is the run's
/// device); `--device` alone trains on that one device and drops any list the config or the
/// saved run holds (a data-parallel run resumed with `--device X` goes on on X alone).
/// `--device` and `--devices` together must agree on the first device.
fn place(cfg: &mut TrainConfig, device: Option<DeviceSpec>, devices_flag: bool) -> Result<()> {
    if let Some(spec) = device {
        match cfg.devices.first() {
            Some(&first) if devices_flag && first != spec => bail!(
                "--device {spec} and --devices {} name different devices for the run \
                 (the first of --devices is the run's device); give one of them",
                jem::device::spell_list(&cfg.devices)
            ),
            _ => {}
        }
        if !devices_flag && !cfg.devices.is_empty() {
            tracing::info!(
                "--device {spec}: training on {spec} alone, not data parallel over {}",
                jem::device::spell_list(&cfg.devices)
            );
            cfg.devices.clear();
        }
        cfg.device = spec;
    }
    cfg.device = cfg.primary_device();
    Ok(())
}

/// Train as `args` say, on `device` (`--device`) or else the device of the run's config.
pub(crate) fn train(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            args.check_resume(dir)?;
            let mut placed = TrainConfig::load_run(dir)?;
            args.apply(&mut placed);
            place(&mut placed, device, args.devices.is_some())?;
            let (spec, devices) = (placed.device, placed.devices);
            let device = spec.open()?;
            Trainer::resume(dir, &device, |c| {
                args.apply(c);
                c.device = spec;
                c.devices = devices;
            })?
        }
        None => {
            let mut cfg = match (&args.config, &args.recipe) {
                (Some(p), _) => TrainConfig::from_file(p)?,
                (None, Some(name)) => TrainConfig::recipe(name)?,
                (None, None) => TrainConfig::default(),
            };
            args.apply(&mut cfg);
            place(&mut cfg, device, args.devices.is_some())?;
            cfg.validate()?;
            let out = args
                .out
                .as_ref()
                .expect("clap requires --out without --resume");
            let device = cfg.device.open()?;
            Trainer::create(cfg, out, &device)?
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
        let acc = m
            .acc
            .map(|a| format!(", batch accuracy {a:.3}"))
            .unwrap_or_default();
        eprintln!("finished at step {}: loss {:.4}{acc}", summary.step, m.loss);
    } else {
        eprintln!("nothing to do: the run is already at step {}", summary.step);
    }
    Ok(())
}
