//! `worker-cli`: the worker's device-free tools, one subcommand each:
//!
//! - `inspect` prints a GGUF file's metadata (long arrays summarized) and tensor table;
//! - `tokenize` encodes stdin with a model's tokenizer (GGUF or HF `tokenizer.json`) and prints
//!   the ids as JSON, and `detokenize` decodes a JSON array of ids read from stdin;
//! - `template` renders a conversation with a GGUF model's chat template;
//! - `describe` writes a model's metadata and tensor table without the tensor data, and
//!   `synth` writes a random-weight model of the same types and shapes from such a
//!   description.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod describe;
mod inspect;
mod synth;
mod template;
mod tokenize;

#[derive(Parser)]
#[command(
    name = "worker-cli",
    version,
    about = "Device-free tools for the llama-orch worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF file's metadata (long arrays summarized) and tensor table.
    Inspect(inspect::Args),
    /// Encode stdin with the model's tokenizer and print the ids as JSON.
    Tokenize(tokenize::TokenizeArgs),
    /// Decode a JSON array of ids read from stdin.
    Detokenize(tokenize::DetokenizeArgs),
    /// Render a conversation with the model's chat template.
    Template(template::Args),
    /// Write a model's metadata and tensor table, without tensor data (for `synth`).
    Describe(describe::Args),
    /// Write a random-weight model from a description (same types and shapes).
    Synth(synth::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Tokenize(args) => tokenize::run_tokenize(&args),
        Command::Detokenize(args) => tokenize::run_detokenize(&args),
        Command::Template(args) => template::run(&args),
        Command::Describe(args) => describe::run(&args),
        Command::Synth(args) => synth::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
