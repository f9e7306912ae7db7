//! `worker-aarmd`: the llama-orch worker on a GPU through wgpu: Metal on Apple silicon
//! (unified memory), Vulkan on Linux and Windows (AMD, Intel, NVIDIA, and Mesa's software
//! lavapipe, where it is tested), DX12.
//!
//! `adapters` lists the GPUs wgpu finds; `check` loads a model exactly as `serve` does and
//! reports the adapter; `generate` runs one prompt through [`worker_engine`] and streams the
//! text; `serve` serves the model over HTTP through [`worker_http`]. `--adapter` picks the
//! GPU. Without any adapter every subcommand exits 1 with one line. This binary stays thin:
//! parse flags, open the adapter, build the engine, print or serve.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use worker_common::{DeviceInfo, MemoryArchitecture, SamplingConfig};
use worker_compute_wgpu::{list_adapters, WgpuBackend, WgpuConfig};
use worker_engine::{Engine, EngineConfig, Event, GenerationRequest};
use worker_gguf::GgufFile;
use worker_http::WorkerKind;

mod serve;

#[derive(Parser)]
#[command(
    name = "worker-aarmd",
    version,
    about = "llama-orch worker, GPU through wgpu (Metal, Vulkan, DX12)"
)]
struct Cli {
    /// The GPU: its number in `adapters`, or part of its name; the best one when not given
    /// (discrete, then integrated, then software). `WGPU_BACKEND` limits the APIs searched.
    #[arg(long, global = true, env = "WORKER_ADAPTER")]
    adapter: Option<String>,
    /// Use subgroup operations where the adapter has them (`false` for the shared-memory
    /// reductions everywhere).
    #[arg(long, global = true, env = "WORKER_SUBGROUPS", default_value_t = true, action = clap::ArgAction::Set)]
    subgroups: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the adapters wgpu finds, with what each offers (f16, subgroups, limits).
    Adapters,
    /// Load and validate a model exactly as `serve` does (every kernel compiled, weights
    /// uploaded), print the adapter and the model, exit: 0 when `serve` would accept it.
    Check(ModelArg),
    /// Generate a continuation of a prompt, streaming the text.
    Generate(GenerateArgs),
    /// Serve the model over HTTP (llama-orch /execute, OpenAI-compatible routes).
    Serve(Box<worker_http::ServeArgs>),
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
    #[arg(long, env = "WORKER_MAX_TOKENS", default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy.
    #[arg(long, env = "WORKER_TEMPERATURE", default_value_t = 0.0)]
    temperature: f32,
    /// Sampler seed.
    #[arg(long, env = "WORKER_SEED", default_value_t = 0)]
    seed: u64,
    /// Positions per sequence, prompt included (capped at the model's context length).
    #[arg(long, env = "WORKER_CTX_SIZE", default_value_t = 4096)]
    ctx_size: usize,
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker-aarmd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = WgpuConfig {
        adapter: cli.adapter.clone(),
        subgroups: cli.subgroups,
        ..WgpuConfig::default()
    };
    match &cli.command {
        Command::Adapters => adapters(),
        Command::Check(a) => check(config, a),
        Command::Generate(a) => generate(config, a),
        Command::Serve(a) => serve::serve(config, a),
    }
}

fn adapters() -> anyhow::Result<()> {
    let all = list_adapters();
    anyhow::ensure!(!all.is_empty(), "no GPU adapter found");
    for a in all {
        println!("{a}");
    }
    Ok(())
}

/// Opens the adapter and reports it on stderr: name, API, memory, f16 and subgroups.
pub fn open_backend(config: WgpuConfig) -> anyhow::Result<WgpuBackend> {
    let be = WgpuBackend::new(config)?;
    eprintln!(
        "adapter {}; subgroup reductions: {}; kv cache f16 entries packed two to a word (no shader-f16 needed)",
        be.adapter(),
        if be.uses_subgroups() { "on" } else { "off" },
    );
    Ok(be)
}

/// How the pool manager sees this worker on `be`'s adapter: type `wgpu`, the adapter, and
/// its memory (unified on an integrated GPU such as Apple silicon, host memory on a software
/// one, VRAM on a discrete one).
pub fn worker_kind(be: &WgpuBackend) -> WorkerKind {
    let a = be.adapter();
    WorkerKind {
        worker_type: "wgpu".into(),
        memory_architecture: match a.device_type {
            "integrated" => MemoryArchitecture::Unified,
            "cpu" => MemoryArchitecture::Host,
            _ => MemoryArchitecture::VramOnly,
        },
        device: Some(DeviceInfo {
            name: a.name.clone(),
            backend: a.backend.into(),
        }),
    }
}

fn open_model(args: &ModelArg) -> anyhow::Result<GgufFile> {
    GgufFile::open(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))
}

fn check(config: WgpuConfig, args: &ModelArg) -> anyhow::Result<()> {
    let mut be = open_backend(config)?;
    be.compile_all()?;
    let kind = worker_kind(&be);
    let file = open_model(args)?;
    let config = EngineConfig {
        slots: 1,
        context: 16,
        max_batch: 1,
        ..EngineConfig::default()
    };
    let name = args.model.display().to_string();
    let (engine, card) = worker_http::load_model(&file, &args.model, Box::new(be), config, name)?;
    println!(
        "loaded {} ({} weights, {} kv cache) on the {} adapter; memory {}, {} MiB",
        args.model.display(),
        card.quant_kind,
        engine.info().kv_type.as_str(),
        kind.device.map_or_else(String::new, |d| d.backend),
        kind.memory_architecture.as_str(),
        card.memory_bytes >> 20,
    );
    Ok(())
}

fn generate(config: WgpuConfig, args: &GenerateArgs) -> anyhow::Result<()> {
    let be = open_backend(config)?;
    let file = open_model(&args.model)?;
    let config = EngineConfig {
        context: args.ctx_size,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&file, Box::new(be), config)
        .with_context(|| format!("cannot load model {}", args.model.model.display()))?;
    drop(file);
    let request = GenerationRequest {
        sampling: SamplingConfig {
            temperature: args.temperature,
            seed: args.seed,
            ..SamplingConfig::default()
        },
        max_tokens: Some(args.max_tokens),
        ..GenerationRequest::new(args.prompt.clone())
    };
    let mut out = std::io::stdout().lock();
    for event in engine.submit(request)? {
        match event {
            Event::Token(t) => {
                out.write_all(t.text.as_bytes())?;
                out.flush()?;
            }
            Event::End(c) => {
                writeln!(out, "{}", c.tail)?;
                let t = &c.timings;
                eprintln!(
                    "{} prompt tokens, {} generated, stop: {}; prefill {:.0} ms, decode {:.0} ms",
                    t.prompt_tokens,
                    c.ids.len(),
                    c.stop_reason.as_str(),
                    t.prefill.as_secs_f64() * 1e3,
                    t.decode.as_secs_f64() * 1e3,
                );
            }
            Event::Error(e) => return Err(e).context("generation failed"),
        }
    }
    Ok(())
}
