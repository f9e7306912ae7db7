//! Where tests find the fixtures that `cargo xtask fetch` downloads: real models, llama.cpp's
//! vocabularies with their test vectors, and HF `tokenizer.json` files.
//!
//! The fixtures live in a cache outside the repository: `$WORKER_FIXTURES_DIR` when set, else
//! `~/.cache/llama-orch-worker`. A missing fixture is a test failure naming the command that
//! fetches it; nothing here downloads, and no test may pass silently without its fixture.

use std::path::PathBuf;

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

/// The path of the HF `tokenizer.json` named `name` (`qwen3`, `llama3`).
pub fn hf_tokenizer(name: &str) -> PathBuf {
    fixture(&format!("tokenizers/{name}/tokenizer.json"))
}
