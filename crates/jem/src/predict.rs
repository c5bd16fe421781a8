//! A trained run put to work: [`Predictor`] classifies images and flags the ones that do not
//! look like its training data, by the run's OOD threshold ([`crate::eval::threshold`]).
//! It loads the config, the weights and the threshold only: no data set, no optimiser state,
//! no replay buffer, no training code.
//!
//! ```no_run
//! use jem::data::Images;
//! use jem::predict::Predictor;
//!
//! let predictor = Predictor::load("runs/fashion-jem".as_ref())?;
//! let images = jem::data::read_images("shoe.png".as_ref())?; // [0, 1], any of PNG, .npy, IDX
//! let images = images.fit(predictor.shape(), false, "shoe.png".as_ref())?;
//! for p in predictor.predict(&images)? {
//!     println!("{} {:.3} ood={:?}", p.label, p.confidence, p.ood);
//! }
//! # Ok::<(), jem::Error>(())
//! ```

use std::path::Path;
use std::sync::Mutex;

use burn::prelude::*;
use serde::Serialize;

use crate::Result;
use crate::cnn_cpu::{self, CnnKernel};
use crate::data::{DataError, DatasetKind, Images};
use crate::eval::ood::{Score, score_images};
use crate::eval::run::Run;
use crate::eval::store::load_results;
use crate::eval::threshold::OodThreshold;
use crate::sgld::Precision;

/// What the predictor says of one image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable class.
    pub class: usize,
    /// Its name.
    pub label: String,
    /// `p(y|x)` for every class.
    pub probs: Vec<f32>,
    /// `max_y p(y|x)`.
    pub confidence: f32,
    /// The OOD score of the run's threshold (`logp` when it has none); higher is more
    /// in-distribution.
    pub ood_score: f64,
    /// Whether the image is out of distribution by the run's threshold (`None` without one).
    pub ood: Option<bool>,
    /// The energy `E(x) = -logsumexp_y f(x)[y]`.
    pub energy: f32,
}

/// What a predictor serves (`jem serve`'s `GET /v1/model`).
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The run directory.
    pub run: String,
    /// The model config (architecture and sizes).
    pub model: crate::model::ModelConfig,
    /// The data set it was trained on.
    pub dataset: DatasetKind,
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// The checkpoint step.
    pub step: u64,
    /// Input shape `[c, h, w]`, values in `[0, 1]`.
    pub input_shape: [usize; 3],
    /// The OOD threshold, when the run has one.
    pub threshold: Option<OodThreshold>,
    /// The numeric headline figures of each saved evaluation (`eval/NAME.json`).
    pub evaluations: serde_json::Map<String, serde_json::Value>,
}

/// A trained classifier with its OOD threshold.
pub struct Predictor {
    run: Run,
    kernel: Option<Mutex<CnnKernel>>,
    threshold: Option<OodThreshold>,
    batch_size: usize,
}

impl Predictor {
    /// Open a run directory on the default device ([`crate::default_device`]).
    pub fn load(run_dir: &Path) -> Result<Self> {
        Self::load_on(run_dir, &crate::default_device())
    }

    /// Open a run directory on `device`. A run whose model is a scalar energy is refused.
    pub fn load_on(run_dir: &Path, device: &Device) -> Result<Self> {
        let run = Run::open(run_dir, device)?;
        run.classifier("prediction")?;
        let threshold = OodThreshold::load(run_dir)?;
        if let Some(t) = &threshold
            && t.step != run.state.step
        {
            tracing::warn!(
                "{}: the OOD threshold was set at step {} but the model is at step {}; run `jem threshold` again",
                run_dir.display(),
                t.step,
                run.state.step
            );
        }
        let kernel = run
            .engine
            .kernel(&run.model, Precision::F32)
            .map(Mutex::new);
        Ok(Predictor {
            run,
            kernel,
            threshold,
            batch_size: 256,
        })
    }

    /// The input shape `[c, h, w]`.
    pub fn shape(&self) -> [usize; 3] {
        self.run.shape()
    }

    /// The OOD threshold, when the run has one.
    pub fn threshold(&self) -> Option<&OodThreshold> {
        self.threshold.as_ref()
    }

    /// Set the largest batch one forward pass takes (default 256).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// What this predictor serves.
    pub fn info(&self) -> Result<ModelInfo> {
        let kind = self.run.config.data.dataset;
        let mut evaluations = serde_json::Map::new();
        for (name, v) in load_results(&self.run.dir)? {
            let figures: serde_json::Map<String, serde_json::Value> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, x)| x.is_number())
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect();
            evaluations.insert(name, figures.into());
        }
        Ok(ModelInfo {
            run: self.run.dir.display().to_string(),
            model: self.run.config.model.clone(),
            dataset: kind,
            classes: kind.class_names().iter().map(|s| s.to_string()).collect(),
            step: self.run.state.step,
            input_shape: self.shape(),
            threshold: self.threshold.clone(),
            evaluations,
        })
    }

    /// Classify `images` (values in `[0, 1]`, of [`Predictor::shape`]); one [`Prediction`]
    /// each, in order.
    pub fn predict(&self, images: &Images) -> Result<Vec<Prediction>> {
        if images.shape != self.shape() {
            return Err(DataError::Shape {
                path: "images".into(),
                found: images.shape,
                expected: self.shape(),
            }
            .into());
        }
        let x = images.to_model_range(); // [n, c, h, w] in [-1, 1]
        let logits = self.logits(&x); // [n, k]
        let score = self
            .threshold
            .as_ref()
            .map_or(Score::Logp, |t| t.score.clone());
        let k = self.run.num_classes();
        let grad_scores = (!score.of_logits_alone()).then(|| {
            let s = score_images(
                self.run.engine,
                &self.run.model,
                &x,
                self.shape(),
                std::slice::from_ref(&score),
                self.batch_size,
            );
            s.into_iter().next().expect("one score")
        });
        let names = self.run.config.data.dataset.class_names();
        let out = logits
            .chunks_exact(k)
            .enumerate()
            .map(|(i, row)| {
                let (lse, probs) = cnn_cpu::softmax(row);
                let (class, &confidence) = probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .expect("at least one class");
                let ood_score = match &grad_scores {
                    Some(g) => g[i],
                    None => f64::from(score.of_logits(row).expect("a score of the logits")),
                };
                Prediction {
                    class,
                    label: names
                        .get(class)
                        .map_or_else(|| class.to_string(), |s| s.to_string()),
                    confidence,
                    ood_score,
                    ood: self.threshold.as_ref().map(|t| !t.accepts(ood_score)),
                    energy: -lse,
                    probs,
                }
            })
            .collect();
        Ok(out)
    }

    /// The logits of `x` (`[n, c, h, w]`, model range), `[n, k]` row-major, by batches.
    fn logits(&self, x: &[f32]) -> Vec<f32> {
        let shape = self.shape();
        let len: usize = shape.iter().product();
        let n = x.len() / len;
        let mut out = Vec::with_capacity(n * self.run.num_classes());
        for start in (0..n).step_by(self.batch_size) {
            let b = (n - start).min(self.batch_size);
            let chunk = &x[start * len..(start + b) * len];
            match &self.kernel {
                Some(k) => {
                    // The kernel keeps no state between calls: a poisoned lock is usable.
                    let mut k = k.lock().unwrap_or_else(|e| e.into_inner());
                    out.extend(k.forward(chunk, b, shape));
                }
                None => out.extend(self.run.model.logits(chunk, shape, b)),
            }
        }
        out
    }
}
