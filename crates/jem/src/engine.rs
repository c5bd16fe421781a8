//! The compute engine: how input gradients, chains and training steps are computed. It is
//! chosen once, when a trainer or an evaluation is created, and passed down as a value; the
//! maths modules ([`crate::sgld`], [`crate::energy`], the step and the evaluations) take it
//! as an argument and never test the model or device themselves.
//!
//! - [`Engine::CnnCpu`]: jem's own CPU kernel of the benchmark CNN ([`crate::cnn_cpu`]), on
//!   the CPU backend of a machine with AVX-512 or AVX2 and FMA.
//! - [`Engine::Autodiff`]: burn's autodiff, for every other model and device (and the
//!   reference the kernel is tested against).

use burn::prelude::*;

use crate::cnn_cpu::{self, CnnKernel, HostTarget};
use crate::device::DeviceSpec;
use crate::energy::{self, Target};
use crate::error::ConfigError;
use crate::metrics::median;
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
    /// the CPU backend of a CPU with AVX-512 or AVX2 and FMA, else autodiff.
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

    /// The instructions of the kernel's f32 products (`avx512`, or `avx2` on a CPU without
    /// AVX-512) for [`Engine::CnnCpu`]; `None` for autodiff.
    pub fn instructions(self) -> Option<&'static str> {
        match self {
            Engine::CnnCpu => cnn_cpu::instructions(),
            Engine::Autodiff => None,
        }
    }

    /// The precision the chains of a `model` network run at when a config asks for
    /// `precision`, for `chains` chains of images of `shape` and `classes` classes on
    /// `device` (the run's, for which this engine was chosen): `auto`
    /// becomes bf16 only where this engine runs bf16 chains (the CPU kernel on a CPU with
    /// AVX512-BF16) *and* bf16 input gradients of this network at this batch are timed at
    /// least [`AUTO_BF16_MIN_SPEEDUP`] times as fast as f32 ([`bf16_speedup`], on a network
    /// of this shape with seed-0 weights); f32 everywhere else. Any other value is returned
    /// as it is (and checked by [`Engine::check_chains`]).
    ///
    /// bf16 is not faster on every CPU that has it: `jem bench` measured its SGLD step at
    /// 1.6x f32 on an AMD EPYC with AVX-512 and at 0.7x on an Intel Xeon with AVX512-BF16.
    pub fn chains_precision(
        self,
        precision: Precision,
        model: &ModelConfig,
        shape: [usize; 3],
        classes: usize,
        chains: usize,
        device: &Device,
    ) -> Precision {
        if precision != Precision::Auto {
            return precision;
        }
        let speedup = (self == Engine::CnnCpu && cnn_cpu::supports(Precision::Bf16))
            .then(|| {
                let net = model.init(shape[0], classes, device);
                bf16_speedup(&net, chains, shape)
            })
            .flatten();
        let chosen = auto_precision(speedup);
        tracing::info!(
            engine = self.name(),
            bf16_speedup = speedup,
            "sgld.precision auto: chains run in {chosen:?}"
        );
        chosen
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

/// How many times as fast as f32 bf16 chains must be for `auto` to choose them: f32 gives the
/// exact LeakyReLU slopes, so bf16 has to pay for its rounding.
pub const AUTO_BF16_MIN_SPEEDUP: f64 = 1.1;

/// What `auto` chains become for a measured bf16 speed-up over f32 (`None`: bf16 cannot run).
pub fn auto_precision(bf16_speedup: Option<f64>) -> Precision {
    match bf16_speedup {
        Some(s) if s >= AUTO_BF16_MIN_SPEEDUP => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// f32 time over bf16 time of the CPU kernel's input gradient of `model` for a batch of
/// `chains` images of `shape` (the work of one SGLD step), median of interleaved timings
/// after a warm-up; `None` where the kernel cannot run `model` in bf16 on this CPU.
pub fn bf16_speedup(model: &Classifier, chains: usize, shape: [usize; 3]) -> Option<f64> {
    const REPS: usize = 7;
    let mut f32_kernel = CnnKernel::with_precision(model, Precision::F32)?;
    let mut bf16_kernel = CnnKernel::with_precision(model, Precision::Bf16)?;
    let b = chains.max(1);
    let mut x = vec![0.0f32; b * shape.iter().product::<usize>()];
    Rng::new(0, AUTO_TIMING_STREAM).fill_uniform(&mut x, -1.0, 1.0);
    let time = |kernel: &mut CnnKernel| {
        let t = std::time::Instant::now();
        let (g, _) = kernel.input_grad(&x, b, shape, HostTarget::Marginal);
        std::hint::black_box(g);
        t.elapsed().as_secs_f64()
    };
    let (mut f32_s, mut bf16_s) = (Vec::with_capacity(REPS), Vec::with_capacity(REPS));
    for rep in 0..REPS + 2 {
        let (f, h) = (time(&mut f32_kernel), time(&mut bf16_kernel));
        if rep >= 2 {
            f32_s.push(f);
            bf16_s.push(h);
        }
    }
    Some(median(f32_s)? / median(bf16_s)?.max(1e-12))
}

/// The generator stream of the random inputs [`bf16_speedup`] times (not the run's).
const AUTO_TIMING_STREAM: u64 = 0x4155_544f;

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

    /// `auto` chains: bf16 only in the kernel on a CPU that runs it, and there only where it
    /// was timed faster than f32 by the margin; f32 everywhere else. `auto` passes the check
    /// on every engine, and the other precisions are not changed.
    #[test]
    fn auto_chains_resolve_to_what_the_engine_runs() {
        let cfg = ModelConfig::cnn(vec![8, 16]);
        let model = cfg.init(1, 10, &Device::flex());
        let at = |engine: Engine, p| {
            engine.chains_precision(p, &cfg, [1, 28, 28], 10, 16, &Device::flex())
        };
        let auto = at(Engine::CnnCpu, Precision::Auto);
        let speedup = bf16_speedup(&model, 16, [1, 28, 28]);
        assert_eq!(speedup.is_some(), cnn_cpu::supports(Precision::Bf16));
        match speedup {
            None => assert_eq!(auto, Precision::F32),
            Some(s) => {
                assert!(matches!(auto, Precision::F32 | Precision::Bf16), "{auto:?}");
                assert!(s.is_finite() && s > 0.0, "{s}");
            }
        }
        assert_eq!(at(Engine::Autodiff, Precision::Auto), Precision::F32);
        for engine in [Engine::CnnCpu, Engine::Autodiff] {
            engine.check_chains(Precision::Auto).unwrap();
            for p in [Precision::F32, Precision::Bf16, Precision::MixedBf16] {
                assert_eq!(at(engine, p), p);
            }
        }
        // The rule itself: bf16 only when it runs and pays by the margin.
        assert_eq!(auto_precision(None), Precision::F32);
        assert_eq!(auto_precision(Some(0.7)), Precision::F32);
        assert_eq!(auto_precision(Some(1.05)), Precision::F32);
        assert_eq!(auto_precision(Some(AUTO_BF16_MIN_SPEEDUP)), Precision::Bf16);
        assert_eq!(auto_precision(Some(1.6)), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve(true), Precision::Bf16);
        assert_eq!(Precision::Auto.resolve(false), Precision::F32);
    }
}
