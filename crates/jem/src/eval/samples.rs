//! Drawing samples from a trained run: fresh chains from uniform noise or chains continued
//! from the saved replay buffer, unconditional or of given classes.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Split;
use crate::energy::{Target, one_hot};
use crate::eval::run::Run;
use crate::init::{ChainInit, ClassGaussians};
use crate::model::Classifier;
use crate::rng::Rng;
use crate::sgld::SgldConfig;
use crate::{Error, Result};

/// Images per forward pass when sample quality reads the feature run's outputs.
const BATCH: usize = 256;

/// Where chains start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// The run's saved replay buffer (falls back to an error if it has none).
    Buffer,
    /// Uniform noise in `[-1, 1]`.
    Noise,
    /// JEM++'s informative start: a draw from the Gaussian with full covariance fitted to the
    /// run's training images of the chain's class (of a uniformly drawn class for
    /// unconditional chains), where a run trained with `buffer.init = "informative"` started
    /// and restarted its chains.
    Informative,
}

impl Start {
    /// Where class-conditional chains of `run` start when not told: its buffer when the
    /// buffer is partitioned by class (its chains already sample `log p(x, y)`), else where the
    /// run started its chains in training: the class Gaussians of an informative run, noise
    /// otherwise (an unconditional buffer's chains are of random classes, and a few steps from
    /// them do not give rows of the asked-for class).
    pub fn for_classes(run: &Run) -> Start {
        let sampled = run.config.loss.needs_sampling();
        if run.config.buffer.conditional && sampled {
            Start::Buffer
        } else if run.config.buffer.init == ChainInit::Informative && sampled {
            Start::Informative
        } else {
            Start::Noise
        }
    }

    /// SGLD steps when not told: 20 from the buffer, 200 from noise or the class Gaussians.
    pub fn default_steps(self) -> usize {
        match self {
            Start::Buffer => 20,
            Start::Noise | Start::Informative => 200,
        }
    }

    /// How tables and messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Start::Buffer => "the buffer",
            Start::Noise => "noise",
            Start::Informative => "the class Gaussians",
        }
    }
}

/// Where a set of chains starts and how it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainSpec {
    /// Where chains start.
    pub start: Start,
    /// The sampler's settings (its `steps` included).
    pub params: SgldConfig,
}

/// Which samples.
#[derive(Clone, Debug, PartialEq)]
pub enum Classes {
    /// `log p(x)`.
    Unconditional,
    /// `log p(x, y)` for one class.
    One(usize),
    /// One row of samples per class.
    All,
}

/// Samples and how to lay them out.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// `[n, c, h, w]` in (roughly) `[-1, 1]`.
    pub images: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Suggested grid columns.
    pub cols: usize,
}

/// Run `params.steps` SGLD steps for `n` chains (per class with [`Classes::All`]).
pub fn draw_samples(
    run: &Run,
    n: usize,
    classes: &Classes,
    start: Start,
    params: &SgldConfig,
    rng: &mut Rng,
) -> Result<Samples> {
    draw(run, n, classes, start, params, None, rng)
}

/// The class Gaussians of `run`'s training images, fitted once, when any of `starts` is
/// [`Start::Informative`].
fn fit_if_informative(run: &Run, starts: &[Start]) -> Result<Option<ClassGaussians>> {
    if !starts.contains(&Start::Informative) {
        return Ok(None);
    }
    Ok(Some(fit_gaussians(run)?))
}

/// The class Gaussians of `run`'s training images (JEM++'s informative start).
fn fit_gaussians(run: &Run) -> Result<ClassGaussians> {
    let device = run.model.device().inner();
    ClassGaussians::fit(&run.data(Split::Train)?, &device)
}

/// [`draw_samples`], with the class Gaussians of an informative start fitted here unless
/// given.
fn draw(
    run: &Run,
    n: usize,
    classes: &Classes,
    start: Start,
    params: &SgldConfig,
    gaussians: Option<&ClassGaussians>,
    rng: &mut Rng,
) -> Result<Samples> {
    let k = run.num_classes();
    let labels: Option<Vec<usize>> = match classes {
        Classes::Unconditional => None,
        Classes::One(c) if *c >= k => {
            return Err(Error::Shape(format!(
                "class {c} does not exist: the run has {k} classes"
            )));
        }
        Classes::One(c) => Some(vec![*c; n]),
        Classes::All => Some((0..k).flat_map(|c| std::iter::repeat_n(c, n)).collect()),
    };
    if labels.is_some() && !run.is_classifier() {
        return Err(Error::Shape(format!(
            "{} is a scalar energy model (objective igebm without --conditional): it samples unconditionally only",
            run.dir.display()
        )));
    }
    let total = labels.as_ref().map_or(n, Vec::len);
    let [c, h, w] = run.shape();
    let device = run.model.device().inner();
    let init = chain_starts(run, total, labels.as_deref(), start, gaussians, rng)?;
    let x = Tensor::<4>::from_data(TensorData::new(init, [total, c, h, w]), &device);
    let target = match &labels {
        None => Target::Marginal,
        Some(ys) => Target::Joint(one_hot(ys, k, &device)),
    };
    let out = run.engine.sgld(&run.model, x, &target, params, rng);
    let cols = match classes {
        Classes::All => n,
        _ => (total as f64).sqrt().ceil() as usize,
    };
    Ok(Samples {
        images: out
            .samples
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 samples"),
        n: total,
        cols,
    })
}

/// The starting images of `total` chains (of `labels`' classes where given) from `start`.
fn chain_starts(
    run: &Run,
    total: usize,
    labels: Option<&[usize]>,
    start: Start,
    gaussians: Option<&ClassGaussians>,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    if start == Start::Buffer {
        let buffer = run.buffer()?.ok_or_else(|| {
            Error::Shape(format!(
                "{} saved no replay buffer (a softmax run?); use --from noise",
                run.dir.display()
            ))
        })?;
        return Ok(buffer.draw(total, labels, 0.0, rng).start);
    }
    let len: usize = run.shape().iter().product();
    let mut v = vec![0.0f32; total * len];
    if start == Start::Noise {
        rng.fill_uniform(&mut v, -1.0, 1.0);
        return Ok(v);
    }
    let fitted;
    let gaussians = match gaussians {
        Some(g) => g,
        None => {
            fitted = fit_gaussians(run)?;
            &fitted
        }
    };
    let k = run.num_classes();
    let classes: Vec<usize> = match labels {
        Some(ys) => ys.to_vec(),
        None => (0..total).map(|_| rng.below(k)).collect(),
    };
    gaussians.sample_into(&classes, &mut v, rng);
    Ok(v)
}

/// Sample quality of a run, measured in the feature space of another run's classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Fréchet distance between features of `n` samples and of `n` test images.
    pub fid: f64,
    /// The same distance between two halves of the test images: the floor to read `fid`
    /// against.
    pub fid_test_halves: f64,
    /// Inception-style score of the samples under the feature run's classifier.
    pub inception_score: f64,
    /// The same score of the test images (its ceiling in practice).
    pub inception_score_test: f64,
    /// Mean pairwise pixel distance of class-conditional samples, per class.
    pub diversity: Vec<f64>,
    /// Mean pairwise pixel distance of test images, per class (the data's own spread).
    pub diversity_test: Vec<f64>,
    /// Fraction of the class-conditional samples that the feature run's classifier assigns
    /// to the class they were drawn for (none from a scalar energy).
    #[serde(default)]
    pub sample_accuracy: Option<f64>,
    /// The same fraction per class.
    #[serde(default)]
    pub sample_accuracy_per_class: Vec<f64>,
    /// Samples used for FID and the score.
    pub n: usize,
}

/// Each row of `logits` (`k` per row) through a softmax ([`crate::cnn_cpu::softmax`]).
fn probs(logits: &[f32], k: usize) -> Vec<f32> {
    logits
        .chunks_exact(k.max(1))
        .flat_map(|row| crate::cnn_cpu::softmax(row).1)
        .collect()
}

/// Per class `c < classes`, the fraction of its `m` consecutive rows of `probs` (`k` per row)
/// whose largest probability is class `c`.
pub fn class_accuracy(probs: &[f32], k: usize, m: usize, classes: usize) -> Vec<f64> {
    (0..classes)
        .map(|c| {
            let rows = probs.chunks_exact(k).skip(c * m).take(m);
            let hits = rows
                .filter(|p| {
                    let arg = (0..k).fold(0, |a, j| if p[j] > p[a] { j } else { a });
                    arg == c
                })
                .count();
            hits as f64 / m as f64
        })
        .collect()
}

/// Draw `n` unconditional samples (by `uncond`) and `per_class` samples of each class (by
/// `by_class`) from `run`, and measure them against the run's test images in
/// `feature_run`'s feature space.
pub fn sample_quality(
    run: &Run,
    feature_run: &Run,
    n: usize,
    per_class: usize,
    uncond: &ChainSpec,
    by_class: &ChainSpec,
    rng: &mut Rng,
) -> Result<(QualityReport, Samples)> {
    if feature_run.shape() != run.shape() {
        return Err(Error::Shape(format!(
            "the feature run {} takes images of {:?}, the run's samples are {:?}",
            feature_run.dir.display(),
            feature_run.shape(),
            run.shape()
        )));
    }
    let test = run.data(crate::data::Split::Test)?;
    let n = n.min(test.len());
    if n < 2 {
        return Err(Error::Shape(
            "sample quality needs at least 2 images".into(),
        ));
    }
    let shape = run.shape();
    let k = feature_run.num_classes();
    let features = feature_run.classifier("the feature run of sample quality")?;
    // One fit of the class Gaussians serves both draws.
    let gaussians = fit_if_informative(run, &[uncond.start, by_class.start])?;
    let samples = draw(
        run,
        n,
        &Classes::Unconditional,
        uncond.start,
        &uncond.params,
        gaussians.as_ref(),
        rng,
    )?;
    let of_samples = features.outputs(&samples.images, shape, BATCH);
    let real = features.outputs(&test.images[..n * test.image_len()], shape, BATCH);
    let (fs, fr, d) = (&of_samples.features, &real.features, of_samples.dim);
    let (ps, pr) = (probs(&of_samples.logits, k), probs(&real.logits, k));
    let half = (n / 2) * d;
    // Per-class diversity and sample accuracy need class-conditional samples (none from a
    // scalar energy).
    let (diversity, accuracy) = if run.is_classifier() {
        class_quality(
            run,
            features,
            k,
            per_class.max(2),
            by_class,
            gaussians.as_ref(),
            rng,
        )?
    } else {
        (Vec::new(), Vec::new())
    };
    let diversity_test = test_diversity(&test, run.num_classes(), per_class.max(2));
    let report = QualityReport {
        fid: crate::eval::fid::fid(fs, fr, d),
        fid_test_halves: crate::eval::fid::fid(&fr[..half], &fr[half..2 * half], d),
        inception_score: crate::eval::fid::inception_score(&ps, k),
        inception_score_test: crate::eval::fid::inception_score(&pr, k),
        diversity,
        diversity_test,
        sample_accuracy: (!accuracy.is_empty())
            .then(|| accuracy.iter().sum::<f64>() / accuracy.len() as f64),
        sample_accuracy_per_class: accuracy,
        n,
    };
    Ok((report, samples))
}

/// Per class `c < classes`, the mean pairwise pixel distance of the first `m` test images of
/// class `c` (the data's own spread, beside the samples' diversity).
fn test_diversity(test: &crate::data::Dataset, classes: usize, m: usize) -> Vec<f64> {
    let len = test.image_len();
    (0..classes)
        .map(|c| {
            let idx: Vec<usize> = (0..test.len())
                .filter(|&i| test.labels[i] as usize == c)
                .take(m)
                .collect();
            crate::eval::fid::mean_pairwise_distance(&test.subset(&idx).images, len)
        })
        .collect()
}

/// Per class, the diversity of `m` class-conditional samples drawn by `by_class` and the
/// fraction of them that `features` (a classifier of `k` classes) assigns to their class.
fn class_quality(
    run: &Run,
    features: &Classifier,
    k: usize,
    m: usize,
    by_class: &ChainSpec,
    gaussians: Option<&ClassGaussians>,
    rng: &mut Rng,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (shape, len) = (run.shape(), run.shape().iter().product::<usize>());
    let s = draw(
        run,
        m,
        &Classes::All,
        by_class.start,
        &by_class.params,
        gaussians,
        rng,
    )?;
    let diversity = s
        .images
        .chunks(m * len)
        .map(|c| crate::eval::fid::mean_pairwise_distance(c, len))
        .collect();
    let p = probs(&features.logits(&s.images, shape, BATCH), k);
    Ok((diversity, class_accuracy(&p, k, m, run.num_classes())))
}

#[cfg(test)]
mod tests {
    use super::class_accuracy;

    /// Two classes, three samples each: rows are assigned to their largest probability.
    #[test]
    fn sample_accuracy_counts_rows_assigned_to_their_class() {
        let probs = [
            0.9, 0.1, 0.2, 0.8, 0.6, 0.4, // class 0: 2 of 3
            0.3, 0.7, 0.1, 0.9, 0.2, 0.8, // class 1: 3 of 3
        ];
        let acc = class_accuracy(&probs, 2, 3, 2);
        assert!(
            (acc[0] - 2.0 / 3.0).abs() < 1e-12 && acc[1] == 1.0,
            "{acc:?}"
        );
    }
}
