//! `worker-cpud`: the llama-orch worker on the CPU backend.
//!
//! `check` loads and validates a model (GGUF structure and hyper-parameters) and reports it;
//! `generate` runs one prompt through [`worker_engine`] and streams the text; `serve` loads
//! the model and serves it over HTTP through [`worker_http`]. This binary stays thin: parse
//! flags, build the engine, print or serve.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use worker_common::SamplingConfig;
use worker_compute::{CpuBackend, CpuConfig};
use worker_engine::{Completion, Engine, EngineConfig, Event, GenerationRequest};
use worker_gguf::{GgufFile, HyperParams};

mod serve;

#[derive(Parser)]
#[command(
    name = "worker-cpud",
    version,
    about = "llama-orch worker, CPU backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate a model exactly as `serve` does (weights included), print its
    /// shape, exit: 0 when `serve` would accept the file, 1 with the reason when not.
    Check(ModelArg),
    /// Generate a continuation of a prompt, streaming the text; then print tokens/s.
    Generate(GenerateArgs),
    /// Serve the model over HTTP (llama-orch /execute, OpenAI-compatible routes).
    Serve(Box<serve::CpuServeArgs>),
}

#[derive(Args)]
struct ModelArg {
    /// The GGUF model to load.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt; special tokens written in it (`<|im_start|>`) are parsed.
    #[arg(long, env = "WORKER_PROMPT")]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, env = "WORKER_MAX_TOKENS", default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, env = "WORKER_TEMPERATURE", default_value_t = 0.8)]
    temperature: f32,
    /// Sampler seed; a fresh one when not given.
    #[arg(long, env = "WORKER_SEED")]
    seed: Option<u64>,
    /// CPU threads per op (default: all cores).
    #[arg(long, env = "WORKER_THREADS")]
    threads: Option<usize>,
    /// Stop strings (repeat the flag for several).
    #[arg(long, env = "WORKER_STOP")]
    stop: Vec<String>,
    /// Positions per sequence, prompt included (capped at the model's context length).
    #[arg(long, env = "WORKER_CTX_SIZE", default_value_t = 4096)]
    ctx_size: usize,
    /// Print one JSON line at the end instead of streaming the text: the ids, the text, the
    /// stop reason, the load and first-token times (ms since start) and the memory (KV cache,
    /// resident and peak resident bytes).
    #[arg(long, env = "WORKER_JSON")]
    json: bool,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`| head`): stop quietly, as ripgrep does.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("worker-cpud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let started = Instant::now();
    match Cli::parse().command {
        Command::Check(args) => check(&args),
        Command::Generate(args) => generate(&args, started),
        Command::Serve(args) => serve::serve(&args),
    }
}

fn open(args: &ModelArg) -> anyhow::Result<GgufFile> {
    GgufFile::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))
}

fn check(args: &ModelArg) -> anyhow::Result<()> {
    let start = Instant::now();
    let file = open(args)?;
    // The smallest engine `serve` could build; the checks are the same at any size.
    let config = EngineConfig {
        slots: 1,
        context: 16,
        max_batch: 1,
        ..EngineConfig::default()
    };
    let name = args.model.display().to_string();
    let backend = Box::new(CpuBackend::new(CpuConfig::default()));
    worker_http::load_model(&file, &args.model, backend, config, name)?;
    let hp = HyperParams::from_file(&file)?;
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
    Ok(())
}

/// `generate`; `started` is when `main` began, the origin of the reported load and
/// first-token times.
fn generate(args: &GenerateArgs, started: Instant) -> anyhow::Result<()> {
    let file = open(&args.model)?;
    let cpu = serve::cpu_config(args.threads)?;
    let config = EngineConfig {
        context: args.ctx_size,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&file, Box::new(CpuBackend::new(cpu)), config)
        .with_context(|| format!("cannot load model {}", args.model.model.display()))?;
    let kv_cache_bytes = engine.info().kv_pool_bytes;
    // The backend holds its own copy of the weights: unmap the file, so its pages do not
    // stay resident beside that copy while generating.
    drop(file);
    let load = started.elapsed();
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let request = GenerationRequest {
        sampling: SamplingConfig {
            temperature: args.temperature,
            seed,
            ..SamplingConfig::default()
        },
        max_tokens: Some(args.max_tokens),
        stop: args.stop.clone(),
        ..GenerationRequest::new(args.prompt.clone())
    };
    let mut out = std::io::stdout().lock();
    let mut end = None;
    let mut first_token = None;
    for event in engine.submit(request)? {
        if matches!(event, Event::Token(_)) {
            first_token.get_or_insert_with(|| started.elapsed());
        }
        match event {
            Event::Token(t) if !args.json => {
                out.write_all(t.text.as_bytes())?;
                out.flush()?;
            }
            Event::Token(_) => {}
            Event::End(c) => end = Some(c),
            Event::Error(e) => return Err(e).context("generation failed"),
        }
    }
    let end = end.context("the engine ended without a result")?;
    let rss_bytes = proc_status_bytes("VmRSS");
    let peak_rss_bytes = proc_status_bytes("VmHWM");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if args.json {
        let line = serde_json::json!({
            "prompt_ids": end.prompt_ids,
            "ids": end.ids,
            "text": end.text,
            "stop_reason": end.stop_reason.as_str(),
            "load_ms": ms(load),
            "first_token_ms": first_token.map(ms),
            "kv_cache_bytes": kv_cache_bytes,
            "rss_bytes": rss_bytes,
            "peak_rss_bytes": peak_rss_bytes,
        });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{}", end.tail)?;
    }
    report(&end, seed);
    Ok(())
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`) in bytes; `None` off Linux.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| {
            let kb = line.strip_prefix(field)?.strip_prefix(':')?.trim();
            kb.strip_suffix(" kB")?.trim().parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
}

/// Prints timings to stderr, so stdout holds only the text (or the JSON line).
fn report(end: &Completion, seed: u64) {
    let t = &end.timings;
    let rate = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.1}"));
    eprintln!(
        "prefill: {} tokens in {:.1} ms, {} tokens/s; decode: {} tokens in {:.1} ms, {} tokens/s; \
         {} generated, stop: {}, seed {seed}",
        t.prompt_tokens,
        t.prefill.as_secs_f64() * 1e3,
        rate(t.prefill_tokens_per_s()),
        t.decode_steps,
        t.decode.as_secs_f64() * 1e3,
        rate(t.decode_tokens_per_s()),
        end.ids.len(),
        end.stop_reason.as_str(),
    );
}

/// A seed from the clock, for runs that give none.
fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
