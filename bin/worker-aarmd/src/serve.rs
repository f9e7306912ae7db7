//! `worker-aarmd serve`: bind (answering "loading"), open the adapter, load the model onto
//! it, then hand over to [`worker_http::run_blocking`]: the same routes, events and start-up
//! contract as the other workers, with the adapter in `/health` and the ready callback.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use worker_compute_wgpu::WgpuConfig;
use worker_gguf::GgufFile;
use worker_http::ServeArgs;

use crate::{load, open_backend, worker_kind};

pub fn serve(config: WgpuConfig, s: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(s.slots > 0, "--slots must be at least 1");
    // The adapter first, before logging starts: without one, the one line of the error is
    // all that is printed (not also the Vulkan loader's complaints, relayed by wgpu).
    let be = open_backend(config)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Bound before the load, answering 503 "loading", so probes can tell loading from dead.
    let port = worker_http::LoadingPort::bind(&s.host, s.port)
        .with_context(|| format!("cannot listen on {}:{}", s.host, s.port))?;
    let start = Instant::now();
    let kind = worker_kind(&be);
    tracing::info!(model = %s.model.display(), slots = s.slots, adapter = %be.adapter().name, "loading model");
    let file = GgufFile::open(&s.model)
        .with_context(|| format!("cannot load model {}", s.model.display()))?;
    let (engine, card) = load(&file, &s.model, be, s.engine_config(), s.model_id())?;
    // The weights are on the device and the card holds everything else the server needs:
    // unmap the file, so the pages the load touched do not stay resident on the host.
    drop(file);
    tracing::info!(
        ms = start.elapsed().as_millis() as u64,
        memory_bytes = card.memory_bytes,
        kv_type = engine.info().kv_type.as_str(),
        quant = card.quant_kind,
        "model loaded"
    );
    worker_http::run_blocking(s, port, Arc::new(engine), card, kind)?;
    tracing::info!("stopped");
    Ok(())
}
