//! One cell of a sweep: train its run directory (or resume it), evaluate it, and keep the
//! outcome in `DIR/cells/NAME.json` beside the run directory `DIR/cells/NAME/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Cell, Sweep};
use crate::Result;
use crate::checkpoint::{files, load_state};
use crate::data::Split;
use crate::error::Error;
use crate::eval::accuracy::accuracy;
use crate::eval::calibration::evaluate_calibration;
use crate::eval::ood::{OodSpec, Score, SetHalf, evaluate_ood};
use crate::eval::run::Run;
use crate::eval::store::save_result;
use crate::metrics::median_step_ms;
use crate::rng::Rng;
use crate::tensor_file::write_atomic;
use crate::train::{NoObserver, Trainer};
use burn::prelude::Device;

/// Images per forward pass of a cell's evaluations.
const EVAL_BATCH: usize = 500;

/// Where a cell stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellStatus {
    /// Not started.
    Pending,
    /// A process is training or evaluating it now (its lock file names a live process).
    Running,
    /// Started and stopped before it finished; the next run of the sweep resumes it.
    Interrupted,
    /// Trained and evaluated.
    Finished,
    /// Diverged more often than `recovery.max_recoveries` allows: training stopped.
    GaveUp,
    /// Stopped by another error (its message is kept); the next run of the sweep retries it.
    Failed,
}

impl CellStatus {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            CellStatus::Pending => "pending",
            CellStatus::Running => "running",
            CellStatus::Interrupted => "interrupted",
            CellStatus::Finished => "finished",
            CellStatus::GaveUp => "gave-up",
            CellStatus::Failed => "failed",
        }
    }

    /// Whether the cell is done for good (a sweep run again does not redo it).
    pub fn is_done(self) -> bool {
        matches!(self, CellStatus::Finished | CellStatus::GaveUp)
    }
}

/// What a cell measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// The cell's index.
    pub index: usize,
    /// Its name (its run directory under `cells/`).
    pub name: String,
    /// Its seed.
    pub seed: u64,
    /// Its value on each axis, as written: `(key, value)`.
    pub settings: Vec<(String, String)>,
    /// How it ended.
    pub status: CellStatus,
    /// The error that stopped it, for a cell that gave up or failed.
    pub error: Option<String>,
    /// Steps trained.
    pub steps: u64,
    /// Divergences recovered from.
    pub recoveries: u32,
    /// Median milliseconds per training step.
    pub ms_per_step: Option<f64>,
    /// Test accuracy.
    pub accuracy: Option<f64>,
    /// Expected calibration error on the test split (20 bins).
    pub ece: Option<f64>,
    /// AUROC per `score/set` (e.g. `logp/mnist`), test split against each OOD set.
    pub auroc: Vec<(String, f64)>,
}

impl Sweep {
    /// The file holding `cell`'s outcome.
    pub fn result_path(&self, cell: &Cell) -> PathBuf {
        self.dir.join("cells").join(format!("{}.json", cell.name))
    }

    fn lock_path(&self, cell: &Cell) -> PathBuf {
        self.dir.join("cells").join(format!("{}.lock", cell.name))
    }

    /// The saved outcome of `cell`, if it has one.
    pub fn result(&self, cell: &Cell) -> Result<Option<CellResult>> {
        let path = self.result_path(cell);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let r = serde_json::from_str(&text).map_err(|e| Error::Sweep {
            dir: self.dir.clone(),
            reason: format!(
                "{}: not a cell result ({e}); delete it to redo the cell",
                path.display()
            ),
        })?;
        Ok(Some(r))
    }

    /// Where `cell` stands.
    pub fn status(&self, cell: &Cell) -> Result<CellStatus> {
        if let Some(r) = self.result(cell)? {
            return Ok(r.status);
        }
        if lock_is_live(&self.lock_path(cell)) {
            return Ok(CellStatus::Running);
        }
        Ok(if self.cell_dir(cell).join(files::STATE).exists() {
            CellStatus::Interrupted
        } else {
            CellStatus::Pending
        })
    }

    /// Train and evaluate cell `i` (resuming it when it was started, returning its saved
    /// outcome when it is done), and save the outcome. A cell that diverges for good or fails
    /// is an `Ok` outcome with its error message; the `Err`s are the sweep's own (no such
    /// cell, a result file that cannot be written).
    pub fn run_cell(&self, i: usize, device: &Device) -> Result<CellResult> {
        let cell = self.cell(i)?.clone();
        if let Some(r) = self.result(&cell)?.filter(|r| r.status.is_done()) {
            return Ok(r);
        }
        let lock = self.lock_path(&cell);
        write_atomic(&lock, lock_text().as_bytes())?;
        let dir = self.cell_dir(&cell);
        let outcome = self.train(&cell, &dir, device).and_then(|()| {
            tracing::info!(cell = %cell.name, "trained; evaluating");
            self.evaluate(&dir, device)
        });
        let mut r = CellResult {
            index: cell.index,
            name: cell.name.clone(),
            seed: cell.seed,
            settings: self.spec.labels(&cell),
            status: CellStatus::Finished,
            error: None,
            steps: 0,
            recoveries: 0,
            ms_per_step: None,
            accuracy: None,
            ece: None,
            auroc: Vec::new(),
        };
        match outcome {
            Ok(m) => (r.accuracy, r.ece, r.auroc) = m,
            Err(e) => {
                r.status = match e {
                    Error::Diverged { .. } => CellStatus::GaveUp,
                    _ => CellStatus::Failed,
                };
                tracing::warn!(cell = %cell.name, "{}: {e}", r.status.name());
                r.error = Some(e.to_string());
            }
        }
        if let Ok(state) = load_state(&dir) {
            (r.steps, r.recoveries) = (state.step, state.recoveries);
        }
        if r.status == CellStatus::GaveUp {
            // The last checkpoint predates the recoveries spent after it; a cell gives up
            // only once all of them are.
            let max = self
                .spec
                .config(&cell)
                .map_or(0, |c| c.recovery.max_recoveries);
            r.recoveries = r.recoveries.max(max);
        }
        r.ms_per_step = median_step_ms(&dir.join(files::METRICS)).ok().flatten();
        let text = serde_json::to_string_pretty(&r).expect("cell results serialise");
        write_atomic(&self.result_path(&cell), text.as_bytes())?;
        let _ = std::fs::remove_file(&lock);
        Ok(r)
    }

    /// Create or resume the cell's run and train it to its end. A resumed run takes the
    /// cell's config, so a run directory holding another run (a fixed field differs) is
    /// refused, naming the field.
    fn train(&self, cell: &Cell, dir: &Path, device: &Device) -> Result<()> {
        let cfg = self.spec.config(cell)?;
        let mut trainer = if dir.join(files::STATE).exists() {
            Trainer::resume(dir, device, |c| *c = cfg)?
        } else {
            if dir.exists() {
                // A run directory whose creation was cut short holds no checkpoint yet.
                std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Trainer::create(cfg, dir, device)?
        };
        trainer.run(&mut NoObserver)?;
        Ok(())
    }

    /// Accuracy, ECE and the OOD AUROCs of a trained cell, each also saved in the run's
    /// `eval/` (as `jem eval` would), so `jem compare` and `jem report` read the cell too.
    #[allow(clippy::type_complexity)]
    fn evaluate(
        &self,
        dir: &Path,
        device: &Device,
    ) -> Result<(Option<f64>, Option<f64>, Vec<(String, f64)>)> {
        let run = Run::open(dir, device)?;
        let test = run.data(Split::Test)?;
        let (mut acc, mut ece) = (None, None);
        let mut scores = vec![Score::Logp];
        if run.is_classifier() {
            let a = accuracy(
                run.engine,
                &run.model,
                &test,
                EVAL_BATCH,
                None,
                &mut Rng::new(0, 3),
            )?;
            save_result(
                dir,
                "accuracy-test",
                &serde_json::to_value(&a).expect("serialises"),
            )?;
            let c = evaluate_calibration(run.engine, &run.model, &test, 20, EVAL_BATCH)?;
            save_result(
                dir,
                "calibration-test",
                &serde_json::to_value(&c).expect("serialises"),
            )?;
            (acc, ece) = (Some(a.accuracy), Some(c.ece));
            scores.push(Score::Py);
        }
        let sets = self.spec.ood_sets()?;
        let spec = OodSpec {
            sets: &sets,
            dir: None,
            scores: &scores,
            batch_size: EVAL_BATCH,
            half: SetHalf::All,
        };
        let report = evaluate_ood(run.engine, &run.model, &test, &spec, &mut Rng::new(0, 4))?;
        save_result(
            dir,
            "ood-test",
            &serde_json::to_value(&report).expect("serialises"),
        )?;
        let auroc = report
            .rows
            .iter()
            .map(|r| (format!("{}/{}", r.score, r.set), r.auroc))
            .collect();
        Ok((acc, ece, auroc))
    }
}

/// The lock file's text: this process and host.
fn lock_text() -> String {
    format!("{} {}\n", std::process::id(), hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether the lock at `path` names a live process: one of this host whose `/proc` entry
/// exists, or any process of another host (which cannot be checked from here).
fn lock_is_live(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut parts = text.split_whitespace();
    let (Some(pid), host) = (parts.next(), parts.next().unwrap_or("")) else {
        return false;
    };
    host != hostname() || Path::new("/proc").join(pid).exists()
}
