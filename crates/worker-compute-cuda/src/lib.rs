//! The CUDA backend: [`worker_compute::ComputeBackend`] on NVIDIA GPUs through cudarc
//! (dynamically loaded), with `.cu` kernels compiled by NVRTC at start-up.
//!
//! ```no_run
//! use worker_compute::ComputeBackend;
//! use worker_compute_cuda::{CudaBackend, CudaConfig};
//! let mut gpu = CudaBackend::new(CudaConfig { device: 0, ..CudaConfig::default() })?;
//! let x = gpu.alloc_tensor(1, 4)?;
//! gpu.write_rows(x, &[1.0, 2.0, 3.0, 4.0])?;
//! gpu.gelu(x, 1)?;
//! let mut out = [0f32; 4];
//! gpu.read_rows(x, 1, &mut out)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Weights are uploaded in their GGUF types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K; IQ4_NL, IQ4_XS, Q2_K, Q3_K with the experimental `types` path, MXFP4
//! with `models`) and dequantized inside the kernels; the KV cache is f16. Everything lives
//! in VRAM: plain device allocations, no managed memory, no host fallback; an allocation
//! that fails is [`worker_compute::ComputeError::Alloc`] (logged as `VRAM_OOM`).
//!
//! Building needs no CUDA at all. At run time a missing driver or device is
//! [`CudaError::NoDevice`], never a panic: cudarc panics when it cannot load a library, so
//! [`CudaBackend::new`] looks for it first.
//!
//! This crate must not hold model logic (models stay in `worker-models`, written once
//! against the trait), must not fall back to the host, and must not panic on bad input.
#![deny(missing_docs)]

mod attention;
mod backend;
mod config;
mod device;
mod error;
mod gemm;
pub mod kernels;
mod launch;
#[cfg(test)]
mod launches;
pub mod loader;
mod matmul;
mod memory;
#[cfg(test)]
mod models_checks;
mod moe;
mod ops;
mod profile;
mod queue;
mod types;

pub use backend::CudaBackend;
pub use config::{CudaConfig, Experimental};
pub use error::CudaError;
pub use gemm::TILE_ELEMENTS;
pub use queue::LaunchStats;
pub use types::WEIGHT_TYPES;
