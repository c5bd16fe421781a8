//! # jem: Joint Energy-based Models
//!
//! A classifier's logits `f(x)` define an energy-based model (Grathwohl et al., ICLR 2020,
//! "Your Classifier is Secretly an Energy Based Model and You Should Treat It Like One"):
//!
//! - `p(y|x) = softmax(f(x))`,
//! - `log p(x) = logsumexp_y f(x)[y] - log Z`,
//! - `log p(x, y) = f(x)[y] - log Z`.
//!
//! Training adds to the cross-entropy the contrastive term
//! `-mean(lse(f(x_data))) + mean(lse(f(x_sampled)))`, where the samples come from SGLD chains
//! kept in a persistent replay buffer.
//!
//! The crate is organised one concept per module, in layers whose imports only go down
//! (`docs/architecture.md`): [`error`], [`rng`] and [`tensor_file`] at the bottom; [`data`]
//! (IDX, MNIST-JSON and CIFAR readers), [`checkpoint`] (run directories written atomically)
//! and [`metrics`]; the maths: [`model`] (the benchmark CNN and a Wide-ResNet), [`energy`]
//! (stable logsumexp and the densities above), [`sgld`] (the sampler's update rule),
//! [`buffer`] (the replay buffer), [`loss`] (objectives), [`optim`] (Adam and SGD with
//! schedules), [`recovery`] (the divergence watch); [`engine`], the compute engine chosen
//! once (the CPU kernel [`cnn_cpu`] or burn's autodiff); [`config`], which assembles the
//! tables; [`step`] (one iteration); [`eval`] and [`train`] (the training loop) on top.
//!
//! ```no_run
//! use jem::config::TrainConfig;
//! use jem::train::{Trainer, NoObserver};
//!
//! let mut config = TrainConfig::default(); // Fashion-MNIST, benchmark CNN, JEM objective
//! config.schedule.max_steps = Some(200);
//! config.validate()?;
//! let mut trainer = Trainer::create(config, "runs/demo".as_ref(), &jem::default_device())?;
//! let summary = trainer.run(&mut NoObserver)?;
//! println!("trained {} steps", summary.step);
//! # Ok::<(), jem::Error>(())
//! ```
#![warn(missing_docs)]

// The layers, bottom to top (docs/architecture.md; `tests/architecture.rs` fails when a
// module imports from a layer above its own).
pub mod error;
pub mod rng;
pub mod tensor_file;

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod image;
pub mod metrics;
pub mod weights;

pub mod buffer;
pub mod energy;
pub mod init;
pub mod loss;
pub mod lsd;
pub mod model;
pub mod optim;
pub mod recovery;
pub mod schedule;
pub mod sgld;

pub mod cnn_cpu;
pub mod engine;

pub mod config;
pub mod step;

pub mod eval;
#[cfg(feature = "onnx")]
pub mod export;
pub mod predict;
pub mod train;

pub mod bench;
#[cfg(feature = "report")]
pub mod report;

pub mod sweep;

pub use burn::prelude::{Device, Tensor};

pub use engine::{Engine, default_device};
pub use error::{Error, Result};
