//! `worker-orcd serve`: load the model onto the GPU (refused up front, naming required and
//! available bytes, when it does not fit in VRAM), then hand over to [`worker_http::run`]:
//! the same routes, events and start-up contract as `worker-cpud serve`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use worker_common::MemoryArchitecture;
use worker_engine::Engine;
use worker_gguf::GgufFile;
use worker_http::{ModelCard, ServeArgs, WorkerKind};

use crate::{open_backend, BackendKind, Device};

pub fn serve(dev: Device, s: &ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    anyhow::ensure!(s.slots > 0, "--slots must be at least 1");
    // Bound before the load, answering 503 "loading", so probes can tell loading from dead.
    let port = worker_http::LoadingPort::bind(&s.host, s.port)
        .with_context(|| format!("cannot listen on {}:{}", s.host, s.port))?;
    let start = Instant::now();
    tracing::info!(model = %s.model.display(), slots = s.slots, device = dev.ordinal, "loading model");
    let file = GgufFile::open(&s.model)
        .with_context(|| format!("cannot load model {}", s.model.display()))?;
    let config = s.engine_config();
    // The same sizes the engine asks the model for, so the VRAM check counts what it will use.
    let backend = open_backend(BackendKind::Cuda, dev, &file, &config.load_options())?;
    let engine = Engine::load(&file, backend, config)
        .with_context(|| format!("cannot load model {}", s.model.display()))?;
    let card = ModelCard::from_gguf(s.model_id(), &file, &engine.info())?;
    // The weights are on the device and the card holds everything else the server needs:
    // unmap the file, so the pages the load touched do not stay resident on the host.
    drop(file);
    tracing::info!(
        ms = start.elapsed().as_millis() as u64,
        memory_bytes = card.memory_bytes,
        quant = card.quant_kind,
        "model loaded"
    );
    let kind = WorkerKind {
        worker_type: "cuda".into(),
        memory_architecture: MemoryArchitecture::VramOnly,
        device: None,
    };
    worker_http::run_blocking(s, port, Arc::new(engine), card, kind)?;
    tracing::info!("stopped");
    Ok(())
}
