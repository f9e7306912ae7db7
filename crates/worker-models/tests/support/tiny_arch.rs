//! Deterministic tiny random-weight `phi3`, `gpt2`, `qwen3`, `gemma3` and `gpt-oss` models on
//! llama.cpp's real gpt-2, phi-3, qwen2 and llama-spm vocabularies and on gpt-oss's o200k
//! (converted from its `tokenizer.json` as llama.cpp's converter does), written with our GGUF
//! writer.
//!
//! Shared by the tests (which build the models in memory) and by the example
//! `write_tiny_models` (which writes the same bytes to files for
//! `scripts/goldens/make_tiny_model_goldens.py` to run through llama.cpp). The goldens record
//! the sha256 of the bytes, so a change here shows up as a golden mismatch, not as a silent
//! comparison against a different model.
//!
//! The weights mix storage types (F32, F16, Q8_0, Q4_0; gpt-oss's experts MXFP4, as released)
//! so that every dequantizer the adapters meet is on the compared path, including the row
//! split of quantized fused tensors and the expert split of stacked ones.

#![allow(dead_code)]

use worker_gguf::{quantize, GgmlType, GgufFile, GgufWriter, Value};

/// Sizes of the tiny models.
pub const D: u64 = 64;
/// Attention heads.
pub const HEADS: u64 = 4;
/// Context length (gpt2: rows of `position_embd`).
pub const CTX: u32 = 256;

/// Changes to the model, for the error tests.
#[derive(Default)]
pub struct Edit<'a> {
    /// A tensor left out.
    pub skip: Option<&'a str>,
    /// A tensor written with another shape.
    pub reshape: Option<(&'a str, Vec<u64>)>,
    /// An extra F32 tensor.
    pub extra: Option<(&'a str, Vec<u64>)>,
    /// A metadata key set to another u32 (after the model's own keys).
    pub key: Option<(&'a str, u32)>,
}

/// The vocabulary each architecture's tiny model takes its `tokenizer.*` keys from:
/// llama.cpp's vocabulary files, and gpt-oss's o200k built from its `tokenizer.json`.
pub fn vocab(arch: &str) -> GgufFile {
    let name = match arch {
        "phi3" => "phi-3",
        "gpt2" => "gpt-2",
        "qwen3" => "qwen2",
        "gemma3" => "llama-spm",
        "gpt-oss" => return worker_testdata::gptoss_vocab(),
        other => panic!("no tiny model for {other}"),
    };
    GgufFile::open(worker_testdata::vocab(name)).unwrap()
}

struct Rng(u64);

impl Rng {
    /// Uniform in [-0.5, 0.5).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// What a tensor holds, which sets its random distribution.
#[derive(Clone, Copy)]
enum Kind {
    /// A norm weight: about 1.
    NormWeight,
    /// A small offset (biases).
    Bias,
    /// Embedding rows of about unit size.
    Embedding(f32),
    /// A projection of `cols` inputs: unit-variance outputs for unit-variance inputs.
    Matrix,
    /// Attention sink logits: -1.5 to 2.5.
    Sink,
    /// A projection into the residual stream a tenth of [`Kind::Matrix`]'s size.
    Residual,
}

/// The architectures with a tiny model.
pub const ARCHS: [&str; 5] = ["phi3", "gpt2", "qwen3", "gemma3", "gpt-oss"];

/// The tiny gpt-oss's sliding window: shorter than the golden prompts, so that its two
/// sliding layers (of four, alternating as in the released models) see a window that moves.
pub const GPT_OSS_WINDOW: u32 = 8;
/// The tiny gpt-oss's experts and those each token uses: the released 20B model's counts.
pub const GPT_OSS_EXPERTS: (u32, u32) = (32, 4);

/// The tiny gemma3's sliding window: shorter than the golden prompts, so that the five local
/// layers of its six (llama.cpp's default pattern) see a window that moves.
pub const GEMMA3_WINDOW: u32 = 8;

/// The GGUF bytes of the tiny `arch` model (one of [`ARCHS`]) on `vocab`'s tokenizer.
pub fn tiny_model(arch: &str, vocab: &GgufFile, edit: &Edit<'_>) -> Vec<u8> {
    let n_vocab = vocab
        .metadata()
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .len() as u64;
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String(arch.into()));
    w.set("general.name", Value::String(format!("tiny-{arch}")));
    for (k, v) in vocab.metadata().iter() {
        if k.starts_with("tokenizer.") {
            w.set(k, v.clone());
        }
    }
    use GgmlType::{F16, F32, MXFP4, Q4_0, Q8_0};
    let mut tensors: Vec<(String, Vec<u64>, GgmlType, Kind)> = Vec::new();
    let mut t = |name: String, shape: Vec<u64>, ty, kind| tensors.push((name, shape, ty, kind));
    let hd = D / HEADS;
    match arch {
        "phi3" => {
            let (kv_heads, ff) = (2u64, 128u64);
            for (k, v) in [
                ("context_length", CTX),
                ("embedding_length", D as u32),
                ("block_count", 2),
                ("feed_forward_length", ff as u32),
                ("attention.head_count", HEADS as u32),
                ("attention.head_count_kv", kv_heads as u32),
                ("rope.dimension_count", hd as u32),
            ] {
                w.set(&format!("phi3.{k}"), Value::U32(v));
            }
            w.set("phi3.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
            w.set("phi3.rope.freq_base", Value::F32(10_000.0));
            t(
                "token_embd.weight".into(),
                vec![D, n_vocab],
                Q8_0,
                Kind::Embedding(2.0),
            );
            let qkv = D + 2 * kv_heads * hd;
            for (i, (qkv_ty, up_ty, down_ty)) in [(F16, Q4_0, F32), (Q4_0, F16, Q8_0)]
                .into_iter()
                .enumerate()
            {
                let b = |n: &str| format!("blk.{i}.{n}");
                t(b("attn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("attn_qkv.weight"), vec![D, qkv], qkv_ty, Kind::Matrix);
                t(b("attn_output.weight"), vec![D, D], Q8_0, Kind::Matrix);
                t(b("ffn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("ffn_up.weight"), vec![D, 2 * ff], up_ty, Kind::Matrix);
                t(b("ffn_down.weight"), vec![ff, D], down_ty, Kind::Matrix);
            }
            t("output_norm.weight".into(), vec![D], F32, Kind::NormWeight);
            t("output.weight".into(), vec![D, n_vocab], F16, Kind::Matrix);
        }
        "gpt2" => {
            let ff = 4 * D;
            for (k, v) in [
                ("context_length", CTX),
                ("embedding_length", D as u32),
                ("block_count", 2),
                ("feed_forward_length", ff as u32),
                ("attention.head_count", HEADS as u32),
            ] {
                w.set(&format!("gpt2.{k}"), Value::U32(v));
            }
            w.set("gpt2.attention.layer_norm_epsilon", Value::F32(1e-5));
            // No output.weight: the logits use the token embeddings, as llama.cpp does then.
            t(
                "token_embd.weight".into(),
                vec![D, n_vocab],
                F16,
                Kind::Embedding(2.0),
            );
            t(
                "position_embd.weight".into(),
                vec![D, CTX as u64],
                F32,
                Kind::Embedding(0.5),
            );
            for (i, (qkv_ty, o_ty, up_ty, down_ty)) in
                [(Q8_0, F16, Q4_0, Q8_0), (F32, Q4_0, Q8_0, F16)]
                    .into_iter()
                    .enumerate()
            {
                let b = |n: &str| format!("blk.{i}.{n}");
                t(b("attn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("attn_norm.bias"), vec![D], F32, Kind::Bias);
                t(b("attn_qkv.weight"), vec![D, 3 * D], qkv_ty, Kind::Matrix);
                t(b("attn_qkv.bias"), vec![3 * D], F32, Kind::Bias);
                t(b("attn_output.weight"), vec![D, D], o_ty, Kind::Matrix);
                t(b("attn_output.bias"), vec![D], F32, Kind::Bias);
                t(b("ffn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("ffn_norm.bias"), vec![D], F32, Kind::Bias);
                t(b("ffn_up.weight"), vec![D, ff], up_ty, Kind::Matrix);
                t(b("ffn_up.bias"), vec![ff], F32, Kind::Bias);
                t(b("ffn_down.weight"), vec![ff, D], down_ty, Kind::Matrix);
                t(b("ffn_down.bias"), vec![D], F32, Kind::Bias);
            }
            t("output_norm.weight".into(), vec![D], F32, Kind::NormWeight);
            t("output_norm.bias".into(), vec![D], F32, Kind::Bias);
        }
        "qwen3" => {
            // Heads wider than embedding / heads (key_length set), as the real Qwen3 models
            // (128-wide heads on a 1024 residual with 16 heads); no q/k/v biases; one head
            // wide q/k norms; tied output.
            let (kv_heads, hd, ff) = (2u64, 32u64, 128u64);
            for (k, v) in [
                ("context_length", CTX),
                ("embedding_length", D as u32),
                ("block_count", 2),
                ("feed_forward_length", ff as u32),
                ("attention.head_count", HEADS as u32),
                ("attention.head_count_kv", kv_heads as u32),
                ("attention.key_length", hd as u32),
                ("attention.value_length", hd as u32),
            ] {
                w.set(&format!("qwen3.{k}"), Value::U32(v));
            }
            w.set("qwen3.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
            w.set("qwen3.rope.freq_base", Value::F32(1_000_000.0));
            t(
                "token_embd.weight".into(),
                vec![D, n_vocab],
                Q8_0,
                Kind::Embedding(2.0),
            );
            for (i, (q_ty, kv_ty, o_ty, mlp_ty)) in
                [(F16, Q8_0, Q4_0, Q8_0), (Q4_0, F16, Q8_0, F16)]
                    .into_iter()
                    .enumerate()
            {
                let b = |n: &str| format!("blk.{i}.{n}");
                t(b("attn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("attn_q.weight"), vec![D, HEADS * hd], q_ty, Kind::Matrix);
                t(
                    b("attn_k.weight"),
                    vec![D, kv_heads * hd],
                    kv_ty,
                    Kind::Matrix,
                );
                t(
                    b("attn_v.weight"),
                    vec![D, kv_heads * hd],
                    kv_ty,
                    Kind::Matrix,
                );
                t(b("attn_q_norm.weight"), vec![hd], F32, Kind::NormWeight);
                t(b("attn_k_norm.weight"), vec![hd], F32, Kind::NormWeight);
                t(
                    b("attn_output.weight"),
                    vec![HEADS * hd, D],
                    o_ty,
                    Kind::Matrix,
                );
                t(b("ffn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("ffn_gate.weight"), vec![D, ff], mlp_ty, Kind::Matrix);
                t(b("ffn_up.weight"), vec![D, ff], mlp_ty, Kind::Matrix);
                t(b("ffn_down.weight"), vec![ff, D], Q8_0, Kind::Matrix);
            }
            t("output_norm.weight".into(), vec![D], F32, Kind::NormWeight);
        }
        "gemma3" => {
            // Six layers: five local (window GEMMA3_WINDOW, rope base 10000 by default), one
            // global (rope base 1e6); heads wider than d / heads; tied output.
            let (kv_heads, hd, ff) = (2u64, 32u64, 128u64);
            for (k, v) in [
                ("context_length", CTX),
                ("embedding_length", D as u32),
                ("block_count", 6),
                ("feed_forward_length", ff as u32),
                ("attention.head_count", HEADS as u32),
                ("attention.head_count_kv", kv_heads as u32),
                ("attention.key_length", hd as u32),
                ("attention.value_length", hd as u32),
                ("attention.sliding_window", GEMMA3_WINDOW),
            ] {
                w.set(&format!("gemma3.{k}"), Value::U32(v));
            }
            w.set("gemma3.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
            w.set("gemma3.rope.freq_base", Value::F32(1_000_000.0));
            t(
                "token_embd.weight".into(),
                vec![D, n_vocab],
                Q8_0,
                Kind::Embedding(0.25),
            );
            for i in 0..6 {
                let (q_ty, o_ty, mlp_ty) = [(F16, Q4_0, Q8_0), (Q8_0, F16, Q4_0)][i % 2];
                let b = |n: &str| format!("blk.{i}.{n}");
                t(b("attn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("attn_q.weight"), vec![D, HEADS * hd], q_ty, Kind::Matrix);
                t(
                    b("attn_k.weight"),
                    vec![D, kv_heads * hd],
                    q_ty,
                    Kind::Matrix,
                );
                t(
                    b("attn_v.weight"),
                    vec![D, kv_heads * hd],
                    Q8_0,
                    Kind::Matrix,
                );
                t(b("attn_q_norm.weight"), vec![hd], F32, Kind::NormWeight);
                t(b("attn_k_norm.weight"), vec![hd], F32, Kind::NormWeight);
                t(
                    b("attn_output.weight"),
                    vec![HEADS * hd, D],
                    o_ty,
                    Kind::Matrix,
                );
                t(
                    b("post_attention_norm.weight"),
                    vec![D],
                    F32,
                    Kind::NormWeight,
                );
                t(b("ffn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("ffn_gate.weight"), vec![D, ff], mlp_ty, Kind::Matrix);
                t(b("ffn_up.weight"), vec![D, ff], mlp_ty, Kind::Matrix);
                t(b("ffn_down.weight"), vec![ff, D], Q8_0, Kind::Matrix);
                t(b("post_ffw_norm.weight"), vec![D], F32, Kind::NormWeight);
            }
            t("output_norm.weight".into(), vec![D], F32, Kind::NormWeight);
        }
        "gpt-oss" => {
            // The released shape's ratios, reduced: 8 query heads sharing one KV head (64
            // and 8 in the 20B model), heads narrower than d / heads' product (16 x 8 = 128
            // on a 64 residual; 64 x 64 on 2880), experts as wide as the residual, the 20B
            // model's 32 experts of which 4 run, YaRN 32x over 4096 positions as released,
            // four layers alternating sliding (window GPT_OSS_WINDOW) and full, biases on
            // attention and experts, sinks, its own output matrix, and its chat template.
            let (kv_heads, hd, eff) = (1u64, 16u64, D);
            let (n_exp, used) = GPT_OSS_EXPERTS;
            let n_exp = n_exp as u64;
            for (k, v) in [
                ("context_length", CTX),
                ("embedding_length", D as u32),
                ("block_count", 4),
                ("feed_forward_length", eff as u32),
                ("attention.head_count", 2 * HEADS as u32),
                ("attention.head_count_kv", kv_heads as u32),
                ("attention.key_length", hd as u32),
                ("attention.value_length", hd as u32),
                ("attention.sliding_window", GPT_OSS_WINDOW),
                ("expert_count", n_exp as u32),
                ("expert_used_count", used),
                ("expert_feed_forward_length", eff as u32),
                ("rope.scaling.original_context_length", 4096),
            ] {
                w.set(&format!("gpt-oss.{k}"), Value::U32(v));
            }
            for (k, v) in [
                ("attention.layer_norm_rms_epsilon", 1e-5),
                ("rope.freq_base", 150_000.0),
                ("rope.scaling.factor", 32.0),
                ("rope.scaling.yarn_beta_fast", 32.0),
                ("rope.scaling.yarn_beta_slow", 1.0),
            ] {
                w.set(&format!("gpt-oss.{k}"), Value::F32(v));
            }
            w.set("gpt-oss.rope.scaling.type", Value::String("yarn".into()));
            let template = worker_testdata::chat_template("openai-gpt-oss-120b");
            let template = std::fs::read_to_string(template).unwrap();
            w.set("tokenizer.chat_template", Value::String(template));
            let nh = 2 * HEADS;
            t(
                "token_embd.weight".into(),
                vec![D, n_vocab],
                Q8_0,
                Kind::Embedding(2.0),
            );
            for i in 0..4 {
                let (q_ty, o_ty) = [(F16, Q8_0), (Q8_0, F16)][i % 2];
                let b = |n: &str| format!("blk.{i}.{n}");
                t(b("attn_norm.weight"), vec![D], F32, Kind::NormWeight);
                t(b("attn_q.weight"), vec![D, nh * hd], q_ty, Kind::Matrix);
                t(b("attn_q.bias"), vec![nh * hd], F32, Kind::Bias);
                t(
                    b("attn_k.weight"),
                    vec![D, kv_heads * hd],
                    q_ty,
                    Kind::Matrix,
                );
                t(b("attn_k.bias"), vec![kv_heads * hd], F32, Kind::Bias);
                t(
                    b("attn_v.weight"),
                    vec![D, kv_heads * hd],
                    Q8_0,
                    Kind::Matrix,
                );
                t(b("attn_v.bias"), vec![kv_heads * hd], F32, Kind::Bias);
                t(
                    b("attn_output.weight"),
                    vec![nh * hd, D],
                    o_ty,
                    Kind::Residual,
                );
                t(b("attn_output.bias"), vec![D], F32, Kind::Bias);
                t(b("attn_sinks.weight"), vec![nh], F32, Kind::Sink);
                t(
                    b("post_attention_norm.weight"),
                    vec![D],
                    F32,
                    Kind::NormWeight,
                );
                t(b("ffn_gate_inp.weight"), vec![D, n_exp], F32, Kind::Matrix);
                t(b("ffn_gate_inp.bias"), vec![n_exp], F32, Kind::Bias);
                t(
                    b("ffn_gate_exps.weight"),
                    vec![D, eff, n_exp],
                    MXFP4,
                    Kind::Matrix,
                );
                t(b("ffn_gate_exps.bias"), vec![eff, n_exp], F32, Kind::Bias);
                t(
                    b("ffn_up_exps.weight"),
                    vec![D, eff, n_exp],
                    MXFP4,
                    Kind::Matrix,
                );
                t(b("ffn_up_exps.bias"), vec![eff, n_exp], F32, Kind::Bias);
                t(
                    b("ffn_down_exps.weight"),
                    vec![eff, D, n_exp],
                    MXFP4,
                    Kind::Residual,
                );
                t(b("ffn_down_exps.bias"), vec![D, n_exp], F32, Kind::Bias);
            }
            t("output_norm.weight".into(), vec![D], F32, Kind::NormWeight);
            t("output.weight".into(), vec![D, n_vocab], Q8_0, Kind::Matrix);
        }
        other => panic!("no tiny model for {other}"),
    }
    if let Some((name, shape)) = &edit.extra {
        t(name.to_string(), shape.clone(), F32, Kind::Bias);
    }
    if let Some((key, v)) = edit.key {
        w.set(key, Value::U32(v));
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, mut shape, ty, kind) in tensors {
        if edit.skip == Some(name.as_str()) {
            continue;
        }
        let mut ty = ty;
        if let Some((n, s)) = &edit.reshape {
            if *n == name {
                shape = s.clone();
                ty = F32;
            }
        }
        let n: u64 = shape.iter().product();
        let scale = match kind {
            Kind::NormWeight | Kind::Bias => 0.2,
            Kind::Embedding(s) => s,
            Kind::Matrix => 2.0 * (3.0 / shape[0] as f32).sqrt(),
            Kind::Sink => 4.0,
            Kind::Residual => 0.2 * (3.0 / shape[0] as f32).sqrt(),
        };
        let offset = match kind {
            Kind::NormWeight => 1.0,
            Kind::Sink => 0.5,
            _ => 0.0,
        };
        let values: Vec<f32> = (0..n).map(|_| offset + scale * rng.next()).collect();
        let data = match ty {
            F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => quantize(ty, &values).unwrap(),
        };
        w.add_tensor(&name, ty, &shape, data).unwrap();
    }
    w.to_bytes().unwrap()
}
