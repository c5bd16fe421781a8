//! The nested run configuration, saved as `config.toml` in the run directory. Command-line
//! flags only override it; [`TrainConfig::validate`] runs before any work starts.
//!
//! This module only assembles: each table (`data`, `model`, `optim`, `sgld`, `buffer`,
//! `loss`, `schedule`, `recovery`) is defined, with its own `validate()`, beside the code it
//! configures; here live the checks between tables and the rule of what may change on
//! resume ([`RESUME_MAY_CHANGE`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::buffer::BufferConfig;
use crate::checkpoint::{self, files};
pub use crate::data::DataConfig;
pub use crate::device::DeviceSpec;
pub use crate::error::ConfigError;
use crate::error::Error;
use crate::loss::{LossConfig, Objective};
use crate::model::ModelConfig;
use crate::optim::OptimConfig;
pub use crate::recovery::RecoveryConfig;
pub use crate::schedule::ScheduleConfig;
use crate::sgld::SgldConfig;

/// The recipes shipped in the repository's `recipes/` folder, by name (built into the
/// library, so `jem train --recipe NAME` works from any directory).
pub const RECIPES: &[(&str, &str)] = &[
    (
        "fashion-mnist",
        include_str!("../../../recipes/fashion-mnist.toml"),
    ),
    (
        "paper-cifar10",
        include_str!("../../../recipes/paper-cifar10.toml"),
    ),
];

/// The fields of a run's config that may change when it is resumed (a field, or every field
/// under a table): how long it runs and how it logs, the optimiser's settings (not its
/// algorithm, whose state is saved), the sampler, the divergence watch and the
/// augmentation. Everything else (the data, the model, the objective and its weights, the
/// buffer, the batch size and the seed) is fixed for the life of a run, and
/// [`TrainConfig::check_resume`] refuses a change to it, naming the field.
pub const RESUME_MAY_CHANGE: &[&str] = &[
    "schedule.epochs",
    "schedule.max_steps",
    "schedule.log_every",
    "schedule.checkpoint_every",
    "schedule.eval_valid",
    "optim.lr",
    "optim.beta1",
    "optim.beta2",
    "optim.eps",
    "optim.momentum",
    "optim.weight_decay",
    "optim.warmup_steps",
    "optim.decay_epochs",
    "optim.decay_fractions",
    "optim.cosine",
    "optim.decay_rate",
    "optim.spectral_norm",
    "optim.sam_rho",
    "sgld",
    "recovery",
    "data.augment",
    "device",
    "devices",
];

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Data set and preparation.
    pub data: DataConfig,
    /// Network.
    pub model: ModelConfig,
    /// Optimiser and learning-rate schedule.
    pub optim: OptimConfig,
    /// Sampler.
    pub sgld: SgldConfig,
    /// Replay buffer.
    pub buffer: BufferConfig,
    /// Objective and its weights.
    pub loss: LossConfig,
    /// Length, logging and checkpoints.
    pub schedule: ScheduleConfig,
    /// Divergence detection and recovery.
    pub recovery: RecoveryConfig,
    /// The one seed of every random generator of the run.
    pub seed: u64,
    /// Where the run computes (`auto`, `cpu`, `wgpu`, `wgpu:cpu`, `vulkan`, `cuda:N`; see
    /// [`crate::device`]). `--device` overrides it; a run may move to another device when it
    /// is resumed.
    pub device: DeviceSpec,
    /// Data parallel: train on these devices at once (`--devices wgpu:0,wgpu:1`), each
    /// computing an equal share of every batch and of the SGLD chains (empty: `device`).
    pub devices: Vec<DeviceSpec>,
}

impl TrainConfig {
    /// The device the run's model lives on: the first of `devices` when training data
    /// parallel, else `device`.
    pub fn primary_device(&self) -> DeviceSpec {
        self.devices.first().copied().unwrap_or(self.device)
    }

    /// Outputs of the network: one per class, or one for an unconditional IGEBM (a scalar
    /// energy).
    pub fn model_outputs(&self, num_classes: usize) -> usize {
        if self.loss.objective == Objective::Igebm && !self.buffer.conditional {
            1
        } else {
            num_classes
        }
    }

    /// Whether each training batch carries plain copies of its images
    /// ([`crate::loss::PxData::Plain`] with a generative data term, and pad-crop or flips to
    /// leave out; data noise alone is no reason for a second pass).
    pub fn plain_data_rows(&self) -> bool {
        let aug = &self.data.augment;
        self.loss.px_data == crate::loss::PxData::Plain
            && self.loss.has_generative_data_term()
            && (aug.crop_pad > 0 || aug.hflip)
    }

    /// Read a TOML config file; missing fields take their defaults, unknown fields are errors.
    pub fn from_file(path: &Path) -> Result<Self, crate::Error> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        Self::from_toml(&text).map_err(|reason| {
            ConfigError::Parse {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        })
    }

    /// The shipped recipe `name` (see [`RECIPES`]); fields it does not set take their
    /// defaults.
    pub fn recipe(name: &str) -> Result<Self, ConfigError> {
        let (_, text) = RECIPES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = RECIPES.iter().map(|(n, _)| *n).collect();
            ConfigError::field(
                "recipe",
                format!("no recipe `{name}`; the recipes are {}", known.join(", ")),
            )
        })?;
        Self::from_toml(text).map_err(|reason| ConfigError::Parse {
            path: format!("recipes/{name}.toml").into(),
            reason,
        })
    }

    /// Read the `config.toml` of the run directory `dir`.
    pub fn load_run(dir: &Path) -> Result<Self, Error> {
        let path = checkpoint::run_file(dir, files::CONFIG)?;
        Self::from_file(&path)
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Check every field before any work starts: each sub-config's own values, then the
    /// settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.schedule.validate()?;
        self.data.validate()?;
        self.recovery.validate()?;
        self.model.validate()?;
        self.optim.validate()?;
        self.loss.validate()?;
        if self.optim.sam_rho > 0.0 && self.loss.objective == Objective::Lsd {
            return Err(ConfigError::field(
                "optim.sam_rho",
                "SAM is not implemented for --objective lsd (its critic's updates would need a second pass too); use 0",
            ));
        }
        if self.loss.needs_sampling() {
            self.sgld.validate()?;
            if self.sgld.precision.needs_bf16() && !matches!(self.model, ModelConfig::Cnn { .. }) {
                return Err(ConfigError::field(
                    "sgld.precision",
                    "bf16 chains run in the CPU kernel of the CNN only; use f32 (or auto) for this model",
                ));
            }
            if self.sgld.steps == 0 {
                return Err(ConfigError::field(
                    "sgld.steps",
                    "must be at least 1 for an objective that samples (use --objective softmax to train without)",
                ));
            }
            let batch = self.schedule.batch_size;
            if let Some(m) = self.sgld.chains.filter(|&m| m > batch) {
                return Err(ConfigError::field(
                    "sgld.chains",
                    format!(
                        "{m} is more than the batch size {batch}: chains conditioned on y take the batch's labels"
                    ),
                ));
            }
            self.buffer
                .validate(self.data.dataset.num_classes(), self.sgld.chains_for(batch))?;
        }
        self.validate_devices()
    }

    /// Data parallel needs shares of equal size and a step it can split.
    fn validate_devices(&self) -> Result<(), ConfigError> {
        let k = self.devices.len();
        if k < 2 {
            return Ok(());
        }
        let field = |f: &str, why: String| Err(ConfigError::field(f, why));
        if self.loss.objective == Objective::Lsd {
            return field(
                "devices",
                "the Stein objective (lsd) trains on one device".into(),
            );
        }
        if self.optim.sam_rho > 0.0 {
            return field(
                "devices",
                "SAM (optim.sam_rho > 0) trains on one device".into(),
            );
        }
        let batch = self.schedule.batch_size;
        if !batch.is_multiple_of(k) {
            return field(
                "schedule.batch_size",
                format!("{batch} does not split into {k} equal shares (one per device)"),
            );
        }
        let chains = self.sgld.chains_for(batch);
        if self.loss.needs_sampling() && !chains.is_multiple_of(k) {
            return field(
                "sgld.chains",
                format!("{chains} chains do not split into {k} equal shares (one per device)"),
            );
        }
        Ok(())
    }

    /// `Err` naming the first field that differs between the saved config of a run and
    /// `self`, the config it would resume with, and may not change ([`RESUME_MAY_CHANGE`]).
    pub fn check_resume(&self, saved: &TrainConfig) -> Result<(), ConfigError> {
        let (mut now, mut then) = (Vec::new(), Vec::new());
        leaves(
            "",
            &serde_json::to_value(self).expect("configs serialise"),
            &mut now,
        );
        leaves(
            "",
            &serde_json::to_value(saved).expect("configs serialise"),
            &mut then,
        );
        let value = |list: &[(String, serde_json::Value)], field: &str| {
            list.iter()
                .find(|(f, _)| f == field)
                .map(|(_, v)| v.clone())
        };
        let mut fields: Vec<&String> = now.iter().chain(&then).map(|(f, _)| f).collect();
        fields.sort();
        fields.dedup();
        for field in fields {
            let (a, b) = (value(&now, field), value(&then, field));
            if a != b && !may_change_on_resume(field) {
                let show =
                    |v: Option<serde_json::Value>| v.map_or("unset".into(), |v| v.to_string());
                return Err(ConfigError::field(
                    field,
                    format!(
                        "cannot change when resuming a run (saved {}, asked {}): the data, model, objective and its weights, buffer, batch size and seed are fixed for the life of a run; start a new run to change it",
                        show(b),
                        show(a)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `field` (a dotted path) is listed in [`RESUME_MAY_CHANGE`] or lies under a listed
/// table.
pub fn may_change_on_resume(field: &str) -> bool {
    RESUME_MAY_CHANGE.iter().any(|allowed| {
        field == *allowed
            || field
                .strip_prefix(allowed)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Every leaf of a JSON value with its dotted path (arrays are leaves).
fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&path, v, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

/// The first dotted path at which two JSON values differ.
pub fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, &join(k)),
                _ => Some(join(k)),
            })
        }
        _ if a == b => None,
        _ => Some(if at.is_empty() {
            "(root)".into()
        } else {
            at.into()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_parses_and_validates() {
        for (name, _) in RECIPES {
            let c = TrainConfig::recipe(name).unwrap();
            c.validate().unwrap();
            assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c, "{name}");
        }
        let f = TrainConfig::recipe("fashion-mnist").unwrap();
        assert_eq!(f.data.dataset, crate::data::DatasetKind::FashionMnist);
        assert_eq!(f.optim.decay_fractions, [0.6, 0.8]);
        let p = TrainConfig::recipe("paper-cifar10").unwrap();
        assert_eq!(p.schedule.epochs, 200);
        assert_eq!(p.optim.lr, 1e-4);
        let e = TrainConfig::recipe("mnist").unwrap_err().to_string();
        assert!(e.contains("fashion-mnist, paper-cifar10"), "{e}");
    }

    #[test]
    fn default_round_trips_through_toml() {
        let c = TrainConfig::default();
        let back = TrainConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(c, back);
        c.validate().unwrap();
    }

    /// bf16 chains: saved and read back in the config, refused for a model the kernel does
    /// not run (naming the field).
    #[test]
    fn sgld_precision_round_trips_and_is_validated() {
        let mut c = TrainConfig::default();
        c.sgld.precision = crate::sgld::Precision::MixedBf16;
        let text = c.to_toml();
        assert!(text.contains("precision = \"mixed-bf16\""), "{text}");
        assert_eq!(TrainConfig::from_toml(&text).unwrap(), c);
        c.model = ModelConfig::Wrn {
            depth: 10,
            widen: 1,
            dropout: 0.0,
            norm: Default::default(),
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sgld.precision"), "{e}");
    }

    /// The chains per iteration: absent means the batch size (and stays absent in the saved
    /// file); 0 and more than the batch are refused, naming the field.
    #[test]
    fn sgld_chains_default_to_the_batch_and_are_validated() {
        let mut c = TrainConfig::default();
        assert!(!c.to_toml().contains("chains"));
        assert_eq!(
            c.sgld.chains_for(c.schedule.batch_size),
            c.schedule.batch_size
        );
        c.sgld.chains = Some(16);
        assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);
        c.validate().unwrap();
        assert_eq!(c.sgld.chains_for(64), 16);
        for bad in [0, c.schedule.batch_size + 1] {
            c.sgld.chains = Some(bad);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("sgld.chains"), "{e}");
        }
        assert!(may_change_on_resume("sgld.chains"));
    }

    #[test]
    fn plain_data_rows_need_a_generative_term_and_geometric_augmentation() {
        use crate::loss::PxData;
        let mut c = TrainConfig::default();
        assert!(!c.to_toml().contains("px_data"));
        c.loss.px_data = PxData::Plain;
        let text = c.to_toml();
        assert!(text.contains("px_data = \"plain\""), "{text}");
        assert_eq!(TrainConfig::from_toml(&text).unwrap(), c);
        // Data noise alone: the plain copies would be the batch again.
        assert!(!c.plain_data_rows());
        c.data.augment.hflip = true;
        assert!(c.plain_data_rows());
        c.loss.objective = Objective::Softmax;
        assert!(!c.plain_data_rows());
        c.loss.objective = Objective::Igebm;
        assert!(c.plain_data_rows());
        assert!(!may_change_on_resume("loss.px_data"));
    }
}
