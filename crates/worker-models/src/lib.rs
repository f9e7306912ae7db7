//! Model adapters (llama, qwen2, phi3, gpt2, …) written once against the `ComputeBackend`
//! ops, and the factory that picks one from `general.architecture`.
//!
//! Empty until the CPU inference issue lands. It must never name a concrete backend.
