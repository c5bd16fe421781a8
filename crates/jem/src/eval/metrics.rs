//! Metrics on plain arrays: calibration (ECE, MCE, NLL, Brier) and detection (AUROC,
//! AUPR, FPR at a TPR). Library functions with no model in sight, so that each is checked
//! against hand-computed values.

use serde::{Deserialize, Serialize};

/// One confidence bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Lower edge (exclusive, except for the first bin).
    pub lo: f64,
    /// Upper edge (inclusive).
    pub hi: f64,
    /// Predictions whose confidence falls in the bin.
    pub count: usize,
    /// Mean confidence in the bin (0 when empty).
    pub confidence: f64,
    /// Accuracy in the bin (0 when empty).
    pub accuracy: f64,
}

/// Calibration of predicted class probabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: `sum_b n_b / n * |acc_b - conf_b|`.
    pub ece: f64,
    /// Maximum calibration error over non-empty bins.
    pub mce: f64,
    /// Mean negative log-likelihood of the true class.
    pub nll: f64,
    /// Mean Brier score `sum_k (p_k - [y = k])^2`.
    pub brier: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Images.
    pub n: usize,
    /// The bins, equal width over `[0, 1]`.
    pub bins: Vec<Bin>,
}

/// Calibration of `probs` (`[n, k]` row-major, rows summing to 1) against `labels`, with
/// `bins` equal-width confidence bins (confidence = the largest probability of a row).
pub fn calibration(probs: &[f32], labels: &[usize], k: usize, bins: usize) -> Calibration {
    let bins = bins.max(1);
    let n = labels.len();
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0.0f64; bins];
    let mut correct = vec![0usize; bins];
    let (mut nll, mut brier, mut right) = (0.0f64, 0.0f64, 0usize);
    for (row, &y) in probs.chunks_exact(k).zip(labels) {
        let (arg, &p) = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("k > 0");
        let p = p as f64;
        // Bin b holds (b / bins, (b + 1) / bins]; confidence 0 goes to the first bin.
        let b = ((p * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf_sum[b] += p;
        if arg == y {
            correct[b] += 1;
            right += 1;
        }
        nll -= (row[y] as f64).max(1e-12).ln();
        brier += row
            .iter()
            .enumerate()
            .map(|(j, &q)| (q as f64 - if j == y { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>();
    }
    let nf = n.max(1) as f64;
    let mut ece = 0.0;
    let mut mce = 0.0f64;
    let bins_out = (0..bins)
        .map(|b| {
            let (c, acc) = if count[b] > 0 {
                (
                    conf_sum[b] / count[b] as f64,
                    correct[b] as f64 / count[b] as f64,
                )
            } else {
                (0.0, 0.0)
            };
            if count[b] > 0 {
                let gap = (acc - c).abs();
                ece += count[b] as f64 / nf * gap;
                mce = mce.max(gap);
            }
            Bin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence: c,
                accuracy: acc,
            }
        })
        .collect();
    Calibration {
        ece,
        mce,
        nll: nll / nf,
        brier: brier / nf,
        accuracy: right as f64 / nf,
        n,
        bins: bins_out,
    }
}

/// Groups of tied scores, in ascending score order: for each group, (index of its first
/// element in the sorted order, group size, positives in it).
fn tie_groups(pos: &[f64], neg: &[f64]) -> Vec<(usize, usize, usize)> {
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        groups.push((i, j + 1 - i, all[i..=j].iter().filter(|e| e.1).count()));
        i = j + 1;
    }
    groups
}

/// Area under the ROC curve of telling `pos` (higher scores) from `neg`: the probability
/// that a random positive scores above a random negative, ties counting one half.
pub fn auroc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    // Rank-sum (Mann-Whitney U) with mid-ranks for ties.
    let rank_sum: f64 = tie_groups(pos, neg)
        .into_iter()
        .map(|(first, size, p)| p as f64 * (first as f64 + (size as f64 - 1.0) / 2.0 + 1.0))
        .sum();
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// Area under the precision-recall curve with `pos` as the positive class (average
/// precision: the mean, over positives, of the precision at the threshold of their score;
/// tied scores share one threshold).
pub fn aupr(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() {
        return f64::NAN;
    }
    let (mut tp, mut fp, mut ap) = (0usize, 0usize, 0.0f64);
    // Thresholds from the highest score down.
    for (_, size, p) in tie_groups(pos, neg).into_iter().rev() {
        tp += p;
        fp += size - p;
        ap += p as f64 * tp as f64 / (tp + fp) as f64;
    }
    ap / pos.len() as f64
}

/// False-positive rate at the threshold that keeps `tpr` of the positives (scores at or
/// above the threshold count as positive).
pub fn fpr_at_tpr(pos: &[f64], neg: &[f64], tpr: f64) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut p = pos.to_vec();
    p.sort_by(|a, b| b.total_cmp(a));
    let keep = ((tpr * p.len() as f64).ceil() as usize).clamp(1, p.len());
    let threshold = p[keep - 1];
    neg.iter().filter(|&&s| s >= threshold).count() as f64 / neg.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_by_hand() {
        // Rows (confidence, right?): 0.93 right, 0.78 wrong, 0.62 right, 0.56 right.
        let probs = [0.93, 0.07, 0.22, 0.78, 0.62, 0.38, 0.44, 0.56];
        let labels = [0, 0, 0, 1];
        let c = calibration(&probs, &labels, 2, 2);
        // 2 bins: all four in (0.5, 1], mean confidence 0.7225, accuracy 0.75.
        assert_eq!((c.bins[0].count, c.bins[1].count), (0, 4));
        assert!((c.ece - 0.0275).abs() < 1e-6, "{}", c.ece);
        assert!((c.mce - 0.0275).abs() < 1e-6);
        assert!((c.accuracy - 0.75).abs() < 1e-12);
        let nll = -(0.93f64.ln() + 0.22f64.ln() + 0.62f64.ln() + 0.56f64.ln()) / 4.0;
        assert!((c.nll - nll).abs() < 1e-6);
        let brier = 2.0 * (0.0049 + 0.6084 + 0.1444 + 0.1936) / 4.0;
        assert!((c.brier - brier).abs() < 1e-6);
        // 10 bins: one prediction each in bins 9, 7, 6, 5, gaps 0.07, 0.78, 0.38, 0.44.
        let c = calibration(&probs, &labels, 2, 10);
        assert!((c.ece - 0.4175).abs() < 1e-6, "{}", c.ece);
        assert!((c.mce - 0.78).abs() < 1e-6);
        assert_eq!(
            c.bins.iter().map(|b| b.count).collect::<Vec<_>>(),
            [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
        );
    }

    #[test]
    fn detection_metrics_by_hand() {
        let pos = [0.9, 0.8, 0.4];
        let neg = [0.7, 0.4, 0.1];
        // Pairs with pos > neg: 0.9>(3), 0.8>(3), 0.4>0.1 and 0.4=0.4 (half): 7.5 / 9.
        assert!((auroc(&pos, &neg) - 7.5 / 9.0).abs() < 1e-12);
        assert_eq!(auroc(&[1.0], &[0.0]), 1.0);
        assert_eq!(auroc(&[0.0], &[1.0]), 0.0);
        // Descending: 0.9 P (1/1), 0.8 P (2/2), 0.7 N, 0.4 P+N tied (3/5), 0.1 N.
        let ap = (1.0 + 1.0 + 3.0 / 5.0) / 3.0;
        assert!((aupr(&pos, &neg) - ap).abs() < 1e-12);
        // TPR 95% of 3 positives keeps all 3: threshold 0.4; negatives >= 0.4: 2 of 3.
        assert!((fpr_at_tpr(&pos, &neg, 0.95) - 2.0 / 3.0).abs() < 1e-12);
        // TPR 2/3 keeps 0.9 and 0.8: threshold 0.8, no negative above.
        assert_eq!(fpr_at_tpr(&pos, &neg, 0.6), 0.0);
    }
}
