//! Uploading named GGUF tensors after checking their shapes, including the row ranges of a
//! fused tensor (phi3's `attn_qkv` and `ffn_up`, gpt2's `attn_qkv`) and the experts stacked in
//! one tensor (gpt-oss's `ffn_*_exps`).
//!
//! A fused projection is split at load time by slicing its rows out of the file's bytes: a
//! GGUF matrix is stored row by row and every quantized block lies inside one row, so each
//! part is uploaded in the file's own storage type, with no conversion and no extra op in the
//! forward pass.
//!
//! Backends copy what they are given, so once a tensor is uploaded its pages of the file's
//! memory map are released ([`GgufFile::release_tensor_pages`]): a load holds the weights
//! once, not once in the backend and again in the map.

use worker_compute::{ComputeBackend, WeightDesc, WeightId};
use worker_gguf::{GgufFile, TensorInfo};

use crate::ModelError;

/// Room to reserve for the layers: `block_count`, but never more than the file has tensors
/// (a `block_count` of 2^32-1 must fail at its first missing tensor, not abort allocating).
pub(crate) fn layer_capacity(file: &GgufFile, hp: &worker_gguf::HyperParams) -> usize {
    (hp.block_count as usize).min(file.tensors().len())
}

/// Whether the file has a tensor called `name`.
pub(crate) fn has(file: &GgufFile, name: &str) -> bool {
    file.tensors().iter().any(|t| t.name == name)
}

/// The info and bytes of tensor `name` after checking its ggml shape is `[cols, rows]` (or
/// `[cols]` for a vector, `rows == 1`); trailing dimensions of 1 are ignored.
fn checked<'f>(
    file: &'f GgufFile,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<(&'f TensorInfo, &'f [u8]), ModelError> {
    let (info, bytes) = file.tensor(name).map_err(|e| match e {
        worker_gguf::GgufError::MissingTensor { name } => ModelError::MissingTensor { name },
        other => other.into(),
    })?;
    let expected: Vec<u64> = if rows == 1 {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    let mut found = info.shape.clone();
    while found.len() > expected.len() && found.last() == Some(&1) {
        found.pop();
    }
    if found != expected {
        return Err(ModelError::WrongShape {
            name: name.to_string(),
            found: info.shape.clone(),
            expected,
        });
    }
    Ok((info, bytes))
}

/// Uploads tensor `name` after checking its ggml shape is `[cols, rows]` (or `[cols]` for a
/// vector, `rows == 1`).
pub(crate) fn upload(
    file: &GgufFile,
    backend: &mut dyn ComputeBackend,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<WeightId, ModelError> {
    let (info, bytes) = checked(file, name, cols, rows)?;
    let id = backend.upload_weight(WeightDesc {
        name,
        ty: info.ty,
        rows,
        cols,
        bytes,
    })?;
    file.release_tensor_pages(info);
    Ok(id)
}

/// Uploads matrix `name` of ggml shape `[cols, sum(parts)]` as `parts.len()` weights: the
/// first `parts[0]` rows, the next `parts[1]` rows, and so on. Each part is named
/// `name[i]` in the backend's errors.
pub(crate) fn upload_row_split<const N: usize>(
    file: &GgufFile,
    backend: &mut dyn ComputeBackend,
    name: &str,
    cols: usize,
    parts: [usize; N],
) -> Result<[WeightId; N], ModelError> {
    let (info, bytes) = checked(file, name, cols, parts.iter().sum())?;
    let row_bytes = info.ty.bytes_for(cols as u64).ok_or_else(|| {
        ModelError::Unsupported(format!(
            "tensor {name:?}: a row of {cols} {} values is not whole blocks",
            info.ty
        ))
    })? as usize;
    let mut ids = [WeightId::from_raw(0); N];
    let mut start = 0;
    for (i, (id, &rows)) in ids.iter_mut().zip(&parts).enumerate() {
        let end = start + rows * row_bytes;
        *id = backend.upload_weight(WeightDesc {
            name: &format!("{name}[{i}]"),
            ty: info.ty,
            rows,
            cols,
            bytes: bytes.get(start..end).unwrap_or_default(),
        })?;
        start = end;
    }
    file.release_tensor_pages(info);
    Ok(ids)
}

/// Uploads vector `name` of `sum(parts)` elements as `parts.len()` vectors (the biases of a
/// fused projection). Each cut must fall on a block boundary of the storage type.
pub(crate) fn upload_vec_split<const N: usize>(
    file: &GgufFile,
    backend: &mut dyn ComputeBackend,
    name: &str,
    parts: [usize; N],
) -> Result<[WeightId; N], ModelError> {
    let (info, bytes) = checked(file, name, parts.iter().sum(), 1)?;
    let mut ids = [WeightId::from_raw(0); N];
    let mut start = 0;
    for (i, (id, &len)) in ids.iter_mut().zip(&parts).enumerate() {
        let size = info.ty.bytes_for(len as u64).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {name:?}: cannot cut {} at {len} elements (block size {})",
                info.ty,
                info.ty.block_size()
            ))
        })? as usize;
        *id = backend.upload_weight(WeightDesc {
            name: &format!("{name}[{i}]"),
            ty: info.ty,
            rows: 1,
            cols: len,
            bytes: bytes.get(start..start + size).unwrap_or_default(),
        })?;
        start += size;
    }
    file.release_tensor_pages(info);
    Ok(ids)
}

/// Uploads the `n` experts stacked in tensor `name` (ggml shape `[cols, rows, n]`, or
/// `[cols, n]` for a stack of vectors, `rows == 1`: the MoE tensors `ffn_*_exps`) as `n`
/// weights of `rows x cols`, each cut from the file's bytes in its storage type. Expert `e`
/// is named `name[e]` in the backend's errors.
pub(crate) fn upload_experts(
    file: &GgufFile,
    backend: &mut dyn ComputeBackend,
    name: &str,
    cols: usize,
    rows: usize,
    n: usize,
) -> Result<Vec<WeightId>, ModelError> {
    let (info, bytes) = file.tensor(name).map_err(|e| match e {
        worker_gguf::GgufError::MissingTensor { name } => ModelError::MissingTensor { name },
        other => other.into(),
    })?;
    let expected: Vec<u64> = if rows == 1 {
        vec![cols as u64, n as u64]
    } else {
        vec![cols as u64, rows as u64, n as u64]
    };
    if info.shape != expected {
        return Err(ModelError::WrongShape {
            name: name.to_string(),
            found: info.shape.clone(),
            expected,
        });
    }
    let size = info
        .ty
        .bytes_for(cols as u64)
        .map(|row| row as usize * rows)
        .ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {name:?}: a row of {cols} {} values is not whole blocks",
                info.ty
            ))
        })?;
    let mut ids = Vec::with_capacity(n);
    for e in 0..n {
        ids.push(backend.upload_weight(WeightDesc {
            name: &format!("{name}[{e}]"),
            ty: info.ty,
            rows,
            cols,
            bytes: bytes.get(e * size..(e + 1) * size).unwrap_or_default(),
        })?);
    }
    file.release_tensor_pages(info);
    Ok(ids)
}
