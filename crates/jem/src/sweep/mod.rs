//! Hyperparameter sweeps: a grid of config keys around a base config, one run directory per
//! combination and seed under `DIR/cells/`, each trained and evaluated, and a table of
//! every cell (`DIR/results.csv`, `DIR/results.json`).
//!
//! A sweep is saved in `DIR/sweep.toml` when it is created; opening it again with another
//! grid is an error, and with the same grid it goes on where it stopped: a finished cell
//! (its `eval/sweep-cell.json` written) is not redone, a half-trained one resumes from its
//! last checkpoint. Cells are independent, so any launcher may run them in any order: one
//! process after another, several processes at once, or a Slurm job array.
//!
//! ```no_run
//! use jem::config::TrainConfig;
//! use jem::sweep::{Axis, Sweep, SweepSpec};
//! # fn main() -> jem::Result<()> {
//! let mut base = TrainConfig::recipe("fashion-mnist")?;
//! base.schedule.max_steps = Some(500);
//! let spec = SweepSpec::new(
//!     base,
//!     vec![Axis::parse("optim.lr=1e-4,1e-3")?, Axis::parse("sgld.steps=5,10")?],
//!     vec![0],
//!     vec!["uniform".into()],
//! )?;
//! let sweep = Sweep::open_or_create("runs/sweep".as_ref(), spec)?;
//! for i in 0..sweep.len() {
//!     sweep.run_cell(i, &jem::default_device())?;
//! }
//! sweep.write_results()?;
//! # Ok(())
//! # }
//! ```

mod cell;
mod grid;
#[cfg(feature = "report")]
pub mod plot;
mod table;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cell::{CellResult, CellStatus};
pub use grid::{Axis, apply, parse_setting};
pub use table::{Summary, summarise};

use crate::Result;
use crate::config::TrainConfig;
use crate::error::{ConfigError, Error};
use crate::eval::ood::OodSet;
use crate::tensor_file::write_atomic;

/// The file that defines a sweep in its directory.
pub const SPEC_FILE: &str = "sweep.toml";

/// What a sweep trains: the base config, the axes of its grid, the seeds of every
/// combination, and the OOD sets each cell is evaluated against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Seeds of every combination (each replaces the base config's `seed`).
    pub seeds: Vec<u64>,
    /// OOD sets of each cell's evaluation (by name, as `jem eval ood --ood`).
    pub ood: Vec<String>,
    /// The axes, the first varying slowest.
    pub axes: Vec<Axis>,
    /// The config every cell starts from (`--recipe`/`--config`, then `--set` and
    /// `--max-steps`).
    pub base: TrainConfig,
}

/// One cell: a combination of axis values and a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// Its index, `combination * seeds + seed index` (the task index of a job array).
    pub index: usize,
    /// Its run directory's name under `cells/`.
    pub name: String,
    /// The value index on each axis.
    pub at: Vec<usize>,
    /// Its seed.
    pub seed: u64,
}

impl SweepSpec {
    /// A sweep of `base` over `axes`, checked up front: every axis names a config key and
    /// every cell's config is valid (the errors name the key, as a config file's would).
    pub fn new(
        base: TrainConfig,
        axes: Vec<Axis>,
        seeds: Vec<u64>,
        ood: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let spec = SweepSpec {
            seeds,
            ood,
            axes,
            base,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Check the grid, the seeds, the OOD sets and every cell's config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.seeds.is_empty() {
            return Err(ConfigError::field("--seeds", "no seed given"));
        }
        for (i, a) in self.axes.iter().enumerate() {
            if a.values.is_empty() {
                return Err(ConfigError::field(&a.key, "an axis without values"));
            }
            if self.axes[..i].iter().any(|b| b.key == a.key) {
                return Err(ConfigError::field(
                    &a.key,
                    "two axes of the grid set this key",
                ));
            }
        }
        self.ood_sets()?;
        for c in self.cells() {
            self.config(&c)?;
        }
        Ok(())
    }

    /// The OOD sets, parsed.
    pub fn ood_sets(&self) -> Result<Vec<OodSet>, ConfigError> {
        self.ood
            .iter()
            .map(|name| {
                OodSet::ALL
                    .into_iter()
                    .find(|s| s.name() == *name)
                    .ok_or_else(|| ConfigError::field("--ood", format!("no OOD set `{name}`")))
            })
            .collect()
    }

    /// Every cell, combinations in row-major order (the last axis varying fastest), each
    /// combination once per seed.
    pub fn cells(&self) -> Vec<Cell> {
        let combos: usize = self.axes.iter().map(|a| a.values.len()).product();
        let mut out = Vec::with_capacity(combos * self.seeds.len());
        for k in 0..combos {
            let mut at = vec![0; self.axes.len()];
            let mut rest = k;
            for (j, a) in self.axes.iter().enumerate().rev() {
                at[j] = rest % a.values.len();
                rest /= a.values.len();
            }
            for &seed in &self.seeds {
                out.push(Cell {
                    index: out.len(),
                    name: format!("{k:03}-seed{seed}"),
                    at: at.clone(),
                    seed,
                });
            }
        }
        out
    }

    /// The settings of `cell`: `(key, value)` per axis.
    pub fn settings(&self, cell: &Cell) -> Vec<(String, toml::Value)> {
        self.axes
            .iter()
            .zip(&cell.at)
            .map(|(a, &i)| (a.key.clone(), a.values[i].clone()))
            .collect()
    }

    /// The values of `cell` as they were written: `(key, value)` per axis.
    pub fn labels(&self, cell: &Cell) -> Vec<(String, String)> {
        self.axes
            .iter()
            .zip(&cell.at)
            .map(|(a, &i)| (a.key.clone(), a.labels[i].clone()))
            .collect()
    }

    /// The config `cell` trains with.
    pub fn config(&self, cell: &Cell) -> Result<TrainConfig, ConfigError> {
        let mut cfg = apply(&self.base, &self.settings(cell))?;
        cfg.seed = cell.seed;
        Ok(cfg)
    }
}

/// A sweep bound to its directory.
#[derive(Clone, Debug)]
pub struct Sweep {
    dir: PathBuf,
    spec: SweepSpec,
    cells: Vec<Cell>,
}

impl Sweep {
    /// Create the sweep in `dir` (writing `sweep.toml`), or open the one there; a
    /// different spec for the same directory is an error that says what differs.
    pub fn open_or_create(dir: &Path, spec: SweepSpec) -> Result<Self> {
        let path = dir.join(SPEC_FILE);
        if path.exists() {
            let saved = Self::open(dir)?;
            if saved.spec != spec {
                return Err(Error::Sweep {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "{} holds another sweep ({}); use another --out, or the same grid, seeds, OOD sets and base config to go on with it",
                        path.display(),
                        difference(&saved.spec, &spec)
                    ),
                });
            }
            return Ok(saved);
        }
        spec.validate()?;
        std::fs::create_dir_all(dir.join("cells")).map_err(|e| Error::io(dir, e))?;
        let text = toml::to_string_pretty(&spec).expect("a sweep spec serialises");
        write_atomic(&path, text.as_bytes())?;
        Ok(Sweep {
            dir: dir.to_path_buf(),
            cells: spec.cells(),
            spec,
        })
    }

    /// Open the sweep saved in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let spec: SweepSpec = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        spec.validate()?;
        Ok(Sweep {
            dir: dir.to_path_buf(),
            cells: spec.cells(),
            spec,
        })
    }

    /// The sweep's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its spec.
    pub fn spec(&self) -> &SweepSpec {
        &self.spec
    }

    /// Its cells, in index order.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the grid is empty (it never is: a sweep without axes has one cell per seed).
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The run directory of `cell`.
    pub fn cell_dir(&self, cell: &Cell) -> PathBuf {
        self.dir.join("cells").join(&cell.name)
    }

    /// The cell of task index `i`, or an error naming the range.
    pub fn cell(&self, i: usize) -> Result<&Cell> {
        self.cells.get(i).ok_or_else(|| Error::Sweep {
            dir: self.dir.clone(),
            reason: format!("no cell {i}: the sweep has cells 0 to {}", self.len() - 1),
        })
    }
}

/// The first part of two specs that differs, in words.
fn difference(a: &SweepSpec, b: &SweepSpec) -> String {
    if a.axes != b.axes {
        let keys = |s: &SweepSpec| -> Vec<String> {
            s.axes
                .iter()
                .map(|x| format!("{}={}", x.key, x.labels.join(",")))
                .collect()
        };
        format!("its grid is {:?}, not {:?}", keys(a), keys(b))
    } else if a.seeds != b.seeds {
        format!("its seeds are {:?}, not {:?}", a.seeds, b.seeds)
    } else if a.ood != b.ood {
        format!("its OOD sets are {:?}, not {:?}", a.ood, b.ood)
    } else {
        let json = |c: &TrainConfig| serde_json::to_value(c).expect("configs serialise");
        match crate::config::first_difference(&json(&a.base), &json(&b.base), "") {
            Some(field) => format!("its base config differs in `{field}`"),
            None => "its base config differs".into(),
        }
    }
}
