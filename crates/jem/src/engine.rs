//! The compute engine: how input gradients, chains and training steps are computed. It is
//! chosen once, when a trainer or an evaluation is created, and passed down as a value; the
//! maths modules ([`crate::sgld`], [`crate::energy`], the step and the evaluations) take it
//! as an argument and never test the model or device themselves.
//!
//! - [`Engine::CnnCpu`]: jem's own CPU kernel of the benchmark CNN ([`crate::cnn_cpu`]), on
//!   the CPU backend of a machine with AVX-512.
//! - [`Engine::Autodiff`]: burn's autodiff, for every other model and device (and the
//!   reference the kernel is tested against).

use burn::prelude::*;

use crate::cnn_cpu::{self, CnnKernel, HostTarget};
use crate::device::DeviceSpec;
use crate::energy::{self, Target};
use crate::error::ConfigError;
use crate::model::{Classifier, ModelConfig};
use crate::rng::Rng;
use crate::sgld::{self, Precision, SgldConfig, SgldOutput};

/// Where gradients are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The CPU kernel of the benchmark CNN.
    CnnCpu,
    /// burn's autodiff: any model, any device.
    Autodiff,
}

impl Engine {
    /// The engine for a model built from `model` on `device`: the CPU kernel for the CNN on
    /// the CPU backend of a CPU with AVX-512, else autodiff.
    pub fn for_config(model: &ModelConfig, device: &Device) -> Engine {
        let cnn = matches!(model, ModelConfig::Cnn { .. });
        if cnn && cnn_cpu::cpu_device(device) && cnn_cpu::supports(Precision::F32) {
            Engine::CnnCpu
        } else {
            Engine::Autodiff
        }
    }

    /// The engine for `model` as it is (its kind and the device its parameters live on).
    pub fn for_model(model: &Classifier) -> Engine {
        if cnn_cpu::available(model) {
            Engine::CnnCpu
        } else {
            Engine::Autodiff
        }
    }

    /// A short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Engine::CnnCpu => "cnn-cpu",
            Engine::Autodiff => "autodiff",
        }
    }

    /// The precision the chains run at when a config asks for `precision`: `auto` becomes
    /// bf16 where this engine runs bf16 chains (the CPU kernel on a CPU with AVX512-BF16) and
    /// f32 everywhere else; any other value is returned as it is (and checked by
    /// [`Engine::check_chains`]).
    pub fn chains_precision(self, precision: Precision) -> Precision {
        precision.resolve(self == Engine::CnnCpu && cnn_cpu::supports(Precision::Bf16))
    }

    /// `Err` naming `sgld.precision` when this engine cannot run chains at `precision`
    /// (bf16 needs the CPU kernel, on a CPU with AVX512-BF16; `auto` runs everywhere).
    pub fn check_chains(self, precision: Precision) -> Result<(), ConfigError> {
        if !precision.needs_bf16() {
            return Ok(());
        }
        if self != Engine::CnnCpu {
            return Err(ConfigError::field(
                "sgld.precision",
                "bf16 chains run in the CPU kernel of the CNN only (this run's model or device is not the CNN on the CPU); use f32, or auto (bf16 where it runs, else f32)",
            ));
        }
        if !cnn_cpu::supports(precision) {
            return Err(ConfigError::field(
                "sgld.precision",
                "bf16 chains need a CPU with AVX512-BF16, which this one lacks (use f32, or auto: bf16 where it runs, else f32)",
            ));
        }
        Ok(())
    }

    /// The CPU kernel of `model` at `precision`, for [`Engine::CnnCpu`] (`None` for autodiff,
    /// or a model the kernel does not cover).
    pub fn kernel(self, model: &Classifier, precision: Precision) -> Option<CnnKernel> {
        match self {
            Engine::CnnCpu => CnnKernel::with_precision(model, precision),
            Engine::Autodiff => None,
        }
    }

    /// `sum_i target(x_i)` and its gradient with respect to `x`, the parameters frozen.
    ///
    /// # Shapes
    /// `x: [b, c, h, w] -> ([b, c, h, w] gradient, [b] per-image target)`
    pub fn input_grad(
        self,
        model: &Classifier,
        x: Tensor<4>,
        target: &Target,
    ) -> (Tensor<4>, Tensor<1>) {
        let Some(mut kernel) = self.kernel(model, Precision::F32) else {
            return energy::input_grad(model, x, target);
        };
        let dims = x.dims();
        let [b, c, h, w] = dims;
        let labels = cnn_cpu::labels_of(target);
        let values: Vec<f32> = x.clone().into_data().try_to_vec().expect("f32 inputs");
        let (g, v) = kernel.input_grad(&values, b, [c, h, w], host_target(&labels));
        let device = x.device().inner();
        (
            Tensor::from_data(TensorData::new(g, dims), &device),
            Tensor::from_data(TensorData::new(v, [b]), &device),
        )
    }

    /// Run `params.steps` SGLD (or proximal SGLD) steps from `start` on `target` (use
    /// [`Target::Marginal`] for `log p(x)`, [`Target::Joint`] for `log p(x, y)`): a pure
    /// function of (engine, model, start, rng, params). The kernel and autodiff give the same
    /// updates and noise draws, gradients equal up to rounding.
    ///
    /// # Shapes
    /// `start: [b, c, h, w] -> samples [b, c, h, w]`
    pub fn sgld(
        self,
        model: &Classifier,
        start: Tensor<4>,
        target: &Target,
        params: &SgldConfig,
        rng: &mut Rng,
    ) -> SgldOutput {
        let Some(mut kernel) = self.kernel(model, params.precision) else {
            if params.precision.needs_bf16() {
                tracing::warn!("bf16 chains need the CPU kernel of the CNN; these run in f32");
            }
            return sgld::chains_tensor(start, params, rng, |x| {
                energy::input_grad(model, x, target).0
            });
        };
        let dims = start.dims();
        let [b, c, h, w] = dims;
        let device = start.device().inner();
        let labels = cnn_cpu::labels_of(target);
        let x: Vec<f32> = start.into_data().try_to_vec().expect("f32 chains");
        let (x, grad_norm) = sgld::chains_host(x, c * h * w, params, rng, |x| {
            kernel.input_grad(x, b, [c, h, w], host_target(&labels)).0
        });
        SgldOutput {
            samples: Tensor::<4>::from_data(TensorData::new(x, dims), &device),
            grad_norm,
        }
    }
}

fn host_target(labels: &Option<Vec<usize>>) -> HostTarget<'_> {
    match labels {
        None => HostTarget::Marginal,
        Some(ys) => HostTarget::Joint(ys),
    }
}

/// The device jem computes on when none is named: [`DeviceSpec::Auto`] (`JEM_DEVICE`, else
/// the first GPU backend compiled in, else the CPU). Where that device cannot be opened it
/// says why in the log and falls back to the CPU; use [`DeviceSpec::open`] for the error.
pub fn default_device() -> Device {
    match DeviceSpec::Auto.open() {
        Ok(device) => device,
        Err(e) => {
            tracing::warn!("{e}; computing on the CPU");
            DeviceSpec::Cpu.open().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine follows the model and the device; bf16 chains are refused by name where
    /// they cannot run.
    #[test]
    fn the_engine_is_chosen_from_model_and_device() {
        let cpu = Device::flex();
        let cnn = ModelConfig::default();
        let wrn = ModelConfig::from_arch(crate::model::Arch::Wrn, 10, 1);
        let kernel = if cnn_cpu::supports(Precision::F32) {
            Engine::CnnCpu
        } else {
            Engine::Autodiff
        };
        assert_eq!(Engine::for_config(&cnn, &cpu), kernel);
        assert_eq!(Engine::for_config(&wrn, &cpu), Engine::Autodiff);
        let model = cnn.init_seeded(1, 10, &cpu.clone().autodiff(), 0);
        assert_eq!(Engine::for_model(&model), kernel);
        for engine in [Engine::CnnCpu, Engine::Autodiff] {
            engine.check_chains(Precision::F32).unwrap();
        }
        let e = Engine::Autodiff
            .check_chains(Precision::Bf16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sgld.precision"), "{e}");
        assert!(Engine::Autodiff.kernel(&model, Precision::F32).is_none());
    }

    /// `auto` chains: bf16 only in the kernel on a CPU that runs it, f32 everywhere else; it
    /// passes the check on every engine, and the other precisions are not changed.
    #[test]
    fn auto_chains_resolve_to_what_the_engine_runs() {
        let bf16 = cnn_cpu::supports(Precision::Bf16);
        let kernel = if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        };
        assert_eq!(Engine::CnnCpu.chains_precision(Precision::Auto), kernel);
        assert_eq!(
            Engine::Autodiff.chains_precision(Precision::Auto),
            Precision::F32
        );
        for engine in [Engine::CnnCpu, Engine::Autodiff] {
            engine.check_chains(Precision::Auto).unwrap();
            for p in [Precision::F32, Precision::Bf16, Precision::MixedBf16] {
                assert_eq!(engine.chains_precision(p), p);
            }
        }
        assert_eq!(Precision::Auto.resolve(true), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve(false), Precision::F32);
    }
}
