//! The persistent replay buffer of SGLD chains (Du & Mordatch 2019; JEM defaults: 10,000
//! images, 5% of the chains drawn each time restarted from uniform noise).
//!
//! With class-conditional sampling the buffer is partitioned: class `k` owns the slots
//! `k * size / classes .. (k + 1) * size / classes`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CheckpointError, ConfigError};
use crate::init::{ChainInit, ChainStart};
use crate::rng::Rng;
use crate::tensor_file::{check_finite, read_safetensors, write_safetensors};

/// Replay buffer settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Number of stored chains.
    pub size: usize,
    /// Probability that a drawn chain restarts from uniform noise in `[-1, 1]`.
    pub reinit_freq: f32,
    /// Class-conditional chains (a partition per class, sampling `log p(x, y)`).
    pub conditional: bool,
    /// Where chains start and restart: uniform noise or JEM++'s class Gaussians.
    pub init: ChainInit,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            size: 10_000,
            reinit_freq: 0.05,
            conditional: false,
            init: ChainInit::Uniform,
        }
    }
}

impl BufferConfig {
    /// Check against the number of classes and the chains drawn per iteration
    /// ([`crate::sgld::SgldConfig::chains_for`] the batch size).
    pub fn validate(&self, num_classes: usize, chains: usize) -> Result<(), ConfigError> {
        if self.size == 0 {
            return Err(ConfigError::field("buffer.size", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.reinit_freq) {
            return Err(ConfigError::field(
                "buffer.reinit_freq",
                format!("{}: must be in [0, 1]", self.reinit_freq),
            ));
        }
        if self.conditional && !self.size.is_multiple_of(num_classes) {
            return Err(ConfigError::field(
                "buffer.size",
                format!(
                    "{} is not divisible by the {num_classes} classes, as class-conditional sampling needs",
                    self.size
                ),
            ));
        }
        let per_chain_pool = if self.conditional {
            self.size / num_classes
        } else {
            self.size
        };
        if per_chain_pool == 0 || (!self.conditional && self.size < chains) {
            return Err(ConfigError::field(
                "buffer.size",
                format!(
                    "{} is smaller than the {chains} chains drawn per iteration (sgld.chains, by default the batch size)",
                    self.size
                ),
            ));
        }
        Ok(())
    }
}

/// Chains drawn for one iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    /// Buffer slots the chains came from (write the samples back there).
    pub slots: Vec<usize>,
    /// Start images `[b, c, h, w]`.
    pub start: Vec<f32>,
    /// Class of each chain (the partition's class; only for a conditional buffer).
    pub labels: Option<Vec<usize>>,
    /// How many chains were restarted from noise.
    pub n_reinit: usize,
}

/// The stored chains, `[size, c, h, w]` on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayBuffer {
    data: Vec<f32>,
    shape: [usize; 3],
    num_classes: usize,
    conditional: bool,
    start: ChainStart,
}

impl ReplayBuffer {
    /// A buffer of uniform noise in `[-1, 1]`.
    pub fn uniform(
        cfg: &BufferConfig,
        shape: [usize; 3],
        num_classes: usize,
        rng: &mut Rng,
    ) -> Self {
        Self::new(cfg, shape, num_classes, ChainStart::Uniform, rng)
    }

    /// A buffer whose chains start (and restart) from `start`; a conditional buffer's
    /// partition `k` starts from class `k`'s distribution.
    pub fn new(
        cfg: &BufferConfig,
        shape: [usize; 3],
        num_classes: usize,
        start: ChainStart,
        rng: &mut Rng,
    ) -> Self {
        let n = shape.iter().product::<usize>();
        let mut data = vec![0.0f32; cfg.size * n];
        let classes: Option<Vec<usize>> = cfg.conditional.then(|| {
            let per = cfg.size / num_classes;
            (0..cfg.size)
                .map(|i| (i / per).min(num_classes - 1))
                .collect()
        });
        start.fill(&mut data, cfg.size, classes.as_deref(), rng);
        ReplayBuffer {
            data,
            shape,
            num_classes,
            conditional: cfg.conditional,
            start,
        }
    }

    /// The same chains, restarted from `start` from now on (a loaded buffer starts uniform).
    pub fn with_start(mut self, start: ChainStart) -> Self {
        self.start = start;
        self
    }

    /// Class of the partition holding chain `i` (conditional buffers only).
    fn class_of(&self, i: usize) -> Option<usize> {
        self.conditional
            .then(|| (i / (self.len() / self.num_classes)).min(self.num_classes - 1))
    }

    /// Number of chains.
    pub fn len(&self) -> usize {
        self.data.len() / self.image_len()
    }

    /// Whether the buffer holds no chain.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Image shape `[c, h, w]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Chain `i`.
    pub fn chain(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.data[i * n..(i + 1) * n]
    }

    /// Draw `batch` chains. For a conditional buffer `labels` gives each chain's class (or
    /// `None` for uniformly random classes); an unconditional buffer ignores it.
    pub fn draw(
        &self,
        batch: usize,
        labels: Option<&[usize]>,
        reinit_freq: f32,
        rng: &mut Rng,
    ) -> Draw {
        let n = self.image_len();
        let (slots, labels) = if self.conditional {
            let per = self.len() / self.num_classes;
            let ys: Vec<usize> = match labels {
                Some(l) => l.to_vec(),
                None => (0..batch).map(|_| rng.below(self.num_classes)).collect(),
            };
            let slots = ys.iter().map(|&y| y * per + rng.below(per)).collect();
            (slots, Some(ys))
        } else {
            ((0..batch).map(|_| rng.below(self.len())).collect(), None)
        };
        let mut start = Vec::with_capacity(batch * n);
        let mut n_reinit = 0;
        for &s in &slots {
            if rng.uniform() < reinit_freq {
                n_reinit += 1;
                let from = start.len();
                start.resize(from + n, 0.0);
                let class = self.class_of(s);
                self.start.fill(
                    &mut start[from..],
                    1,
                    class.as_ref().map(std::slice::from_ref),
                    rng,
                );
            } else {
                start.extend_from_slice(self.chain(s));
            }
        }
        Draw {
            slots,
            start,
            labels,
            n_reinit,
        }
    }

    /// Write `samples` (`[slots.len(), c, h, w]`) back into `slots`.
    pub fn store(&mut self, slots: &[usize], samples: &[f32]) {
        let n = self.image_len();
        for (k, &s) in slots.iter().enumerate() {
            self.data[s * n..(s + 1) * n].copy_from_slice(&samples[k * n..(k + 1) * n]);
        }
    }

    /// Restart (from the buffer's start distribution) every chain holding a non-finite value
    /// or one beyond `saturation` in magnitude; returns how many were restarted.
    pub fn reinit_broken(&mut self, saturation: f32, rng: &mut Rng) -> usize {
        let n = self.image_len();
        let mut count = 0;
        for i in 0..self.len() {
            let chain = &self.data[i * n..(i + 1) * n];
            if chain.iter().any(|v| !v.is_finite() || v.abs() > saturation) {
                let class = self.class_of(i);
                let start = self.start.clone();
                start.fill(
                    &mut self.data[i * n..(i + 1) * n],
                    1,
                    class.as_ref().map(std::slice::from_ref),
                    rng,
                );
                count += 1;
            }
        }
        count
    }

    /// Number of chains holding a NaN or infinite value.
    pub fn non_finite_chains(&self) -> usize {
        self.data
            .chunks_exact(self.image_len())
            .filter(|c| c.iter().any(|v| !v.is_finite()))
            .count()
    }

    /// Save as safetensors (`buffer`, with the layout in the metadata), atomically.
    pub fn save(&self, path: &Path, step: u64) -> Result<(), CheckpointError> {
        let mut meta = HashMap::new();
        meta.insert("num_classes".to_string(), self.num_classes.to_string());
        meta.insert("conditional".to_string(), self.conditional.to_string());
        let shape = [self.len(), self.shape[0], self.shape[1], self.shape[2]];
        write_safetensors(path, step, meta, &[("buffer", &self.data, &shape)])
    }

    /// Load a buffer saved by [`ReplayBuffer::save`], checking it against the expected layout;
    /// a chain holding NaN or infinite values is an error naming the file.
    pub fn load(
        path: &Path,
        step: u64,
        cfg: &BufferConfig,
        shape: [usize; 3],
        num_classes: usize,
    ) -> Result<Self, CheckpointError> {
        let buffer = Self::load_for_training(path, step, cfg, shape, num_classes)?;
        check_finite(path, "buffer", &buffer.data)?;
        Ok(buffer)
    }

    /// [`ReplayBuffer::load`] for a run that goes on: chains holding NaN or infinite values
    /// are kept, for the trainer to restart at once ([`ReplayBuffer::reinit_broken`]; a
    /// chain is data, not a parameter, and restarting it is the designed repair).
    pub fn load_for_training(
        path: &Path,
        step: u64,
        cfg: &BufferConfig,
        shape: [usize; 3],
        num_classes: usize,
    ) -> Result<Self, CheckpointError> {
        let mut file = read_safetensors(path, step)?;
        let (data, dims) = file.take_any("buffer")?;
        let want = vec![cfg.size, shape[0], shape[1], shape[2]];
        if dims != want {
            return Err(CheckpointError::corrupt(
                path,
                format!("buffer shape {dims:?}, the config needs {want:?}"),
            ));
        }
        Ok(ReplayBuffer {
            data,
            shape,
            num_classes,
            conditional: cfg.conditional,
            start: ChainStart::Uniform,
        })
    }
}
