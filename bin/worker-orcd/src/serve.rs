//! `worker-orcd serve`: [`worker_http::serve_model`] on the CUDA backend, which is refused up
//! front, naming required and available bytes, when the model does not fit in VRAM; the
//! same routes, events and start-up contract as `worker-cpud serve`.

use worker_common::MemoryArchitecture;
use worker_http::{ServeArgs, WorkerKind};

use crate::{open_backend, BackendKind, Device};

pub fn serve(dev: Device, args: &ServeArgs) -> anyhow::Result<()> {
    let kind = WorkerKind {
        worker_type: "cuda".into(),
        memory_architecture: MemoryArchitecture::VramOnly,
        device: None,
    };
    worker_http::serve_model(args, kind, |file, config| {
        // The sizes the engine will ask the model for, so the VRAM check counts what it uses.
        Ok(open_backend(
            BackendKind::Cuda,
            dev,
            file,
            &config.load_options(),
        )?)
    })?;
    Ok(())
}
