//! Opening burn's wgpu runtimes: one per adapter and graphics API, as burn registers them, and
//! further runtimes of their own on an adapter named again in a device list (`--devices
//! wgpu:cpu,wgpu:cpu`), each with its own wgpu device and queue.
//!
//! wgpu reports one software adapter (Mesa's lavapipe) and burn registers one runtime per
//! adapter selector, so without the second kind one machine without a GPU could pair its
//! software adapter only with the CPU. A replica runtime is registered from a wgpu device
//! requested anew from the first runtime's adapter, with the first's features and limits
//! (burn's `WgpuOptions::setup`); on a machine with several GPUs, `wgpu:0,wgpu:1` name two
//! adapters and need no replica.

use burn::prelude::*;

use super::{Adapter, missing};

/// What a machine without a wgpu adapter needs.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
const NO_ADAPTER_HINT: &str = "no adapter answered. A GPU needs its Vulkan driver; without one, Mesa's software Vulkan runs the same code on the CPU (Debian: `apt-get install mesa-vulkan-drivers libvulkan1`, then `export VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json` and an `XDG_RUNTIME_DIR`, and ask for `wgpu:cpu`)";

/// burn's selector for `adapter`.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn device_kind(adapter: Adapter) -> burn::tensor::DeviceKind {
    use burn::tensor::DeviceKind;
    match adapter {
        Adapter::Best => DeviceKind::DefaultDevice,
        Adapter::Gpu(n) => DeviceKind::DiscreteGpu(n),
        Adapter::Cpu => DeviceKind::Cpu,
    }
}

/// The (lazy, unopened) device of `adapter` on wgpu, or pinned to Vulkan; a build with one of
/// the two features builds that one. Every line but the last compiles with both features (the
/// lint pass of `.ci/run`); the last compiles in the wgpu-only test build.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
pub(super) fn wgpu_device(adapter: Adapter, vulkan: bool) -> Device {
    let kind = device_kind(adapter);
    #[cfg(feature = "wgpu")]
    if !vulkan {
        return Device::wgpu(kind);
    }
    #[cfg(feature = "vulkan")]
    {
        let _ = vulkan;
        Device::vulkan(kind)
    }
    #[cfg(not(feature = "vulkan"))]
    Device::wgpu(kind)
}

/// A runtime this process registered: its adapter and API, the wgpu handles it runs on
/// (absent when burn registered it itself, from a tensor made on the lazy device), and the
/// replica runtimes opened on the same adapter so far.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
struct Opened {
    adapter: Adapter,
    vulkan: bool,
    setup: Option<burn::tensor::wgpu::WgpuSetup>,
    replicas: Vec<Device>,
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
static OPENED: std::sync::Mutex<Vec<Opened>> = std::sync::Mutex::new(Vec::new());

/// Open the runtime of `adapter` (`vulkan`: pinned to Vulkan), or its `nth` replica for
/// `nth >= 1`. Opening one again returns the same device.
#[allow(unused_variables)]
pub(super) fn open(adapter: Adapter, vulkan: bool, nth: usize) -> Result<Device, String> {
    let feature = if vulkan { "vulkan" } else { "wgpu" };
    #[cfg(any(feature = "wgpu", feature = "vulkan"))]
    {
        if vulkan && !cfg!(feature = "vulkan") || !vulkan && !cfg!(feature = "wgpu") {
            return Err(missing(feature));
        }
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        let at = match opened
            .iter()
            .position(|o| o.adapter == adapter && o.vulkan == vulkan)
        {
            Some(at) => at,
            None => {
                opened.push(open_first(adapter, vulkan)?);
                opened.len() - 1
            }
        };
        let entry = &mut opened[at];
        if nth == 0 {
            return Ok(wgpu_device(adapter, vulkan));
        }
        while entry.replicas.len() < nth {
            let setup = entry.setup.as_ref().ok_or_else(|| {
                "its first runtime was registered by burn itself, not through jem::device, so \
                 its adapter is not at hand to open another on"
                    .to_string()
            })?;
            entry.replicas.push(open_replica(setup)?);
        }
        Ok(entry.replicas[nth - 1].clone())
    }
    #[cfg(not(any(feature = "wgpu", feature = "vulkan")))]
    {
        Err(missing(feature))
    }
}

/// Register the runtime of `adapter` with burn, keeping its wgpu handles.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn open_first(adapter: Adapter, vulkan: bool) -> Result<Opened, String> {
    let mut options = Device::wgpu_options().device_kind(device_kind(adapter));
    if vulkan {
        options = options.graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan);
    }
    let setup = match options.init_with_setup() {
        Ok((_, setup)) => Some(setup),
        // Registered already by burn itself (a tensor made on the lazy device first).
        Err(e) if e.to_string().contains("already initialized") => None,
        Err(e) => return Err(format!("{e}; {NO_ADAPTER_HINT}")),
    };
    Ok(Opened {
        adapter,
        vulkan,
        setup,
        replicas: Vec::new(),
    })
}

/// A runtime of its own on the adapter of `first`: a new wgpu device and queue with the same
/// features and limits, registered with burn under a new identity.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn open_replica(first: &burn::tensor::wgpu::WgpuSetup) -> Result<Device, String> {
    use burn::tensor::wgpu::wgpu;
    let descriptor = wgpu::DeviceDescriptor {
        label: Some("jem replica"),
        required_features: first.device.features(),
        required_limits: first.device.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    };
    let (device, queue) = block_on(first.adapter.request_device(&descriptor))
        .map_err(|e| format!("a second wgpu device on this adapter was refused: {e}"))?;
    let setup = burn::tensor::wgpu::WgpuSetup {
        instance: first.instance.clone(),
        adapter: first.adapter.clone(),
        device,
        queue,
        backend: first.backend,
    };
    Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| format!("registering a second runtime on this adapter failed: {e}"))
}

/// Run a future of native wgpu to its end (they complete without waiting on an event loop).
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
