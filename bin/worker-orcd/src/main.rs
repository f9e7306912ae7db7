//! `worker-orcd`: the llama-orch worker on NVIDIA GPUs, VRAM-only.
//!
//! The CUDA backend is not built yet: this binary says so and exits 1, so that nobody mistakes
//! it for a working worker.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("worker-orcd: the CUDA backend is not built yet; use worker-cpud");
    ExitCode::FAILURE
}
