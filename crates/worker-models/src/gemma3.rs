//! `gemma3` (Gemma 3 text models, e.g. Gemma-3-270M): the llama decoder with Gemma's
//! changes, as llama.cpp's `gemma3` graph:
//! - embeddings scaled by `sqrt(embedding_length)`;
//! - four RMS norms per layer: before and after attention, before and after the MLP (the
//!   converter stores Gemma's `1 + w` norm weights already added, so they are plain RMS
//!   norms here);
//! - q/k RMS norms per head before rope, "neox" rope;
//! - GeGLU MLP (`gelu_tanh(gate) * up`);
//! - interleaved local and global layers: with `gemma3.attention.sliding_window` set, layer
//!   `i` is local when `i % pattern < pattern - 1` (`gemma3.attention.sliding_window_pattern`,
//!   default 6: five local, one global), attends to the last `window` positions and uses
//!   rope base `gemma3.rope.freq_base_swa` (default 10000); global layers use
//!   `gemma3.rope.freq_base` and the file's rope scaling;
//! - attention scale `1/sqrt(key_length)` (the 27B model: `1/sqrt(embedding / heads)`).
//!
//! Gemma 3 has no logit soft-capping; a file that asks for final-logit soft-capping is
//! refused naming the key rather than run without it.

use worker_compute::{ComputeBackend, RopeMode};
use worker_gguf::{GgufError, GgufFile, HyperParams};

use crate::decoder::{Decoder, DecoderSpec, Swa};
use crate::{LoadOptions, Model, ModelError};

pub(crate) fn load(
    file: &GgufFile,
    hp: HyperParams,
    backend: &mut dyn ComputeBackend,
    opts: LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    let md = file.metadata();
    let bad = |key: &str, reason: String| {
        ModelError::Gguf(GgufError::BadValue {
            key: format!("gemma3.{key}"),
            reason,
        })
    };
    let opt_u32 = |key: &str| -> Result<Option<u32>, ModelError> {
        let key = format!("gemma3.{key}");
        match md.get(&key) {
            None => Ok(None),
            Some(_) => Ok(Some(md.get_u32(&key)?)),
        }
    };
    let opt_f32 = |key: &str| -> Result<Option<f32>, ModelError> {
        let key = format!("gemma3.{key}");
        match md.get(&key) {
            None => Ok(None),
            Some(_) => Ok(Some(md.get_f32(&key)?)),
        }
    };
    if let Some(cap) = opt_f32("final_logit_softcapping")?.filter(|&c| c != 0.0) {
        return Err(ModelError::Unsupported(format!(
            "gemma3.final_logit_softcapping = {cap} (no soft-capping op)"
        )));
    }
    let swa = match hp.sliding_window.filter(|&w| w > 0) {
        None => None,
        // Within the context: checked with the other hyper-parameters.
        Some(w) => {
            let pattern = opt_u32("attention.sliding_window_pattern")?.unwrap_or(6);
            let base = opt_f32("rope.freq_base_swa")?.unwrap_or(10_000.0);
            if !(base > 0.0 && base.is_finite()) {
                return Err(bad(
                    "rope.freq_base_swa",
                    format!("{base} must be positive"),
                ));
            }
            Some(Swa {
                window: w as usize,
                pattern: pattern as usize,
                base,
                scaled: false,
            })
        }
    };
    let attn_scale = if hp.block_count == 62 {
        // Gemma 3 27B scales by the model width per head, not the key width (llama.cpp).
        1.0 / (hp.embedding_length as f32 / hp.head_count as f32).sqrt()
    } else {
        1.0 / (hp.head_dim as f32).sqrt()
    };
    let spec = DecoderSpec {
        rope_mode: RopeMode::Neox,
        qkv_bias: false,
        fused_gate_up: false,
        qk_norm: true,
        gemma: true,
        gpt_oss: false,
        attn_scale: Some(attn_scale),
        swa,
    };
    Ok(Box::new(Decoder::load(file, hp, spec, backend, opts)?))
}
