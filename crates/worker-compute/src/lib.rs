//! The compute boundary: the `ComputeBackend` trait that model adapters call, and the CPU
//! backend (scalar reference kernels plus SIMD kernels chosen at run time).
//!
//! Empty until the CPU inference issue lands. It must not know about models, tokens or HTTP.
