//! The sweep's table: one row per cell (combination and seed) in `DIR/results.csv` and
//! `DIR/results.json`, and the summary of where training worked.

use serde::Serialize;

use super::Sweep;
use super::cell::{CellResult, CellStatus};
use crate::tensor_file::write_atomic;
use crate::{Error, Result};

/// A cell of the table: its outcome, or only its status when it has none yet.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The cell's status.
    pub status: CellStatus,
    /// Its outcome, when it has one.
    pub result: Option<CellResult>,
}

/// Where training worked over the grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Cells (combinations times seeds).
    pub cells: usize,
    /// Cells trained and evaluated.
    pub finished: usize,
    /// Cells that gave up after their recoveries.
    pub gave_up: usize,
    /// Cells stopped by another error.
    pub failed: usize,
    /// The best test accuracy of a finished cell.
    pub best_accuracy: Option<f64>,
    /// Finished cells within 2 points of the best accuracy.
    pub within_2_points: usize,
    /// Divergences recovered from, over every cell.
    pub recoveries: u64,
}

impl Summary {
    /// One line in words.
    pub fn line(&self) -> String {
        let frac = |n: usize| 100.0 * n as f64 / self.cells.max(1) as f64;
        format!(
            "{} cells: {} finished ({:.0}%), {} gave up, {} failed; best accuracy {}; {} within 2 points of it ({:.0}% of the grid); {} recoveries",
            self.cells,
            self.finished,
            frac(self.finished),
            self.gave_up,
            self.failed,
            self.best_accuracy
                .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
            self.within_2_points,
            frac(self.within_2_points),
            self.recoveries,
        )
    }
}

/// Summarise the outcomes of a grid of `cells` cells.
pub fn summarise(results: &[CellResult], cells: usize) -> Summary {
    let count = |s: CellStatus| results.iter().filter(|r| r.status == s).count();
    let finished: Vec<f64> = results
        .iter()
        .filter(|r| r.status == CellStatus::Finished)
        .filter_map(|r| r.accuracy)
        .collect();
    let best = finished
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
    Summary {
        cells,
        finished: count(CellStatus::Finished),
        gave_up: count(CellStatus::GaveUp),
        failed: count(CellStatus::Failed),
        best_accuracy: best,
        within_2_points: best.map_or(0, |b| finished.iter().filter(|&&a| a >= b - 0.02).count()),
        recoveries: results.iter().map(|r| r.recoveries as u64).sum(),
    }
}

impl Sweep {
    /// Every cell's status and outcome, in index order.
    pub fn rows(&self) -> Result<Vec<Row>> {
        self.cells
            .iter()
            .map(|c| {
                // A saved outcome is the status; only a cell without one needs `status`.
                let result = self.result(c)?;
                let status = match &result {
                    Some(r) => r.status,
                    None => self.status(c)?,
                };
                Ok(Row { status, result })
            })
            .collect()
    }

    /// Write `results.csv` and `results.json` from the saved outcomes (cells without one
    /// get a row with their status only) and return the summary.
    ///
    /// Processes that finish cells at the same moment (a Slurm array, `--jobs`) take turns
    /// through an exclusive lock on `DIR/.results.lock`, so that the last table written holds
    /// every outcome saved before it, never one read before another process's outcome landed.
    pub fn write_results(&self) -> Result<Summary> {
        let lock_path = self.dir.join(".results.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let rows = self.rows()?;
        let results: Vec<CellResult> = rows.iter().filter_map(|r| r.result.clone()).collect();
        let summary = summarise(&results, self.len());
        write_atomic(&self.dir.join("results.csv"), self.csv(&rows).as_bytes())?;
        let json = serde_json::json!({ "summary": summary, "cells": rows });
        let text = serde_json::to_string_pretty(&json).expect("results serialise");
        write_atomic(&self.dir.join("results.json"), text.as_bytes())?;
        Ok(summary)
    }

    /// The AUROC columns: every `score/set` any outcome has, in first-seen order.
    fn auroc_columns(rows: &[Row]) -> Vec<String> {
        let mut cols: Vec<String> = Vec::new();
        for r in rows.iter().filter_map(|r| r.result.as_ref()) {
            for (k, _) in &r.auroc {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        cols
    }

    /// The table as CSV: cell, seed, each axis, status, the metrics, the error.
    fn csv(&self, rows: &[Row]) -> String {
        let aurocs = Self::auroc_columns(rows);
        let mut head: Vec<String> = vec!["cell".into(), "seed".into()];
        head.extend(self.spec.axes.iter().map(|a| a.key.clone()));
        head.extend(["status", "accuracy", "ece"].iter().map(|s| s.to_string()));
        head.extend(aurocs.iter().map(|k| format!("auroc:{k}")));
        head.extend(
            ["recoveries", "gave_up", "steps", "ms_per_step", "error"]
                .iter()
                .map(|s| s.to_string()),
        );
        let mut out = csv_line(&head);
        for (cell, row) in self.cells.iter().zip(rows) {
            let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
            let mut f: Vec<String> = vec![cell.name.clone(), cell.seed.to_string()];
            f.extend(self.spec.labels(cell).into_iter().map(|(_, v)| v));
            f.push(row.status.name().into());
            let r = row.result.as_ref();
            f.push(num(r.and_then(|r| r.accuracy)));
            f.push(num(r.and_then(|r| r.ece)));
            for k in &aurocs {
                let v = r.and_then(|r| r.auroc.iter().find(|(n, _)| n == k).map(|(_, v)| *v));
                f.push(num(v));
            }
            f.push(r.map_or(String::new(), |r| r.recoveries.to_string()));
            f.push((row.status == CellStatus::GaveUp).to_string());
            f.push(r.map_or(String::new(), |r| r.steps.to_string()));
            f.push(num(r.and_then(|r| r.ms_per_step)));
            f.push(r.and_then(|r| r.error.clone()).unwrap_or_default());
            out.push_str(&csv_line(&f));
        }
        out
    }
}

/// One CSV line, fields quoted where they hold a comma, a quote or a line break.
fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: CellStatus, acc: Option<f64>, recoveries: u32) -> CellResult {
        CellResult {
            index: 0,
            name: "000-seed0".into(),
            seed: 0,
            settings: vec![],
            status,
            error: None,
            steps: 10,
            recoveries,
            ms_per_step: None,
            accuracy: acc,
            ece: None,
            auroc: vec![],
        }
    }

    #[test]
    fn the_summary_counts_cells_near_the_best() {
        let rs = [
            result(CellStatus::Finished, Some(0.90), 0),
            result(CellStatus::Finished, Some(0.885), 1),
            result(CellStatus::Finished, Some(0.70), 0),
            result(CellStatus::GaveUp, Some(0.95), 5),
            result(CellStatus::Failed, None, 0),
        ];
        let s = summarise(&rs, 6);
        assert_eq!((s.cells, s.finished, s.gave_up, s.failed), (6, 3, 1, 1));
        assert_eq!(s.best_accuracy, Some(0.90));
        assert_eq!(s.within_2_points, 2);
        assert_eq!(s.recoveries, 6);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        let line = csv_line(&["a".into(), "[32, 64]".into(), "say \"no\"".into()]);
        assert_eq!(line, "a,\"[32, 64]\",\"say \"\"no\"\"\"\n");
    }
}
