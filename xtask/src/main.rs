//! `cargo xtask`: project automation. `fetch` downloads the test fixtures into a cache outside
//! the repository; `bench` measures throughput beside llama.cpp; `run` fetches the default model and starts the worker on it.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

mod bench;
mod constrained;
mod conversation;
mod fetch;
mod profile;

#[derive(Parser)]
#[command(name = "xtask", about = "Project automation for the llama-orch worker")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Download every fixture (models, vocabularies, tokenizer.json files) into the cache,
    /// verify their sha256, and skip what is already there.
    Fetch(fetch::Args),
    /// Prefill and decode throughput, ours and llama.cpp's (llama-bench) side by side; with
    /// `--conversation`, chat-turn latency beside llama-server; with `--constrained`,
    /// JSON-constrained decode beside free decode.
    Bench(bench::Args),
    /// Fetch the default model (SmolLM2-135M) if missing and run worker-cpud on it.
    Run {
        /// Extra arguments passed to worker-cpud.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        worker_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Fetch(args) => fetch::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Run { worker_args } => run_worker(&worker_args),
    }
}

fn run_worker(worker_args: &[String]) -> anyhow::Result<()> {
    let model: PathBuf = fetch::ensure_default_model()?;
    let (subcommand, rest) = match worker_args.split_first() {
        Some((first, rest)) if !first.starts_with('-') => (first.as_str(), rest),
        _ => ("serve", worker_args),
    };
    let status = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--bin", "worker-cpud", "--"])
        .args([subcommand, "--model"])
        .arg(&model)
        .args(rest)
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("worker-cpud exited with {status}");
    }
    Ok(())
}
