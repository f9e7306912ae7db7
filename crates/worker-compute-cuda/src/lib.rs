//! The CUDA backend: `ComputeBackend` on NVIDIA GPUs through cudarc (dynamically loaded),
//! NVRTC-compiled kernels and cuBLAS, with weights, KV cache and activations in VRAM only.
//!
//! Empty until the CUDA issue lands. It must not hold model logic: models stay in
//! `worker-models`, written once against the trait.
