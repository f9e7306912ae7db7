//! Tiny random-weight models written with the GGUF writer: the factory's errors, and
//! batched prefill against token-by-token decode through the KV cache.

use worker_compute::{CpuBackend, CpuConfig};
use worker_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use worker_models::{load, LoadOptions, ModelError, SequenceBatch};

const D: u64 = 32;
const FF: u64 = 64;
const HEADS: u32 = 4;
const KV_HEADS: u32 = 2;
const VOCAB: u64 = 16;

struct Spec<'a> {
    arch: &'a str,
    skip: Option<&'a str>,
    reshape: Option<(&'a str, Vec<u64>)>,
}

fn tiny(spec: Spec<'_>) -> GgufFile {
    let mut w = GgufWriter::new();
    let a = spec.arch;
    w.set("general.architecture", Value::String(a.into()));
    for (k, v) in [
        ("context_length", 64),
        ("embedding_length", D as u32),
        ("block_count", 2),
        ("feed_forward_length", FF as u32),
        ("attention.head_count", HEADS),
        ("attention.head_count_kv", KV_HEADS),
        ("vocab_size", VOCAB as u32),
    ] {
        w.set(&format!("{a}.{k}"), Value::U32(v));
    }
    w.set(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(1e-5),
    );
    let kv = D / HEADS as u64 * KV_HEADS as u64;
    let mut tensors: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![D, VOCAB]),
        ("output_norm.weight".into(), vec![D]),
    ];
    for i in 0..2 {
        for (n, s) in [
            ("attn_norm.weight", vec![D]),
            ("attn_q.weight", vec![D, D]),
            ("attn_k.weight", vec![D, kv]),
            ("attn_v.weight", vec![D, kv]),
            ("attn_output.weight", vec![D, D]),
            ("ffn_norm.weight", vec![D]),
            ("ffn_gate.weight", vec![D, FF]),
            ("ffn_up.weight", vec![D, FF]),
            ("ffn_down.weight", vec![FF, D]),
        ] {
            tensors.push((format!("blk.{i}.{n}"), s));
        }
    }
    let mut state = 0x1234_5678_9abc_def1u64;
    for (name, mut shape) in tensors {
        if spec.skip == Some(name.as_str()) {
            continue;
        }
        if let Some((n, s)) = &spec.reshape {
            if n == &name {
                shape = s.clone();
            }
        }
        let n: u64 = shape.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let v = if name.contains("norm") {
                    1.0 + v * 0.1
                } else {
                    v * 0.5
                };
                v.to_le_bytes()
            })
            .collect();
        w.add_tensor(&name, GgmlType::F32, &shape, data).unwrap();
    }
    GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
}

fn load_err(spec: Spec<'_>) -> ModelError {
    let file = tiny(spec);
    let mut be = CpuBackend::new(CpuConfig::default());
    match load(&file, &mut be, LoadOptions::default()) {
        Ok(_) => panic!("load succeeded"),
        Err(e) => e,
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let e = load_err(Spec {
        arch: "mamba",
        skip: None,
        reshape: None,
    });
    assert!(matches!(e, ModelError::UnsupportedArchitecture { ref arch, .. } if arch == "mamba"));
    assert!(e.to_string().contains("mamba") && e.to_string().contains("llama"));
}

#[test]
fn missing_tensor_is_named() {
    let e = load_err(Spec {
        arch: "llama",
        skip: Some("blk.1.ffn_down.weight"),
        reshape: None,
    });
    assert!(e.to_string().contains("blk.1.ffn_down.weight"), "{e}");
    assert!(matches!(e, ModelError::MissingTensor { .. }));
}

#[test]
fn wrong_shape_is_named() {
    let e = load_err(Spec {
        arch: "llama",
        skip: None,
        reshape: Some(("blk.0.attn_k.weight", vec![D, D])),
    });
    // Caught before the upload, where the attention sizes are checked against the tensors.
    assert!(e.to_string().contains("blk.0.attn_k.weight"), "{e}");
    assert!(matches!(
        e,
        ModelError::Gguf(worker_gguf::GgufError::TensorMismatch { ref name, .. })
            if name == "blk.0.attn_k.weight"
    ));
}

#[test]
fn qwen2_requires_its_biases() {
    let e = load_err(Spec {
        arch: "qwen2",
        skip: None,
        reshape: None,
    });
    assert!(e.to_string().contains("blk.0.attn_q.bias"), "{e}");
}

/// Prefill of the whole prompt in one batch gives the logits that feeding the tokens one at
/// a time through the KV cache gives, for every position; a second slot is independent.
#[test]
fn batched_prefill_matches_token_by_token_decode() {
    let file = tiny(Spec {
        arch: "llama",
        skip: None,
        reshape: None,
    });
    let mut be = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let opts = LoadOptions {
        max_batch: 8,
        max_logit_rows: 8,
        seqs: 2,
        max_positions: 16,
        kv_type: worker_compute::KvType::F32,
        ..LoadOptions::default()
    };
    let mut m = load(&file, &mut be, opts).unwrap();
    let v = VOCAB as usize;
    let prompt = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let mut all = vec![0f32; prompt.len() * v];
    let batch = SequenceBatch::new(&prompt, 0, 0, true);
    m.forward(&mut be, &batch.batch(), &mut all).unwrap();
    let mut one = vec![0f32; v];
    for (i, &t) in prompt.iter().enumerate() {
        let step = SequenceBatch::new(&[t], i as u32, 1, false);
        m.forward(&mut be, &step.batch(), &mut one).unwrap();
        for (a, b) in one.iter().zip(&all[i * v..(i + 1) * v]) {
            assert!((a - b).abs() < 1e-4, "position {i}: {a} vs {b}");
        }
    }
    // Errors, not panics, for a batch that does not fit.
    let bad = SequenceBatch::new(&[1], 16, 0, false);
    assert!(matches!(
        m.forward(&mut be, &bad.batch(), &mut one),
        Err(ModelError::BadBatch(_))
    ));
    let bad = SequenceBatch::new(&[VOCAB as u32], 0, 0, false);
    assert!(m.forward(&mut be, &bad.batch(), &mut one).is_err());
}

/// The bench driver's tests at a depth start after that context (prefilled in pieces of
/// up to 512 rows): its last decoded token is the one a plain greedy decode gives after the
/// same context, prefilled in one pass.
#[test]
fn the_bench_decodes_after_its_depth() {
    use worker_models::bench::{self, BenchSpec};
    let file = tiny(Spec {
        arch: "llama",
        skip: None,
        reshape: None,
    });
    let spec = BenchSpec {
        pp: 0,
        tg: 5,
        reps: 1,
        depth: 40,
        batch_seqs: 0,
    };
    let backend = || {
        CpuBackend::new(CpuConfig {
            threads: 2,
            ..CpuConfig::default()
        })
    };
    let mut be = backend();
    let mut m = load(&file, &mut be, spec.load_options()).unwrap();
    let got = bench::run(m.as_mut(), &mut be, &spec, |_, _| {}).unwrap();

    let mut be = backend();
    let mut m = load(&file, &mut be, spec.load_options()).unwrap();
    let v = VOCAB as usize;
    let mut logits = vec![0f32; v];
    let context = bench::tokens(spec.depth, v);
    let batch = SequenceBatch::new(&context, 0, 0, false);
    m.forward(&mut be, &batch.batch(), &mut logits).unwrap();
    // The decode test starts from the prefill test's first token; with no prefill test, 0.
    let mut token = 0;
    for pos in spec.depth..spec.depth + spec.tg {
        let step = SequenceBatch::new(&[token], pos as u32, 0, false);
        m.forward(&mut be, &step.batch(), &mut logits).unwrap();
        token = worker_common::argmax(&logits);
    }
    assert_eq!(got.last_token, token);
}

/// The bench's batched decode test fits the load options it asks for (sequences, logit
/// rows, batch rows) and runs only without a depth.
#[test]
fn the_bench_decodes_sequences_together() {
    use worker_models::bench::{self, BenchSpec};
    let file = tiny(Spec {
        arch: "llama",
        skip: None,
        reshape: None,
    });
    for (depth, runs) in [(0, true), (8, false)] {
        let spec = BenchSpec {
            pp: 4,
            tg: 6,
            reps: 1,
            depth,
            batch_seqs: 5,
        };
        let mut be = CpuBackend::new(CpuConfig {
            threads: 2,
            ..CpuConfig::default()
        });
        let mut m = load(&file, &mut be, spec.load_options()).unwrap();
        let t = bench::run(m.as_mut(), &mut be, &spec, |_, _| {}).unwrap();
        assert_eq!(t.batched_tokens_per_s > 0.0, runs, "depth {depth}");
    }
}
