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
use worker_models::bench::{self, BenchSpec, Mark, Throughput};
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
    /// `matvec`, `gemm`, `pdl`, `attn`, `types`, `bias`, `models` (see
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
    Serve(Box<worker_http::ServeArgs>),
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
    /// Timed repetitions of each test, after one warm-up.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Tokens already in the context when each test starts (llama-bench's `-d`).
    #[arg(long, default_value_t = 0)]
    depth: usize,
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
    let spec = BenchSpec {
        pp: a.pp,
        tg: a.tg,
        reps: a.reps,
        depth: a.depth,
        batch_seqs: 0,
    };
    // Room for the profiled steps after the tests.
    let opts = LoadOptions {
        max_positions: spec.positions() + a.profile_steps + 1,
        ..spec.load_options()
    };
    let t = Instant::now();
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    match a.backend {
        BackendKind::Cpu => {
            let mut be = cpu_backend();
            let mut model = load(&file, &mut be, opts)?;
            let load_s = t.elapsed().as_secs_f64();
            let r = bench::run(model.as_mut(), &mut be, &spec, |_, _| {})?;
            report(a, be.name(), load_s, &r, "");
            Ok(())
        }
        BackendKind::Cuda => {
            let mut be = open_cuda_for(device, &file, &opts)?;
            be.set_step_timing(true)?;
            let mut model = load(&file, &mut be, opts)?;
            let load_s = t.elapsed().as_secs_f64();
            // Launch counters over the timed decode repetitions.
            let (mut start, mut decode) = (LaunchStats::default(), LaunchStats::default());
            let r = bench::run(model.as_mut(), &mut be, &spec, |mark, be| match mark {
                Mark::DecodeStart => start = be.launch_stats(),
                Mark::DecodeEnd => decode = decode.plus(&be.launch_stats().since(&start)),
            })?;
            let steps = (spec.reps.max(1) * spec.tg.max(1)) as f64;
            let per = |x: u64| x as f64 / steps;
            eprintln!(
                "decode launch stats: {:.1} kernels/step, {:.1} direct launches/step, {:.2} graph launches/step, {} graphs captured in total",
                per(decode.kernels),
                per(decode.direct_launches),
                per(decode.graph_launches),
                be.launch_stats().graphs_captured
            );
            eprintln!(
                "decode time per step: {:.3} ms device (flush to logits copied), {:.3} ms host in read_rows, {:.3} ms host recording ops between steps",
                per(decode.device_ns) / 1e6,
                per(decode.readout_ns) / 1e6,
                per(decode.record_ns) / 1e6
            );
            let kernels = format!(", {:.0} kernels/step", per(decode.kernels));
            report(a, be.name(), load_s, &r, &kernels);
            if a.profile_steps > 0 {
                profile(
                    &mut be,
                    model.as_mut(),
                    spec.positions(),
                    r.last_token,
                    a.profile_steps,
                )?;
            }
            Ok(())
        }
    }
}

/// The one line of a benchmark.
fn report(a: &BenchArgs, backend: &str, load_s: f64, r: &Throughput, extra: &str) {
    println!(
        "bench {backend} {}: load {load_s:.2}s, pp{} {:.1} tok/s, tg{} {:.1} tok/s, decode {:.3} ms/step{extra}",
        a.model.display(),
        a.pp,
        r.pp_tokens_per_s,
        a.tg,
        r.tg_tokens_per_s,
        r.step_s * 1e3
    );
}

/// Times every kernel of `steps` more decode steps from position `from` (events around each
/// launch, graphs off) and prints the most expensive kernels.
fn profile(
    be: &mut CudaBackend,
    model: &mut dyn Model,
    from: usize,
    mut token: u32,
    steps: usize,
) -> anyhow::Result<()> {
    be.start_profile()?;
    let mut logits = vec![0f32; model.hparams().vocab_size as usize];
    for i in 0..steps {
        let step = SequenceBatch::new(&[token], (from + i) as u32, 0, false);
        model.forward(be, &step.batch(), &mut logits)?;
        token = argmax(&logits);
    }
    let prof = be.kernel_profile();
    let n = steps as f64;
    let total: f64 = prof.iter().map(|p| p.2).sum();
    eprintln!(
        "kernel profile, per decode step: {:.3} ms of kernels",
        total / n
    );
    for (name, launches, ms) in prof.iter().take(16) {
        eprintln!(
            "  {name:<24} {:>6.1} launches {:>9.1} us {:>5.1}%",
            *launches as f64 / n,
            ms * 1e3 / n,
            100.0 * ms / total.max(1e-12)
        );
    }
    Ok(())
}
