//! The one error type of this crate.

use worker_compute::ComputeError;
use worker_gguf::GgufError;

/// Everything that can go wrong building or running a model. Variants name the tensor,
/// key or architecture involved.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum ModelError {
    #[error("unsupported architecture {arch:?} (supported: {supported})")]
    UnsupportedArchitecture { arch: String, supported: String },
    #[error("tensor {name:?} is missing from the model file")]
    MissingTensor { name: String },
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?} (ggml order)")]
    WrongShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("unsupported hyper-parameter: {0}")]
    Unsupported(String),
    #[error("bad batch: {0}")]
    BadBatch(String),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Compute(#[from] ComputeError),
}

impl ModelError {
    /// Whether a backend allocation failed ([`ComputeError::is_oom`]): the batch that hit it
    /// fails, and smaller ones can still run.
    pub fn is_oom(&self) -> bool {
        matches!(self, ModelError::Compute(e) if e.is_oom())
    }
}
