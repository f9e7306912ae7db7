//! The ggml block formats: reference (scalar) conversion between f32 and each storage type.

use crate::error::GgufError;
use crate::types::GgmlType;

/// Converts `src`, whole blocks of `ty`, to f32 in `dst` (which must hold exactly the
/// elements `src` encodes).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgufError> {
    Err(GgufError::Quant {
        ty,
        reason: format!(
            "dequantization not implemented yet ({} bytes into {})",
            src.len(),
            dst.len()
        ),
    })
}

/// Encodes `src` (a whole number of blocks of `ty`) in `ty`'s storage format.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, GgufError> {
    Err(GgufError::Quant {
        ty,
        reason: format!("quantization not implemented yet ({} values)", src.len()),
    })
}
