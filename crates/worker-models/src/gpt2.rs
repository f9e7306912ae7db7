//! `gpt2`: learned position embeddings added to the token embeddings, pre-LayerNorm blocks
//! (weight and bias), multi-head attention from one fused `attn_qkv` projection with bias
//! (rows: q, then k, then v; split by rows at load time), no rope, a GELU MLP with biases,
//! and a final LayerNorm. Without `output.weight` the logits use the token embeddings.

use worker_compute::{
    AttentionParams, ComputeBackend, IndexId, KvCacheConfig, Linear, TensorId, WeightId,
};
use worker_gguf::{GgufFile, HyperParams};

use crate::buffers::{attention_tensors, logit_tensors, BufferTable};
use crate::kv::KvBinding;
use crate::weights::{has, upload, upload_row_split, upload_vec_split};
use crate::{Batch, LoadOptions, Model, ModelError};

/// A LayerNorm's weight and bias.
#[derive(Clone, Copy)]
struct Norm {
    weight: WeightId,
    bias: WeightId,
}

/// A projection and its bias.
#[derive(Clone, Copy)]
struct Projection {
    weight: WeightId,
    bias: WeightId,
}

struct Layer {
    attn_norm: Norm,
    q: Projection,
    k: Projection,
    v: Projection,
    attn_output: Projection,
    ffn_norm: Norm,
    up: Projection,
    down: Projection,
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
    up: TensorId,
    last: TensorId,
    logits: TensorId,
    tokens: IndexId,
    logit_rows: IndexId,
}

/// The shapes of [`Buffers`], field by field: every row-wise tensor has room for
/// `max_batch` rows, `last` and `logits` for `max_logit_rows`.
pub(crate) fn buffer_table(hp: &HyperParams, opts: &LoadOptions) -> BufferTable<10, 2> {
    let (b, l) = (opts.max_batch, opts.max_logit_rows);
    let [x, h, q, k, v, attn, o] = attention_tensors(hp, b);
    let up = (b, hp.feed_forward_length as usize);
    let [last, logits] = logit_tensors(hp, l);
    BufferTable {
        tensors: [x, h, q, k, v, attn, o, up, last, logits],
        indices: [b, l],
    }
}

struct Gpt2 {
    hp: HyperParams,
    opts: LoadOptions,
    eps: f32,
    token_embd: WeightId,
    position_embd: WeightId,
    output_norm: Norm,
    output: WeightId,
    layers: Vec<Layer>,
    kv: KvBinding,
    buf: Buffers,
    attn: AttentionParams,
}

fn norm(
    file: &GgufFile,
    be: &mut dyn ComputeBackend,
    prefix: &str,
    d: usize,
) -> Result<Norm, ModelError> {
    Ok(Norm {
        weight: upload(file, be, &format!("{prefix}.weight"), d, 1)?,
        bias: upload(file, be, &format!("{prefix}.bias"), d, 1)?,
    })
}

fn linear(
    file: &GgufFile,
    be: &mut dyn ComputeBackend,
    prefix: &str,
    cols: usize,
    rows: usize,
) -> Result<Projection, ModelError> {
    Ok(Projection {
        weight: upload(file, be, &format!("{prefix}.weight"), cols, rows)?,
        bias: upload(file, be, &format!("{prefix}.bias"), rows, 1)?,
    })
}

pub(crate) fn load(
    file: &GgufFile,
    hp: HyperParams,
    backend: &mut dyn ComputeBackend,
    opts: LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    let d = hp.embedding_length as usize;
    let (nh, nkv) = (hp.head_count as usize, hp.head_count_kv as usize);
    let (hd, vhd) = (hp.head_dim as usize, hp.value_head_dim as usize);
    let ff = hp.feed_forward_length as usize;
    let vocab = hp.vocab_size as usize;
    let ctx = hp.context_length as usize;
    let eps = hp.layer_norm_epsilon.ok_or_else(|| {
        ModelError::Unsupported("gpt2.attention.layer_norm_epsilon is missing".to_string())
    })?;
    let token_embd = upload(file, backend, "token_embd.weight", d, vocab)?;
    // One learned row per trained position: positions are capped at the context length.
    let position_embd = upload(file, backend, "position_embd.weight", d, ctx)?;
    let output_norm = norm(file, backend, "output_norm", d)?;
    let output = if has(file, "output.weight") {
        upload(file, backend, "output.weight", d, vocab)?
    } else {
        token_embd
    };
    let mut layers = Vec::with_capacity(crate::weights::layer_capacity(file, &hp));
    for i in 0..hp.block_count as usize {
        let t = |n: &str| format!("blk.{i}.{n}");
        let parts = [nh * hd, nkv * hd, nkv * vhd];
        let [wq, wk, wv] = upload_row_split(file, backend, &t("attn_qkv.weight"), d, parts)?;
        let [bq, bk, bv] = upload_vec_split(file, backend, &t("attn_qkv.bias"), parts)?;
        layers.push(Layer {
            attn_norm: norm(file, backend, &t("attn_norm"), d)?,
            q: Projection {
                weight: wq,
                bias: bq,
            },
            k: Projection {
                weight: wk,
                bias: bk,
            },
            v: Projection {
                weight: wv,
                bias: bv,
            },
            attn_output: linear(file, backend, &t("attn_output"), nh * vhd, d)?,
            ffn_norm: norm(file, backend, &t("ffn_norm"), d)?,
            up: linear(file, backend, &t("ffn_up"), d, ff)?,
            down: linear(file, backend, &t("ffn_down"), ff, d)?,
        });
    }

    let kv = KvBinding::alloc(backend, &hp, &opts)?;
    let max_positions = opts.max_positions.min(ctx).max(1);
    let ([x, h, q, k, v, attn, o, up, last, logits], [tokens, logit_rows]) =
        buffer_table(&hp, &opts).alloc(backend)?;
    let buf = Buffers {
        x,
        h,
        q,
        k,
        v,
        attn,
        o,
        up,
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
        scale: 1.0 / (hd as f32).sqrt(),
        layer: 0,
        window: None,
        sinks: None,
    };
    Ok(Box::new(Gpt2 {
        hp,
        opts: LoadOptions {
            max_positions,
            ..opts
        },
        eps,
        token_embd,
        position_embd,
        output_norm,
        output,
        layers,
        kv,
        buf,
        attn,
    }))
}

impl Gpt2 {
    /// `out = x w^T + bias` for the first `n` rows.
    fn linear(
        be: &mut dyn ComputeBackend,
        out: TensorId,
        x: TensorId,
        p: Projection,
        n: usize,
    ) -> Result<(), ModelError> {
        let l = Linear {
            out,
            weight: p.weight,
            bias: Some(p.bias),
        };
        be.linear(x, &[l], n)?;
        Ok(())
    }
}

impl Model for Gpt2 {
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
        be.embed(b.o, self.position_embd, kv.positions, n)?;
        be.add(b.x, b.o, n)?;
        for (i, l) in self.layers.iter().enumerate() {
            let an = l.attn_norm;
            be.layer_norm(b.h, b.x, an.weight, an.bias, self.eps, n)?;
            Self::linear(be, b.q, b.h, l.q, n)?;
            Self::linear(be, b.k, b.h, l.k, n)?;
            Self::linear(be, b.v, b.h, l.v, n)?;
            let attn = AttentionParams {
                layer: i,
                ..self.attn
            };
            be.attention(b.attn, b.q, b.k, b.v, self.kv.cache, &kv, &attn, n)?;
            Self::linear(be, b.o, b.attn, l.attn_output, n)?;
            be.add(b.x, b.o, n)?;
            let fnorm = l.ffn_norm;
            be.layer_norm(b.h, b.x, fnorm.weight, fnorm.bias, self.eps, n)?;
            Self::linear(be, b.up, b.h, l.up, n)?;
            be.gelu(b.up, n)?;
            Self::linear(be, b.o, b.up, l.down, n)?;
            be.add(b.x, b.o, n)?;
        }
        let on = self.output_norm;
        be.layer_norm(b.h, b.x, on.weight, on.bias, self.eps, n)?;
        if nl > 0 {
            be.gather_rows(b.last, b.h, b.logit_rows, nl)?;
            be.matmul(b.logits, b.last, self.output, nl)?;
            be.read_rows(b.logits, nl, logits)?;
        }
        Ok(())
    }
}
