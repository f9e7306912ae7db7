//! The one error type of this crate. Every variant that comes from file bytes names the byte
//! offset where the problem was found.

use std::path::PathBuf;

use crate::types::GgmlType;

/// Everything that can go wrong reading, writing or interpreting a GGUF file.
///
/// Each message carries its cause and none chains it as a `source()` too, so a report that
/// prints the chain (`{:#}` of anyhow) says it once.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum GgufError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("write failed: {0}")]
    Write(std::io::Error),
    #[error("not a GGUF file: magic at offset 0 is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    #[error("file truncated at offset {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated {
        offset: u64,
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error(
        "{what} at offset {offset} is {count}, more than the {available} bytes left could hold"
    )]
    CountTooLarge {
        offset: u64,
        what: &'static str,
        count: u64,
        available: u64,
    },
    #[error("string at offset {offset} is not valid UTF-8 (bad byte at +{valid_up_to})")]
    InvalidUtf8 { offset: u64, valid_up_to: usize },
    #[error("unknown metadata value type {tag} at offset {offset}")]
    UnknownValueType { offset: u64, tag: u32 },
    #[error("metadata arrays nested deeper than {max} at offset {offset}")]
    NestingTooDeep { offset: u64, max: usize },
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("duplicate tensor name {name:?} at offset {offset}")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor {name:?} (info at offset {offset}): unknown ggml type id {type_id}")]
    UnknownTensorType {
        name: String,
        offset: u64,
        type_id: u32,
    },
    #[error("tensor {name:?} (info at offset {offset}): {reason}")]
    BadTensorShape {
        name: String,
        offset: u64,
        reason: String,
    },
    #[error("general.alignment is {alignment}; it must be a non-zero power of two")]
    BadAlignment { alignment: u64 },
    #[error(
        "tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name:?}: bytes {start}..{end} of the data section run past its end at {len} \
         (file offset {data_offset} + relative offset)"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
        data_offset: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section at byte {at}")]
    TensorOverlap {
        first: String,
        second: String,
        at: u64,
    },
    #[error("missing metadata key {key:?}")]
    MissingKey { key: String },
    #[error("metadata key {key:?} should be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key {key:?}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("no tensor named {name:?}")]
    MissingTensor { name: String },
    #[error("tensor {name:?} disagrees with the hyper-parameters: it {reason}")]
    TensorMismatch { name: String, reason: String },
    #[error("{ty}: {reason}")]
    Quant { ty: GgmlType, reason: String },
    #[error("invalid input for the writer: {0}")]
    InvalidWrite(String),
}

impl GgufError {
    /// Whether the error came from the operating system rather than from the bytes.
    pub fn is_io(&self) -> bool {
        matches!(self, GgufError::Io { .. } | GgufError::Write(_))
    }
}
