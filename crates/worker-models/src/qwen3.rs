//! `qwen3` (Qwen3 dense): the qwen2 decoder without the q/k/v biases, with an RMS norm over
//! each q and k head (`blk.N.attn_{q,k}_norm.weight`, one head wide) before rope, as
//! llama.cpp's `qwen3` graph. The head width comes from `qwen3.attention.key_length`
//! (128 in the released models, not `embedding_length / head_count`).

use worker_compute::{ComputeBackend, RopeMode};
use worker_gguf::{GgufFile, HyperParams};

use crate::decoder::{Decoder, DecoderSpec};
use crate::{LoadOptions, Model, ModelError};

pub(crate) fn load(
    file: &GgufFile,
    hp: HyperParams,
    backend: &mut dyn ComputeBackend,
    opts: LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    if hp.value_head_dim != hp.head_dim || hp.rope_dimension_count != hp.head_dim {
        // llama.cpp asserts both; refuse by key rather than run a graph it would not.
        return Err(ModelError::Unsupported(format!(
            "qwen3.attention.value_length {} and qwen3.rope.dimension_count {} must equal \
             qwen3.attention.key_length {}",
            hp.value_head_dim, hp.rope_dimension_count, hp.head_dim
        )));
    }
    let spec = DecoderSpec {
        rope_mode: RopeMode::Neox,
        qkv_bias: false,
        fused_gate_up: false,
        qk_norm: true,
        gemma: false,
        gpt_oss: false,
        attn_scale: None,
        swa: None,
    };
    Ok(Box::new(Decoder::load(file, hp, spec, backend, opts)?))
}
