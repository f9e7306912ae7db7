//! `gpt-oss` (OpenAI's open-weight GPT-OSS-20B and -120B), as llama.cpp's `openai-moe` graph
//! (`src/models/openai-moe.cpp`):
//! - pre-norm blocks: `attn_norm` before attention, `post_attention_norm` before the MLP
//!   (despite its name, a pre-MLP norm here), RMS norms;
//! - attention with GQA, biases on q, k, v and the output, "neox" rope with YaRN scaling
//!   (`gpt-oss.rope.scaling.*`, on every layer), scores scaled by `1/sqrt(n_rot)`, and
//!   attention sinks: a learned logit per head (`attn_sinks.weight`) in each softmax;
//! - alternating sliding-window and full layers: layer `i` attends to the last
//!   `gpt-oss.attention.sliding_window` positions (128 in the released models) when
//!   `i % pattern < pattern - 1` (`attention.sliding_window_pattern`, default 2: even layers),
//!   with rope base `rope.freq_base_swa` (default the model's);
//! - a mixture-of-experts MLP: router `ffn_gate_inp` (with bias) over
//!   `gpt-oss.expert_count` experts, the `expert_used_count` largest logits chosen and
//!   weighted by their softmax, each expert `down(swiglu_oai(gate(x) + bg, up(x) + bu)) + bd`
//!   with gpt-oss's clamped SwiGLU (alpha 1.702, limit 7), experts in MXFP4 as released
//!   (any weight type the backend has kernels for runs);
//! - its own `output.weight`.
//!
//! Refused by key rather than approximated: heads whose rope width is not the key and value
//! width (llama.cpp sizes the projections by the rope width), a per-layer
//! `sliding_window_pattern` array, and an `expert_weights_scale` other than 0 or 1 (which
//! llama.cpp's gpt-oss graph would not apply).

use worker_compute::{ComputeBackend, RopeMode};
use worker_gguf::{GgufError, GgufFile, HyperParams, ValueType};

use crate::decoder::{Decoder, DecoderSpec, Swa};
use crate::{LoadOptions, Model, ModelError};

pub(crate) fn load(
    file: &GgufFile,
    hp: HyperParams,
    backend: &mut dyn ComputeBackend,
    opts: LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    let md = file.metadata();
    let key = |k: &str| format!("gpt-oss.{k}");
    let bad = |k: &str, reason: String| {
        ModelError::Gguf(GgufError::BadValue {
            key: key(k),
            reason,
        })
    };
    if hp.rope_dimension_count != hp.head_dim || hp.value_head_dim != hp.head_dim {
        return Err(ModelError::Unsupported(format!(
            "gpt-oss.rope.dimension_count {} and gpt-oss.attention.value_length {} must equal \
             gpt-oss.attention.key_length {}",
            hp.rope_dimension_count, hp.value_head_dim, hp.head_dim
        )));
    }
    if hp.experts.is_none() {
        return Err(ModelError::Gguf(GgufError::MissingKey {
            key: key("expert_count"),
        }));
    }
    let scale_key = key("expert_weights_scale");
    if md.get(&scale_key).is_some() {
        let s = md.get_f32(&scale_key)?;
        if s != 0.0 && s != 1.0 {
            return Err(bad(
                "expert_weights_scale",
                format!("{s}: gpt-oss's graph does not scale expert weights"),
            ));
        }
    }
    let window = hp.sliding_window.ok_or_else(|| {
        ModelError::Gguf(GgufError::MissingKey {
            key: key("attention.sliding_window"),
        })
    })?;
    let pattern_key = key("attention.sliding_window_pattern");
    let pattern = match md.get(&pattern_key) {
        None => 2,
        Some(v) if v.value_type() == ValueType::Array => {
            return Err(ModelError::Unsupported(format!(
                "{pattern_key} as a per-layer array (only a repeating pattern is run)"
            )))
        }
        Some(_) => md.get_u32(&pattern_key)?,
    };
    let base_key = key("rope.freq_base_swa");
    let base = match md.get(&base_key) {
        None => hp.rope_freq_base,
        Some(_) => md.get_f32(&base_key)?,
    };
    if !(base > 0.0 && base.is_finite()) {
        return Err(bad(
            "rope.freq_base_swa",
            format!("{base} must be positive"),
        ));
    }
    let spec = DecoderSpec {
        rope_mode: RopeMode::Neox,
        qkv_bias: true,
        fused_gate_up: false,
        qk_norm: false,
        gemma: false,
        gpt_oss: true,
        attn_scale: Some(1.0 / (hp.rope_dimension_count as f32).sqrt()),
        swa: Some(Swa {
            window: window as usize,
            pattern: pattern as usize,
            base,
            scaled: true,
        }),
    };
    Ok(Box::new(Decoder::load(file, hp, spec, backend, opts)?))
}
