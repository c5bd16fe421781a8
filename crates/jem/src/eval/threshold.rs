//! The out-of-distribution threshold of a run: the value of one OOD score above which an input
//! counts as in-distribution, set on the validation split so that a given fraction of it is
//! accepted (its true-positive rate), and saved as `ood-threshold.json` in the run directory
//! for `jem predict`, `jem serve` and [`crate::predict::Predictor`]. It is never set on the
//! test split.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::{Dataset, Split};
use crate::error::{CheckpointError, ConfigError};
use crate::eval::ood::{
    OodSet, OodSpec, Score, SetHalf, evaluate_ood, fit_scores, ood_images, score_images,
};
use crate::eval::ood_maha::FitTensors;
use crate::eval::ood_select::choose;
use crate::eval::run::Run;
use crate::eval::store::{eval_dir, load_results};
use crate::rng::Rng;
use crate::tensor_file::write_atomic;

/// The threshold file's name in a run directory.
pub const FILE: &str = "ood-threshold.json";

/// The file beside it that holds a Mahalanobis fit's matrices.
pub const TENSORS: &str = "ood-threshold.safetensors";

/// The sets a default score is chosen on when the run has no saved `jem eval ood --select`.
const CHOOSE_ON: [OodSet; 5] = [
    OodSet::Uniform,
    OodSet::Gaussian,
    OodSet::Constant,
    OodSet::Invert,
    OodSet::Shuffle,
];

/// The false-positive rate of a threshold on one OOD set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetFpr {
    /// The set's name.
    pub set: String,
    /// Fraction of the set's images accepted as in-distribution.
    pub fpr: f64,
    /// Number of images.
    pub n: usize,
}

/// A run's OOD threshold (`R/ood-threshold.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodThreshold {
    /// The score (higher means more in-distribution).
    pub score: Score,
    /// Why this score: the saved choice it came from, or the rule applied now.
    pub chosen_by: String,
    /// Inputs whose score is at least this are in-distribution.
    pub threshold: f64,
    /// The fraction of validation images asked to be accepted.
    pub tpr_target: f64,
    /// The fraction of validation images accepted.
    pub tpr_valid: f64,
    /// Validation images it was set on.
    pub n_valid: usize,
    /// The false-positive rate on each generated OOD set (drawn from the validation split).
    pub fpr: Vec<SetFpr>,
    /// The checkpoint step of the model it was set for.
    pub step: u64,
    /// In the file only: where a Mahalanobis fit keeps its matrices ([`TENSORS`]). `None`
    /// in memory (the score holds the whole fit), for the other scores, and in files that
    /// hold the matrices inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fit_tensors: Option<FitTensors>,
}

impl OodThreshold {
    /// Whether a `score` counts as in-distribution (a NaN score never does).
    pub fn accepts(&self, score: f64) -> bool {
        score >= self.threshold
    }

    /// The run's saved threshold, `None` when it has none; a file that does not parse is an
    /// error naming it.
    pub fn load(run_dir: &Path) -> Result<Option<Self>> {
        let path = run_dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::Error::io(path, e)),
        };
        let mut t: OodThreshold = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::corrupt(&path, format!("not a threshold file: {e}")))?;
        if let Score::Mahalanobis(Some(fit)) = &t.score {
            match t.fit_tensors.take() {
                Some(tensors) => {
                    let full = fit.read_tensors(run_dir, &tensors, t.step)?;
                    t.score = Score::Mahalanobis(Some(Arc::new(full)));
                }
                None => fit.check(&path)?, // the older format: the matrices inline
            }
        }
        if t.score == Score::Mahalanobis(None) {
            return Err(CheckpointError::corrupt(
                &path,
                "the mahalanobis score has no fit (`score.mahalanobis` is null): run `jem threshold` again",
            )
            .into());
        }
        if t.score == Score::Fused(None) {
            return Err(CheckpointError::corrupt(
                &path,
                "the fused score has no standardisation (`score.fused` is null): run `jem threshold` again",
            )
            .into());
        }
        Ok(Some(t))
    }

    /// Write it to `run_dir`, atomically; returns the path. A Mahalanobis fit's matrices go
    /// to [`TENSORS`] first, and the JSON file, written last, names them by their hash.
    pub fn save(&self, run_dir: &Path) -> Result<PathBuf> {
        let path = run_dir.join(FILE);
        let mut out = self.clone();
        if let Score::Mahalanobis(Some(fit)) = &self.score {
            out.fit_tensors = Some(fit.write_tensors(&run_dir.join(TENSORS), self.step)?);
            out.score = Score::Mahalanobis(Some(Arc::new(fit.without_tensors())));
        }
        let text = serde_json::to_string_pretty(&out).expect("a threshold serialises");
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// The largest threshold that accepts at least `tpr` of `scores` (non-finite scores count as
/// rejected); `-inf` accepts everything.
pub fn threshold_at_tpr(scores: &[f64], tpr: f64) -> f64 {
    let mut v: Vec<f64> = scores.iter().copied().filter(|s| !s.is_nan()).collect();
    v.sort_by(|a, b| b.total_cmp(a)); // descending
    let need = (tpr * scores.len() as f64).ceil() as usize;
    match need {
        0 => f64::INFINITY,
        k if k > v.len() => f64::NEG_INFINITY,
        k => v[k - 1],
    }
}

/// Fraction of `scores` at or above `threshold`.
pub fn accepted(scores: &[f64], threshold: f64) -> f64 {
    scores.iter().filter(|&&s| s >= threshold).count() as f64 / scores.len().max(1) as f64
}

/// The score a threshold uses when none is asked for: the one `jem eval ood --select` chose
/// on validation data (read from the run's saved evaluations), else the one [`choose`] picks
/// now on `valid` (the run's validation split) against generated sets. Returns it with the
/// reason.
pub fn default_score(
    run: &Run,
    valid: &Dataset,
    batch_size: usize,
    rng: &mut Rng,
) -> Result<(Score, String)> {
    for (name, v) in load_results(&run.dir)? {
        let Some(sel) = v.get("selected").and_then(|s| s.get("score")) else {
            continue;
        };
        let file = eval_dir(&run.dir).join(format!("{name}.json"));
        let score = sel
            .as_str()
            .and_then(Score::from_name)
            .ok_or_else(|| CheckpointError::corrupt(&file, format!("unknown score {sel}")))?;
        return Ok((
            score,
            format!(
                "chosen on validation data by `jem eval ood --select` ({})",
                file.display()
            ),
        ));
    }
    let scores: Vec<Score> = Score::ALL
        .into_iter()
        .filter(|s| run.is_classifier() || *s != Score::Py)
        .collect();
    let spec = OodSpec {
        sets: &CHOOSE_ON,
        dir: None,
        scores: &scores,
        batch_size,
        half: SetHalf::All,
    };
    let report = evaluate_ood(run.engine, &run.model, valid, &spec, rng)?;
    let sel =
        choose(&report).ok_or_else(|| crate::Error::Shape("no OOD score to choose".into()))?;
    let score = Score::from_name(&sel.score).expect("a score this crate named");
    let sets: Vec<String> = CHOOSE_ON.iter().map(OodSet::name).collect();
    Ok((
        score,
        format!(
            "{} against {} (the run has no saved `jem eval ood --select`)",
            sel.criterion,
            sets.join(", ")
        ),
    ))
}

/// Set the threshold of `score` (default: [`default_score`]) on `run`'s validation split so
/// that a fraction `tpr` in `(0, 1]` of it is accepted, and measure its false-positive rate
/// on the generated sets ([`OodSet::generated`]).
pub fn compute(
    run: &Run,
    score: Option<Score>,
    tpr: f64,
    batch_size: usize,
    rng: &mut Rng,
) -> Result<OodThreshold> {
    if !(tpr > 0.0 && tpr <= 1.0) {
        return Err(ConfigError::field("tpr", format!("{tpr}: must be in (0, 1]")).into());
    }
    if score == Some(Score::Py) && !run.is_classifier() {
        run.classifier("the py score")?;
    }
    let valid = run.data(Split::Valid)?;
    let (score, chosen_by) = match score {
        Some(s) => (s, "asked for (--score)".to_string()),
        None => default_score(run, &valid, batch_size, rng)?,
    };
    let score = fit_scores(run.engine, &run.model, &valid, &[score], batch_size)?.remove(0);
    let shape = valid.shape;
    let on = |images: &[f32]| {
        score_images(
            run.engine,
            &run.model,
            images,
            shape,
            std::slice::from_ref(&score),
            batch_size,
        )
        .remove(0)
    };
    let inside = on(&valid.images);
    // JSON has no infinities: "accept everything" is the lowest finite value.
    let threshold = threshold_at_tpr(&inside, tpr).clamp(f64::MIN, f64::MAX);
    let mut fpr = Vec::new();
    for set in OodSet::generated() {
        let images = ood_images(set, &valid, None, SetHalf::All, rng)?;
        let outs = on(&images);
        fpr.push(SetFpr {
            set: set.name(),
            fpr: accepted(&outs, threshold),
            n: outs.len(),
        });
    }
    Ok(OodThreshold {
        score,
        chosen_by,
        threshold,
        tpr_target: tpr,
        tpr_valid: accepted(&inside, threshold),
        n_valid: inside.len(),
        fpr,
        step: run.state.step,
        fit_tensors: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_accepts_the_asked_fraction() {
        let scores: Vec<f64> = (0..100).map(f64::from).collect();
        let t = threshold_at_tpr(&scores, 0.95);
        assert_eq!(t, 5.0);
        assert_eq!(accepted(&scores, t), 0.95);
        assert_eq!(threshold_at_tpr(&scores, 1.0), 0.0);
        // 0.951 of 100 needs 96 images: the threshold drops one place.
        assert_eq!(threshold_at_tpr(&scores, 0.951), 4.0);
        // NaN scores are rejected, so asking for every image accepts everything.
        let with_nan = [1.0, f64::NAN, 3.0];
        assert_eq!(threshold_at_tpr(&with_nan, 1.0), f64::NEG_INFINITY);
        assert_eq!(threshold_at_tpr(&with_nan, 0.5), 1.0);
    }
}
