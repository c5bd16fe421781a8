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
//! The crate is organised one concept per module: [`data`] (IDX, MNIST-JSON and CIFAR
//! readers), [`model`] (the benchmark CNN and a Wide-ResNet), [`energy`] (stable logsumexp and
//! the densities above), [`sgld`] (the sampler, a pure function), [`buffer`] (the replay
//! buffer), [`loss`] (objectives), [`optim`] (Adam and SGD with schedules), [`train`] (the
//! training loop), [`checkpoint`] (run directories written atomically) and [`eval`].
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

pub mod bench;
pub mod buffer;
pub mod checkpoint;
pub mod cnn_cpu;
pub mod config;
pub mod data;
pub mod energy;
mod error;
pub mod eval;
pub mod image;
pub mod init;
pub mod loss;
pub mod lsd;
pub mod model;
pub mod optim;
pub mod report;
pub mod rng;
pub mod sgld;
pub mod step;
pub mod train;

pub use burn::prelude::{Device, Tensor};

/// burn's random generator belongs to the device and is shared by every thread of the
/// process: whoever seeds it or draws initial weights from it holds this lock, so that a seed
/// always gives the same weights even while other threads build models.
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
pub use error::{Error, Result};

/// The device jem computes on by default: the first GPU backend compiled in (`cuda`, then
/// `vulkan`/`wgpu`), else the CPU `flex` backend. The `JEM_DEVICE` environment variable
/// (`cpu`, `cuda`, `vulkan`, `wgpu`) picks one explicitly.
pub fn default_device() -> Device {
    let wanted = std::env::var("JEM_DEVICE").unwrap_or_default();
    match wanted.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" | "" => return Device::cuda(0),
        #[cfg(feature = "vulkan")]
        "vulkan" | "" => return Device::vulkan(Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" | "" => return Device::wgpu(Default::default()),
        _ => {}
    }
    #[cfg(feature = "flex")]
    {
        Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        Device::default()
    }
}
