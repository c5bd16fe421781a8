//! Out-of-distribution detection: per-image scores of how in-distribution an input looks,
//! out-of-distribution sets (other data sets and generated ones), and AUROC / AUPR / FPR95
//! for every (score, set) pair.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::cnn_cpu::{self, CnnKernel};
use crate::data::{DataError, Dataset, DatasetKind, load_files};
use crate::energy::{Target, input_grad, logsumexp};
use crate::engine::Engine;
use crate::eval::metrics::{aupr, auroc, fpr_at_tpr};
use crate::eval::ood_fused::{self, FusedFit, fit_of};
use crate::eval::ood_maha::{self, MahalanobisFit};
use crate::model::Classifier;
use crate::rng::Rng;

/// A score; higher means "more in-distribution".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Score {
    /// `logsumexp_y f(x)[y]`: unnormalised `log p(x)`.
    Logp,
    /// `max_y p(y|x)`.
    Py,
    /// `-|| d log p(x) / dx ||_2`, the paper's approximate mass: in-distribution images sit
    /// near modes of `p(x)`, where the gradient is small.
    Pxgrad,
    /// `+|| d log p(x) / dx ||_2`, the approximate mass with its sign reversed: for a model
    /// whose density is flat around simple out-of-distribution images (noise, constants,
    /// another data set's digits), the steep gradient is what marks its own data. Which of
    /// the two signs holds is an empirical question `jem eval ood --select` settles on
    /// validation data.
    Gradnorm,
    /// Temperature-scaled energy `T * logsumexp(f(x) / T)` (Liu et al. 2020).
    EnergyT(f32),
    /// `min(z(logp), z(gradnorm))`, standardised on in-distribution images
    /// ([`crate::eval::ood_fused`]); `None` until fitted, which the evaluations do on the
    /// validation split (an unfitted one scores NaN).
    Fused(Option<FusedFit>),
    /// Minus the Mahalanobis distance of the penultimate features to the nearest class mean,
    /// with one covariance shared by the classes ([`crate::eval::ood_maha`]); `None` until
    /// fitted on labelled in-distribution images (the validation split; an unfitted one
    /// scores NaN).
    Mahalanobis(#[serde(with = "crate::eval::ood_maha::shared_fit")] Option<Arc<MahalanobisFit>>),
}

impl Score {
    /// Name used in tables and JSON.
    pub fn name(&self) -> String {
        match self {
            Score::Logp => "logp".into(),
            Score::Py => "py".into(),
            Score::Pxgrad => "pxgrad".into(),
            Score::Gradnorm => "gradnorm".into(),
            Score::EnergyT(t) => format!("energy-t{t}"),
            Score::Fused(_) => "fused".into(),
            Score::Mahalanobis(_) => "mahalanobis".into(),
        }
    }

    /// Whether the score needs the input gradient of `log p(x)` (`pxgrad`, `gradnorm`,
    /// `fused`), not only the logits.
    pub fn needs_input_grad(&self) -> bool {
        matches!(self, Score::Pxgrad | Score::Gradnorm | Score::Fused(_))
    }

    /// Whether [`Score::of_logits`] gives the score (not so for the scores of the input
    /// gradient or of the features).
    pub fn of_logits_alone(&self) -> bool {
        !(self.needs_input_grad() || matches!(self, Score::Mahalanobis(_)))
    }

    /// The score from `logp` and the input-gradient norm together: the fused score (NaN
    /// while unfitted); `None` for the others.
    pub fn of_parts(&self, logp: f32, norm: f32) -> Option<f64> {
        match self {
            Score::Fused(fit) => {
                Some(fit.map_or(f64::NAN, |f| f.score(f64::from(logp), f64::from(norm))))
            }
            _ => None,
        }
    }

    /// The score from the input-gradient norm `|| d log p(x) / dx ||_2`; `None` for the
    /// scores of the logits.
    pub fn of_grad_norm(&self, norm: f32) -> Option<f32> {
        match self {
            Score::Pxgrad => Some(-norm),
            Score::Gradnorm => Some(norm),
            _ => None,
        }
    }

    /// The score of one image from its logits; `None` for the scores that need the input
    /// gradient ([`Score::needs_input_grad`]).
    pub fn of_logits(&self, logits: &[f32]) -> Option<f32> {
        match self {
            Score::Logp => Some(cnn_cpu::softmax(logits).0),
            Score::Py => Some(
                cnn_cpu::softmax(logits)
                    .1
                    .into_iter()
                    .fold(f32::NEG_INFINITY, f32::max),
            ),
            Score::EnergyT(t) => {
                let scaled: Vec<f32> = logits.iter().map(|l| l / t).collect();
                Some(cnn_cpu::softmax(&scaled).0 * t)
            }
            Score::Pxgrad | Score::Gradnorm | Score::Fused(_) | Score::Mahalanobis(_) => None,
        }
    }

    /// The score [`Score::name`] gives `name` (`logp`, `py`, `pxgrad`, `gradnorm`,
    /// `energy-t<T>`; `fused` and `mahalanobis` unfitted).
    pub fn from_name(name: &str) -> Option<Score> {
        match name {
            "logp" => Some(Score::Logp),
            "py" => Some(Score::Py),
            "pxgrad" => Some(Score::Pxgrad),
            "gradnorm" => Some(Score::Gradnorm),
            "fused" => Some(Score::Fused(None)),
            "mahalanobis" => Some(Score::Mahalanobis(None)),
            _ => name
                .strip_prefix("energy-t")
                .and_then(|t| t.parse::<f32>().ok())
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(Score::EnergyT),
        }
    }
}

/// An out-of-distribution set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OodSet {
    /// The test split of another data set, read from its default directory.
    Dataset(DatasetKind),
    /// Uniform noise in `[-1, 1]`.
    Uniform,
    /// Standard Gaussian noise clipped to `[-1, 1]`.
    Gaussian,
    /// Constant images, one uniform value each.
    Constant,
    /// The in-distribution test images flipped vertically.
    Vflip,
    /// The in-distribution test images inverted (`-x`).
    Invert,
    /// The in-distribution test images with their pixels randomly permuted.
    Shuffle,
    /// Midpoints of random pairs of in-distribution test images (the paper's interp sets).
    Interp,
}

impl OodSet {
    /// Name used in tables and JSON.
    pub fn name(&self) -> String {
        match self {
            OodSet::Dataset(DatasetKind::FashionMnist) => "fashion-mnist".into(),
            OodSet::Dataset(DatasetKind::Mnist) => "mnist".into(),
            OodSet::Dataset(DatasetKind::Cifar10) => "cifar10".into(),
            OodSet::Dataset(DatasetKind::Cifar100) => "cifar100".into(),
            OodSet::Uniform => "uniform".into(),
            OodSet::Gaussian => "gaussian".into(),
            OodSet::Constant => "constant".into(),
            OodSet::Vflip => "vflip".into(),
            OodSet::Invert => "invert".into(),
            OodSet::Shuffle => "shuffle".into(),
            OodSet::Interp => "interp".into(),
        }
    }
}

impl OodSet {
    /// Every set, in the order of `jem eval ood --help`.
    pub const ALL: [OodSet; 11] = [
        OodSet::Dataset(DatasetKind::Mnist),
        OodSet::Dataset(DatasetKind::FashionMnist),
        OodSet::Dataset(DatasetKind::Cifar10),
        OodSet::Dataset(DatasetKind::Cifar100),
        OodSet::Uniform,
        OodSet::Gaussian,
        OodSet::Constant,
        OodSet::Vflip,
        OodSet::Invert,
        OodSet::Shuffle,
        OodSet::Interp,
    ];

    /// The sets drawn from the split being evaluated (every set but the other data sets), in
    /// the order of [`OodSet::ALL`].
    pub fn generated() -> impl Iterator<Item = OodSet> {
        Self::ALL
            .into_iter()
            .filter(|s| !matches!(s, OodSet::Dataset(_)))
    }
}

#[cfg(feature = "clap")]
impl clap::ValueEnum for OodSet {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let name: &'static str = match self {
            OodSet::Dataset(DatasetKind::FashionMnist) => "fashion-mnist",
            OodSet::Dataset(DatasetKind::Mnist) => "mnist",
            OodSet::Dataset(DatasetKind::Cifar10) => "cifar10",
            OodSet::Dataset(DatasetKind::Cifar100) => "cifar100",
            OodSet::Uniform => "uniform",
            OodSet::Gaussian => "gaussian",
            OodSet::Constant => "constant",
            OodSet::Vflip => "vflip",
            OodSet::Invert => "invert",
            OodSet::Shuffle => "shuffle",
            OodSet::Interp => "interp",
        };
        debug_assert_eq!(name, self.name());
        Some(clap::builder::PossibleValue::new(name))
    }
}

impl Score {
    /// Every score; `energy-t` at temperature 1 (the command line sets its temperature),
    /// `fused` and `mahalanobis` unfitted.
    pub const ALL: [Score; 7] = [
        Score::Logp,
        Score::Py,
        Score::Pxgrad,
        Score::Gradnorm,
        Score::EnergyT(1.0),
        Score::Fused(None),
        Score::Mahalanobis(None),
    ];
}

#[cfg(feature = "clap")]
impl clap::ValueEnum for Score {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let name = match self {
            Score::Logp => "logp",
            Score::Py => "py",
            Score::Pxgrad => "pxgrad",
            Score::Gradnorm => "gradnorm",
            Score::EnergyT(_) => "energy-t",
            Score::Fused(_) => "fused",
            Score::Mahalanobis(_) => "mahalanobis",
        };
        Some(clap::builder::PossibleValue::new(name))
    }
}

/// Which images of a data-set OOD set an evaluation sees. Choosing a score on validation data
/// and then reporting it on the same MNIST digits would grade the choice on what made it, so
/// a selection sees one half of the set and the report the other. Generated sets need no
/// halves: they are drawn anew from the split being evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetHalf {
    /// Every image.
    #[default]
    All,
    /// The even-numbered images (what a score is chosen on).
    Select,
    /// The odd-numbered images (what the chosen score is reported on).
    Report,
}

impl SetHalf {
    /// Keep this half of `images` (`len` values each).
    fn take(self, images: Vec<f32>, len: usize) -> Vec<f32> {
        let parity = match self {
            SetHalf::All => return images,
            SetHalf::Select => 0,
            SetHalf::Report => 1,
        };
        images
            .chunks_exact(len)
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .flat_map(|(_, img)| img.iter().copied())
            .collect()
    }
}

/// Images of `set`, shaped like `inside` (`[n, c, h, w]`, as many as `inside` holds for the
/// generated sets). A data set is read from `dir` (default: its default directory), `half`
/// of its images kept; one of another image shape is an error, not a silent resize.
pub fn ood_images(
    set: OodSet,
    inside: &Dataset,
    dir: Option<&Path>,
    half: SetHalf,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let [c, h, w] = inside.shape;
    let len = inside.image_len();
    let n = inside.len();
    let mut out = vec![0.0f32; n * len];
    match set {
        OodSet::Dataset(kind) => {
            let other = load_files(kind, dir, true)?;
            if other.shape != inside.shape {
                let dir = dir.map_or_else(|| kind.default_dir(), Path::to_path_buf);
                return Err(DataError::Shape {
                    path: dir,
                    found: other.shape,
                    expected: inside.shape,
                }
                .into());
            }
            return Ok(half.take(other.images, len));
        }
        OodSet::Uniform => rng.fill_uniform(&mut out, -1.0, 1.0),
        OodSet::Gaussian => {
            rng.fill_normal(&mut out, 1.0);
            out.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        }
        OodSet::Constant => {
            for img in out.chunks_exact_mut(len) {
                img.fill(rng.uniform_in(-1.0, 1.0));
            }
        }
        OodSet::Vflip => {
            for (i, img) in out.chunks_exact_mut(len).enumerate() {
                let src = inside.image(i);
                for ch in 0..c {
                    for y in 0..h {
                        let (d, s) = ((ch * h + y) * w, (ch * h + h - 1 - y) * w);
                        img[d..d + w].copy_from_slice(&src[s..s + w]);
                    }
                }
            }
        }
        OodSet::Invert => out
            .iter_mut()
            .zip(&inside.images)
            .for_each(|(o, &v)| *o = -v),
        OodSet::Shuffle => {
            for (i, img) in out.chunks_exact_mut(len).enumerate() {
                let src = inside.image(i);
                for (o, p) in img.iter_mut().zip(rng.permutation(len)) {
                    *o = src[p];
                }
            }
        }
        OodSet::Interp => {
            for img in out.chunks_exact_mut(len) {
                let a = rng.below(n);
                let b = (a + 1 + rng.below(n.max(2) - 1)) % n;
                for ((o, &x), &y) in img.iter_mut().zip(inside.image(a)).zip(inside.image(b)) {
                    *o = 0.5 * (x + y);
                }
            }
        }
    }
    Ok(out)
}

/// Every score of every image in `images` (`[n, c, h, w]`), as `scores.len()` vectors.
pub fn score_images(
    engine: Engine,
    model: &Classifier,
    images: &[f32],
    shape: [usize; 3],
    scores: &[Score],
    batch_size: usize,
) -> Vec<Vec<f64>> {
    let of_features = |s: &Score| matches!(s, Score::Mahalanobis(_));
    let rest: Vec<Score> = scores.iter().filter(|s| !of_features(s)).cloned().collect();
    let mut rest =
        score_images_of_outputs(engine, model, images, shape, &rest, batch_size).into_iter();
    let feats = scores.iter().any(of_features).then(|| {
        let o = model.outputs(images, shape, batch_size);
        (o.features, o.dim)
    });
    scores
        .iter()
        .map(|s| match (s, &feats) {
            (Score::Mahalanobis(fit), Some((f, d))) => f
                .chunks_exact((*d).max(1))
                .map(|row| match fit {
                    Some(m) if m.dim == *d => m.score(row),
                    _ => f64::NAN,
                })
                .collect(),
            _ => rest.next().expect("one column per score"),
        })
        .collect()
}

/// [`score_images`] for the scores of the logits and the input gradient.
fn score_images_of_outputs(
    engine: Engine,
    model: &Classifier,
    images: &[f32],
    shape: [usize; 3],
    scores: &[Score],
    batch_size: usize,
) -> Vec<Vec<f64>> {
    if let Some(kernel) = engine.kernel(model, crate::sgld::Precision::F32) {
        return score_images_cpu_kernel(kernel, images, shape, scores, batch_size);
    }
    let device = model.device().inner();
    let plain = model.valid();
    let len: usize = shape.iter().product();
    let n = images.len() / len;
    let mut out = vec![Vec::with_capacity(n); scores.len()];
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(n);
        let b = end - start;
        let [c, h, w] = shape;
        let x = Tensor::<4>::from_data(
            TensorData::new(images[start * len..end * len].to_vec(), [b, c, h, w]),
            &device,
        ); // [b, c, h, w]
        let logits = plain.forward(x.clone()); // [b, k]
        // One input gradient per batch, however many scores use it.
        let grad_norm = scores.iter().any(|s| s.needs_input_grad()).then(|| {
            let (g, _) = input_grad(model, x.clone(), &Target::Marginal); // [b, c, h, w]
            g.reshape([b, len])
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .squeeze_dim(1) // [b]
        });
        for (s, col) in scores.iter().zip(out.iter_mut()) {
            if let Score::Fused(_) = s {
                let lse = to_vec(logsumexp(logits.clone()));
                let norm = to_vec(grad_norm.clone().expect("computed above"));
                col.extend(
                    lse.iter()
                        .zip(&norm)
                        .map(|(&l, &g)| s.of_parts(l, g).expect("the fused score")),
                );
                continue;
            }
            let v: Tensor<1> = match s {
                Score::Logp => logsumexp(logits.clone()),
                Score::Py => burn::tensor::activation::softmax(logits.clone(), 1)
                    .max_dim(1)
                    .squeeze_dim(1),
                Score::EnergyT(t) => logsumexp(logits.clone().div_scalar(*t)).mul_scalar(*t),
                Score::Pxgrad | Score::Gradnorm => {
                    let sign = s.of_grad_norm(1.0).expect("a gradient score");
                    grad_norm.clone().expect("computed above").mul_scalar(sign)
                }
                Score::Fused(_) => unreachable!("scored above"),
                Score::Mahalanobis(_) => unreachable!("a score of the features"),
            }; // [b]
            col.extend(to_vec(v).into_iter().map(f64::from));
        }
    }
    out
}

/// The values of a score tensor (`[b]`).
fn to_vec(v: Tensor<1>) -> Vec<f32> {
    v.into_data().try_to_vec::<f32>().expect("f32 scores")
}

/// [`score_images`] through [`crate::cnn_cpu`] (the CNN on the CPU): one forward per batch
/// for every score, one backward for `pxgrad`.
fn score_images_cpu_kernel(
    mut kernel: CnnKernel,
    images: &[f32],
    shape: [usize; 3],
    scores: &[Score],
    batch_size: usize,
) -> Vec<Vec<f64>> {
    let k = kernel.outputs();
    let len: usize = shape.iter().product();
    let n = images.len() / len;
    let mut out = vec![Vec::with_capacity(n); scores.len()];
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(n);
        let b = end - start;
        let logits = kernel.forward(&images[start * len..end * len], b, shape);
        let rows: Vec<(f32, Vec<f32>)> = logits.chunks_exact(k).map(cnn_cpu::softmax).collect();
        let grad_norms = scores.iter().any(|s| s.needs_input_grad()).then(|| {
            let dl: Vec<f32> = rows.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            let (g, _) = kernel.backward(b, shape, &dl, true, false);
            g.expect("input gradient requested")
                .chunks_exact(len)
                .map(|r| (r.iter().map(|v| v * v).sum::<f32>()).sqrt())
                .collect::<Vec<f32>>()
        });
        for (s, col) in scores.iter().zip(out.iter_mut()) {
            for (i, (lse, p)) in rows.iter().enumerate() {
                let norm = || grad_norms.as_ref().expect("computed above")[i];
                let v = match s {
                    Score::Logp => f64::from(*lse),
                    Score::Py => f64::from(p.iter().cloned().fold(f32::NEG_INFINITY, f32::max)),
                    Score::Fused(_) => s.of_parts(*lse, norm()).expect("the fused score"),
                    s if s.needs_input_grad() => {
                        f64::from(s.of_grad_norm(norm()).expect("a gradient score"))
                    }
                    s => f64::from(
                        s.of_logits(&logits[i * k..(i + 1) * k])
                            .expect("a score of the logits"),
                    ),
                };
                col.push(v);
            }
        }
    }
    out
}

/// One row of the OOD table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodRow {
    /// Score name.
    pub score: String,
    /// OOD set name.
    pub set: String,
    /// AUROC, in-distribution as the positive class.
    pub auroc: f64,
    /// AUPR with in-distribution positive.
    pub aupr_in: f64,
    /// AUPR with out-of-distribution positive (scores negated).
    pub aupr_out: f64,
    /// False-positive rate (OOD taken for in-distribution) at 95% true-positive rate.
    pub fpr95: f64,
    /// OOD images scored.
    pub n_ood: usize,
}

/// The density of one set's values of a score over shared bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetDensity {
    /// OOD set name.
    pub set: String,
    /// Density per bin (integrates to the share of values inside the bins' range).
    pub density: Vec<f64>,
}

/// Histograms of one score: in-distribution against every OOD set, on shared bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreHistogram {
    /// Score name.
    pub score: String,
    /// Bin edges (`bins + 1`), spanning the 0.5% to 99.5% quantiles of all values.
    pub edges: Vec<f64>,
    /// In-distribution density.
    pub inside: Vec<f64>,
    /// One density per OOD set.
    pub sets: Vec<SetDensity>,
}

/// The OOD table and the score histograms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodReport {
    /// One row per (score, set).
    pub rows: Vec<OodRow>,
    /// One histogram per score.
    pub histograms: Vec<ScoreHistogram>,
    /// The score chosen on validation data, when the evaluation made a choice
    /// ([`crate::eval::ood_select::evaluate_selected`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<Selection>,
    /// The standardisation of the fused score, when it was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused: Option<FusedFit>,
    /// Every image's scores: the in-distribution images first, then each OOD set in the
    /// order of the spec (`jem eval ood --scores-out` writes them; not part of the JSON).
    #[serde(skip)]
    pub values: Vec<SetScores>,
}

/// The scores of every image of one set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetScores {
    /// The set's name ([`INSIDE`] for the in-distribution images).
    pub set: String,
    /// The score names, one per column of `values`.
    pub scores: Vec<String>,
    /// One vector per score, one value per image.
    pub values: Vec<Vec<f64>>,
}

/// The name [`SetScores`] gives the in-distribution images.
pub const INSIDE: &str = "in-distribution";

impl OodReport {
    /// Every image's scores as CSV: `set,index,<score>...`, one row per image.
    pub fn scores_csv(&self) -> String {
        let mut out = String::new();
        let Some(first) = self.values.first() else {
            return out;
        };
        out.push_str("set,index");
        for s in &first.scores {
            out.push(',');
            out.push_str(s);
        }
        out.push('\n');
        for set in &self.values {
            let n = set.values.first().map_or(0, Vec::len);
            for i in 0..n {
                out.push_str(&format!("{},{i}", set.set));
                for col in &set.values {
                    out.push_str(&format!(",{}", col[i]));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// How one score did over every OOD set of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Score name.
    pub score: String,
    /// Its lowest AUROC over the sets.
    pub worst_auroc: f64,
    /// The set of that lowest AUROC.
    pub worst_set: String,
    /// Its mean AUROC over the sets.
    pub mean_auroc: f64,
}

/// The one score an evaluation reports as its detector, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The chosen score.
    pub score: String,
    /// What it was chosen on, in words.
    pub criterion: String,
    /// The OOD sets it was chosen against.
    #[serde(default)]
    pub sets: Vec<String>,
    /// Every candidate on the selection data, best first.
    pub candidates: Vec<ScoreSummary>,
}

/// What an OOD evaluation scores, against what.
#[derive(Clone, Copy, Debug)]
pub struct OodSpec<'a> {
    /// The OOD sets.
    pub sets: &'a [OodSet],
    /// Directory of the data-set OOD sets' files (default: each set's default directory).
    pub dir: Option<&'a Path>,
    /// The scores.
    pub scores: &'a [Score],
    /// Images per forward pass.
    pub batch_size: usize,
    /// Which half of each data-set OOD set is scored.
    pub half: SetHalf,
}

/// Density of `values` over `edges` (values outside are not counted).
pub fn density(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let bins = edges.len().saturating_sub(1);
    let mut counts = vec![0.0f64; bins];
    if bins == 0 {
        return counts;
    }
    let (lo, hi) = (edges[0], edges[bins]);
    let width = (hi - lo) / bins as f64;
    for &v in values {
        if v.is_finite() && v >= lo && v <= hi && width > 0.0 {
            counts[(((v - lo) / width) as usize).min(bins - 1)] += 1.0;
        }
    }
    let n = values.len().max(1) as f64;
    counts.iter().map(|c| c / (n * width.max(1e-300))).collect()
}

fn edges_for(all: &[&[f64]], bins: usize) -> Vec<f64> {
    let mut v: Vec<f64> = all
        .iter()
        .flat_map(|a| a.iter().copied())
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return vec![0.0, 1.0];
    }
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (lo, mut hi) = (q(0.005), q(0.995));
    if hi <= lo {
        hi = lo + 1.0;
    }
    (0..=bins)
        .map(|i| lo + (hi - lo) * i as f64 / bins as f64)
        .collect()
}

/// `scores` with every unfitted score fitted on `reference` (labelled in-distribution
/// images): `fused` by [`ood_fused::fit_scores`], `mahalanobis` by [`ood_maha::fit_scores`].
/// Nothing is computed for a kind that is absent or already fitted.
pub fn fit_scores(
    engine: Engine,
    model: &Classifier,
    reference: &Dataset,
    scores: &[Score],
    batch_size: usize,
) -> Result<Vec<Score>> {
    let scores = ood_fused::fit_scores(engine, model, reference, scores, batch_size)?;
    ood_maha::fit_scores(model, reference, &scores, batch_size)
}

/// One histogram per score: the in-distribution values `ins` against each set's.
fn histograms(
    scores: &[Score],
    ins: &[Vec<f64>],
    per_set: &[(String, Vec<Vec<f64>>)],
) -> Vec<ScoreHistogram> {
    scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let all: Vec<&[f64]> = std::iter::once(ins[i].as_slice())
                .chain(per_set.iter().map(|(_, o)| o[i].as_slice()))
                .collect();
            let edges = edges_for(&all, 40);
            ScoreHistogram {
                score: s.name(),
                inside: density(&ins[i], &edges),
                sets: per_set
                    .iter()
                    .map(|(name, o)| SetDensity {
                        set: name.clone(),
                        density: density(&o[i], &edges),
                    })
                    .collect(),
                edges,
            }
        })
        .collect()
}

/// Score `inside` and every set of `spec`, and tabulate each (score, set) pair (the data-set
/// OOD sets as [`ood_images`] reads them). No score is chosen: see
/// [`crate::eval::ood_select::evaluate_selected`]. Unfitted `fused` and `mahalanobis` scores
/// are fitted on `inside` (fit them on other in-distribution images first with
/// [`fit_scores`] to keep `inside` out of their fits).
pub fn evaluate_ood(
    engine: Engine,
    model: &Classifier,
    inside: &Dataset,
    spec: &OodSpec,
    rng: &mut Rng,
) -> Result<OodReport> {
    let OodSpec {
        sets,
        dir,
        scores,
        batch_size,
        half,
    } = *spec;
    let scores = &fit_scores(engine, model, inside, scores, batch_size)?;
    let ins = score_images(
        engine,
        model,
        &inside.images,
        inside.shape,
        scores,
        batch_size,
    );
    let mut rows = Vec::new();
    let mut per_set = Vec::new();
    for &set in sets {
        let images = ood_images(set, inside, dir, half, rng)?;
        let outs = score_images(engine, model, &images, inside.shape, scores, batch_size);
        for ((s, pos), neg) in scores.iter().zip(&ins).zip(&outs) {
            let neg_pos: Vec<f64> = neg.iter().map(|v| -v).collect();
            let pos_neg: Vec<f64> = pos.iter().map(|v| -v).collect();
            rows.push(OodRow {
                score: s.name(),
                set: set.name(),
                auroc: auroc(pos, neg),
                aupr_in: aupr(pos, neg),
                aupr_out: aupr(&neg_pos, &pos_neg),
                fpr95: fpr_at_tpr(pos, neg, 0.95),
                n_ood: neg.len(),
            });
        }
        per_set.push((set.name(), outs));
    }
    let histograms = histograms(scores, &ins, &per_set);
    let names: Vec<String> = scores.iter().map(Score::name).collect();
    let values = std::iter::once((INSIDE.to_string(), ins))
        .chain(per_set)
        .map(|(set, values)| SetScores {
            set,
            scores: names.clone(),
            values,
        })
        .collect();
    Ok(OodReport {
        rows,
        histograms,
        selected: None,
        fused: fit_of(scores),
        values,
    })
}
