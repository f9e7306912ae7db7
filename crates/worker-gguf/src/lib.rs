//! GGUF for the worker: read and write GGUF v2/v3 files, interpret their metadata, and convert
//! the ggml block formats to and from f32.
//!
//! ```no_run
//! let file = worker_gguf::GgufFile::open("model.gguf")?;
//! let hp = worker_gguf::HyperParams::from_file(&file)?;
//! let (info, bytes) = file.tensor("token_embd.weight")?;
//! let mut row = vec![0f32; info.row_len() as usize];
//! let row_bytes = info.ty.bytes_for(info.row_len()).unwrap() as usize;
//! worker_gguf::dequantize(info.ty, &bytes[..row_bytes], &mut row)?;
//! println!("{} layers, first weight {}", hp.block_count, row[0]);
//! # Ok::<(), worker_gguf::GgufError>(())
//! ```
//!
//! This crate must not compute anything beyond the reference (scalar) conversions: fast
//! kernels live in `worker-compute`. Nothing read from a file may panic or allocate by an
//! unchecked count; every failure is a [`GgufError`] naming what and where.
#![deny(missing_docs)]

mod consistency;
mod error;
mod file;
mod hparams;
pub mod quants;
mod reader;
mod types;
mod value;
mod writer;

pub use consistency::HPARAM_LIMITS;
pub use error::GgufError;
pub use file::GgufFile;
pub use hparams::{Experts, HyperParams, RopeScaling};
pub use quants::{dequantize, quantize, supports_dequantize, supports_quantize};
pub use reader::{GgufContent, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
pub use types::GgmlType;
pub use value::{Array, Metadata, Value, ValueType};
pub use writer::GgufWriter;
