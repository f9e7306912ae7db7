//! The pre-norm decoder of the llama family (RMS norm, rotary attention with GQA, SwiGLU
//! MLP), written once against [`ComputeBackend`]. The `llama`, `qwen2`, `qwen3`, `phi3`,
//! `gemma3` and `gpt-oss` adapters differ only in the [`DecoderSpec`] they pass.
//!
//! The attention projections are read either as `attn_q`/`attn_k`/`attn_v` or, as llama.cpp
//! also accepts, as one fused `attn_qkv` (rows: q, then k, then v), which is split by rows
//! at load time (see [`crate::weights`]).

use worker_compute::{
    AttentionParams, ComputeBackend, ExpertActivation, ExpertWeights, IndexId, KvCacheConfig,
    Linear, MoeParams, RopeMode, RopeParams, TensorId, WeightId, Yarn,
};
use worker_gguf::{GgufFile, HyperParams, RopeScaling};

use crate::buffers::{attention_tensors, logit_tensors, BufferTable};
use crate::kv::KvBinding;
use crate::weights::{has, upload, upload_experts, upload_row_split, upload_vec_split};
use crate::{Batch, LoadOptions, Model, ModelError};

/// What distinguishes one llama-family architecture from another.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecoderSpec {
    /// Rotary pair layout.
    pub rope_mode: RopeMode,
    /// `blk.N.attn_{q,k,v}.bias` exist (qwen2, gpt-oss).
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
    /// gpt-oss (llama.cpp's `openai-moe` graph): YaRN rope scaling where the file asks for
    /// it, a bias on the attention output (`attn_output.bias`), attention sinks
    /// (`attn_sinks.weight`, one logit per head), the pre-MLP norm named
    /// `post_attention_norm`, and a mixture-of-experts MLP (`ffn_gate_inp` router with
    /// bias, `ffn_{gate,up,down}_exps` experts with biases, gpt-oss's clamped SwiGLU; the
    /// counts from [`HyperParams::experts`]).
    pub gpt_oss: bool,
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
    /// Whether sliding layers take the model's rope scaling (gpt-oss) or llama.cpp's default
    /// of none (gemma3).
    pub scaled: bool,
}

/// gpt-oss's SwiGLU constants (llama.cpp's `LLM_FFN_SWIGLU_OAI_MOE`).
const SWIGLU_OAI: ExpertActivation = ExpertActivation::SwigluOai {
    alpha: 1.702,
    limit: 7.0,
};

/// A layer's dense MLP: gate, up and down projections.
struct Dense {
    gate: WeightId,
    up: WeightId,
    down: WeightId,
}

/// A layer's mixture of experts: a router (`ffn_gate_inp`, with its bias) over experts.
struct Moe {
    router: WeightId,
    router_bias: WeightId,
    experts: Vec<ExpertWeights>,
}

/// Every layer's MLP weights with the activation buffers they use, one kind per model.
enum Mlps {
    Dense {
        layers: Vec<Dense>,
        gate: TensorId,
        up: TensorId,
        act: TensorId,
    },
    Experts {
        layers: Vec<Moe>,
        /// Router logits.
        router: TensorId,
        params: MoeParams,
    },
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
    bo: Option<WeightId>,
    sinks: Option<WeightId>,
    post_attn_norm: Option<WeightId>,
    post_ffn_norm: Option<WeightId>,
    ffn_norm: WeightId,
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
    last: TensorId,
    logits: TensorId,
    tokens: IndexId,
    logit_rows: IndexId,
}

/// The shapes of [`Buffers`], in the order the load allocates them: the attention's
/// tensors, the MLP's, then the logit rows' tensors with the index vectors. Every row-wise
/// tensor has room for `max_batch` rows, `last` and `logits` for `max_logit_rows`.
pub(crate) fn buffer_tables(
    hp: &HyperParams,
    opts: &LoadOptions,
) -> (BufferTable<7, 0>, MlpTable, BufferTable<2, 2>) {
    let (b, l) = (opts.max_batch, opts.max_logit_rows);
    let attention = BufferTable {
        tensors: attention_tensors(hp, b),
        indices: [],
    };
    let logits = BufferTable {
        tensors: logit_tensors(hp, l),
        indices: [b, l],
    };
    (attention, MlpTable::new(hp, opts), logits)
}

/// The shapes of the MLP's buffers, `max_batch` rows each.
pub(crate) enum MlpTable {
    /// A dense MLP's gate, up and activation.
    Dense(BufferTable<3, 0>),
    /// A mixture of experts' router logits (the experts' own scratch is the backend's).
    Experts(BufferTable<1, 0>),
}

impl MlpTable {
    /// The MLP buffers of a model with `hp`'s shape; experts where `hp` has them.
    pub(crate) fn new(hp: &HyperParams, opts: &LoadOptions) -> Self {
        let b = opts.max_batch;
        match hp.experts {
            Some(e) => MlpTable::Experts(BufferTable {
                tensors: [(b, e.count as usize)],
                indices: [],
            }),
            None => {
                let mlp = (b, hp.feed_forward_length as usize);
                MlpTable::Dense(BufferTable {
                    tensors: [mlp; 3],
                    indices: [],
                })
            }
        }
    }

    /// Bytes of the tensors.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            MlpTable::Dense(t) => t.bytes().0,
            MlpTable::Experts(t) => t.bytes().0,
        }
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
    mlps: Mlps,
    kv: KvBinding,
    buf: Buffers,
    attn: AttentionParams,
    embed_scale: Option<f32>,
    gelu_gate: bool,
}

/// The position scale and the YaRN parameters of `hp`'s rope scaling, where `spec` runs it.
fn rope_scaling(hp: &HyperParams, spec: &DecoderSpec) -> Result<(f32, Option<Yarn>), ModelError> {
    match hp.rope_scaling {
        RopeScaling::None => Ok((1.0, None)),
        RopeScaling::Linear { factor } if factor > 0.0 => Ok((1.0 / factor, None)),
        RopeScaling::Yarn {
            factor,
            original_context_length,
            beta_fast,
            beta_slow,
            attn_factor,
        } if spec.gpt_oss && factor > 0.0 => Ok((
            1.0 / factor,
            Some(Yarn {
                original_context: original_context_length,
                beta_fast,
                beta_slow,
                // llama.cpp: 1 for YaRN (its `yarn_ext_factor` default).
                ext_factor: 1.0,
                attn_factor,
            }),
        )),
        ref other => Err(ModelError::Unsupported(format!(
            "rope scaling {other:?} for {}",
            hp.architecture
        ))),
    }
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
        let vocab = hp.vocab_size as usize;
        let eps = hp.rms_norm_epsilon.ok_or_else(|| {
            ModelError::Unsupported(format!(
                "{}.attention.layer_norm_rms_epsilon is missing",
                hp.architecture
            ))
        })?;
        let (freq_scale, yarn) = rope_scaling(&hp, &spec)?;
        let experts = match (spec.gpt_oss, hp.experts) {
            (false, _) => None,
            (true, Some(e)) => Some(e),
            (true, None) => {
                return Err(ModelError::Unsupported(format!(
                    "{}.expert_count is missing: gpt-oss's MLP is a mixture of experts",
                    hp.architecture
                )))
            }
        };
        let token_embd = upload(file, backend, "token_embd.weight", d, vocab)?;
        let output_norm = upload(file, backend, "output_norm.weight", d, 1)?;
        // gpt-oss has its own output matrix (llama.cpp requires it there).
        let output = if has(file, "output.weight") || spec.gpt_oss {
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
            yarn,
        };
        let capacity = crate::weights::layer_capacity(file, &hp);
        let mut layers = Vec::with_capacity(capacity);
        let (mut dense, mut moe) = (Vec::with_capacity(capacity), Vec::new());
        for i in 0..hp.block_count as usize {
            let sliding = spec
                .swa
                .filter(|s| s.pattern == 0 || i % s.pattern < s.pattern - 1);
            let base = sliding.map_or(hp.rope_freq_base, |s| s.base);
            // Unscaled sliding layers keep llama.cpp's default position scale of 1.
            let scaled = |heads| match sliding {
                Some(s) if !s.scaled => RopeParams {
                    freq_scale: 1.0,
                    yarn: None,
                    ..rope(heads, base)
                },
                _ => rope(heads, base),
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
            // A dense MLP's gate and up, uploaded in the order of the file's tensors; its
            // down after the attention's output (the backends' weight ids stay as they were
            // before experts were added: CUDA's recorded launch lists name them).
            let mut gate_up = None;
            match experts {
                Some(e) => {
                    let (n, eff) = (e.count as usize, e.feed_forward_length as usize);
                    let stack = |backend: &mut dyn ComputeBackend, name: &str, c, r| {
                        upload_experts(file, backend, &t(name), c, r, n)
                    };
                    let gate = stack(backend, "ffn_gate_exps.weight", d, eff)?;
                    let up = stack(backend, "ffn_up_exps.weight", d, eff)?;
                    let down = stack(backend, "ffn_down_exps.weight", eff, d)?;
                    let gate_b = stack(backend, "ffn_gate_exps.bias", eff, 1)?;
                    let up_b = stack(backend, "ffn_up_exps.bias", eff, 1)?;
                    let down_b = stack(backend, "ffn_down_exps.bias", d, 1)?;
                    moe.push(Moe {
                        router: upload(file, backend, &t("ffn_gate_inp.weight"), d, n)?,
                        router_bias: upload(file, backend, &t("ffn_gate_inp.bias"), n, 1)?,
                        experts: (0..n)
                            .map(|x| ExpertWeights {
                                gate: gate[x],
                                up: up[x],
                                down: down[x],
                                gate_bias: Some(gate_b[x]),
                                up_bias: Some(up_b[x]),
                                down_bias: Some(down_b[x]),
                            })
                            .collect(),
                    });
                }
                None => {
                    let ff = hp.feed_forward_length as usize;
                    let (gate, up) = if spec.fused_gate_up {
                        let name = t("ffn_up.weight");
                        let [g, u] = upload_row_split(file, backend, &name, d, [ff, ff])?;
                        (g, u)
                    } else {
                        (
                            upload(file, backend, &t("ffn_gate.weight"), d, ff)?,
                            upload(file, backend, &t("ffn_up.weight"), d, ff)?,
                        )
                    };
                    gate_up = Some((gate, up));
                }
            }
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
            let ffn_norm = match spec.gpt_oss {
                true => t("post_attention_norm.weight"),
                false => t("ffn_norm.weight"),
            };
            let (bo, sinks) = match spec.gpt_oss {
                true => (
                    Some(upload(file, backend, &t("attn_output.bias"), d, 1)?),
                    Some(upload(file, backend, &t("attn_sinks.weight"), nh, 1)?),
                ),
                false => (None, None),
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
                bo,
                sinks,
                ffn_norm: upload(file, backend, &ffn_norm, d, 1)?,
                post_attn_norm,
                post_ffn_norm,
                rope_q: scaled(nh),
                rope_k: scaled(nkv),
                window: sliding.map(|s| s.window),
            });
            if let Some((gate, up)) = gate_up {
                let ff = hp.feed_forward_length as usize;
                let down = upload(file, backend, &t("ffn_down.weight"), ff, d)?;
                dense.push(Dense { gate, up, down });
            }
        }

        let kv = KvBinding::alloc(backend, &hp, &opts)?;
        let max_positions = opts.max_positions.min(hp.context_length as usize).max(1);
        let (attention, mlp, logit_table) = buffer_tables(&hp, &opts);
        let ([x, h, q, k, v, attn, o], []) = attention.alloc(backend)?;
        let mlps = match (mlp, experts) {
            (MlpTable::Experts(table), Some(e)) => {
                let ([router], []) = table.alloc(backend)?;
                Mlps::Experts {
                    layers: moe,
                    router,
                    params: MoeParams {
                        used: e.used as usize,
                        activation: SWIGLU_OAI,
                    },
                }
            }
            (MlpTable::Dense(table), _) => {
                let ([gate, up, act], []) = table.alloc(backend)?;
                Mlps::Dense {
                    layers: dense,
                    gate,
                    up,
                    act,
                }
            }
            (MlpTable::Experts(_), None) => {
                return Err(ModelError::Unsupported(format!(
                    "{}.expert_count is set, but {} has no mixture of experts",
                    hp.architecture, hp.architecture
                )))
            }
        };
        let ([last, logits], [tokens, logit_rows]) = logit_table.alloc(backend)?;
        let buf = Buffers {
            x,
            h,
            q,
            k,
            v,
            attn,
            o,
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
            mlps,
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

    /// The MLP of layer `i` from `h` (its normalized input) into `o`.
    fn mlp(&self, be: &mut dyn ComputeBackend, i: usize, n: usize) -> Result<(), ModelError> {
        let b = &self.buf;
        match &self.mlps {
            Mlps::Dense {
                layers,
                gate: g,
                up: u,
                act,
            } => {
                let Dense { gate, up, down } = &layers[i];
                let act = if self.gelu_gate {
                    be.matmul_group(b.h, &[(*g, *gate), (*u, *up)], n)?;
                    be.gelu(*g, n)?;
                    be.mul(*g, *u, n)?;
                    *g
                } else {
                    be.matmul_swiglu(*act, b.h, (*g, *gate), (*u, *up), n)?;
                    *act
                };
                be.matmul(b.o, act, *down, n)?;
            }
            Mlps::Experts {
                layers,
                router: logits,
                params,
            } => {
                let Moe {
                    router,
                    router_bias,
                    experts,
                } = &layers[i];
                let router = Linear {
                    out: *logits,
                    weight: *router,
                    bias: Some(*router_bias),
                };
                be.linear(b.h, &[router], n)?;
                be.moe(b.o, b.h, *logits, experts, params, n)?;
            }
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
                sinks: l.sinks,
                ..self.attn
            };
            be.attention(b.attn, b.q, b.k, b.v, self.kv.cache, &kv, &attn, n)?;
            match l.bo {
                Some(bias) => {
                    let wo = Linear {
                        out: b.o,
                        weight: l.wo,
                        bias: Some(bias),
                    };
                    be.linear(b.attn, &[wo], n)?;
                }
                None => be.matmul(b.o, b.attn, l.wo, n)?,
            }
            let attn_out = self.block_output(be, l.post_attn_norm, n)?;
            self.norm(be, Some(attn_out), l.ffn_norm, n)?;
            self.mlp(be, i, n)?;
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
