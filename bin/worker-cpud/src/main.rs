//! `worker-cpud`: the llama-orch worker on the CPU backend.
//!
//! Today it loads and validates the model (GGUF structure and hyper-parameters) and reports
//! it; inference and serving arrive with the CPU inference and HTTP worker issues, and until
//! then it says so and exits 1 rather than pretend to serve.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use worker_gguf::{GgufFile, HyperParams};

#[derive(Parser)]
#[command(
    name = "worker-cpud",
    version,
    about = "llama-orch worker, CPU backend"
)]
struct Args {
    /// The GGUF model to load.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-cpud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let file = GgufFile::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let hp = HyperParams::from_metadata(file.metadata())
        .with_context(|| format!("{} is not a usable model", args.model.display()))?;
    let bytes: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
    println!(
        "loaded {} in {:.0} ms: {} architecture, {} layers, width {}, {} heads ({} kv), \
         vocabulary {}, context {}, {} tensors, {:.1} MiB of weights",
        args.model.display(),
        start.elapsed().as_secs_f64() * 1e3,
        hp.architecture,
        hp.block_count,
        hp.embedding_length,
        hp.head_count,
        hp.head_count_kv,
        hp.vocab_size,
        hp.context_length,
        file.tensors().len(),
        bytes as f64 / (1024.0 * 1024.0),
    );
    anyhow::bail!(
        "the CPU inference engine is not built yet; this build can only load and check models"
    )
}
