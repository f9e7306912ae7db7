//! Finding an adapter and opening its device: which backends are searched (`WGPU_BACKEND`,
//! else Vulkan, Metal and DX12), how `--adapter` picks one, and what the adapter offers
//! (name, backend, kind of memory, `shader-f16`, subgroups and their sizes, limits).

use std::fmt;

use crate::error::WgpuError;

/// What one adapter is and offers, for logs, `/health` and the start-up report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Position in [`list_adapters`] (what `--adapter N` names).
    pub index: usize,
    /// The adapter's name (`"Apple M2"`, `"llvmpipe (LLVM 15.0.6, 256 bits)"`).
    pub name: String,
    /// The wgpu backend it runs on: `vulkan`, `metal`, `dx12`.
    pub backend: &'static str,
    /// wgpu's device type: `integrated`, `discrete`, `virtual`, `cpu`, `other`.
    pub device_type: &'static str,
    /// The driver's name and version.
    pub driver: String,
    /// Whether the adapter has the `shader-f16` feature (f16 arithmetic in shaders).
    pub shader_f16: bool,
    /// Subgroup sizes when the adapter has subgroup operations (`SUBGROUP`), else `None`.
    pub subgroup_sizes: Option<(u32, u32)>,
    /// The largest storage buffer one binding may cover, in bytes.
    pub max_binding_bytes: u64,
    /// The largest buffer, in bytes.
    pub max_buffer_bytes: u64,
    /// Workgroup shared memory, in bytes.
    pub max_workgroup_bytes: u32,
}

impl AdapterSummary {
    fn new(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();
        AdapterSummary {
            index,
            name: info.name.clone(),
            backend: info.backend.to_str(),
            device_type: match info.device_type {
                wgpu::DeviceType::IntegratedGpu => "integrated",
                wgpu::DeviceType::DiscreteGpu => "discrete",
                wgpu::DeviceType::VirtualGpu => "virtual",
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::Other => "other",
            },
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup_sizes: features
                .contains(wgpu::Features::SUBGROUP)
                .then_some((info.subgroup_min_size, info.subgroup_max_size)),
            max_binding_bytes: limits.max_storage_buffer_binding_size,
            max_buffer_bytes: limits.max_buffer_size,
            max_workgroup_bytes: limits.max_compute_workgroup_storage_size,
        }
    }

    /// Whether the GPU shares the host's memory: an integrated GPU (Apple silicon, laptop
    /// iGPUs) or a software rasterizer (lavapipe).
    pub fn shares_host_memory(&self) -> bool {
        matches!(self.device_type, "integrated" | "cpu")
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {} ({}, {}, {}); shader-f16: {}; subgroups: {}; max binding {} MiB, max buffer {} MiB, workgroup memory {} KiB",
            self.index,
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            if self.shader_f16 { "yes" } else { "no" },
            match self.subgroup_sizes {
                Some((lo, hi)) if lo == hi => format!("size {lo}"),
                Some((lo, hi)) => format!("sizes {lo}..={hi}"),
                None => "no".into(),
            },
            self.max_binding_bytes >> 20,
            self.max_buffer_bytes >> 20,
            self.max_workgroup_bytes >> 10,
        )
    }
}

/// The backends searched: `WGPU_BACKEND` (a comma list: `vulkan`, `metal`, `dx12`) when set,
/// else all three (those this platform has).
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env()
        .unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12)
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backends(),
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    })
}

/// Every adapter wgpu finds, best first: discrete GPUs, integrated, virtual, other, then
/// software ones (lavapipe).
fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance.enumerate_adapters(backends()));
    all.sort_by_key(|a| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    });
    all
}

/// What every adapter found offers, in the order `--adapter N` counts them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::new(i, a))
        .collect()
}

/// An open device: its queue, what its adapter is, and the features and limits granted.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    /// Subgroup operations are enabled (the adapter has them and the config asked).
    pub subgroups: bool,
}

/// Opens the adapter `choice` names (its index in [`list_adapters`], or a case-insensitive
/// part of its name), or the best one when `None`.
pub(crate) fn open(choice: Option<&str>, subgroups: bool) -> Result<Gpu, WgpuError> {
    let instance = instance();
    let all = adapters(&instance);
    if all.is_empty() {
        return Err(WgpuError::NoAdapter(format!(
            "wgpu sees no adapter on {} (on Linux, a Vulkan driver: Mesa's lavapipe is Debian's mesa-vulkan-drivers)",
            backend_names()
        )));
    }
    let pick = match choice {
        None => 0,
        Some(c) => pick(&all, c)?,
    };
    let adapter = &all[pick];
    let summary = AdapterSummary::new(pick, adapter);
    let subgroups = subgroups && summary.subgroup_sizes.is_some();
    let mut features = wgpu::Features::empty();
    if subgroups {
        features |= wgpu::Features::SUBGROUP;
    }
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("worker-compute-wgpu"),
        required_features: features,
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| WgpuError::RequestDevice {
        adapter: summary.name.clone(),
        reason: e.to_string(),
    })?;
    Ok(Gpu {
        device,
        queue,
        summary,
        limits,
        subgroups,
    })
}

fn backend_names() -> String {
    let b = backends();
    let names: Vec<&str> = [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
    ]
    .into_iter()
    .filter(|(x, _)| b.contains(*x))
    .map(|(_, n)| n)
    .collect();
    if names.is_empty() {
        "no backend (check WGPU_BACKEND)".into()
    } else {
        names.join(", ")
    }
}

/// The adapter `choice` names: a number is an index, anything else a part of a name.
fn pick(all: &[wgpu::Adapter], choice: &str) -> Result<usize, WgpuError> {
    let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
    let found = match choice.trim().parse::<usize>() {
        Ok(i) => (i < all.len()).then_some(i),
        Err(_) => {
            let want = choice.trim().to_lowercase();
            names.iter().position(|n| n.to_lowercase().contains(&want))
        }
    };
    found.ok_or_else(|| {
        let listed: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("[{i}] {n}"))
            .collect();
        WgpuError::NoAdapter(format!(
            "none matches --adapter {choice:?}; found {}",
            listed.join(", ")
        ))
    })
}
