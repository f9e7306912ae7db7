//! The one error type of this crate.

use worker_gguf::GgmlType;

/// Everything a backend can refuse. Every variant names the op, tensor or type involved.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum ComputeError {
    #[error("weight {name:?}: type {ty} has no kernel in the {backend} backend")]
    UnsupportedType {
        backend: &'static str,
        name: String,
        ty: GgmlType,
    },
    #[error("weight {name:?}: {reason}")]
    BadWeight { name: String, reason: String },
    #[error("{op}: no {kind} with id {id}")]
    UnknownHandle {
        op: &'static str,
        kind: &'static str,
        id: u32,
    },
    #[error("{op}: shape mismatch: {reason}")]
    Shape { op: &'static str, reason: String },
    #[error("{op}: the same tensor is used as input and output")]
    Aliased { op: &'static str },
    #[error("{op}: {reason}")]
    BadIndex { op: &'static str, reason: String },
    #[error("{op}: not supported: {reason}")]
    Unsupported { op: &'static str, reason: String },
    #[error("allocation of {what} ({bytes} bytes) failed or overflowed")]
    Alloc { what: &'static str, bytes: u128 },
    #[error("a compute thread panicked during {op}")]
    WorkerPanicked { op: &'static str },
    /// A call into the device's driver or a vendor library (a launch, copy, synchronize,
    /// GEMM) failed; `source` is that library's error.
    #[error("{op}: device call failed")]
    Device {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ComputeError {
    /// Whether this is a failed allocation (out of memory, or a size that overflows): the
    /// one failure after which the backend still serves requests that need less.
    pub fn is_oom(&self) -> bool {
        matches!(self, ComputeError::Alloc { .. })
    }
}
