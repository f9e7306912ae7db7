//! `qwen2` (Qwen2, Qwen2.5): the llama decoder with biases on q, k and v, and "neox" rope
//! (halves of each head rotated together; the converter does not permute q/k).

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
    let spec = DecoderSpec {
        rope_mode: RopeMode::Neox,
        qkv_bias: true,
        fused_gate_up: false,
        qk_norm: false,
        gemma: false,
        gpt_oss: false,
        attn_scale: None,
        swa: None,
    };
    Ok(Box::new(Decoder::load(file, hp, spec, backend, opts)?))
}
