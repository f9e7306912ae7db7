//! A tiny random-weight llama (2 blocks, width 64) on SmolLM2's tokenizer and chat template,
//! written with our GGUF writer, and corrupted variants of it: model files the binaries must
//! refuse with a clear error, in milliseconds, where a real model would take seconds to copy.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use worker_gguf::{quantize, GgmlType, GgufFile, Value};

/// The metadata and tensors of a model before it is written, for corrupting.
pub struct Parts {
    pub metadata: Vec<(String, Value)>,
    /// Name, ggml shape, storage type.
    pub tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl Parts {
    /// Sets (or adds) a metadata key.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Removes a metadata key.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: &Path) {
        let mut w = worker_gguf::GgufWriter::new();
        for (k, v) in &self.metadata {
            w.set(k, v.clone());
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for (name, shape, ty) in &self.tensors {
            let n: u64 = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
                })
                .collect();
            let data = match ty {
                GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => quantize(*ty, &values).expect("quantize"),
            };
            w.add_tensor(name, *ty, shape, data).expect("tensor");
        }
        w.write_file(path).expect("write model");
    }
}

/// The tiny llama's parts: SmolLM2's `tokenizer.*` keys, 2 blocks of width 64.
pub fn tiny_llama() -> Parts {
    let smol = GgufFile::open(worker_testdata::model(worker_testdata::SMOLLM2)).expect("SmolLM2");
    let mut metadata: Vec<(String, Value)> = smol
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let vocab = smol
        .metadata()
        .get_str_array("tokenizer.ggml.tokens")
        .expect("tokens")
        .len() as u64;
    metadata.push(("general.architecture".into(), Value::String("llama".into())));
    for (k, v) in [
        ("context_length", 256u32),
        ("embedding_length", 64),
        ("block_count", 2),
        ("feed_forward_length", 128),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
    ] {
        metadata.push((format!("llama.{k}"), Value::U32(v)));
    }
    metadata.push((
        "llama.attention.layer_norm_rms_epsilon".into(),
        Value::F32(1e-5),
    ));
    let (d, kv, ff) = (64u64, 32u64, 128u64);
    let mut tensors = vec![(
        "token_embd.weight".to_string(),
        vec![d, vocab],
        GgmlType::F16,
    )];
    for i in 0..2 {
        for (part, shape) in [
            ("attn_norm.weight", vec![d]),
            ("attn_q.weight", vec![d, d]),
            ("attn_k.weight", vec![d, kv]),
            ("attn_v.weight", vec![d, kv]),
            ("attn_output.weight", vec![d, d]),
            ("ffn_norm.weight", vec![d]),
            ("ffn_gate.weight", vec![d, ff]),
            ("ffn_up.weight", vec![d, ff]),
            ("ffn_down.weight", vec![ff, d]),
        ] {
            tensors.push((format!("blk.{i}.{part}"), shape, GgmlType::F32));
        }
    }
    tensors.push(("output_norm.weight".into(), vec![d], GgmlType::F32));
    Parts { metadata, tensors }
}

/// A fresh folder for this test's files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("worker-cpud-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
