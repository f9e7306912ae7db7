//! The pre-norm decoder of the llama family (RMS norm, rotary attention with GQA, SwiGLU
//! MLP), written once against [`ComputeBackend`]. The `llama`, `qwen2`, `qwen3`, `phi3` and
//! `gemma3` adapters differ only in the [`DecoderSpec`] they pass.
//!
//! The attention projections are read either as `attn_q`/`attn_k`/`attn_v` or, as llama.cpp
//! also accepts, as one fused `attn_qkv` (rows: q, then k, then v), which is split by rows
//! at load time (see [`crate::weights`]).

use worker_compute::{
    AttentionParams, ComputeBackend, IndexId, KvCacheConfig, Linear, RopeMode, RopeParams,
    TensorId, WeightId,
};
use worker_gguf::{GgufFile, HyperParams, RopeScaling};

use crate::buffers::{attention_tensors, logit_tensors, BufferTable};
use crate::kv::KvBinding;
use crate::weights::{has, upload, upload_row_split, upload_vec_split};
use crate::{Batch, LoadOptions, Model, ModelError};

/// What distinguishes one llama-family architecture from another.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecoderSpec {
    /// Rotary pair layout.
    pub rope_mode: RopeMode,
    /// `blk.N.attn_{q,k,v}.bias` exist (qwen2).
    pub qkv_bias: bool,
    /// The MLP's gate and up projections are one `blk.N.ffn_up.weight` of `2 * ff` rows,
    /// gate first (phi3; ggml's `swiglu` applies silu to the first half).
    pub fused_gate_up: bool,
    /// `blk.N.attn_{q,k}_norm.weight` (one head wide) normalize each q and k head by RMS
    /// before rope (qwen3, gemma3).
    pub qk_norm: bool,
    /// Gemma: the embeddings are scaled by `sqrt(d)`, the attention and MLP outputs pass
    /// through RMS norms of their own (`post_attention_norm`, `post_ffw_norm`) before each
    /// residual add, and the MLP is GeGLU (`gelu_tanh(gate) * up`).
    pub gemma: bool,
    /// Multiplier of the attention scores; `None` for `1/sqrt(head_dim)`.
    pub attn_scale: Option<f32>,
    /// Sliding-window layers, when the model interleaves them with global ones.
    pub swa: Option<Swa>,
}

/// Interleaved sliding-window attention: layer `i` attends to the last `window` positions
/// with rope base `base` when `pattern == 0 || i % pattern < pattern - 1`, else to every
/// position with the model's own rope base (llama.cpp's `set_swa_pattern`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Swa {
    pub window: usize,
    pub pattern: usize,
    pub base: f32,
}

struct Layer {
    attn_norm: WeightId,
    wq: WeightId,
    wk: WeightId,
    wv: WeightId,
    bq: Option<WeightId>,
    bk: Option<WeightId>,
    bv: Option<WeightId>,
    q_norm: Option<WeightId>,
    k_norm: Option<WeightId>,
    wo: WeightId,
    post_attn_norm: Option<WeightId>,
    post_ffn_norm: Option<WeightId>,
    ffn_norm: WeightId,
    gate: WeightId,
    up: WeightId,
    down: WeightId,
    rope_q: RopeParams,
    rope_k: RopeParams,
    window: Option<usize>,
}

/// Activation buffers, allocated once for `max_batch` rows.
struct Buffers {
    x: TensorId,
    h: TensorId,
    q: TensorId,
    k: TensorId,
    v: TensorId,
    attn: TensorId,
    o: TensorId,
    gate: TensorId,
    up: TensorId,
    act: TensorId,
    last: TensorId,
    logits: TensorId,
    tokens: IndexId,
    logit_rows: IndexId,
}

/// The shapes of [`Buffers`], field by field: every row-wise tensor has room for
/// `max_batch` rows, `last` and `logits` for `max_logit_rows`.
pub(crate) fn buffer_table(hp: &HyperParams, opts: &LoadOptions) -> BufferTable<12, 2> {
    let (b, l) = (opts.max_batch, opts.max_logit_rows);
    let [x, h, q, k, v, attn, o] = attention_tensors(hp, b);
    let mlp = (b, hp.feed_forward_length as usize);
    let [last, logits] = logit_tensors(hp, l);
    BufferTable {
        tensors: [x, h, q, k, v, attn, o, mlp, mlp, mlp, last, logits],
        indices: [b, l],
    }
}

pub(crate) struct Decoder {
    hp: HyperParams,
    opts: LoadOptions,
    eps: f32,
    token_embd: WeightId,
    output_norm: WeightId,
    output: WeightId,
    layers: Vec<Layer>,
    kv: KvBinding,
    buf: Buffers,
    attn: AttentionParams,
    embed_scale: Option<f32>,
    gelu_gate: bool,
}

impl Decoder {
    pub(crate) fn load(
        file: &GgufFile,
        hp: HyperParams,
        spec: DecoderSpec,
        backend: &mut dyn ComputeBackend,
        opts: LoadOptions,
    ) -> Result<Self, ModelError> {
        let d = hp.embedding_length as usize;
        let (nh, nkv) = (hp.head_count as usize, hp.head_count_kv as usize);
        let (hd, vhd) = (hp.head_dim as usize, hp.value_head_dim as usize);
        let ff = hp.feed_forward_length as usize;
        let vocab = hp.vocab_size as usize;
        let eps = hp.rms_norm_epsilon.ok_or_else(|| {
            ModelError::Unsupported(format!(
                "{}.attention.layer_norm_rms_epsilon is missing",
                hp.architecture
            ))
        })?;
        let freq_scale = match hp.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } if factor > 0.0 => 1.0 / factor,
            ref other => {
                return Err(ModelError::Unsupported(format!(
                    "rope scaling {other:?} for {}",
                    hp.architecture
                )))
            }
        };
        let token_embd = upload(file, backend, "token_embd.weight", d, vocab)?;
        let output_norm = upload(file, backend, "output_norm.weight", d, 1)?;
        let output = if has(file, "output.weight") {
            upload(file, backend, "output.weight", d, vocab)?
        } else {
            token_embd // tied embeddings (SmolLM2)
        };
        let rope = |heads, base| RopeParams {
            heads,
            head_dim: hd,
            n_rot: hp.rope_dimension_count as usize,
            base,
            freq_scale,
            mode: spec.rope_mode,
            yarn: None,
        };
        let mut layers = Vec::with_capacity(crate::weights::layer_capacity(file, &hp));
        for i in 0..hp.block_count as usize {
            let sliding = spec
                .swa
                .filter(|s| s.pattern == 0 || i % s.pattern < s.pattern - 1);
            let base = sliding.map_or(hp.rope_freq_base, |s| s.base);
            // Sliding layers keep llama.cpp's default position scale of 1.
            let scaled = |heads| RopeParams {
                freq_scale: if sliding.is_some() { 1.0 } else { freq_scale },
                ..rope(heads, base)
            };
            let t = |n: &str| format!("blk.{i}.{n}");
            let attn_norm = upload(file, backend, &t("attn_norm.weight"), d, 1)?;
            let qkv = t("attn_qkv.weight");
            let (wq, wk, wv) = if has(file, &qkv) {
                let [q, k, v] =
                    upload_row_split(file, backend, &qkv, d, [nh * hd, nkv * hd, nkv * vhd])?;
                (q, k, v)
            } else {
                (
                    upload(file, backend, &t("attn_q.weight"), d, nh * hd)?,
                    upload(file, backend, &t("attn_k.weight"), d, nkv * hd)?,
                    upload(file, backend, &t("attn_v.weight"), d, nkv * vhd)?,
                )
            };
            let qkv_b = t("attn_qkv.bias");
            let (bq, bk, bv) = if has(file, &qkv_b) {
                let [q, k, v] =
                    upload_vec_split(file, backend, &qkv_b, [nh * hd, nkv * hd, nkv * vhd])?;
                (Some(q), Some(k), Some(v))
            } else if spec.qkv_bias {
                (
                    Some(upload(file, backend, &t("attn_q.bias"), nh * hd, 1)?),
                    Some(upload(file, backend, &t("attn_k.bias"), nkv * hd, 1)?),
                    Some(upload(file, backend, &t("attn_v.bias"), nkv * vhd, 1)?),
                )
            } else {
                (None, None, None)
            };
            let (q_norm, k_norm) = if spec.qk_norm {
                (
                    Some(upload(file, backend, &t("attn_q_norm.weight"), hd, 1)?),
                    Some(upload(file, backend, &t("attn_k_norm.weight"), hd, 1)?),
                )
            } else {
                (None, None)
            };
            let (gate, up) = if spec.fused_gate_up {
                let [g, u] = upload_row_split(file, backend, &t("ffn_up.weight"), d, [ff, ff])?;
                (g, u)
            } else {
                (
                    upload(file, backend, &t("ffn_gate.weight"), d, ff)?,
                    upload(file, backend, &t("ffn_up.weight"), d, ff)?,
                )
            };
            let (post_attn_norm, post_ffn_norm) = if spec.gemma {
                (
                    Some(upload(
                        file,
                        backend,
                        &t("post_attention_norm.weight"),
                        d,
                        1,
                    )?),
                    Some(upload(file, backend, &t("post_ffw_norm.weight"), d, 1)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                wo: upload(file, backend, &t("attn_output.weight"), nh * vhd, d)?,
                ffn_norm: upload(file, backend, &t("ffn_norm.weight"), d, 1)?,
                gate,
                up,
                down: upload(file, backend, &t("ffn_down.weight"), ff, d)?,
                post_attn_norm,
                post_ffn_norm,
                rope_q: scaled(nh),
                rope_k: scaled(nkv),
                window: sliding.map(|s| s.window),
            });
        }

        let kv = KvBinding::alloc(backend, &hp, &opts)?;
        let max_positions = opts.max_positions.min(hp.context_length as usize).max(1);
        let ([x, h, q, k, v, attn, o, gate, up, act, last, logits], [tokens, logit_rows]) =
            buffer_table(&hp, &opts).alloc(backend)?;
        let buf = Buffers {
            x,
            h,
            q,
            k,
            v,
            attn,
            o,
            gate,
            up,
            act,
            last,
            logits,
            tokens,
            logit_rows,
        };
        let attn = AttentionParams {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            value_head_dim: vhd,
            scale: spec.attn_scale.unwrap_or(1.0 / (hd as f32).sqrt()),
            layer: 0,
            window: None,
            sinks: None,
        };
        let opts = LoadOptions {
            max_positions,
            ..opts
        };
        Ok(Decoder {
            hp,
            opts,
            eps,
            token_embd,
            output_norm,
            output,
            layers,
            kv,
            buf,
            attn,
            embed_scale: spec.gemma.then(|| (d as f32).sqrt()),
            gelu_gate: spec.gemma,
        })
    }
}

impl Decoder {
    /// A block's output as the residual stream receives it: `o`, or `rms_norm(o) *
    /// post_norm` (in `h`) where the block has a post-norm. It is added into `x` by the
    /// [`Decoder::norm`] that follows.
    fn block_output(
        &self,
        be: &mut dyn ComputeBackend,
        post_norm: Option<WeightId>,
        n: usize,
    ) -> Result<TensorId, ModelError> {
        let b = &self.buf;
        match post_norm {
            Some(w) => {
                be.rms_norm(b.h, b.o, w, self.eps, n)?;
                Ok(b.h)
            }
            None => Ok(b.o),
        }
    }

    /// `h = rms_norm(x) * weight`, after adding the pending block output into `x`.
    fn norm(
        &self,
        be: &mut dyn ComputeBackend,
        pending: Option<TensorId>,
        weight: WeightId,
        n: usize,
    ) -> Result<(), ModelError> {
        let b = &self.buf;
        match pending {
            Some(y) => be.add_rms_norm(b.h, b.x, y, weight, self.eps, n)?,
            None => be.rms_norm(b.h, b.x, weight, self.eps, n)?,
        }
        Ok(())
    }
}

impl Model for Decoder {
    fn hparams(&self) -> &HyperParams {
        &self.hp
    }

    fn options(&self) -> &LoadOptions {
        &self.opts
    }

    fn kv_cache(&self) -> &KvCacheConfig {
        &self.kv.config
    }

    fn forward(
        &mut self,
        be: &mut dyn ComputeBackend,
        batch: &Batch<'_>,
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        let n = batch.check(&self.opts, self.hp.vocab_size as usize, logits.len())?;
        let nl = batch.logit_rows.len();
        let b = &self.buf;
        be.write_index(b.tokens, batch.tokens)?;
        let kv = self.kv.write(be, batch)?;
        be.write_index(b.logit_rows, batch.logit_rows)?;
        be.embed(b.x, self.token_embd, b.tokens, n)?;
        if let Some(s) = self.embed_scale {
            be.scale(b.x, s, n)?;
        }
        // The last block's output, added into `x` by the norm after it.
        let mut pending = None;
        for (i, l) in self.layers.iter().enumerate() {
            self.norm(be, pending.take(), l.attn_norm, n)?;
            let qkv = [(b.q, l.wq, l.bq), (b.k, l.wk, l.bk), (b.v, l.wv, l.bv)]
                .map(|(out, weight, bias)| Linear { out, weight, bias });
            be.linear(b.h, &qkv, n)?;
            for (x, norm, heads) in [
                (b.q, l.q_norm, l.rope_q.heads),
                (b.k, l.k_norm, l.rope_k.heads),
            ] {
                if let Some(norm) = norm {
                    be.rms_norm_heads(x, norm, self.eps, heads, n)?;
                }
            }
            be.rope_qk(b.q, b.k, kv.positions, &l.rope_q, &l.rope_k, n)?;
            let attn = AttentionParams {
                layer: i,
                window: l.window,
                ..self.attn
            };
            be.attention(b.attn, b.q, b.k, b.v, self.kv.cache, &kv, &attn, n)?;
            be.matmul(b.o, b.attn, l.wo, n)?;
            let attn_out = self.block_output(be, l.post_attn_norm, n)?;
            self.norm(be, Some(attn_out), l.ffn_norm, n)?;
            let act = if self.gelu_gate {
                be.matmul_group(b.h, &[(b.gate, l.gate), (b.up, l.up)], n)?;
                be.gelu(b.gate, n)?;
                be.mul(b.gate, b.up, n)?;
                b.gate
            } else {
                be.matmul_swiglu(b.act, b.h, (b.gate, l.gate), (b.up, l.up), n)?;
                b.act
            };
            be.matmul(b.o, act, l.down, n)?;
            pending = Some(self.block_output(be, l.post_ffn_norm, n)?);
        }
        self.norm(be, pending, self.output_norm, n)?;
        if nl > 0 {
            be.gather_rows(b.last, b.h, b.logit_rows, nl)?;
            be.matmul(b.logits, b.last, self.output, nl)?;
            be.read_rows(b.logits, nl, logits)?;
        }
        Ok(())
    }
}
