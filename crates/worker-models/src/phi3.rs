//! `phi3` (Phi-3, Phi-3.5 mini): the llama decoder with the q/k/v projections fused into one
//! `attn_qkv` and the MLP's gate and up projections fused into one `ffn_up` of `2 * ff` rows
//! (gate first), and "neox" rope. Both fused tensors are split by rows at load time.
//!
//! As in llama.cpp, `phi3.attention.sliding_window` is ignored (llama.cpp disables Phi's
//! sliding window). The per-frequency rope factors of the 128k-context models
//! (`rope_factors_long/short.weight`) are not implemented: such a file is refused naming
//! the tensor rather than run with the wrong positions.

use worker_compute::{ComputeBackend, RopeMode};
use worker_gguf::{GgufFile, HyperParams};

use crate::decoder::{Decoder, DecoderSpec};
use crate::weights::has;
use crate::{LoadOptions, Model, ModelError};

pub(crate) fn load(
    file: &GgufFile,
    hp: HyperParams,
    backend: &mut dyn ComputeBackend,
    opts: LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if has(file, name) {
            return Err(ModelError::Unsupported(format!(
                "phi3 rope frequency factors ({name:?}, the long-context variants)"
            )));
        }
    }
    let spec = DecoderSpec {
        rope_mode: RopeMode::Neox,
        qkv_bias: false,
        fused_gate_up: true,
        qk_norm: false,
        gemma: false,
        gpt_oss: false,
        attn_scale: None,
        swa: None,
    };
    Ok(Box::new(Decoder::load(file, hp, spec, backend, opts)?))
}
