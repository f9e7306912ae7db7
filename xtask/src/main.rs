//! `cargo xtask`: project automation. `fetch` downloads the test fixtures into a cache outside
//! the repository; `bench` measures throughput beside llama.cpp; `run` fetches the default model and starts the worker on it.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use xtask::fetch;

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
    /// JSON-constrained decode beside free decode. A release build of xtask-bench
    /// (xtask/bench), which takes every flag (`cargo xtask bench --help`).
    #[command(disable_help_flag = true)]
    Bench {
        /// The flags of xtask-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
        Task::Bench { args } => run_bench(&args),
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

/// `cargo xtask bench`: xtask-bench is the one that links the engine, so that `cargo xtask
/// fetch` need not build it.
fn run_bench(args: &[String]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(["run", "--release", "-q", "-p", "xtask-bench", "--"])
        .args(args)
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("xtask-bench exited with {status}");
    }
    Ok(())
}
