//! Device memory a model takes besides its weights, from the tables its load allocates from:
//! each adapter describes its activation tensors and index vectors as a [`BufferTable`], the
//! KV binding its pool and index vectors, and [`required_bytes`] adds up the same tables, so
//! the figure a worker checks against free memory is what the load will allocate.

use worker_compute::{ComputeBackend, IndexId, TensorId};
use worker_gguf::{GgufFile, HyperParams};

use crate::kv::KvBinding;
use crate::{LoadOptions, ModelError};

/// The shapes of `T` activation tensors (rows, columns of f32) and `I` index vectors
/// (entries of u32), in the order the adapter names them.
pub(crate) struct BufferTable<const T: usize, const I: usize> {
    pub tensors: [(usize, usize); T],
    pub indices: [usize; I],
}

impl<const T: usize, const I: usize> BufferTable<T, I> {
    /// Allocates every tensor and index vector of the table, in order.
    pub fn alloc(
        &self,
        be: &mut dyn ComputeBackend,
    ) -> Result<([TensorId; T], [IndexId; I]), ModelError> {
        let mut tensors = [TensorId::from_raw(0); T];
        for (id, &(rows, cols)) in tensors.iter_mut().zip(&self.tensors) {
            *id = be.alloc_tensor(rows, cols)?;
        }
        let mut indices = [IndexId::from_raw(0); I];
        for (id, &len) in indices.iter_mut().zip(&self.indices) {
            *id = be.alloc_index(len)?;
        }
        Ok((tensors, indices))
    }

    /// Bytes of the tensors and of the index vectors.
    pub fn bytes(&self) -> (u64, u64) {
        let tensors = self
            .tensors
            .iter()
            .map(|&(r, c)| (r as u64).saturating_mul(c as u64).saturating_mul(4))
            .fold(0u64, u64::saturating_add);
        let indices = self.indices.iter().map(|&n| n as u64 * 4).sum();
        (tensors, indices)
    }
}

/// The row-wise tensors every adapter has, `rows` rows each: the residual stream `x`, its
/// norm `h`, `q`, `k`, `v`, the attention output `attn` and a block's output `o`.
pub(crate) fn attention_tensors(hp: &HyperParams, rows: usize) -> [(usize, usize); 7] {
    let d = hp.embedding_length as usize;
    let (nh, nkv) = (hp.head_count as usize, hp.head_count_kv as usize);
    let (hd, vhd) = (hp.head_dim as usize, hp.value_head_dim as usize);
    [
        (rows, d),
        (rows, d),
        (rows, nh * hd),
        (rows, nkv * hd),
        (rows, nkv * vhd),
        (rows, nh * vhd),
        (rows, d),
    ]
}

/// The tensors of the rows that want logits, `rows` rows each: their final norm `last`
/// and the `logits`.
pub(crate) fn logit_tensors(hp: &HyperParams, rows: usize) -> [(usize, usize); 2] {
    [
        (rows, hp.embedding_length as usize),
        (rows, hp.vocab_size as usize),
    ]
}

/// What a model takes on its backend under given load options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// The weights, as the file stores them (a backend may hold a little more: the CUDA
    /// backend pads each weight and keeps vectors in f32, the CPU repacks into panels).
    pub weights: u64,
    /// The KV pool, in the entry type and layout the backend stores.
    pub kv_cache: u64,
    /// The activation tensors (f32).
    pub activations: u64,
    /// The index vectors (u32): token ids, positions, sequences, block table, logit rows.
    pub indices: u64,
}

impl Footprint {
    /// Everything together.
    pub fn total(&self) -> u64 {
        [self.kv_cache, self.activations, self.indices]
            .into_iter()
            .fold(self.weights, u64::saturating_add)
    }
}

/// The device memory [`crate::load`] of `file` under `opts` will allocate on `backend`: the
/// weights, the KV pool as `backend` stores it ([`ComputeBackend::kv_storage`],
/// [`ComputeBackend::kv_layout`]), and the adapter's activation and index buffers, from the
/// same tables the load allocates from. Nothing is allocated; the file's hyper-parameters
/// are checked as the load checks them.
pub fn required_bytes(
    file: &GgufFile,
    opts: &LoadOptions,
    backend: &dyn ComputeBackend,
) -> Result<Footprint, ModelError> {
    let hp = HyperParams::from_file(file)?;
    let (activations, indices) = match hp.architecture.as_str() {
        "gpt2" => crate::gpt2::buffer_table(&hp, opts).bytes(),
        "llama" | "qwen2" | "qwen3" | "phi3" | "gemma3" | "gpt-oss" => {
            let (attention, mlp, logits) = crate::decoder::buffer_tables(&hp, opts);
            let (logit_tensors, indices) = logits.bytes();
            (attention.bytes().0 + mlp.bytes() + logit_tensors, indices)
        }
        other => {
            return Err(ModelError::UnsupportedArchitecture {
                arch: other.to_string(),
                supported: crate::SUPPORTED_ARCHITECTURES.join(", "),
            })
        }
    };
    let kv = opts.kv_cache_config(&hp, backend.kv_storage(opts.kv_type), backend.kv_layout());
    let kv_indices: u64 = KvBinding::index_lens(opts, &kv)
        .iter()
        .map(|&n| n as u64 * 4)
        .sum();
    Ok(Footprint {
        weights: file.tensors().iter().map(|t| t.n_bytes).sum(),
        kv_cache: kv.bytes(),
        activations,
        indices: indices + kv_indices,
    })
}
