//! Drawing samples from a trained run: fresh chains from uniform noise or chains continued
//! from the saved replay buffer, unconditional or of given classes.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::energy::{Target, one_hot};
use crate::eval::run::Run;
use crate::rng::Rng;
use crate::sgld::{SgldConfig, sgld};
use crate::{Error, Result};

/// Where chains start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// The run's saved replay buffer (falls back to an error if it has none).
    Buffer,
    /// Uniform noise in `[-1, 1]`.
    Noise,
}

/// Which samples.
#[derive(Clone, Debug, PartialEq)]
pub enum Classes {
    /// `log p(x)`.
    Unconditional,
    /// `log p(x, y)` for one class.
    One(usize),
    /// One row of samples per class.
    All,
}

/// Samples and how to lay them out.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// `[n, c, h, w]` in (roughly) `[-1, 1]`.
    pub images: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Suggested grid columns.
    pub cols: usize,
}

/// Run `params.steps` SGLD steps for `n` chains (per class with [`Classes::All`]).
pub fn draw_samples(
    run: &Run,
    n: usize,
    classes: &Classes,
    start: Start,
    params: &SgldConfig,
    rng: &mut Rng,
) -> Result<Samples> {
    let k = run.num_classes();
    let labels: Option<Vec<usize>> = match classes {
        Classes::Unconditional => None,
        Classes::One(c) if *c >= k => {
            return Err(Error::Shape(format!(
                "class {c} does not exist: the run has {k} classes"
            )));
        }
        Classes::One(c) => Some(vec![*c; n]),
        Classes::All => Some((0..k).flat_map(|c| std::iter::repeat_n(c, n)).collect()),
    };
    let total = labels.as_ref().map_or(n, Vec::len);
    let [c, h, w] = run.shape();
    let buffer = match start {
        Start::Buffer => Some(run.buffer()?.ok_or_else(|| {
            Error::Shape(format!(
                "{} saved no replay buffer (a softmax run?); use --from noise",
                run.dir.display()
            ))
        })?),
        Start::Noise => None,
    };
    let init: Vec<f32> = match &buffer {
        Some(b) => b.draw(total, labels.as_deref(), 0.0, rng).start,
        None => {
            let mut v = vec![0.0f32; total * c * h * w];
            rng.fill_uniform(&mut v, -1.0, 1.0);
            v
        }
    };
    let device = crate::eval::accuracy::model_device(&run.model).inner();
    let x = Tensor::<4>::from_data(TensorData::new(init, [total, c, h, w]), &device);
    let target = match &labels {
        None => Target::Marginal,
        Some(ys) => Target::Joint(one_hot(ys, k, &device)),
    };
    let out = sgld(&run.model, x, &target, params, rng);
    let cols = match classes {
        Classes::All => n,
        _ => (total as f64).sqrt().ceil() as usize,
    };
    Ok(Samples {
        images: out
            .samples
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 samples"),
        n: total,
        cols,
    })
}
