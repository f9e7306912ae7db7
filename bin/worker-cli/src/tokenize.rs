//! `worker-cli tokenize` and `worker-cli detokenize`: the model's tokenizer on stdin.

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use worker_tokenizer::{EncodeOptions, HfTokenizer, Tokenizer};

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A GGUF model (or vocab) file, or an HF tokenizer.json.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// Parse control tokens such as <|im_start|> in the text (user-defined tokens are always
    /// parsed, as in llama.cpp).
    #[arg(long, env = "WORKER_TOKENIZE_SPECIAL")]
    special: bool,
    /// Add BOS/EOS where the model asks for them; without it no BOS is added.
    #[arg(long, env = "WORKER_TOKENIZE_BOS")]
    bos: bool,
    /// Read one JSON string per line and print one JSON array of ids per line; otherwise
    /// all of stdin is one text.
    #[arg(long, env = "WORKER_TOKENIZE_JSONL")]
    jsonl: bool,
}

#[derive(clap::Args)]
pub struct DetokenizeArgs {
    /// A GGUF model (or vocab) file, or an HF tokenizer.json.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// Print control tokens (<|im_end|>) instead of nothing.
    #[arg(long, env = "WORKER_DETOKENIZE_SPECIAL")]
    special: bool,
    /// Read one JSON array of ids per line and print one JSON string per line; otherwise
    /// stdin is one JSON array and the text is printed as it is.
    #[arg(long, env = "WORKER_DETOKENIZE_JSONL")]
    jsonl: bool,
}

/// Loads the tokenizer of a GGUF file, or an HF tokenizer.json.
pub fn load(path: &Path) -> anyhow::Result<Box<dyn Tokenizer>> {
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(Box::new(HfTokenizer::from_file(path)?));
    }
    let file = worker_gguf::GgufFile::open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(worker_tokenizer::from_gguf(file.metadata())?)
}

pub fn run_tokenize(args: &TokenizeArgs) -> anyhow::Result<()> {
    let tok = load(&args.model)?;
    let opts = EncodeOptions {
        add_special: args.bos,
        parse_special: args.special,
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.jsonl {
        for (n, line) in io::stdin().lock().lines().enumerate() {
            let line = line?;
            let text: String = serde_json::from_str(&line)
                .with_context(|| format!("line {}: not a JSON string", n + 1))?;
            writeln!(out, "{}", serde_json::to_string(&tok.encode(&text, opts)?)?)?;
        }
    } else {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text)?;
        writeln!(out, "{}", serde_json::to_string(&tok.encode(&text, opts)?)?)?;
    }
    out.flush()?;
    Ok(())
}

pub fn run_detokenize(args: &DetokenizeArgs) -> anyhow::Result<()> {
    let tok = load(&args.model)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.jsonl {
        for (n, line) in io::stdin().lock().lines().enumerate() {
            let line = line?;
            let ids: Vec<u32> = serde_json::from_str(&line)
                .with_context(|| format!("line {}: not a JSON array of ids", n + 1))?;
            writeln!(
                out,
                "{}",
                serde_json::to_string(&tok.decode(&ids, args.special)?)?
            )?;
        }
    } else {
        let mut input = String::new();
        io::stdin().read_to_string(&mut input)?;
        let ids: Vec<u32> =
            serde_json::from_str(&input).context("stdin is not a JSON array of ids")?;
        write!(out, "{}", tok.decode(&ids, args.special)?)?;
    }
    out.flush()?;
    Ok(())
}
