//! Model adapters (llama, qwen2, qwen3, phi3, gpt2, gemma3, gpt-oss) written once against the
//! [`worker_compute::ComputeBackend`] ops, and the factory [`load`] that picks one from
//! `general.architecture`.
//!
//! ```no_run
//! use worker_compute::{CpuBackend, CpuConfig};
//! use worker_models::{load, LoadOptions, SequenceBatch};
//! let file = worker_gguf::GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let mut backend = CpuBackend::new(CpuConfig::default());
//! let mut model = load(&file, &mut backend, LoadOptions::default())?;
//! let tokens = [504, 3575, 282, 4649, 314];
//! let batch = SequenceBatch::new(&tokens, 0, 0, false);
//! let mut logits = vec![0f32; model.hparams().vocab_size as usize];
//! model.forward(&mut backend, &batch.batch(), &mut logits)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Architecture invariant: this crate never names a concrete backend; it calls trait ops
//! through `&mut dyn ComputeBackend`. Nothing read from a model file may panic: an
//! unsupported architecture, a missing tensor or a wrong shape is a [`ModelError`] naming it.
#![deny(missing_docs)]

pub mod bench;
mod buffers;
mod decoder;
mod error;
mod gemma3;
mod gpt2;
mod gpt_oss;
mod kv;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;
mod weights;

pub use buffers::{required_bytes, Footprint};
pub use error::ModelError;
pub use worker_gguf::HyperParams;

use worker_compute::{ComputeBackend, KvCacheConfig, KvType};
use worker_gguf::GgufFile;

/// The architectures [`load`] supports, by `general.architecture`.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama", "qwen2", "qwen3", "phi3", "gpt2", "gemma3", "gpt-oss",
];

/// Sizes a loaded model preallocates on the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Most rows (tokens) one forward call may carry: the prefill chunk size.
    pub max_batch: usize,
    /// Most rows one forward call may ask logits for.
    pub max_logit_rows: usize,
    /// Sequences one forward call may name: the rows of the KV block table.
    pub seqs: usize,
    /// Positions per sequence (capped at the model's context length).
    pub max_positions: usize,
    /// KV entry type asked for (the backend may store another: [`Model::kv_cache`] says).
    pub kv_type: KvType,
    /// Bytes of the KV pool; `None` for every sequence at full length.
    pub kv_cache_bytes: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_batch: 512,
            max_logit_rows: 1,
            seqs: 1,
            max_positions: 4096,
            kv_type: KvType::F16,
            kv_cache_bytes: None,
        }
    }
}

/// The rows of one forward call: token `tokens[r]` at position `positions[r]` of the
/// sequence in block-table row `seqs[r]`; logits are produced for the rows listed in
/// `logit_rows`, in that order.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Token ids.
    pub tokens: &'a [u32],
    /// Positions, one per token.
    pub positions: &'a [u32],
    /// Block-table rows, one per token.
    pub seqs: &'a [u32],
    /// The KV block table: [`LoadOptions::seqs`] rows of [`KvCacheConfig::seq_blocks`]
    /// block ids, row-major; empty for the table that gives row `s` blocks
    /// `s * seq_blocks ..` in order (one sequence per row at full length).
    pub block_table: &'a [u32],
    /// Rows (indices into `tokens`) whose logits are returned; none for a prompt chunk
    /// that only fills the KV cache.
    pub logit_rows: &'a [u32],
}

/// Owned index vectors for a [`Batch`] of one sequence, over the default block table.
#[derive(Clone, Debug, Default)]
pub struct SequenceBatch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Positions.
    pub positions: Vec<u32>,
    /// Block-table rows.
    pub seqs: Vec<u32>,
    /// Rows whose logits are returned.
    pub logit_rows: Vec<u32>,
}

impl SequenceBatch {
    /// `tokens` of the sequence in table row `seq`, from position `start`; logits for the
    /// last row, or for every row when `all_logits`.
    pub fn new(tokens: &[u32], start: u32, seq: u32, all_logits: bool) -> Self {
        let n = tokens.len() as u32;
        SequenceBatch {
            tokens: tokens.to_vec(),
            positions: (start..start + n).collect(),
            seqs: vec![seq; tokens.len()],
            logit_rows: if all_logits {
                (0..n).collect()
            } else {
                vec![n.saturating_sub(1)]
            },
        }
    }

    /// The batch borrowing these vectors.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            tokens: &self.tokens,
            positions: &self.positions,
            seqs: &self.seqs,
            block_table: &[],
            logit_rows: &self.logit_rows,
        }
    }
}

impl Batch<'_> {
    /// Checks the batch against the model's limits; returns the row count.
    fn check(
        &self,
        opts: &LoadOptions,
        vocab: usize,
        logits_len: usize,
    ) -> Result<usize, ModelError> {
        let n = self.tokens.len();
        let bad = |m: String| Err(ModelError::BadBatch(m));
        if n == 0 || n > opts.max_batch {
            return bad(format!("{n} tokens; 1..={} allowed", opts.max_batch));
        }
        if self.positions.len() != n || self.seqs.len() != n {
            return bad(format!(
                "{n} tokens but {} positions and {} sequence rows",
                self.positions.len(),
                self.seqs.len()
            ));
        }
        let nl = self.logit_rows.len();
        if nl > opts.max_logit_rows {
            return bad(format!(
                "{nl} logit rows; at most {} allowed",
                opts.max_logit_rows
            ));
        }
        if let Some(r) = self.logit_rows.iter().find(|&&r| r as usize >= n) {
            return bad(format!("logit row {r} of a {n}-row batch"));
        }
        if let Some(p) = self
            .positions
            .iter()
            .find(|&&p| p as usize >= opts.max_positions)
        {
            return bad(format!(
                "position {p}; the cache holds {}",
                opts.max_positions
            ));
        }
        if let Some(s) = self.seqs.iter().find(|&&s| s as usize >= opts.seqs) {
            return bad(format!("sequence row {s}; the table has {}", opts.seqs));
        }
        if logits_len != nl * vocab {
            return bad(format!(
                "logits buffer of {logits_len}, expected {nl} x {vocab}"
            ));
        }
        Ok(n)
    }
}

/// A loaded model: weights on a backend, a preallocated KV cache and activation buffers.
pub trait Model: Send {
    /// The hyper-parameters it was built from.
    fn hparams(&self) -> &HyperParams;
    /// The options it was loaded with (`max_positions` capped at the context length).
    fn options(&self) -> &LoadOptions;
    /// The KV pool it allocated, as the backend stores it.
    fn kv_cache(&self) -> &KvCacheConfig;
    /// Runs the batch through the model (all rows at once: prefill is batched matmuls) and
    /// writes `logit_rows.len() x vocab` logits. `backend` must be the one it was loaded on.
    fn forward(
        &mut self,
        backend: &mut dyn ComputeBackend,
        batch: &Batch<'_>,
        logits: &mut [f32],
    ) -> Result<(), ModelError>;
}

/// Builds the adapter that `general.architecture` names, uploading its weights to `backend`.
/// The hyper-parameters are checked against the file's tensors and sane bounds
/// ([`HyperParams::from_file`]) before anything is allocated from them.
pub fn load(
    file: &GgufFile,
    backend: &mut dyn ComputeBackend,
    opts: LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    let hp = HyperParams::from_file(file)?;
    match hp.architecture.as_str() {
        "llama" => llama::load(file, hp, backend, opts),
        "qwen2" => qwen2::load(file, hp, backend, opts),
        "qwen3" => qwen3::load(file, hp, backend, opts),
        "phi3" => phi3::load(file, hp, backend, opts),
        "gpt2" => gpt2::load(file, hp, backend, opts),
        "gemma3" => gemma3::load(file, hp, backend, opts),
        "gpt-oss" => gpt_oss::load(file, hp, backend, opts),
        other => Err(ModelError::UnsupportedArchitecture {
            arch: other.to_string(),
            supported: SUPPORTED_ARCHITECTURES.join(", "),
        }),
    }
}
