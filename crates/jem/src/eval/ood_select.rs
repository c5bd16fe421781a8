//! One OOD detector, chosen on validation data: the paper reports whichever of its scores
//! did best on each set, which no user can do without labels for the sets they will meet.
//! [`evaluate_selected`] scores the validation split (with one half of each data-set OOD
//! set), keeps the score whose worst AUROC over the sets is highest there, and reports the
//! test split (with the other half) with that score marked. The fused score is
//! standardised on the validation split for both.

use crate::Result;
use crate::data::Dataset;
use crate::engine::Engine;
use crate::eval::ood::{
    OodReport, OodSet, OodSpec, ScoreSummary, Selection, SetHalf, evaluate_ood, fit_scores,
};
use crate::model::Classifier;
use crate::rng::Rng;

/// The criterion [`choose`] applies, as the reports print it.
pub const CRITERION: &str =
    "highest worst-set AUROC on the validation split (ties: highest mean AUROC)";

/// Each score's worst and mean AUROC over the sets of `report`, best first (by worst AUROC,
/// then mean). Scores appear in the order of their first row; a score with no finite AUROC
/// is left out.
pub fn summarise(report: &OodReport) -> Vec<ScoreSummary> {
    let mut out: Vec<ScoreSummary> = first_seen(report.rows.iter().map(|r| r.score.as_str()))
        .into_iter()
        .filter_map(|name| {
            let rows: Vec<_> = report
                .rows
                .iter()
                .filter(|r| r.score == name && r.auroc.is_finite())
                .collect();
            let worst = rows.iter().min_by(|a, b| a.auroc.total_cmp(&b.auroc))?;
            Some(ScoreSummary {
                score: name.to_string(),
                worst_auroc: worst.auroc,
                worst_set: worst.set.clone(),
                mean_auroc: rows.iter().map(|r| r.auroc).sum::<f64>() / rows.len() as f64,
            })
        })
        .collect();
    // Stable: equal candidates keep their order.
    out.sort_by(|a, b| {
        b.worst_auroc
            .total_cmp(&a.worst_auroc)
            .then(b.mean_auroc.total_cmp(&a.mean_auroc))
    });
    out
}

/// The distinct `items`, in the order first seen.
fn first_seen<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The best score of a validation `report` by [`CRITERION`]; `None` when it has no rows.
pub fn choose(report: &OodReport) -> Option<Selection> {
    let candidates = summarise(report);
    let sets = first_seen(report.rows.iter().map(|r| r.set.as_str()))
        .into_iter()
        .map(str::to_string)
        .collect();
    Some(Selection {
        score: candidates.first()?.score.clone(),
        criterion: CRITERION.to_string(),
        sets,
        candidates,
    })
}

/// Choose a score on `valid` against the sets `select_on` (every set of `spec` when empty;
/// with the [`SetHalf::Select`] half of each data-set OOD set), then evaluate `test` against
/// every set of `spec` (with the [`SetHalf::Report`] half) and record the choice in the
/// report. `spec.half` is ignored: the halves are this function's.
pub fn evaluate_selected(
    engine: Engine,
    model: &Classifier,
    (valid, test): (&Dataset, &Dataset),
    spec: &OodSpec,
    select_on: &[OodSet],
    rng: &mut Rng,
) -> Result<OodReport> {
    // The fused and Mahalanobis scores are fitted on the validation split, for both evaluations.
    let scores = fit_scores(engine, model, valid, spec.scores, spec.batch_size)?;
    let spec = &OodSpec {
        scores: &scores,
        ..*spec
    };
    let on_valid = evaluate_ood(
        engine,
        model,
        valid,
        &OodSpec {
            sets: if select_on.is_empty() {
                spec.sets
            } else {
                select_on
            },
            half: SetHalf::Select,
            ..*spec
        },
        rng,
    )?;
    let mut report = evaluate_ood(
        engine,
        model,
        test,
        &OodSpec {
            half: SetHalf::Report,
            ..*spec
        },
        rng,
    )?;
    report.selected = choose(&on_valid);
    Ok(report)
}
