//! The model hyper-parameters the adapters need, read once from the `{arch}.*` keys.

use crate::error::GgufError;
use crate::value::Metadata;

/// How rotary positions are rescaled for contexts beyond the training length.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// No scaling (`none`, or the key absent).
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor of positions.
        factor: f32,
    },
    /// YaRN scaling.
    Yarn {
        /// The context extension factor.
        factor: f32,
        /// The context the model was trained with.
        original_context_length: u32,
        /// Rotations per original context above which dimensions extrapolate
        /// (`rope.scaling.yarn_beta_fast`, default 32 as llama.cpp).
        beta_fast: f32,
        /// Rotations per original context below which dimensions interpolate
        /// (`rope.scaling.yarn_beta_slow`, default 1).
        beta_slow: f32,
        /// Extra magnitude factor of the rotations (`rope.scaling.attn_factor`, default 1).
        attn_factor: f32,
    },
}

/// A mixture-of-experts MLP (`{arch}.expert_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Experts {
    /// `{arch}.expert_count`: experts per layer.
    pub count: u32,
    /// `{arch}.expert_used_count`: experts each token runs.
    pub used: u32,
    /// `{arch}.expert_feed_forward_length`: the hidden width of one expert (defaults to
    /// `feed_forward_length`).
    pub feed_forward_length: u32,
}

/// Transformer hyper-parameters of a GGUF model.
#[derive(Clone, Debug, PartialEq)]
pub struct HyperParams {
    /// `general.architecture` (`llama`, `qwen2`, `phi3`, `gpt2`, …).
    pub architecture: String,
    /// `{arch}.context_length`: the longest context the model was trained for.
    pub context_length: u32,
    /// `{arch}.embedding_length`: the width of the residual stream.
    pub embedding_length: u32,
    /// `{arch}.block_count`: number of transformer layers.
    pub block_count: u32,
    /// `{arch}.feed_forward_length`: the hidden width of the MLP.
    pub feed_forward_length: u32,
    /// `{arch}.attention.head_count`.
    pub head_count: u32,
    /// `{arch}.attention.head_count_kv` (defaults to `head_count`: no GQA).
    pub head_count_kv: u32,
    /// Width of one key head (`{arch}.attention.key_length`, else embedding / heads).
    pub head_dim: u32,
    /// Width of one value head (`{arch}.attention.value_length`, else `head_dim`).
    pub value_head_dim: u32,
    /// `{arch}.rope.dimension_count` (defaults to `head_dim`); 0 for models without rope.
    pub rope_dimension_count: u32,
    /// `{arch}.rope.freq_base` (defaults to 10000).
    pub rope_freq_base: f32,
    /// `{arch}.rope.scaling.*`.
    pub rope_scaling: RopeScaling,
    /// `{arch}.attention.layer_norm_rms_epsilon`, for models normalized by RMS norm.
    pub rms_norm_epsilon: Option<f32>,
    /// `{arch}.attention.layer_norm_epsilon`, for models normalized by LayerNorm.
    pub layer_norm_epsilon: Option<f32>,
    /// `{arch}.attention.sliding_window`, when the model has one.
    pub sliding_window: Option<u32>,
    /// The mixture of experts, when `{arch}.expert_count` is above 0.
    pub experts: Option<Experts>,
    /// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub vocab_size: u32,
}

impl HyperParams {
    /// Reads and checks the hyper-parameters; a missing or inconsistent key is an error naming it.
    pub fn from_metadata(md: &Metadata) -> Result<Self, GgufError> {
        let arch = md.architecture()?.to_string();
        let key = |s: &str| format!("{arch}.{s}");
        let opt_u32 = |s: &str| -> Result<Option<u32>, GgufError> {
            match md.get(&key(s)) {
                None => Ok(None),
                Some(_) => md.get_u32(&key(s)).map(Some),
            }
        };
        let opt_f32 = |s: &str| -> Result<Option<f32>, GgufError> {
            match md.get(&key(s)) {
                None => Ok(None),
                Some(_) => md.get_f32(&key(s)).map(Some),
            }
        };
        let positive = |s: &str, v: u32| -> Result<u32, GgufError> {
            if v == 0 {
                Err(GgufError::BadValue {
                    key: key(s),
                    reason: "must be greater than zero".into(),
                })
            } else {
                Ok(v)
            }
        };

        let context_length = positive("context_length", md.get_u32(&key("context_length"))?)?;
        let embedding_length = positive("embedding_length", md.get_u32(&key("embedding_length"))?)?;
        let block_count = positive("block_count", md.get_u32(&key("block_count"))?)?;
        let feed_forward_length = positive(
            "feed_forward_length",
            md.get_u32(&key("feed_forward_length"))?,
        )?;
        let head_count = positive(
            "attention.head_count",
            md.get_u32(&key("attention.head_count"))?,
        )?;
        let head_count_kv = positive(
            "attention.head_count_kv",
            opt_u32("attention.head_count_kv")?.unwrap_or(head_count),
        )?;
        if head_count % head_count_kv != 0 {
            return Err(GgufError::BadValue {
                key: key("attention.head_count_kv"),
                reason: format!("{head_count_kv} does not divide head_count {head_count}"),
            });
        }
        let head_dim = match opt_u32("attention.key_length")? {
            Some(v) => positive("attention.key_length", v)?,
            None => {
                if embedding_length % head_count != 0 {
                    return Err(GgufError::BadValue {
                        key: key("attention.head_count"),
                        reason: format!(
                            "{head_count} heads do not divide embedding_length {embedding_length} \
                             and attention.key_length is absent"
                        ),
                    });
                }
                embedding_length / head_count
            }
        };
        let value_head_dim = opt_u32("attention.value_length")?.unwrap_or(head_dim);
        let rope_dimension_count = opt_u32("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dimension_count > head_dim || rope_dimension_count % 2 != 0 {
            return Err(GgufError::BadValue {
                key: key("rope.dimension_count"),
                reason: format!(
                    "{rope_dimension_count} must be even and at most the head width {head_dim}"
                ),
            });
        }
        let rope_freq_base = opt_f32("rope.freq_base")?.unwrap_or(10_000.0);

        let scaling_kind = match md.get(&key("rope.scaling.type")) {
            None => "none",
            Some(_) => md.get_str(&key("rope.scaling.type"))?,
        };
        let factor = opt_f32("rope.scaling.factor")?.unwrap_or(1.0);
        let rope_scaling = match scaling_kind {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor },
            "yarn" => RopeScaling::Yarn {
                factor,
                original_context_length: opt_u32("rope.scaling.original_context_length")?
                    .unwrap_or(context_length),
                beta_fast: opt_f32("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: opt_f32("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                attn_factor: opt_f32("rope.scaling.attn_factor")?.unwrap_or(1.0),
            },
            other => {
                return Err(GgufError::BadValue {
                    key: key("rope.scaling.type"),
                    reason: format!("unknown rope scaling {other:?}"),
                })
            }
        };

        let rms_norm_epsilon = opt_f32("attention.layer_norm_rms_epsilon")?;
        let layer_norm_epsilon = opt_f32("attention.layer_norm_epsilon")?;
        if rms_norm_epsilon.is_none() && layer_norm_epsilon.is_none() {
            return Err(GgufError::MissingKey {
                key: format!(
                    "{} (or {})",
                    key("attention.layer_norm_rms_epsilon"),
                    key("attention.layer_norm_epsilon")
                ),
            });
        }
        let sliding_window = opt_u32("attention.sliding_window")?;
        let experts = match opt_u32("expert_count")?.filter(|&n| n > 0) {
            None => None,
            Some(count) => {
                let used = match opt_u32("expert_used_count")? {
                    Some(used) => used,
                    None => {
                        return Err(GgufError::MissingKey {
                            key: key("expert_used_count"),
                        })
                    }
                };
                if used == 0 || used > count {
                    return Err(GgufError::BadValue {
                        key: key("expert_used_count"),
                        reason: format!("{used} must be between 1 and expert_count {count}"),
                    });
                }
                let feed_forward_length = positive(
                    "expert_feed_forward_length",
                    opt_u32("expert_feed_forward_length")?.unwrap_or(feed_forward_length),
                )?;
                Some(Experts {
                    count,
                    used,
                    feed_forward_length,
                })
            }
        };

        let vocab_size = match opt_u32("vocab_size")? {
            Some(v) => v,
            None => match md.get("tokenizer.ggml.tokens") {
                Some(_) => md.get_str_array("tokenizer.ggml.tokens")?.len() as u32,
                None => {
                    return Err(GgufError::MissingKey {
                        key: format!("{} (or tokenizer.ggml.tokens)", key("vocab_size")),
                    })
                }
            },
        };
        let vocab_size = positive("vocab_size", vocab_size)?;

        Ok(HyperParams {
            architecture: arch.clone(),
            context_length,
            embedding_length,
            block_count,
            feed_forward_length,
            head_count,
            head_count_kv,
            head_dim,
            value_head_dim,
            rope_dimension_count,
            rope_freq_base,
            rope_scaling,
            rms_norm_epsilon,
            layer_norm_epsilon,
            sliding_window,
            experts,
            vocab_size,
        })
    }

    /// Entries of a KV cache holding `slots` sequences of `positions` each: the keys and the
    /// values of every layer and KV head. Times the backend's entry size, its bytes.
    /// Saturates instead of overflowing on absurd sizes.
    pub fn kv_cache_entries(&self, slots: usize, positions: usize) -> u64 {
        [
            u64::from(self.block_count),
            slots as u64,
            positions as u64,
            u64::from(self.head_count_kv),
            u64::from(self.head_dim) + u64::from(self.value_head_dim),
        ]
        .into_iter()
        .fold(1, u64::saturating_mul)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Array, Value};

    fn llama_like() -> Metadata {
        let mut md = Metadata::new();
        md.set("general.architecture", Value::String("llama".into()));
        for (k, v) in [
            ("context_length", 2048u32),
            ("embedding_length", 256),
            ("block_count", 2),
            ("feed_forward_length", 512),
            ("attention.head_count", 8),
        ] {
            md.set(&format!("llama.{k}"), Value::U32(v));
        }
        md.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        md.set(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["a".into(); 100])),
        );
        md
    }

    #[test]
    fn defaults_fill_optional_keys() {
        let hp = HyperParams::from_metadata(&llama_like()).unwrap();
        assert_eq!(
            (hp.head_count_kv, hp.head_dim, hp.value_head_dim),
            (8, 32, 32)
        );
        assert_eq!(hp.rope_dimension_count, 32);
        assert_eq!(hp.rope_freq_base, 10_000.0);
        assert_eq!(hp.rope_scaling, RopeScaling::None);
        assert_eq!(hp.vocab_size, 100, "from the token list");
        assert_eq!(hp.layer_norm_epsilon, None);
        // 2 layers x 3 slots x 100 positions x 8 heads x (32 + 32) widths.
        assert_eq!(hp.kv_cache_entries(3, 100), 2 * 3 * 100 * 8 * 64);
        assert_eq!(hp.kv_cache_entries(usize::MAX, usize::MAX), u64::MAX);
    }

    #[test]
    fn missing_and_inconsistent_keys_are_named() {
        let mut md = Metadata::new();
        for (k, v) in llama_like()
            .iter()
            .filter(|(k, _)| *k != "llama.block_count")
        {
            md.set(k, v.clone());
        }
        let e = HyperParams::from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("llama.block_count"), "{e}");

        let mut md = llama_like();
        md.set("llama.attention.head_count_kv", Value::U32(3));
        let e = HyperParams::from_metadata(&md).unwrap_err().to_string();
        assert!(
            e.contains("head_count_kv") && e.contains("does not divide"),
            "{e}"
        );

        let mut md = llama_like();
        md.set("llama.attention.head_count", Value::U32(0));
        let e = HyperParams::from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("greater than zero"), "{e}");

        let mut md = llama_like();
        md.set("llama.rope.scaling.type", Value::String("weird".into()));
        let e = HyperParams::from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("weird"), "{e}");

        let mut md = llama_like();
        md.set("llama.context_length", Value::String("2048".into()));
        let e = HyperParams::from_metadata(&md).unwrap_err();
        assert!(matches!(e, GgufError::WrongType { .. }), "{e}");
    }

    #[test]
    fn yarn_scaling_is_read() {
        let mut md = llama_like();
        md.set("llama.rope.scaling.type", Value::String("yarn".into()));
        md.set("llama.rope.scaling.factor", Value::F32(4.0));
        md.set(
            "llama.rope.scaling.original_context_length",
            Value::U32(512),
        );
        let hp = HyperParams::from_metadata(&md).unwrap();
        assert_eq!(
            hp.rope_scaling,
            RopeScaling::Yarn {
                factor: 4.0,
                original_context_length: 512,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attn_factor: 1.0,
            }
        );
        md.set("llama.rope.scaling.yarn_beta_fast", Value::F32(16.0));
        md.set("llama.rope.scaling.yarn_beta_slow", Value::F32(2.0));
        md.set("llama.rope.scaling.attn_factor", Value::F32(1.5));
        let hp = HyperParams::from_metadata(&md).unwrap();
        assert!(matches!(
            hp.rope_scaling,
            RopeScaling::Yarn {
                beta_fast: 16.0,
                beta_slow: 2.0,
                attn_factor: 1.5,
                ..
            }
        ));
    }

    #[test]
    fn experts_are_read_and_checked() {
        assert_eq!(
            HyperParams::from_metadata(&llama_like()).unwrap().experts,
            None
        );
        let mut md = llama_like();
        md.set("llama.expert_count", Value::U32(8));
        let e = HyperParams::from_metadata(&md).unwrap_err().to_string();
        assert!(e.contains("llama.expert_used_count"), "{e}");
        md.set("llama.expert_used_count", Value::U32(2));
        let hp = HyperParams::from_metadata(&md).unwrap();
        assert_eq!(
            hp.experts,
            Some(Experts {
                count: 8,
                used: 2,
                feed_forward_length: 512
            })
        );
        md.set("llama.expert_feed_forward_length", Value::U32(64));
        let hp = HyperParams::from_metadata(&md).unwrap();
        assert_eq!(hp.experts.unwrap().feed_forward_length, 64);
        for used in [0, 9] {
            md.set("llama.expert_used_count", Value::U32(used));
            let e = HyperParams::from_metadata(&md).unwrap_err().to_string();
            assert!(
                e.contains("llama.expert_used_count") && e.contains("expert_count 8"),
                "{e}"
            );
        }
        // An expert count of 0 is a dense model.
        md.set("llama.expert_count", Value::U32(0));
        assert_eq!(HyperParams::from_metadata(&md).unwrap().experts, None);
    }
}
