//! Where tests find the fixtures that `cargo xtask fetch` downloads: real models, llama.cpp's
//! vocabularies with their test vectors, and HF `tokenizer.json` files; and what several
//! crates' tests share: a generator of inputs ([`Rng`], [`seeded_inputs`]) and a
//! one-request HTTP server for ready callbacks ([`receive_one_request`]).
//!
//! The fixtures live in a cache outside the repository: `$WORKER_FIXTURES_DIR` when set, else
//! `~/.cache/llama-orch-worker`. A missing fixture is a test failure naming the command that
//! fetches it; nothing here downloads, and no test may pass silently without its fixture.
//!
//! [`hf_vocab`] turns a fetched `tokenizer.json` into the GGUF tokenizer keys llama.cpp's
//! converter would write, for vocabularies that reach us only that way (gpt-oss's).

use std::path::PathBuf;

pub mod hf_vocab;
mod http;
mod rng;

pub use hf_vocab::gptoss_vocab;
pub use http::receive_one_request;
pub use rng::Rng;

/// The environment variable that overrides the fixture cache folder.
pub const FIXTURES_ENV: &str = "WORKER_FIXTURES_DIR";

/// File name of the SmolLM2-135M-Instruct Q4_1 model in `models/`.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the Qwen2.5-Coder-0.5B-Instruct Q4_K_M model in `models/`.
pub const QWEN25: &str = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
/// File name of the Gemma-3-270M Q4_K_M model in `models/`.
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// The fixture cache folder (it may not exist yet).
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(FIXTURES_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("llama-orch-worker")
}

/// The path of fixture `relative` (`models/…`, `vocab/…`, `tokenizers/…`).
///
/// Panics with a message naming `cargo xtask fetch` when the file is missing: this is for
/// tests, where a missing fixture must fail loudly rather than skip.
pub fn fixture(relative: &str) -> PathBuf {
    let path = fixtures_dir().join(relative);
    assert!(
        path.exists(),
        "fixture {} is missing; run `cargo xtask fetch` (or set {FIXTURES_ENV})",
        path.display()
    );
    path
}

/// The path of model file `name` (one of [`SMOLLM2`], [`QWEN25`], [`GEMMA3`]).
pub fn model(name: &str) -> PathBuf {
    fixture(&format!("models/{name}"))
}

/// The path of llama.cpp's vocabulary file `ggml-vocab-{name}.gguf` (its `.inp`/`.out` test
/// vectors lie beside it).
pub fn vocab(name: &str) -> PathBuf {
    fixture(&format!("vocab/ggml-vocab-{name}.gguf"))
}

/// The path of one of llama.cpp's reference chat templates, `models/templates/{name}.jinja`
/// of the same sdist (fetched beside the vocabularies).
pub fn chat_template(name: &str) -> PathBuf {
    fixture(&format!("vocab/templates/{name}.jinja"))
}

/// The path of the HF `tokenizer.json` named `name` (`qwen3`, `llama3`, `gptoss`).
pub fn hf_tokenizer(name: &str) -> PathBuf {
    fixture(&format!("tokenizers/{name}/tokenizer.json"))
}

/// `count` pseudo-random byte strings of `0..=max_len` bytes from `seed` (xorshift64*): the
/// inputs of the seeded tests that run each fuzz target's entry function in a normal
/// `cargo test`, so a failure reproduces from the seed alone.
pub fn seeded_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|_| {
            let len = (rng.next() % (max_len as u64 + 1)) as usize;
            rng.bytes(len)
        })
        .collect()
}

/// The tokenizer files the tokenizer fuzz target and its seeded test use, one per tokenizer
/// code path: GGUF byte-level BPE with each pre-tokenizer we implement, GGUF SentencePiece,
/// and HF `tokenizer.json`.
pub fn fuzz_tokenizer_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "gpt-2",
        "llama-bpe",
        "qwen2",
        "qwen35",
        "deepseek-llm",
        "deepseek-coder",
        "falcon",
        "mpt",
        "starcoder",
        "refact",
        "command-r",
        "llama-spm",
        "phi-3",
    ]
    .into_iter()
    .map(vocab)
    .collect();
    files.push(model(SMOLLM2));
    files.extend(["qwen3", "llama3"].map(hf_tokenizer));
    files
}

/// The files whose chat templates the template fuzz target and its seeded test render: GGUF
/// models and vocabularies (`tokenizer.chat_template`) and HF `tokenizer_config.json`.
pub fn chat_template_files() -> Vec<PathBuf> {
    let mut files = vec![model(SMOLLM2), model(QWEN25)];
    files.extend(["command-r", "gemma-4", "phi-3", "qwen2", "qwen35"].map(vocab));
    files.extend(
        ["qwen3", "llama3"].map(|n| fixture(&format!("tokenizers/{n}/tokenizer_config.json"))),
    );
    files
}
