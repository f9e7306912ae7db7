//! `llama` (Llama 2/3, SmolLM2, Mistral without sliding window): the plain pre-norm decoder.
//! llama.cpp's converter permutes the q/k rows so that rope rotates adjacent pairs
//! ("normal" mode). Without `output.weight` the logits use the token embeddings (tied).

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
        rope_mode: RopeMode::Normal,
        qkv_bias: false,
        fused_gate_up: false,
        qk_norm: false,
        gemma: false,
        gpt_oss: false,
        attn_scale: None,
        swa: None,
    };
    Ok(Box::new(Decoder::load(file, hp, spec, backend, opts)?))
}
