//! `worker-cpud serve`: bind (answering "loading"), load the model on the CPU backend, then
//! hand over to [`worker_http::run`] (ready callback, serve until SIGTERM/SIGINT).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use worker_common::MemoryArchitecture;
use worker_compute::{CpuBackend, CpuConfig};
use worker_engine::{Engine, EngineConfig};
use worker_gguf::GgufFile;
use worker_http::{ModelCard, ServeArgs, WorkerKind};

/// Flags of `serve`: the shared worker flags plus the CPU thread count.
#[derive(Args)]
pub struct CpuServeArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// CPU threads per op (default: all cores).
    #[arg(long, env = "WORKER_THREADS")]
    threads: Option<usize>,
}

/// Everything `serve` builds from the file before it binds: the engine (hyper-parameters
/// checked against the tensors, tokenizer, every weight uploaded after its shape is checked)
/// and the model card (chat template). `check` runs this same function, so the two accept
/// and refuse the same files.
pub fn load(
    file: &GgufFile,
    path: &Path,
    cpu: CpuConfig,
    config: EngineConfig,
    model_id: String,
) -> anyhow::Result<(Engine, ModelCard)> {
    let context = || format!("cannot load model {}", path.display());
    let engine =
        Engine::load(file, Box::new(CpuBackend::new(cpu)), config).with_context(context)?;
    let card = ModelCard::from_gguf(model_id, file, &engine.info()).with_context(context)?;
    Ok((engine, card))
}

pub fn serve(args: &CpuServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let s = &args.serve;
    anyhow::ensure!(s.slots > 0, "--slots must be at least 1");
    let mut cpu = CpuConfig::default();
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        cpu.threads = threads;
    }
    // Bound before the load, answering 503 "loading", so probes can tell loading from dead.
    let port = worker_http::LoadingPort::bind(&s.host, s.port)
        .with_context(|| format!("cannot listen on {}:{}", s.host, s.port))?;
    let start = Instant::now();
    tracing::info!(model = %s.model.display(), slots = s.slots, "loading model");
    let file = GgufFile::open(&s.model)
        .with_context(|| format!("cannot load model {}", s.model.display()))?;
    tracing::info!(
        tensors = file.tensors().len(),
        ms = start.elapsed().as_millis() as u64,
        "model file mapped; uploading weights"
    );
    let (engine, card) = load(&file, &s.model, cpu, s.engine_config(), s.model_id())?;
    // The backend holds its own copy of the weights and the card everything else the server
    // needs: unmap the file, so its pages do not stay resident beside that copy.
    drop(file);
    tracing::info!(
        ms = start.elapsed().as_millis() as u64,
        memory_bytes = card.memory_bytes,
        kv_type = engine.info().kv_type.as_str(),
        kv_pool_bytes = engine.info().kv_pool_bytes,
        quant = card.quant_kind,
        "model loaded"
    );
    let kind = WorkerKind {
        worker_type: "cpu".into(),
        memory_architecture: MemoryArchitecture::Host,
        device: None,
    };
    worker_http::run_blocking(s, port, Arc::new(engine), card, kind)?;
    tracing::info!("stopped");
    Ok(())
}
