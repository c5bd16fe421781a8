//! Which device a run computes on: `--device` on the command line, `device` in a run's
//! `config.toml`, or the `JEM_DEVICE` environment variable, in that order of precedence.
//!
//! | spelling | device |
//! |---|---|
//! | `auto` | `JEM_DEVICE` when set, else the first GPU backend compiled in (`cuda`, `vulkan`, `wgpu`), else the CPU |
//! | `cpu` | burn's `flex` backend (and jem's CPU kernel of the CNN) |
//! | `wgpu`, `wgpu:N`, `wgpu:cpu` | burn's wgpu backend (WGSL): the best adapter, the N-th discrete GPU, or a software adapter such as Mesa's lavapipe |
//! | `vulkan`, `vulkan:N`, `vulkan:cpu` | the same adapters, pinned to Vulkan (SPIR-V) |
//! | `cuda`, `cuda:N` | the N-th CUDA GPU |
//!
//! Opening a device checks that this binary has its backend and that an adapter answers; the
//! error says which Cargo feature to build with or what to install.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Error;

mod gpu;

/// A wgpu adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Adapter {
    /// wgpu's choice (a high-power GPU first; `CUBECL_WGPU_DEFAULT_DEVICE` overrides it).
    #[default]
    Best,
    /// The N-th discrete GPU.
    Gpu(usize),
    /// A software adapter (Mesa's lavapipe).
    Cpu,
}

/// A device as a user names it (see the module docs for the spellings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// `JEM_DEVICE`, else the first GPU backend compiled in, else the CPU.
    #[default]
    Auto,
    /// The CPU (`flex`).
    Cpu,
    /// burn's wgpu backend, its shader language chosen by the runtime (WGSL here).
    Wgpu(Adapter),
    /// burn's wgpu backend pinned to Vulkan.
    Vulkan(Adapter),
    /// A CUDA GPU.
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let adapter = |f: &mut fmt::Formatter<'_>, name: &str, a: &Adapter| match a {
            Adapter::Best => write!(f, "{name}"),
            Adapter::Gpu(n) => write!(f, "{name}:{n}"),
            Adapter::Cpu => write!(f, "{name}:cpu"),
        };
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(a) => adapter(f, "wgpu", a),
            DeviceSpec::Vulkan(a) => adapter(f, "vulkan", a),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, index) = match s.trim().split_once(':') {
            Some((n, i)) => (n, Some(i)),
            None => (s.trim(), None),
        };
        let bad =
            || format!("`{s}`: expected auto, cpu, wgpu[:N|:cpu], vulkan[:N|:cpu] or cuda[:N]");
        let adapter = |i: Option<&str>| match i {
            None => Ok(Adapter::Best),
            Some("cpu") => Ok(Adapter::Cpu),
            Some(n) => n.parse().map(Adapter::Gpu).map_err(|_| bad()),
        };
        match (name, index) {
            ("auto", None) => Ok(DeviceSpec::Auto),
            ("cpu" | "flex", None) => Ok(DeviceSpec::Cpu),
            ("wgpu", i) => adapter(i).map(DeviceSpec::Wgpu),
            ("vulkan", i) => adapter(i).map(DeviceSpec::Vulkan),
            ("cuda", None) => Ok(DeviceSpec::Cuda(0)),
            ("cuda", Some(n)) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// The GPU backends this binary was built with, in the order `auto` tries them.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    v
}

impl DeviceSpec {
    /// The concrete device `auto` stands for here (other specs are themselves): `JEM_DEVICE`
    /// when set (an error names it when it does not parse), else the first GPU backend
    /// compiled in, else the CPU.
    pub fn resolve(self) -> Result<DeviceSpec, Error> {
        if self != DeviceSpec::Auto {
            return Ok(self);
        }
        if let Ok(v) = std::env::var("JEM_DEVICE")
            && !v.is_empty()
        {
            let spec: DeviceSpec = v.parse().map_err(|reason| Error::Device {
                device: format!("JEM_DEVICE={v}"),
                reason,
            })?;
            if spec != DeviceSpec::Auto {
                return Ok(spec);
            }
        }
        Ok(match compiled_backends().first() {
            Some(&"cuda") => DeviceSpec::Cuda(0),
            Some(&"vulkan") => DeviceSpec::Vulkan(Adapter::Best),
            Some(_) => DeviceSpec::Wgpu(Adapter::Best),
            None => DeviceSpec::Cpu,
        })
    }

    /// Open the device: `Err` says when this binary lacks its backend (and the Cargo feature
    /// to build with) or when no adapter answers (and what to install or set).
    pub fn open(self) -> Result<Device, Error> {
        self.open_nth(0)
    }

    /// The device of this spelling's `nth` appearance in a device list (`--devices`), from
    /// 0: [`DeviceSpec::open`] for the first. A wgpu or Vulkan adapter named again gets a
    /// runtime of its own on the same adapter (its own wgpu device and queue), so one
    /// adapter, such as Mesa's lavapipe (which wgpu reports once), can hold several shares
    /// of a data-parallel run. The CPU, or a CUDA GPU, named again is the same device.
    pub fn open_nth(self, nth: usize) -> Result<Device, Error> {
        let spec = self.resolve()?;
        let fail = |reason: String| Error::Device {
            device: spec.to_string(),
            reason,
        };
        match spec {
            DeviceSpec::Auto => unreachable!("resolved above"),
            DeviceSpec::Cpu => open_cpu().ok_or_else(|| fail(missing("flex"))),
            DeviceSpec::Wgpu(a) => gpu::open(a, false, nth).map_err(fail),
            DeviceSpec::Vulkan(a) => gpu::open(a, true, nth).map_err(fail),
            DeviceSpec::Cuda(n) => open_cuda(n).map_err(fail),
        }
    }
}

/// A device list as `--devices` and `devices` in the config spell it (`cpu,wgpu:cpu`).
pub fn spell_list(devices: &[DeviceSpec]) -> String {
    let names: Vec<String> = devices.iter().map(DeviceSpec::to_string).collect();
    names.join(",")
}

/// The spelling of an opened device (`cpu`, `wgpu:cpu`, `cuda:1`, ...), for `state.json` and
/// logs; a device none of the spellings opens is described by burn's own `Debug` form.
pub fn describe(device: &Device) -> String {
    let device = device.clone().inner();
    candidates()
        .into_iter()
        .find(|(_, d)| *d == device)
        .map_or_else(|| format!("{device:?}"), |(spec, _)| spec.to_string())
}

/// Every device a spelling can name here, without opening any (burn's constructors are lazy).
fn candidates() -> Vec<(DeviceSpec, Device)> {
    #[allow(unused_mut)]
    let mut v: Vec<(DeviceSpec, Device)> = open_cpu()
        .map(|d| (DeviceSpec::Cpu, d))
        .into_iter()
        .collect();
    #[cfg(any(feature = "wgpu", feature = "vulkan"))]
    {
        let adapters = [Adapter::Best, Adapter::Cpu]
            .into_iter()
            .chain((0..8).map(Adapter::Gpu));
        for a in adapters {
            #[cfg(feature = "wgpu")]
            v.push((DeviceSpec::Wgpu(a), gpu::wgpu_device(a, false)));
            #[cfg(feature = "vulkan")]
            v.push((DeviceSpec::Vulkan(a), gpu::wgpu_device(a, true)));
        }
    }
    #[cfg(feature = "cuda")]
    for n in 0..16 {
        v.push((DeviceSpec::Cuda(n), Device::cuda(n)));
    }
    v
}

fn missing(feature: &str) -> String {
    let built = compiled_backends();
    format!(
        "this jem was built without the `{feature}` feature (it has: {}); rebuild with `cargo build --release -p jem-cli --features {feature}`",
        if built.is_empty() {
            "cpu".to_string()
        } else {
            built.join(", ")
        }
    )
}

fn open_cpu() -> Option<Device> {
    #[cfg(feature = "flex")]
    {
        Some(Device::flex())
    }
    #[cfg(not(feature = "flex"))]
    {
        None
    }
}

#[allow(unused_variables)]
fn open_cuda(index: usize) -> Result<Device, String> {
    #[cfg(feature = "cuda")]
    {
        let device = Device::cuda(index);
        let probe = std::panic::catch_unwind(|| {
            Tensor::<1>::zeros([1], &device).into_data();
        });
        probe.map(|_| device).map_err(|_| {
            format!(
                "CUDA device {index} did not answer (is the NVIDIA driver loaded, `nvidia-smi`?)"
            )
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(missing("cuda"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips_and_bad_ones_are_refused() {
        for s in [
            "auto", "cpu", "wgpu", "wgpu:1", "wgpu:cpu", "vulkan", "vulkan:0", "cuda:2",
        ] {
            let d: DeviceSpec = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        for bad in ["gpu", "wgpu:x", "cuda:-1", "cpu:0", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("expected auto, cpu"), "{bad}: {e}");
        }
        let toml = toml::to_string(&std::collections::BTreeMap::from([(
            "device",
            DeviceSpec::Wgpu(Adapter::Cpu),
        )]))
        .unwrap();
        assert_eq!(toml.trim(), "device = \"wgpu:cpu\"");
    }

    #[test]
    fn a_backend_this_binary_lacks_is_named_with_its_feature() {
        if !cfg!(feature = "cuda") {
            let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("device `cuda:0`"), "{e}");
            assert!(e.contains("--features cuda"), "{e}");
        }
        if cfg!(feature = "flex") {
            assert!(DeviceSpec::Cpu.open().is_ok());
        }
    }
}
