//! A trained run opened for evaluation: its config, weights and (when saved) replay buffer.

use std::path::{Path, PathBuf};

use crate::Result;
use crate::buffer::ReplayBuffer;
use crate::checkpoint::{self, RunState, files};
use crate::config::TrainConfig;
use crate::data::{Dataset, Split};
use crate::engine::Engine;
use crate::model::Classifier;
use crate::tensor_file::load_model;
use burn::prelude::Device;

/// A run directory loaded for evaluation.
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its resolved config.
    pub config: TrainConfig,
    /// Counters at the last checkpoint.
    pub state: RunState,
    /// The model, on an autodiff device (input gradients are available).
    pub model: Classifier,
    /// The compute engine of every evaluation of this run (chosen once, when it is opened).
    pub engine: Engine,
    shape: [usize; 3],
    num_classes: usize,
}

impl Run {
    /// Open `dir`'s last checkpoint on `device`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let config = TrainConfig::load_run(dir)?;
        let state = checkpoint::settle(dir)?;
        let kind = config.data.dataset;
        let shape = kind.shape();
        let num_classes = kind.num_classes();
        let device = device.clone().autodiff();
        let model = config
            .model
            .init(shape[0], config.model_outputs(num_classes), &device);
        let model = load_model(model, &dir.join(files::MODEL), Some(state.step))?;
        let engine = Engine::for_model(&model);
        Ok(Run {
            engine,
            dir: dir.to_path_buf(),
            config,
            state,
            model,
            shape,
            num_classes,
        })
    }

    /// Image shape `[c, h, w]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Whether the model classifies (an unconditional IGEBM is a scalar energy instead).
    pub fn is_classifier(&self) -> bool {
        self.config.model_outputs(self.num_classes) > 1
    }

    /// The model, for an evaluation `what` that needs `p(y|x)`: an error naming the run for a
    /// scalar-energy model.
    pub fn classifier(&self, what: &str) -> Result<&Classifier> {
        if self.is_classifier() {
            Ok(&self.model)
        } else {
            Err(crate::Error::NotAClassifier {
                run_dir: self.dir.clone(),
                what: what.to_string(),
            })
        }
    }

    /// The saved replay buffer (`None` for a run that does not sample); a chain holding NaN
    /// or infinite values is an error naming the file.
    pub fn buffer(&self) -> Result<Option<ReplayBuffer>> {
        let path = self.dir.join(files::BUFFER);
        if !self.config.loss.needs_sampling() || !path.exists() {
            return Ok(None);
        }
        Ok(Some(ReplayBuffer::load(
            &path,
            self.state.step,
            &self.config.buffer,
            self.shape,
            self.num_classes,
        )?))
    }

    /// The run's test or validation data, checked against the run's image shape.
    pub fn data(&self, split: Split) -> Result<Dataset> {
        Ok(self.config.data.load_split(split, self.config.seed)?)
    }
}
