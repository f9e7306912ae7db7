//! The generation engine: queues jobs, tokenizes, runs prefill and decode through a model
//! adapter, samples, detects stop conditions and streams UTF-8-safe text.
//!
//! Empty until the CPU inference issue lands. It must do no network IO.
