//! The wgpu backend: [`worker_compute::ComputeBackend`] as WGSL compute shaders on any GPU
//! wgpu drives: Metal on Apple silicon (the `worker-aarmd` worker), Vulkan on Linux and
//! Windows (AMD, Intel, NVIDIA, and Mesa's software lavapipe, where CI runs it), DX12.
//!
//! ```no_run
//! use worker_compute::ComputeBackend;
//! use worker_compute_wgpu::{WgpuBackend, WgpuConfig};
//! let mut gpu = WgpuBackend::new(WgpuConfig::default())?;
//! let x = gpu.alloc_tensor(1, 4)?;
//! gpu.write_rows(x, &[1.0, 2.0, 3.0, 4.0])?;
//! gpu.gelu(x, 1)?;
//! let mut out = [0f32; 4];
//! gpu.read_rows(x, 1, &mut out)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Weights stay in their GGUF types on the device (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K; [`WEIGHT_TYPES`]) and the kernels dequantize as they read; another type
//! is refused at upload. Activations are f32. The KV cache is paged (any block holds any
//! positions of any sequence) with f32 or f16 entries. A forward pass records every op into
//! one command encoder and is submitted once, when the logits are read; pipelines and bind
//! groups are made once and reused. Reductions use subgroup operations where the adapter
//! has them, without assuming their size.
//!
//! Without an adapter, [`WgpuBackend::new`] is [`WgpuError::NoAdapter`], never a panic; a
//! device error during an op is [`worker_compute::ComputeError::Device`].
//!
//! This crate must not hold model logic (models stay in `worker-models`, written once
//! against the trait), must not fall back to the host for an op, and must not panic on bad
//! input.
#![deny(missing_docs)]

mod backend;
mod device;
mod error;
mod kv;
pub mod shaders;
mod stream;
mod weights;

pub use backend::{WgpuBackend, WgpuConfig};
pub use device::{list_adapters, AdapterSummary};
pub use error::WgpuError;
pub use kv::MAX_HEAD_DIM;
pub use shaders::WEIGHT_TYPES;
pub use weights::MATVEC_MAX_ROWS;
