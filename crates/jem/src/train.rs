//! The training loop: epochs of [`iteration`]s, metrics, validation, divergence recovery and
//! atomic checkpoints that resume exactly.
//!
//! The loop only delegates: [`step::iteration`] computes a step, the
//! [`DivergenceMonitor`] judges it and backs off, [`MetricsLog`] owns `metrics.jsonl`, the
//! [`ScheduleConfig`](crate::schedule::ScheduleConfig) says what is due after each step, and
//! [`checkpoint`] commits the files. The compute engine is chosen once, when the trainer is
//! created or resumed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::buffer::ReplayBuffer;
use crate::checkpoint::{self, CheckpointError, RunState, files};
use crate::config::{ConfigError, TrainConfig};
use crate::data::{BatchSampler, Dataset};
use crate::engine::Engine;
use crate::eval::accuracy::accuracy;
use crate::init::{ChainInit, ChainStart, ClassGaussians};
use crate::loss::Objective;
use crate::lsd::CriticState;
pub use crate::metrics::{Divergence, EvalLine, LOSS_LIMIT, MetricsLog, RecoveryLine, StepMetrics};
use crate::model::Classifier;
use crate::optim::{OptimConfig, Optimizer};
use crate::recovery::DivergenceMonitor;
use crate::rng::Rng;
use crate::step;
pub use crate::step::{StepInputs, iteration};
use crate::tensor_file::{params_finite, save_model};
use crate::{Error, Result};

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
    /// Data parallel: every device of the run, `device` first (empty on one device).
    devices: Vec<Device>,
    engine: Engine,
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
    log: MetricsLog,
    monitor: DivergenceMonitor,
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
        decay_fractions: Vec::new(),
        cosine: false,
        weight_decay: 0.0,
        spectral_norm: false,
        ..cfg.optim.clone()
    }
}

/// Record in `state` the device the run goes on on, saying so when it is another than the
/// one it last trained on (a run moves between devices freely: its files are the same).
fn note_device(state: &mut RunState, device: &Device, dir: &Path) {
    let now = crate::device::describe(device);
    if let Some(before) = state.device.as_deref().filter(|b| *b != now) {
        tracing::info!(
            dir = %dir.display(),
            step = state.step,
            "resuming on {now} a run last trained on {before}"
        );
    }
    state.device = Some(now);
}

/// The (autodiff) devices of a data-parallel run: `device`, then `devices[1..]` of the config
/// opened here, a wgpu adapter named again opened as a runtime of its own
/// ([`crate::device::DeviceSpec::open_nth`]); empty for a run on one device.
fn parallel_devices(cfg: &TrainConfig, device: &Device) -> Result<Vec<Device>> {
    if cfg.devices.len() < 2 {
        return Ok(Vec::new());
    }
    let resolved = cfg
        .devices
        .iter()
        .map(|d| d.resolve())
        .collect::<Result<Vec<_>>>()?;
    let mut v = vec![device.clone().autodiff()];
    for (i, spec) in resolved.iter().enumerate().skip(1) {
        let nth = resolved[..i].iter().filter(|d| *d == spec).count();
        v.push(spec.open_nth(nth)?.autodiff());
    }
    tracing::info!(
        devices = %crate::device::spell_list(&cfg.devices),
        "data parallel"
    );
    Ok(v)
}

/// A fresh critic, if the objective needs one.
fn new_critic(
    cfg: &TrainConfig,
    channels: usize,
    device: &Device,
    rng: &mut Rng,
) -> Option<CriticState> {
    (cfg.loss.objective == Objective::Lsd).then(|| CriticState {
        critic: cfg.loss.lsd.init_critic(channels, device, rng),
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
    let model = crate::tensor_file::load_model(model, &dir.join(files::MODEL), Some(step))?;
    let optim = Optimizer::load(
        &dir.join(files::OPTIM),
        step,
        &cfg.optim,
        &device.clone().inner(),
    )?;
    let buffer = if cfg.loss.needs_sampling() {
        Some(
            ReplayBuffer::load_for_training(
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
    let critic = match new_critic(cfg, train.shape[0], device, &mut Rng::new(0, 0)) {
        Some(fresh) => Some(CriticState {
            critic: crate::tensor_file::load_model(
                fresh.critic,
                &dir.join(files::CRITIC),
                Some(step),
            )?,
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

/// The run's training and validation splits, checked against the batch size.
fn load_data(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let (train, valid) = cfg.data.load_train_valid(cfg.seed)?;
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

/// The engine a run's config asks for on `device`, with its chains' precision checked and
/// `auto` resolved in `cfg` (so the run's `config.toml` says which one ran).
fn engine_for(cfg: &mut TrainConfig, device: &Device) -> Result<Engine> {
    let engine = if cfg.devices.len() > 1 {
        Engine::Autodiff
    } else {
        Engine::for_config(&cfg.model, device)
    };
    if cfg.loss.needs_sampling() {
        cfg.sgld.precision = engine.chains_precision(
            cfg.sgld.precision,
            &cfg.model,
            cfg.data.shape(),
            cfg.data.dataset.num_classes(),
            cfg.sgld.chains_for(cfg.schedule.batch_size),
            device,
        );
        engine.check_chains(cfg.sgld.precision)?;
    } else {
        // No chains run (softmax, LSD): nothing to time; `auto` is saved as f32.
        cfg.sgld.precision = cfg.sgld.precision.resolve(false);
    }
    Ok(engine)
}

impl Trainer {
    /// Start a new run in `dir` (created; it must not hold files yet).
    pub fn create(mut cfg: TrainConfig, dir: &Path, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let engine = engine_for(&mut cfg, device)?;
        let devices = parallel_devices(&cfg, device)?;
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
        // The initial weights (model, then critic) from the seed alone, drawn on the host.
        let mut weights = Rng::new(cfg.seed, crate::weights::WEIGHT_STREAM);
        let model = cfg.model.init_with(
            train.shape[0],
            cfg.model_outputs(train.num_classes),
            &device,
            &mut weights,
        );
        let critic = new_critic(&cfg, train.shape[0], &device, &mut weights);
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
        crate::tensor_file::write_atomic(&dir.join(files::CONFIG), cfg.to_toml().as_bytes())?;
        let log = MetricsLog::create(&dir.join(files::METRICS))?;
        let sampler = BatchSampler::new(train.len(), cfg.schedule.batch_size, cfg.seed);
        let device_name = crate::device::describe(&device);
        let mut t = Trainer {
            optim: Optimizer::new(&cfg.optim),
            monitor: DivergenceMonitor::new(cfg.recovery.clone()),
            cfg,
            dir: dir.to_path_buf(),
            device,
            devices,
            engine,
            model,
            buffer,
            start,
            critic,
            state: RunState {
                device: Some(device_name),
                ..RunState::new(rng)
            },
            train,
            valid,
            sampler,
            log,
            last_checkpoint: 0,
            pending: None,
        };
        t.checkpoint()?;
        tracing::info!(
            dir = %t.dir.display(),
            engine = engine.name(),
            instructions = engine.instructions(),
            "created run"
        );
        Ok(t)
    }

    /// Continue the run in `dir` from its last checkpoint. `adjust` may change the fields
    /// listed in [`crate::config::RESUME_MAY_CHANGE`] (how long it runs and how it logs, the
    /// optimiser's settings, the sampler, the divergence watch, the augmentation); a change
    /// to any other field is an error naming it.
    pub fn resume(
        dir: &Path,
        device: &Device,
        adjust: impl FnOnce(&mut TrainConfig),
    ) -> Result<Self> {
        let saved = TrainConfig::load_run(dir)?;
        let mut cfg = saved.clone();
        adjust(&mut cfg);
        cfg.validate()?;
        cfg.check_resume(&saved)?;
        let engine = engine_for(&mut cfg, device)?;
        let devices = parallel_devices(&cfg, device)?;
        let mut state = checkpoint::settle(dir)?;
        note_device(&mut state, device, dir);
        let (train, valid) = load_data(&cfg)?;
        let device = device.clone().autodiff();
        let start = chain_start(&cfg, &train, &device)?;
        let Loaded {
            model,
            optim,
            mut buffer,
            critic,
        } = load_checkpoint(&cfg, dir, &device, state.step, &train, &start)?;
        let mut log = MetricsLog::open(&dir.join(files::METRICS))?;
        log.truncate_after(state.step)?;
        if let Some(b) = buffer.as_mut().filter(|b| b.non_finite_chains() > 0) {
            let n = b.reinit_broken(cfg.recovery.chain_saturation, &mut state.rng);
            let event = repair_line(&state, n);
            tracing::warn!(
                chains = n,
                "{}: restarted chains holding NaN or infinite values",
                dir.join(files::BUFFER).display()
            );
            log.write(&event)?;
        }
        if cfg != saved {
            crate::tensor_file::write_atomic(&dir.join(files::CONFIG), cfg.to_toml().as_bytes())?;
        }
        let sampler = BatchSampler::new(train.len(), cfg.schedule.batch_size, cfg.seed);
        tracing::info!(
            dir = %dir.display(),
            step = state.step,
            engine = engine.name(),
            instructions = engine.instructions(),
            "resuming run"
        );
        Ok(Trainer {
            last_checkpoint: state.step,
            monitor: DivergenceMonitor::new(cfg.recovery.clone()),
            cfg,
            dir: dir.to_path_buf(),
            device,
            devices,
            engine,
            model,
            optim,
            buffer,
            start,
            critic,
            state,
            train,
            valid,
            sampler,
            log,
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

    /// The compute engine of the run.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.sampler.batches_per_epoch() as u64
    }

    /// Steps of the run's planned epochs, `epochs * steps_per_epoch` (what a schedule
    /// relative to the run's length is relative to; `max_steps` only stops early).
    pub fn planned_steps(&self) -> u64 {
        self.cfg.schedule.epochs * self.steps_per_epoch()
    }

    /// Total steps of the run: `epochs * steps_per_epoch`, bounded by `max_steps`.
    pub fn total_steps(&self) -> u64 {
        self.cfg.schedule.total_steps(self.steps_per_epoch())
    }

    /// Write a checkpoint of the current state (model, optimiser, buffer, then `state.json`).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.pending = None;
        let snap = self.snapshot();
        match self.commit(&snap)? {
            None => Ok(()),
            Some(d) => Err(Error::Diverged {
                step: snap.state.step,
                what: d.what,
                value: d.value,
                last_checkpoint: self.last_checkpoint,
                run_dir: self.dir.clone(),
            }),
        }
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

    /// Write `snap` as the run's checkpoint, or return the divergence that forbids it (a
    /// non-finite weight never reaches a saved model).
    fn commit(&mut self, snap: &Snapshot) -> Result<Option<Divergence>> {
        let step = snap.state.step;
        if !params_finite(&snap.model) {
            return Ok(Some(Divergence {
                what: "model parameters".into(),
                value: f64::NAN,
            }));
        }
        // Stage every file, commit by writing state.json, then move the staged files into
        // place: a crash at any point leaves one complete checkpoint (see `checkpoint::settle`).
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
        checkpoint::settle(&self.dir)?;
        self.last_checkpoint = step;
        Ok(None)
    }

    /// [`Trainer::commit`], telling the observer, or rolling back if the weights diverged.
    fn commit_or_roll_back(&mut self, snap: Snapshot, obs: &mut dyn Observer) -> Result<bool> {
        match self.commit(&snap)? {
            None => {
                obs.on_checkpoint(snap.state.step);
                Ok(true)
            }
            Some(d) => {
                self.roll_back(snap.state.step, d, obs)?;
                Ok(false)
            }
        }
    }

    /// The config with the recovery back-off applied to the sampler.
    fn effective_config(&self) -> TrainConfig {
        let mut cfg = self.cfg.clone();
        cfg.sgld.step_size *= self.state.sgld_scale;
        cfg.sgld.steps += self.state.extra_sgld_steps;
        cfg
    }

    /// Roll back to the last checkpoint and back off after the divergence `d` seen at
    /// `flagged_step`, or give up after `recovery.max_recoveries` recoveries.
    fn roll_back(
        &mut self,
        flagged_step: u64,
        d: Divergence,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        if self.monitor.exhausted(&self.state) {
            return Err(Error::Diverged {
                step: flagged_step,
                what: format!("{} (after {} recoveries)", d.what, self.state.recoveries),
                value: d.value,
                last_checkpoint: self.last_checkpoint,
                run_dir: self.dir.clone(),
            });
        }
        let restored = checkpoint::settle(&self.dir)?;
        let loaded = load_checkpoint(
            &self.cfg,
            &self.dir,
            &self.device,
            restored.step,
            &self.train,
            &self.start,
        )?;
        self.state = self.monitor.back_off(&self.state, restored);
        (self.model, self.optim, self.buffer, self.critic) =
            (loaded.model, loaded.optim, loaded.buffer, loaded.critic);
        // Chains that hold NaN or saturated values would diverge again: restart them.
        let saturation = self.monitor.config().chain_saturation;
        let reinit_chains = match self.buffer.as_mut() {
            Some(b) => b.reinit_broken(saturation, &mut self.state.rng),
            None => 0,
        };
        self.log.truncate_after(self.state.step)?;
        let s = &self.state;
        let event = RecoveryLine {
            event: "recovery".into(),
            step: s.step,
            flagged_step,
            what: d.what,
            value: d.value,
            recoveries: s.recoveries,
            lr_scale: s.lr_scale,
            sgld_step_scale: s.sgld_scale,
            extra_sgld_steps: s.extra_sgld_steps,
            reinit_chains,
        };
        self.log.write(&event)?;
        tracing::warn!(step = flagged_step, what = %event.what, value = d.value, "divergence: rolled back to step {} and backed off", s.step);
        obs.on_recovery(&event);
        Ok(())
    }

    /// Train until [`Trainer::total_steps`], checkpointing on the way.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<Summary> {
        let total = self.total_steps();
        obs.on_start(self.state.step, total);
        let mut summary = Summary {
            step: self.state.step,
            last: None,
            valid: None,
        };
        while self.state.step < total {
            self.train_step(total, obs, &mut summary)?;
        }
        summary.step = self.state.step;
        Ok(summary)
    }

    /// One step: compute it, judge it, then commit the pending checkpoint and keep the step,
    /// or roll back.
    fn train_step(
        &mut self,
        total: u64,
        obs: &mut dyn Observer,
        summary: &mut Summary,
    ) -> Result<()> {
        let t0 = Instant::now();
        let step = self.state.step;
        // Burn's own generator (dropout masks) is re-seeded from (seed, step), so that it
        // too is a function of the step and a resumed run draws the same masks.
        self.device
            .seed(self.cfg.seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (indices, epoch) = self.sampler.indices(step);
        let (aug, rng) = (&self.cfg.data.augment, &mut self.state.rng);
        let batch = if self.cfg.plain_data_rows() {
            self.train.batch_with_plain(indices, aug, rng)
        } else {
            self.train.batch(indices, aug, rng)
        };
        let scale = self.state.lr_scale;
        let cfg = self.effective_config();
        let inputs = StepInputs {
            cfg: &cfg,
            engine: self.engine,
            batch: &batch,
            shape: self.train.shape,
            num_classes: self.train.num_classes,
            lr: self.cfg.optim.lr_at(step, epoch, self.planned_steps()) * scale,
            critic_lr: cfg.loss.lsd.critic_lr * scale,
            optim: &mut self.optim,
            buffer: self.buffer.as_mut(),
            critic: self.critic.as_mut(),
            rng: &mut self.state.rng,
            device: &self.device,
        };
        let out = step::iteration_on(self.model.clone(), inputs, &self.devices);
        let flagged = match &out {
            Ok((_, m)) => self.monitor.watch(m, &self.state),
            Err(d) => Some(d.clone()),
        };
        let (model, mut m) = match (out, flagged) {
            (Ok(kept), None) => kept,
            (_, Some(d)) => return self.roll_back(step + 1, d, obs),
            (Err(_), None) => unreachable!("an error is always flagged"),
        };
        if let Some(snap) = self.pending.take()
            && !self.commit_or_roll_back(snap, obs)?
        {
            return Ok(());
        }
        self.model = model;
        self.monitor.record(&mut self.state, m.loss);
        self.state.step += 1;
        self.state.elapsed_s += t0.elapsed().as_secs_f64();
        m.step = self.state.step;
        m.epoch = epoch;
        self.after_step(m, epoch, total, obs, summary)
    }

    /// What is due once a step is kept: its metrics line, validation, a checkpoint.
    fn after_step(
        &mut self,
        m: StepMetrics,
        epoch: u64,
        total: u64,
        obs: &mut dyn Observer,
        summary: &mut Summary,
    ) -> Result<()> {
        let due = self
            .cfg
            .schedule
            .after(self.state.step, total, self.steps_per_epoch());
        if due.log {
            self.log.write(&m)?;
        }
        obs.on_step(&m);
        summary.last = Some(m);
        let classifies = self.cfg.model_outputs(self.train.num_classes) > 1;
        if due.validate && classifies && !self.valid.is_empty() {
            let e = self.validate(epoch)?;
            self.log.write(&e)?;
            obs.on_eval(&e);
            summary.valid = Some(e);
        }
        if due.checkpoint {
            if due.last {
                self.commit_or_roll_back(self.snapshot(), obs)?;
            } else {
                self.pending = Some(self.snapshot());
            }
        }
        Ok(())
    }

    /// Accuracy and NLL on the validation split after `epoch`.
    fn validate(&self, epoch: u64) -> Result<EvalLine> {
        let r = accuracy(
            self.engine,
            &self.model,
            &self.valid,
            256,
            None,
            &mut Rng::new(self.cfg.seed, 2),
        )?;
        Ok(EvalLine {
            event: "valid".into(),
            step: self.state.step,
            epoch: epoch + 1,
            valid_acc: r.accuracy,
            valid_nll: r.nll,
        })
    }
}

/// The recovery line of chains restarted when a run is resumed because its saved buffer
/// held NaN or infinite values (no back-off: the repair is the restart).
fn repair_line(state: &RunState, reinit_chains: usize) -> RecoveryLine {
    RecoveryLine {
        event: "recovery".into(),
        step: state.step,
        flagged_step: state.step,
        what: format!("non-finite chains in {}", files::BUFFER),
        value: reinit_chains as f64,
        recoveries: state.recoveries,
        lr_scale: state.lr_scale,
        sgld_step_scale: state.sgld_scale,
        extra_sgld_steps: state.extra_sgld_steps,
        reinit_chains,
    }
}
