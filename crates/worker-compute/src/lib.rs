//! The compute boundary: the [`ComputeBackend`] trait that model adapters call, and the CPU
//! backend ([`cpu::CpuBackend`]: scalar reference kernels plus SIMD kernels chosen at run
//! time, on a persistent thread pool).
//!
//! ```no_run
//! use worker_compute::{ComputeBackend, CpuBackend, CpuConfig};
//! let mut cpu = CpuBackend::new(CpuConfig::default());
//! let x = cpu.alloc_tensor(1, 4)?;
//! cpu.write_rows(x, &[1.0, 2.0, 3.0, 4.0])?;
//! cpu.gelu(x, 1)?;
//! let mut out = [0f32; 4];
//! cpu.read_rows(x, 1, &mut out)?;
//! # Ok::<(), worker_compute::ComputeError>(())
//! ```
//!
//! The op list is short and explicit (see [`ComputeBackend`]); device memory sits behind
//! handles, so a GPU backend implements the same trait and can capture a decode step as a
//! graph. This crate must not know about models, tokens, files or HTTP: it receives weights
//! as bytes with a type and a shape, and indices as `u32`s.
#![deny(missing_docs)]

mod backend;
pub mod conformance;
pub mod cpu;
mod error;
pub mod profile;
pub mod shape;

pub use backend::{
    AttentionParams, ComputeBackend, ExpertActivation, ExpertWeights, IndexId, KvCacheConfig,
    KvCacheId, KvIndex, KvLayout, KvType, Linear, MoeParams, Result, RopeMode, RopeParams,
    TensorId, WeightDesc, WeightId, Yarn, KV_BLOCK,
};
pub use cpu::{Activations, CpuBackend, CpuConfig, KernelChoice};
pub use error::ComputeError;
