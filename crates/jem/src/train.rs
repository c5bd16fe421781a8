//! The training loop: epochs of [`iteration`]s, metrics, validation, divergence stop and
//! atomic checkpoints that resume exactly.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::buffer::ReplayBuffer;
use crate::checkpoint::{self, CheckpointError, RunState, files, params_finite, save_model};
use crate::config::{ConfigError, TrainConfig};
use crate::data::{BatchSampler, Dataset, Split, load_split};
use crate::eval::accuracy::accuracy;
use crate::init::{ChainInit, ChainStart, ClassGaussians};
use crate::loss::Objective;
use crate::lsd::{CriticState, lsd_iteration};
use crate::model::Classifier;
use crate::optim::{OptimConfig, Optimizer};
use crate::rng::Rng;
pub use crate::step::{Divergence, LOSS_LIMIT, StepMetrics, iteration};
use crate::{Error, Result};

/// A validation line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Always `"valid"`.
    pub event: String,
    /// Steps completed.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Validation accuracy.
    pub valid_acc: f64,
    /// Validation NLL.
    pub valid_nll: f64,
}

/// A recovery line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryLine {
    /// Always `"recovery"`.
    pub event: String,
    /// The step rolled back to (the last checkpoint).
    pub step: u64,
    /// The step at which the divergence was seen.
    pub flagged_step: u64,
    /// What was flagged.
    pub what: String,
    /// Its value.
    pub value: f64,
    /// Recoveries so far in this run.
    pub recoveries: u32,
    /// Factor now applied to the learning rate.
    pub lr_scale: f64,
    /// Factor now applied to the SGLD step size.
    pub sgld_step_scale: f32,
    /// SGLD steps now added to the configured number.
    pub extra_sgld_steps: usize,
    /// Buffer chains restarted from noise because they held NaN or saturated values.
    pub reinit_chains: usize,
}

/// Hooks for progress display; every method has an empty default.
pub trait Observer {
    /// Training starts at `start` of `total` steps.
    fn on_start(&mut self, _start: u64, _total: u64) {}
    /// A step finished.
    fn on_step(&mut self, _m: &StepMetrics) {}
    /// A validation pass finished.
    fn on_eval(&mut self, _e: &EvalLine) {}
    /// A checkpoint was written.
    fn on_checkpoint(&mut self, _step: u64) {}
    /// A divergence was caught and the run rolled back.
    fn on_recovery(&mut self, _r: &RecoveryLine) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Steps completed.
    pub step: u64,
    /// The last step's metrics, if any step ran in this call.
    pub last: Option<StepMetrics>,
    /// The last validation, if any.
    pub valid: Option<EvalLine>,
}

/// A training run bound to its directory.
pub struct Trainer {
    cfg: TrainConfig,
    dir: PathBuf,
    device: Device,
    model: Classifier,
    optim: Optimizer,
    buffer: Option<ReplayBuffer>,
    /// Where buffer chains start and restart (fitted from the training data when informative).
    start: ChainStart,
    /// The Stein critic of `--objective lsd`.
    critic: Option<CriticState>,
    state: RunState,
    train: Dataset,
    valid: Dataset,
    sampler: BatchSampler,
    last_checkpoint: u64,
    /// A checkpoint taken but not yet written: it is written once the next step's loss shows
    /// its weights healthy (a loss is measured with the weights before the step's update), so
    /// that a rollback never lands on a checkpoint that is already damaged.
    pending: Option<Snapshot>,
}

/// Everything a checkpoint holds, in memory.
struct Snapshot {
    model: Classifier,
    optim: Optimizer,
    buffer: Option<ReplayBuffer>,
    critic: Option<CriticState>,
    state: RunState,
}

/// What a checkpoint restores besides the run state.
struct Loaded {
    model: Classifier,
    optim: Optimizer,
    buffer: Option<ReplayBuffer>,
    critic: Option<CriticState>,
}

/// The critic's optimiser settings: the model's algorithm at the critic's own rate, no
/// warm-up, decay or weight decay.
fn critic_optim_config(cfg: &TrainConfig) -> OptimConfig {
    OptimConfig {
        lr: cfg.loss.lsd.critic_lr,
        warmup_steps: 0,
        decay_epochs: Vec::new(),
        weight_decay: 0.0,
        spectral_norm: false,
        ..cfg.optim.clone()
    }
}

/// A fresh critic, if the objective needs one.
fn new_critic(cfg: &TrainConfig, channels: usize, device: &Device) -> Option<CriticState> {
    (cfg.loss.objective == Objective::Lsd).then(|| CriticState {
        critic: cfg.loss.lsd.init_critic(channels, device),
        optim: Optimizer::new(&critic_optim_config(cfg)),
    })
}

/// Model, optimiser and buffer of the checkpoint at `step` in `dir`.
fn load_checkpoint(
    cfg: &TrainConfig,
    dir: &Path,
    device: &Device,
    step: u64,
    train: &Dataset,
    start: &ChainStart,
) -> Result<Loaded> {
    let model = cfg
        .model
        .init(train.shape[0], cfg.model_outputs(train.num_classes), device);
    let model = checkpoint::load_model(model, &dir.join(files::MODEL), Some(step))?;
    let optim = Optimizer::load(
        &dir.join(files::OPTIM),
        step,
        &cfg.optim,
        &device.clone().inner(),
    )?;
    let buffer = if cfg.loss.needs_sampling() {
        Some(
            ReplayBuffer::load(
                &dir.join(files::BUFFER),
                step,
                &cfg.buffer,
                train.shape,
                train.num_classes,
            )?
            .with_start(start.clone()),
        )
    } else {
        None
    };
    let critic = match new_critic(cfg, train.shape[0], device) {
        Some(fresh) => Some(CriticState {
            critic: checkpoint::load_model(fresh.critic, &dir.join(files::CRITIC), Some(step))?,
            optim: Optimizer::load(
                &dir.join(files::CRITIC_OPTIM),
                step,
                &critic_optim_config(cfg),
                &device.clone().inner(),
            )?,
        }),
        None => None,
    };
    Ok(Loaded {
        model,
        optim,
        buffer,
        critic,
    })
}

/// The chain start distribution `cfg` asks for (class Gaussians are fitted to `train`).
fn chain_start(cfg: &TrainConfig, train: &Dataset, device: &Device) -> Result<ChainStart> {
    if !cfg.loss.needs_sampling() || cfg.buffer.init == ChainInit::Uniform {
        return Ok(ChainStart::Uniform);
    }
    let t0 = Instant::now();
    let g = ClassGaussians::fit(train, &device.clone().inner())?;
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        "fitted class Gaussians for informative chain initialisation"
    );
    Ok(ChainStart::Gaussians(std::sync::Arc::new(g)))
}

fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let d = &cfg.data;
    let all = crate::data::load_files(d.dataset, d.dir.as_deref(), false)?;
    let (train, valid) = all.split_valid(d.n_valid, cfg.seed)?;
    if train.len() < cfg.schedule.batch_size {
        return Err(ConfigError::field(
            "schedule.batch_size",
            format!(
                "{} is larger than the {} training images",
                cfg.schedule.batch_size,
                train.len()
            ),
        )
        .into());
    }
    Ok((train, valid))
}

/// Load the test or validation split of a run's data set.
pub fn load_eval_split(cfg: &TrainConfig, split: Split) -> Result<Dataset> {
    let d = &cfg.data;
    Ok(load_split(
        d.dataset,
        d.dir.as_deref(),
        split,
        d.n_valid,
        cfg.seed,
    )?)
}

impl Trainer {
    /// Start a new run in `dir` (created; it must not hold files yet).
    pub fn create(cfg: TrainConfig, dir: &Path, device: &Device) -> Result<Self> {
        cfg.validate()?;
        crate::cnn_cpu::check_precision(cfg.sgld.precision, device)?;
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .next()
                .is_some()
        {
            return Err(CheckpointError::Exists(dir.to_path_buf()).into());
        }
        let (train, valid) = load_data(&cfg)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let device = device.clone().autodiff();
        // Seed and draw the initial weights under one lock (see `crate::rng_lock`).
        let (model, critic) = {
            let _guard = crate::rng_lock();
            device.seed(cfg.seed);
            let model = cfg.model.init_unlocked(
                train.shape[0],
                cfg.model_outputs(train.num_classes),
                &device,
            );
            let critic = (cfg.loss.objective == Objective::Lsd).then(|| CriticState {
                critic: cfg.loss.lsd.init_critic_unlocked(train.shape[0], &device),
                optim: Optimizer::new(&critic_optim_config(&cfg)),
            });
            (model, critic)
        };
        let mut rng = Rng::new(cfg.seed, 1);
        let start = chain_start(&cfg, &train, &device)?;
        let buffer = cfg.loss.needs_sampling().then(|| {
            ReplayBuffer::new(
                &cfg.buffer,
                train.shape,
                train.num_classes,
                start.clone(),
                &mut rng,
            )
        });
        checkpoint::write_atomic(&dir.join(files::CONFIG), cfg.to_toml().as_bytes())?;
        std::fs::File::create(dir.join(files::METRICS))
            .map_err(|e| Error::io(dir.join(files::METRICS), e))?;
        let sampler = BatchSampler::new(train.len(), cfg.schedule.batch_size, cfg.seed);
        let mut t = Trainer {
            optim: Optimizer::new(&cfg.optim),
            cfg,
            dir: dir.to_path_buf(),
            device,
            model,
            buffer,
            start,
            critic,
            state: RunState::new(rng),
            train,
            valid,
            sampler,
            last_checkpoint: 0,
            pending: None,
        };
        t.checkpoint()?;
        tracing::info!(dir = %t.dir.display(), "created run");
        Ok(t)
    }

    /// Continue the run in `dir` from its last checkpoint. `adjust` may change how long it
    /// runs and how it logs (or the optimiser and sampler settings); data, model, buffer
    /// layout, batch size and seed are fixed for the life of a run.
    pub fn resume(
        dir: &Path,
        device: &Device,
        adjust: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let cfg_path = dir.join(files::CONFIG);
        let saved = checkpoint::load_config(dir)?;
        let mut cfg = saved.clone();
        adjust(&mut cfg);
        cfg.validate()?;
        crate::cnn_cpu::check_precision(cfg.sgld.precision, device)?;
        for (field, same) in [
            ("data", cfg.data == saved.data),
            ("model", cfg.model == saved.model),
            ("buffer", cfg.buffer == saved.buffer),
            ("loss", cfg.loss == saved.loss),
            (
                "schedule.batch_size",
                cfg.schedule.batch_size == saved.schedule.batch_size,
            ),
            ("seed", cfg.seed == saved.seed),
        ] {
            if !same {
                return Err(ConfigError::field(field, "cannot change when resuming a run").into());
            }
        }
        let state = checkpoint::recover(dir)?;
        let (train, valid) = load_data(&cfg)?;
        let device = device.clone().autodiff();
        let start = chain_start(&cfg, &train, &device)?;
        let Loaded {
            model,
            optim,
            buffer,
            critic,
        } = load_checkpoint(&cfg, dir, &device, state.step, &train, &start)?;
        truncate_metrics(&dir.join(files::METRICS), state.step)?;
        if cfg != saved {
            checkpoint::write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
        }
        let sampler = BatchSampler::new(train.len(), cfg.schedule.batch_size, cfg.seed);
        tracing::info!(dir = %dir.display(), step = state.step, "resuming run");
        Ok(Trainer {
            last_checkpoint: state.step,
            cfg,
            dir: dir.to_path_buf(),
            device,
            model,
            optim,
            buffer,
            start,
            critic,
            state,
            train,
            valid,
            sampler,
            pending: None,
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The current model.
    pub fn model(&self) -> &Classifier {
        &self.model
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.sampler.batches_per_epoch() as u64
    }

    /// Total steps of the run: `epochs * steps_per_epoch`, bounded by `max_steps`.
    pub fn total_steps(&self) -> u64 {
        let by_epochs = self.cfg.schedule.epochs * self.steps_per_epoch();
        self.cfg
            .schedule
            .max_steps
            .map_or(by_epochs, |m| m.min(by_epochs))
    }

    /// Write a checkpoint of the current state (model, optimiser, buffer, then `state.json`).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.pending = None;
        let snap = self.snapshot();
        self.write(&snap)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            model: self.model.clone(),
            optim: self.optim.clone(),
            buffer: self.buffer.clone(),
            critic: self.critic.clone(),
            state: self.state.clone(),
        }
    }

    fn write(&mut self, snap: &Snapshot) -> Result<()> {
        let step = snap.state.step;
        if !params_finite(&snap.model) {
            return Err(Error::Diverged {
                step,
                what: "model parameters".into(),
                value: f64::NAN,
                last_checkpoint: self.last_checkpoint,
                run_dir: self.dir.clone(),
            });
        }
        // Stage every file, commit by writing state.json, then move the staged files into
        // place: a crash at any point leaves one complete checkpoint (see `checkpoint::recover`).
        let staged = |name| checkpoint::staged(&self.dir.join(name));
        save_model(&snap.model, &staged(files::MODEL), step)?;
        snap.optim.save(&staged(files::OPTIM), step)?;
        if let Some(b) = &snap.buffer {
            b.save(&staged(files::BUFFER), step)?;
        }
        if let Some(c) = &snap.critic {
            save_model(&c.critic, &staged(files::CRITIC), step)?;
            c.optim.save(&staged(files::CRITIC_OPTIM), step)?;
        }
        checkpoint::save_state(&self.dir, &snap.state)?;
        checkpoint::recover(&self.dir)?;
        self.last_checkpoint = step;
        Ok(())
    }

    /// The config with the recovery back-off applied to the sampler.
    fn effective_config(&self) -> TrainConfig {
        let mut cfg = self.cfg.clone();
        cfg.sgld.step_size *= self.state.sgld_scale;
        cfg.sgld.steps += self.state.extra_sgld_steps;
        cfg
    }

    /// Flag a finished step whose numbers show a run about to be lost.
    fn watch(&self, m: &StepMetrics) -> Option<Divergence> {
        let r = &self.cfg.recovery;
        let recent = &self.state.recent_losses;
        if recent.len() >= 5 {
            let mut sorted = recent.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            if m.loss.abs() > r.loss_spike_factor * (1.0 + median) {
                return Some(Divergence {
                    what: format!("loss spike (recent median |loss| {median:.4})"),
                    value: m.loss,
                });
            }
        }
        if !m.lse_data.is_finite() || m.lse_data.abs() > r.max_abs_energy {
            return Some(Divergence {
                what: "data energy |mean lse(data)|".into(),
                value: m.lse_data,
            });
        }
        if let Some(s) = m.lse_sample {
            let gap = (m.lse_data - s).abs();
            if !gap.is_finite() || gap > r.max_energy_gap {
                return Some(Divergence {
                    what: "energy gap |lse(data) - lse(samples)|".into(),
                    value: gap,
                });
            }
        }
        match m.sgld_grad_norm {
            Some(g) if !g.is_finite() || g > r.max_sgld_grad_norm => Some(Divergence {
                what: "SGLD input-gradient norm".into(),
                value: g,
            }),
            _ => None,
        }
    }

    /// Roll back to the last checkpoint and back off, or give up after
    /// `recovery.max_recoveries` recoveries.
    fn recover(
        &mut self,
        step: u64,
        what: String,
        value: f64,
        metrics: &Path,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let r = self.cfg.recovery.clone();
        if self.state.recoveries >= r.max_recoveries {
            return Err(Error::Diverged {
                step,
                what: format!("{what} (after {} recoveries)", self.state.recoveries),
                value,
                last_checkpoint: self.last_checkpoint,
                run_dir: self.dir.clone(),
            });
        }
        let state = checkpoint::recover(&self.dir)?;
        let loaded = load_checkpoint(
            &self.cfg,
            &self.dir,
            &self.device,
            state.step,
            &self.train,
            &self.start,
        )?;
        let back = RunState {
            recoveries: self.state.recoveries + 1,
            lr_scale: self.state.lr_scale * r.lr_factor,
            sgld_scale: self.state.sgld_scale * r.sgld_step_factor,
            extra_sgld_steps: self.state.extra_sgld_steps + r.extra_sgld_steps,
            ..state
        };
        (self.model, self.optim, self.buffer, self.critic) =
            (loaded.model, loaded.optim, loaded.buffer, loaded.critic);
        self.state = back;
        // Chains that hold NaN or saturated values would diverge again: restart them.
        let reinit_chains = match self.buffer.as_mut() {
            Some(b) => b.reinit_broken(r.chain_saturation, &mut self.state.rng),
            None => 0,
        };
        truncate_metrics(metrics, self.state.step)?;
        let event = RecoveryLine {
            event: "recovery".into(),
            step: self.state.step,
            flagged_step: step,
            what,
            value,
            recoveries: self.state.recoveries,
            lr_scale: self.state.lr_scale,
            sgld_step_scale: self.state.sgld_scale,
            extra_sgld_steps: self.state.extra_sgld_steps,
            reinit_chains,
        };
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(metrics)
            .map_err(|e| Error::io(metrics, e))?;
        write_line(&mut f, metrics, &event)?;
        tracing::warn!(step, what = %event.what, value, "divergence: rolled back to step {} and backed off", self.state.step);
        obs.on_recovery(&event);
        Ok(())
    }

    /// Train until [`Trainer::total_steps`], checkpointing on the way.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<Summary> {
        let total = self.total_steps();
        let per_epoch = self.steps_per_epoch();
        obs.on_start(self.state.step, total);
        let metrics_path = self.dir.join(files::METRICS);
        let open_metrics = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&metrics_path)
                .map_err(|e| Error::io(&metrics_path, e))
        };
        let mut metrics = open_metrics()?;
        let mut summary = Summary {
            step: self.state.step,
            last: None,
            valid: None,
        };
        let shape = self.train.shape;
        let num_classes = self.train.num_classes;
        while self.state.step < total {
            let t0 = Instant::now();
            let step = self.state.step;
            // Burn's own generator (dropout masks) is re-seeded from (seed, step), so that it
            // too is a function of the step and a resumed run draws the same masks.
            self.device
                .seed(self.cfg.seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (indices, epoch) = self.sampler.indices(step);
            let batch = self
                .train
                .batch(indices, &self.cfg.data.augment, &mut self.state.rng);
            let lr = self.cfg.optim.lr_at(step, epoch) * self.state.lr_scale;
            let cfg = self.effective_config();
            let model = self.model.clone();
            let out = match self.critic.as_mut() {
                Some(critic) => lsd_iteration(
                    &cfg,
                    model,
                    &mut self.optim,
                    critic,
                    &batch,
                    shape,
                    num_classes,
                    lr,
                    cfg.loss.lsd.critic_lr * self.state.lr_scale,
                    &mut self.state.rng,
                    &self.device,
                ),
                None => iteration(
                    &cfg,
                    model,
                    &mut self.optim,
                    self.buffer.as_mut(),
                    &batch,
                    shape,
                    num_classes,
                    lr,
                    &mut self.state.rng,
                    &self.device,
                ),
            };
            let flagged = match &out {
                Ok((_, m)) => self.watch(m),
                Err(d) => Some(d.clone()),
            };
            if let Some(Divergence { what, value }) = flagged {
                self.recover(step + 1, what, value, &metrics_path, obs)?;
                metrics = open_metrics()?;
                continue;
            }
            if let Some(snap) = self.pending.take() {
                match self.write(&snap) {
                    Ok(()) => obs.on_checkpoint(snap.state.step),
                    Err(Error::Diverged {
                        step, what, value, ..
                    }) => {
                        self.recover(step, what, value, &metrics_path, obs)?;
                        metrics = open_metrics()?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut m = match out {
                Ok((model, m)) => {
                    self.model = model;
                    let recent = &mut self.state.recent_losses;
                    recent.push(m.loss.abs());
                    if recent.len() > 50 {
                        recent.remove(0);
                    }
                    m
                }
                Err(_) => unreachable!("a divergence is handled above"),
            };
            self.state.step += 1;
            self.state.elapsed_s += t0.elapsed().as_secs_f64();
            m.step = self.state.step;
            m.epoch = epoch;
            let end_of_epoch = self.state.step.is_multiple_of(per_epoch);
            let last = self.state.step == total;
            if self.state.step.is_multiple_of(self.cfg.schedule.log_every) || last {
                write_line(&mut metrics, &metrics_path, &m)?;
            }
            obs.on_step(&m);
            summary.last = Some(m);
            let classifies = self.cfg.model_outputs(num_classes) > 1;
            if end_of_epoch && self.cfg.schedule.eval_valid && classifies && !self.valid.is_empty()
            {
                let r = accuracy(
                    &self.model,
                    &self.valid,
                    256,
                    None,
                    &mut Rng::new(self.cfg.seed, 2),
                )?;
                let e = EvalLine {
                    event: "valid".into(),
                    step: self.state.step,
                    epoch: epoch + 1,
                    valid_acc: r.accuracy,
                    valid_nll: r.nll,
                };
                write_line(&mut metrics, &metrics_path, &e)?;
                obs.on_eval(&e);
                summary.valid = Some(e);
            }
            if self
                .state
                .step
                .is_multiple_of(self.cfg.schedule.checkpoint_every)
                || end_of_epoch
                || last
            {
                if last {
                    match self.checkpoint() {
                        Ok(()) => obs.on_checkpoint(self.state.step),
                        Err(Error::Diverged {
                            step, what, value, ..
                        }) => {
                            self.recover(step, what, value, &metrics_path, obs)?;
                            metrics = open_metrics()?;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    self.pending = Some(self.snapshot());
                }
            }
        }
        summary.step = self.state.step;
        Ok(summary)
    }
}

fn write_line<T: Serialize>(f: &mut std::fs::File, path: &Path, v: &T) -> Result<()> {
    let mut line = serde_json::to_string(v).expect("metrics serialise");
    line.push('\n');
    f.write_all(line.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    f.flush().map_err(|e| Error::io(path, e))
}

/// Drop the lines of `metrics.jsonl` logged after `step` (they belong to work a resumed run
/// repeats), keeping the file atomic.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        checkpoint::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}
