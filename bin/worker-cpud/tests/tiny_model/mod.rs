//! A tiny random-weight llama (2 blocks, width 64) on SmolLM2's tokenizer and chat template,
//! written with our GGUF writer, and corrupted variants of it: model files the binaries must
//! refuse with a clear error, in milliseconds, where a real model would take seconds to copy.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// What `worker-cpud serve` made of a model file.
pub enum Served {
    /// It listens at `base` (`http://…`); kill `child` when done.
    Listening { child: Child, base: String },
    /// It exited: its status code and stderr.
    Exited { code: Option<i32>, stderr: String },
}

/// Starts `serve` on `path` (port 0, one thread, 64 positions) and waits until it listens
/// or exits.
pub fn serve_model(path: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_worker-cpud"))
        .args(["serve", "--port", "0", "--threads", "1", "--ctx-size", "64"])
        .arg("--model")
        .arg(path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let uri = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening on ").map(str::to_string));
        let _ = tx.send(uri);
    });
    match rx.recv_timeout(Duration::from_secs(60)).ok().flatten() {
        Some(base) => Served::Listening { child, base },
        None => {
            let out = child.wait_with_output().expect("wait serve");
            Served::Exited {
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
    }
}
