//! `worker-orcd`: the llama-orch worker on NVIDIA GPUs, VRAM-only.
//!
//! A thin driver of the CUDA backend: `serve` (the HTTP worker of `worker-http`, weights and
//! KV cache in VRAM), `generate` (greedy, from token ids), `bench` (prefill and decode
//! tokens/s), and the device checks `compare` (CUDA against the CPU backend on the same file)
//! and `check-ops` (every op and weight type against the CPU). Without a GPU it exits 1 with
//! one line saying no CUDA device was found.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use worker_common::argmax;
use worker_compute::{Activations, ComputeBackend, CpuBackend, CpuConfig};
use worker_compute_cuda::{CudaBackend, CudaConfig, Experimental, LaunchStats};
use worker_gguf::GgufFile;
use worker_models::{load, LoadOptions, Model, SequenceBatch};

mod check;
mod serve;

#[derive(Parser)]
#[command(
    name = "worker-orcd",
    version,
    about = "llama-orch worker, CUDA backend"
)]
struct Cli {
    /// CUDA device ordinal.
    #[arg(long, global = true, env = "WORKER_GPU_DEVICE", default_value_t = 0)]
    gpu_device: usize,
    /// Replay repeated steps as CUDA graphs (`false` launches every kernel one by one).
    #[arg(long, global = true, env = "WORKER_CUDA_GRAPHS", default_value_t = true, action = clap::ArgAction::Set)]
    cuda_graphs: bool,
    /// CUDA paths not yet checked on a device: `false`, `true` (all), or a list of
    /// `matvec`, `gemm`, `pdl`, `attn`, `types`, `bias` (see
    /// `worker_compute_cuda::Experimental`).
    #[arg(
        long,
        global = true,
        env = "WORKER_CUDA_EXPERIMENTAL",
        default_value = "false"
    )]
    cuda_experimental: Experimental,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Greedy generation from token ids; prints the generated ids.
    Generate(GenerateArgs),
    /// Prefill and decode throughput.
    Bench(BenchArgs),
    /// CUDA against the CPU backend on one model: logits and greedy tokens.
    Compare(check::CompareArgs),
    /// Every op and weight type of the CUDA backend against the CPU backend.
    CheckOps,
    /// Serve the model over HTTP from VRAM (llama-orch /execute, OpenAI-compatible routes).
    Serve(worker_http::ServeArgs),
}

/// Which backend runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The CUDA backend (the point of this binary).
    Cuda,
    /// The CPU backend with f32 activations, the reference.
    Cpu,
}

#[derive(Args)]
struct GenerateArgs {
    /// The GGUF model.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt_len")]
    prompt_ids: Vec<u32>,
    /// A prompt of this many pseudo-random ids instead.
    #[arg(long)]
    prompt_len: Option<usize>,
    /// Tokens to generate.
    #[arg(long, env = "WORKER_MAX_TOKENS", default_value_t = 32)]
    max_tokens: usize,
    /// Backend.
    #[arg(long, value_enum, env = "WORKER_BACKEND", default_value = "cuda")]
    backend: BackendKind,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// The GGUF model.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// Prompt tokens (one prefill batch).
    #[arg(long, default_value_t = 512)]
    pp: usize,
    /// Decode steps at batch 1.
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Backend.
    #[arg(long, value_enum, default_value = "cuda")]
    backend: BackendKind,
    /// CUDA: after the benchmark, time every kernel of this many more decode steps (events
    /// around each launch, graphs off) and print the most expensive kernels.
    #[arg(long, default_value_t = 0)]
    profile_steps: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let dev = Device {
        ordinal: cli.gpu_device,
        graphs: cli.cuda_graphs,
        experimental: cli.cuda_experimental,
    };
    match &cli.command {
        Command::Generate(a) => generate(dev, a),
        Command::Bench(a) => bench(dev, a),
        Command::Compare(a) => check::compare(dev, a),
        Command::CheckOps => check::check_ops(dev),
        Command::Serve(a) => serve::serve(dev, a),
    }
}

/// Which CUDA device, and how to drive it.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// Replay repeated steps as CUDA graphs.
    pub graphs: bool,
    /// Paths not yet checked on a device.
    pub experimental: Experimental,
}

/// Opens the CUDA device; its error is the one-line "no CUDA device found: …".
pub fn open_cuda(dev: Device) -> anyhow::Result<CudaBackend> {
    let device = dev.ordinal;
    let be = CudaBackend::new(CudaConfig {
        device,
        graphs: dev.graphs,
        experimental: dev.experimental,
    })?;
    let (free, total) = be.vram()?;
    eprintln!(
        "cuda device {device}: {} (compute_{}), {} MiB free of {} MiB, experimental: {}",
        be.device_name(),
        be.arch(),
        free >> 20,
        total >> 20,
        dev.experimental
    );
    Ok(be)
}

/// A backend of `kind`; for CUDA, refuses up front when the model will not fit in VRAM.
pub fn open_backend(
    kind: BackendKind,
    device: Device,
    file: &GgufFile,
    opts: &LoadOptions,
) -> anyhow::Result<Box<dyn ComputeBackend>> {
    Ok(match kind {
        BackendKind::Cpu => Box::new(cpu_backend()),
        BackendKind::Cuda => Box::new(open_cuda_for(device, file, opts)?),
    })
}

/// The CPU reference backend (f32 activations).
pub fn cpu_backend() -> CpuBackend {
    CpuBackend::new(CpuConfig {
        activations: Activations::F32,
        ..CpuConfig::default()
    })
}

/// The CUDA backend, refused up front when the model will not fit in VRAM.
fn open_cuda_for(
    device: Device,
    file: &GgufFile,
    opts: &LoadOptions,
) -> anyhow::Result<CudaBackend> {
    let be = open_cuda(device)?;
    // Weights, the KV pool as the backend stores it, and the model's buffers: what the load
    // will allocate.
    let mut required = worker_models::required_bytes(file, opts, &be)?.total();
    if device.experimental.gemm {
        // At most one dequantized weight tile for the cuBLAS prefill.
        required += worker_compute_cuda::TILE_ELEMENTS as u64 * 4;
    }
    be.check_vram(required)?;
    Ok(be)
}

/// Loads `path` on a fresh backend of `kind`.
pub fn load_model(
    kind: BackendKind,
    device: Device,
    path: &std::path::Path,
    opts: LoadOptions,
) -> anyhow::Result<(Box<dyn ComputeBackend>, Box<dyn Model>)> {
    let file = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut be = open_backend(kind, device, &file, &opts)?;
    let model = load(&file, be.as_mut(), opts)?;
    Ok((be, model))
}

/// Fixed pseudo-random token ids below `vocab`.
pub fn pseudo_prompt(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

fn generate(device: Device, a: &GenerateArgs) -> anyhow::Result<()> {
    let file = GgufFile::open(&a.model)?;
    let vocab = worker_gguf::HyperParams::from_metadata(file.metadata())?.vocab_size as usize;
    let prompt = match a.prompt_len {
        Some(n) => pseudo_prompt(n, vocab, 7),
        None => a.prompt_ids.clone(),
    };
    anyhow::ensure!(!prompt.is_empty(), "give --prompt-ids or --prompt-len");
    let opts = LoadOptions {
        max_batch: prompt.len(),
        max_positions: prompt.len() + a.max_tokens + 1,
        ..LoadOptions::default()
    };
    let mut be = open_backend(a.backend, device, &file, &opts)?;
    let mut model = load(&file, be.as_mut(), opts)?;
    // The backend holds its own copy of the weights: unmap the file before generating.
    drop(file);
    let mut logits = vec![0f32; vocab];
    let t = Instant::now();
    model.forward(
        be.as_mut(),
        &SequenceBatch::new(&prompt, 0, 0, false).batch(),
        &mut logits,
    )?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(a.max_tokens);
    let t = Instant::now();
    for i in 0..a.max_tokens {
        let next = argmax(&logits);
        out.push(next);
        if i + 1 < a.max_tokens {
            let step = SequenceBatch::new(&[next], (prompt.len() + i) as u32, 0, false);
            model.forward(be.as_mut(), &step.batch(), &mut logits)?;
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    let ids: Vec<String> = out.iter().map(u32::to_string).collect();
    if a.json {
        println!(
            "{{\"backend\":\"{}\",\"prompt_tokens\":{},\"tokens\":[{}],\"prefill_s\":{prefill_s:.4},\"decode_s\":{decode_s:.4}}}",
            be.name(),
            prompt.len(),
            ids.join(",")
        );
    } else {
        println!("{}", ids.join(","));
        eprintln!(
            "{}: prefill {} tokens in {prefill_s:.3}s, {} tokens decoded in {decode_s:.3}s",
            be.name(),
            prompt.len(),
            out.len()
        );
    }
    Ok(())
}

fn bench(device: Device, a: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.pp > 0, "--pp must be positive");
    let opts = LoadOptions {
        max_batch: a.pp,
        max_positions: a.pp + a.tg + a.profile_steps + 1,
        ..LoadOptions::default()
    };
    let t = Instant::now();
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    match a.backend {
        BackendKind::Cpu => {
            let mut be = cpu_backend();
            let model = load(&file, &mut be, opts)?;
            bench_on(a, &mut be, model, t, |_| None)?;
            Ok(())
        }
        BackendKind::Cuda => {
            let mut be = open_cuda_for(device, &file, &opts)?;
            be.set_step_timing(true)?;
            let model = load(&file, &mut be, opts)?;
            let (mut model, mut logits) =
                bench_on(a, &mut be, model, t, |be| Some(be.launch_stats()))?;
            if a.profile_steps > 0 {
                be.start_profile()?;
                for i in 0..a.profile_steps {
                    let pos = (a.pp + a.tg + i) as u32;
                    let step = SequenceBatch::new(&[argmax(&logits)], pos, 0, false);
                    model.forward(&mut be, &step.batch(), &mut logits)?;
                }
                let prof = be.kernel_profile();
                let steps = a.profile_steps as f64;
                let total: f64 = prof.iter().map(|p| p.2).sum();
                eprintln!(
                    "kernel profile, per decode step: {:.3} ms of kernels",
                    total / steps
                );
                for (name, n, ms) in prof.iter().take(16) {
                    eprintln!(
                        "  {name:<24} {:>6.1} launches {:>9.1} us {:>5.1}%",
                        *n as f64 / steps,
                        ms * 1e3 / steps,
                        100.0 * ms / total.max(1e-12)
                    );
                }
            }
            Ok(())
        }
    }
}

/// The timed prefill and decode steps; `stats` reads the backend's launch counters.
fn bench_on<B: ComputeBackend>(
    a: &BenchArgs,
    be: &mut B,
    mut model: Box<dyn Model>,
    started: Instant,
    stats: impl Fn(&B) -> Option<LaunchStats>,
) -> anyhow::Result<(Box<dyn Model>, Vec<f32>)> {
    let load_s = started.elapsed().as_secs_f64();
    let vocab = model.hparams().vocab_size as usize;
    let prompt = pseudo_prompt(a.pp, vocab, 11);
    let mut logits = vec![0f32; vocab];
    let batch = SequenceBatch::new(&prompt, 0, 0, false);
    // Warm-up (first launches load the modules lazily), then the timed prefill.
    model.forward(be, &batch.batch(), &mut logits)?;
    let t = Instant::now();
    model.forward(be, &batch.batch(), &mut logits)?;
    let pp_s = t.elapsed().as_secs_f64();
    let before = stats(be);
    let t = Instant::now();
    for i in 0..a.tg {
        let step = SequenceBatch::new(&[argmax(&logits)], (a.pp + i) as u32, 0, false);
        model.forward(be, &step.batch(), &mut logits)?;
    }
    let tg_s = t.elapsed().as_secs_f64();
    let steps = a.tg.max(1) as f64;
    let launches = match (before, stats(be)) {
        (Some(b), Some(e)) => {
            let per = |x: u64, y: u64| (y - x) as f64 / steps;
            eprintln!(
                "decode launch stats: {:.1} kernels/step, {:.1} direct launches/step, {:.2} graph launches/step, {} graphs captured in total",
                per(b.kernels, e.kernels),
                per(b.direct_launches, e.direct_launches),
                per(b.graph_launches, e.graph_launches),
                e.graphs_captured
            );
            eprintln!(
                "decode time per step: {:.3} ms device (flush to logits copied), {:.3} ms host in read_rows, {:.3} ms host recording ops between steps",
                per(b.device_ns, e.device_ns) / 1e6,
                per(b.readout_ns, e.readout_ns) / 1e6,
                per(b.record_ns, e.record_ns) / 1e6
            );
            format!(", {:.0} kernels/step", per(b.kernels, e.kernels))
        }
        _ => String::new(),
    };
    println!(
        "bench {} {}: load {load_s:.2}s, pp{} {:.1} tok/s, tg{} {:.1} tok/s, decode {:.3} ms/step{launches}",
        be.name(),
        a.model.display(),
        a.pp,
        a.pp as f64 / pp_s,
        a.tg,
        a.tg as f64 / tg_s.max(1e-9),
        tg_s * 1e3 / steps
    );
    Ok((model, logits))
}
