//! Initial weights drawn on the host from jem's own generator ([`crate::rng::Rng`]) and then
//! moved to the model's device, so that a seed means the same starting point on every
//! device: the CPU, wgpu, Vulkan or CUDA (each backend's own generator draws other numbers).
//!
//! The distributions are burn's defaults for the layers jem builds: convolution and linear
//! weights and biases uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` (burn's Kaiming-uniform
//! with gain `1/sqrt(3)`), where `fan_in` is the weight's inputs per output; normalisation
//! scales one and shifts zero, and running statistics as built (zero mean, unit variance).

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

use crate::error::Error;
use crate::rng::Rng;

/// The generator stream of initial weights (other streams: data order, chains, ...).
pub const WEIGHT_STREAM: u64 = 0x5745_4947_4854;

/// `module` with every convolution and linear parameter drawn from `rng` on the host (a run
/// uses `Rng::new(seed, WEIGHT_STREAM)`), in the module's own order, each put on the device
/// and given the gradient setting it was built with. The parameters keep their ids; a
/// module built lazily (as burn builds layers) draws nothing on its device.
///
/// `Err` names any float parameter of a layer this module does not know how to draw (a
/// model that gained a layer kind must say its distribution here first).
pub fn draw_on_host<M: Module>(module: M, rng: &mut Rng) -> Result<M, Error> {
    let mut mapper = HostDraw {
        rng,
        path: Vec::new(),
        fan_in: None,
        unknown: Vec::new(),
    };
    let module = module.map(&mut mapper);
    if mapper.unknown.is_empty() {
        Ok(module)
    } else {
        Err(Error::Shape(format!(
            "no host initialisation for the parameters {}",
            mapper.unknown.join(", ")
        )))
    }
}

/// What to do with one float parameter, from its field name and the layer it belongs to.
#[derive(Debug, PartialEq)]
enum Rule {
    /// A weight: uniform within `1/sqrt(fan_in)`, the fan-in computed from its shape.
    Weight,
    /// A bias: uniform within `1/sqrt(fan_in)` of the weight drawn just before it.
    Bias,
    /// Deterministic as built (normalisation scales and shifts, running statistics).
    Keep,
    /// Not known here.
    Unknown,
}

fn rule(layer: &str, field: &str) -> Rule {
    match (layer, field) {
        ("Struct:Conv2d" | "Struct:Linear", "weight") => Rule::Weight,
        ("Struct:Conv2d" | "Struct:Linear", "bias") => Rule::Bias,
        (
            "Struct:BatchNorm" | "Struct:GroupNorm" | "Struct:LayerNorm",
            "gamma" | "beta" | "running_mean" | "running_var",
        ) => Rule::Keep,
        _ => Rule::Unknown,
    }
}

/// The inputs per output of a weight: `[out, in / groups, kh, kw]` for a convolution,
/// `[d_in, d_out]` for a linear layer (burn's row layout).
fn fan_in(layer: &str, dims: &[usize]) -> usize {
    if layer == "Struct:Linear" {
        dims[0]
    } else {
        dims[1..].iter().product()
    }
}

struct HostDraw<'a> {
    rng: &'a mut Rng,
    /// `(field, container)` of every module entered and not yet left.
    path: Vec<(String, String)>,
    /// The fan-in of the last weight drawn (for the bias after it).
    fan_in: Option<usize>,
    unknown: Vec<String>,
}

impl HostDraw<'_> {
    fn uniform(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let mut v = vec![0.0f32; n];
        self.rng.fill_uniform(&mut v, -bound, bound);
        v
    }
}

impl ModuleMapper for HostDraw<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (field, layer) = self.path.last().cloned().unwrap_or_default();
        let dims: [usize; D] = param.lazy_shape().dims();
        let n: usize = dims.iter().product();
        let values = match rule(&layer, &field) {
            Rule::Keep => return param,
            Rule::Unknown => {
                let path: Vec<&str> = self.path.iter().map(|(f, _)| f.as_str()).collect();
                self.unknown.push(path.join("."));
                return param;
            }
            Rule::Weight => {
                let fan = fan_in(&layer, &dims);
                self.fan_in = Some(fan);
                self.uniform(n, fan)
            }
            Rule::Bias => {
                let fan = self.fan_in.unwrap_or(n);
                self.uniform(n, fan)
            }
        };
        let device = param.lazy_device();
        let id = param.id;
        let tensor = Tensor::<D>::from_data(TensorData::new(values, dims), &device);
        param.transform_for_load(tensor, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_cover_the_layers_jem_builds_and_nothing_else() {
        assert_eq!(rule("Struct:Conv2d", "weight"), Rule::Weight);
        assert_eq!(rule("Struct:Linear", "bias"), Rule::Bias);
        assert_eq!(rule("Struct:BatchNorm", "running_var"), Rule::Keep);
        assert_eq!(rule("Struct:GroupNorm", "gamma"), Rule::Keep);
        assert_eq!(rule("Struct:Embedding", "weight"), Rule::Unknown);
        assert_eq!(fan_in("Struct:Conv2d", &[8, 3, 3, 3]), 27);
        assert_eq!(fan_in("Struct:Linear", &[256, 10]), 256);
    }
}
