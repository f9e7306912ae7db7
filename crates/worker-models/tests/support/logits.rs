//! Our logits against a golden file of reference logits (numpy or llama.cpp): per position a
//! strided subsample of the vocabulary plus the reference's top-10.

use serde_json::Value;
use worker_common::argmax;
use worker_compute::{Activations, CpuBackend, CpuConfig, KernelChoice};
use worker_gguf::GgufFile;
use worker_models::{load, LoadOptions, SequenceBatch};

/// The worst agreement over every compared position.
pub struct Stats {
    pub max_abs: f32,
    pub min_cos: f64,
    pub top1_agree: usize,
    pub positions: usize,
}

/// `tests/golden/{dir}/{name}.json`.
pub fn golden(dir: &str, name: &str) -> Value {
    let path = format!(
        "{}/../../tests/golden/{dir}/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The load options that run each prompt of golden `g` in one batch with logits at every
/// position, on an f32 KV cache.
pub fn options(g: &Value) -> LoadOptions {
    let longest = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ids"].as_array().unwrap().len())
        .max()
        .unwrap();
    LoadOptions {
        max_batch: longest,
        max_logit_rows: longest,
        seqs: 1,
        max_positions: 64,
        kv_type: worker_compute::KvType::F32,
        ..LoadOptions::default()
    }
}

/// Runs every prompt of golden `g` through the model of `file` on a CPU backend built from
/// `config` (all positions of a prompt in one batch) and compares the logits.
pub fn compare(file: &GgufFile, config: CpuConfig, g: &Value) -> Stats {
    let mut backend = CpuBackend::new(config);
    let prompts = g["prompts"].as_array().unwrap();
    let mut m = load(file, &mut backend, options(g)).unwrap();
    let vocab = m.hparams().vocab_size as usize;
    assert_eq!(vocab as u64, g["n_vocab"].as_u64().unwrap());
    let stride = g["subsample_stride"].as_u64().unwrap() as usize;
    let mut st = Stats {
        max_abs: 0.0,
        min_cos: 1.0,
        top1_agree: 0,
        positions: 0,
    };
    for p in prompts {
        let ids = u32s(&p["ids"]);
        let batch = SequenceBatch::new(&ids, 0, 0, true);
        let mut logits = vec![0f32; ids.len() * vocab];
        m.forward(&mut backend, &batch.batch(), &mut logits)
            .unwrap();
        for (t, pos) in p["positions"].as_array().unwrap().iter().enumerate() {
            let ours = &logits[t * vocab..(t + 1) * vocab];
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for (j, r) in f32s(&pos["subsample"]).iter().enumerate() {
                let o = ours[j * stride];
                st.max_abs = st.max_abs.max((o - r).abs());
                dot += o as f64 * *r as f64;
                na += o as f64 * o as f64;
                nb += *r as f64 * *r as f64;
            }
            st.min_cos = st.min_cos.min(dot / (na.sqrt() * nb.sqrt()));
            let top = u32s(&pos["top_ids"]);
            for (id, r) in top.iter().zip(f32s(&pos["top_logits"])) {
                st.max_abs = st.max_abs.max((ours[*id as usize] - r).abs());
            }
            st.top1_agree += usize::from(argmax(ours) == top[0]);
            st.positions += 1;
        }
    }
    st
}

/// Limits on [`Stats`]: the largest max abs error, the smallest cosine, the fewest positions
/// whose argmax is the reference's top-1.
pub struct Bound {
    pub max_abs: f32,
    pub min_cos: f64,
    pub min_top1: usize,
}

/// Runs `compare` with the detected SIMD kernels and with the scalar ones (2 threads,
/// `activations`) and asserts `b` on each.
pub fn check_bounds(
    what: &str,
    activations: Activations,
    b: &Bound,
    compare: impl Fn(CpuConfig) -> Stats,
) {
    for kernels in [KernelChoice::Detect, KernelChoice::Scalar] {
        let config = CpuConfig {
            threads: 2,
            kernels,
            activations,
        };
        let st = compare(config);
        assert!(
            st.max_abs <= b.max_abs && st.min_cos >= b.min_cos && st.top1_agree >= b.min_top1,
            "{what} {kernels:?}/{activations:?}: max abs {} (bound {}), min cos {} (bound {}), \
             top-1 {}/{} (bound {})",
            st.max_abs,
            b.max_abs,
            st.min_cos,
            b.min_cos,
            st.top1_agree,
            st.positions,
            b.min_top1
        );
    }
}
