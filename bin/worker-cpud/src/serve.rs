//! `worker-cpud serve`: [`worker_http::serve_model`] on the CPU backend.

use clap::Args;
use worker_common::MemoryArchitecture;
use worker_compute::{CpuBackend, CpuConfig};
use worker_http::{ServeArgs, WorkerKind};

/// Flags of `serve`: the shared worker flags plus the CPU thread count.
#[derive(Args)]
pub struct CpuServeArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// CPU threads per op (default: all cores).
    #[arg(long, env = "WORKER_THREADS")]
    threads: Option<usize>,
}

/// The CPU backend's settings for `threads` (all cores when not given).
pub fn cpu_config(threads: Option<usize>) -> anyhow::Result<CpuConfig> {
    let mut cpu = CpuConfig::default();
    if let Some(threads) = threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        cpu.threads = threads;
    }
    Ok(cpu)
}

pub fn serve(args: &CpuServeArgs) -> anyhow::Result<()> {
    let cpu = cpu_config(args.threads)?;
    let kind = WorkerKind {
        worker_type: "cpu".into(),
        memory_architecture: MemoryArchitecture::Host,
        device: None,
    };
    worker_http::serve_model(&args.serve, kind, |_, _| Ok(Box::new(CpuBackend::new(cpu))))?;
    Ok(())
}
