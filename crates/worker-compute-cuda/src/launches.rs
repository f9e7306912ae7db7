//! What a model step launches on the GPU, recorded without one.
//!
//! [`Recorder`] is a [`Device`] that keeps no memory and runs nothing: it hands out
//! addresses that name the allocation they belong to and writes down every launch list the
//! backend flushes. Real models (the SmolLM2 and Qwen2.5 fixtures, the tiny phi3, gpt2 and
//! qwen3 models of `worker-models`' tests) run one prefill and one decode step through the
//! backend's own op code on it (the Gemma 3 fixture and the tiny gemma3 and gpt-oss with the
//! experimental `models` path, which they need), and the launch lists (kernel, grid, block, arguments) must
//! equal the files in `tests/launches/`, which were written by the backend that ran on an
//! H200 (see `docs/perf-cuda.md`). So a change to the launches of a step, the fusions
//! included, fails here with the first differing line; when it is meant, and has been
//! checked on a device, `WORKER_BLESS_LAUNCHES=1 cargo test -p worker-compute-cuda
//! launch_lists` rewrites the files and the diff shows what changed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use cudarc::driver::DriverError;
use worker_gguf::GgufFile;
use worker_models::{LoadOptions, SequenceBatch};

use crate::device::{Buffer, Device};
use crate::gemm::Blas;
use crate::launch::Arg;
use crate::queue::Launch;
use crate::{CudaBackend, Experimental};

#[path = "../../worker-models/tests/support/tiny_arch.rs"]
mod tiny_arch;

/// Address bits below an allocation's number: addresses are `(number + 1) << SHIFT`.
const SHIFT: u32 = 40;

/// A device that records what the backend allocates and launches.
#[derive(Default)]
pub(crate) struct Recorder {
    /// Per allocation: its label (`tensor3`: the fourth tensor).
    labels: Vec<String>,
    counts: HashMap<&'static str, usize>,
    /// Bytes allocated, per kind.
    bytes: HashMap<&'static str, u64>,
    /// The launch lists flushed since the last [`Recorder::take`].
    log: Vec<Launch>,
}

impl Device for Recorder {
    fn alloc(&mut self, what: &'static str, bytes: usize) -> Result<Buffer, DriverError> {
        *self.bytes.entry(what).or_default() += bytes as u64;
        let n = self.counts.entry(what).or_default();
        self.labels.push(format!("{}{n}", what.replace(' ', "-")));
        *n += 1;
        Ok(Buffer {
            id: self.labels.len() - 1,
            ptr: (self.labels.len() as u64) << SHIFT,
        })
    }

    fn free(&mut self, _buf: Buffer) {}

    fn upload(&mut self, _dst: Buffer, _offset: usize, _src: &[u8]) -> Result<(), DriverError> {
        Ok(())
    }

    fn download(&mut self, _src: Buffer, dst: &mut [u8]) -> Result<(), DriverError> {
        dst.fill(0);
        Ok(())
    }

    fn run(&mut self, launches: Vec<Launch>) -> Result<(), DriverError> {
        self.log.extend(launches);
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), DriverError> {
        Ok(())
    }

    fn blas(&self) -> Option<&Blas> {
        None
    }

    fn bind(&self) -> Result<(), DriverError> {
        Ok(())
    }
}

impl CudaBackend<Recorder> {
    /// The launches flushed since the last call, one line each.
    pub(crate) fn take(&mut self) -> String {
        let names = crate::kernels::names();
        let mut out = String::new();
        for l in std::mem::take(&mut self.dev.log) {
            let name = names.get(l.func).map_or("?", String::as_str);
            let (g, b) = (l.grid, l.block);
            let _ = write!(
                out,
                "{name} ({},{},{})x({},{},{})",
                g.0, g.1, g.2, b.0, b.1, b.2
            );
            for (i, a) in l.args.as_slice().iter().enumerate() {
                let sep = if i == 0 { ": " } else { ", " };
                let _ = write!(out, "{sep}{}", self.dev.arg(a));
            }
            out.push('\n');
        }
        out
    }
}

impl Recorder {
    /// An argument as the launch list prints it: addresses by allocation and offset.
    fn arg(&self, a: &Arg) -> String {
        match *a {
            Arg::P(0) => "null".into(),
            Arg::P(p) => {
                let id = (p >> SHIFT) as usize;
                let off = p & ((1 << SHIFT) - 1);
                let label = id
                    .checked_sub(1)
                    .and_then(|i| self.labels.get(i))
                    .map_or("?", String::as_str);
                if off == 0 {
                    label.to_string()
                } else {
                    format!("{label}+{off}")
                }
            }
            Arg::I(v) => v.to_string(),
            Arg::L(v) => format!("{v}L"),
            Arg::F(v) => format!("{v:?}f"),
        }
    }
}

/// The sizes every recorded model is loaded with.
const OPTS: LoadOptions = LoadOptions {
    max_batch: 16,
    max_logit_rows: 1,
    seqs: 1,
    max_positions: 32,
    kv_type: worker_compute::KvType::F16,
    kv_cache_bytes: None,
};

/// A prefill of 9 tokens, then one decode step, of `file` on a recording backend with
/// `experimental` on: both launch lists.
fn record(file: &GgufFile, experimental: Experimental) -> String {
    let mut be = CudaBackend::on(Recorder::default(), experimental);
    let mut model = worker_models::load(file, &mut be, OPTS).expect("the model loads");
    let vocab = model.hparams().vocab_size as usize;
    let mut logits = vec![0f32; vocab];
    let mut out = String::new();
    be.take();
    let prompt: Vec<u32> = (1..10).collect();
    let prefill = SequenceBatch::new(&prompt, 0, 0, false);
    model
        .forward(&mut be, &prefill.batch(), &mut logits)
        .expect("the prefill runs");
    out.push_str("# prefill: 9 rows at positions 0..9\n");
    out.push_str(&be.take());
    let step = SequenceBatch::new(&[10], 9, 0, false);
    model
        .forward(&mut be, &step.batch(), &mut logits)
        .expect("the decode step runs");
    out.push_str("# decode: 1 row at position 9\n");
    out.push_str(&be.take());
    out
}

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/launches")
}

/// Compares `got` with the file `name`, or writes it when blessing.
fn check(name: &str, got: &str) -> Result<(), String> {
    let path = snapshot_dir().join(name);
    if std::env::var_os("WORKER_BLESS_LAUNCHES").is_some() {
        std::fs::create_dir_all(snapshot_dir()).expect("creating tests/launches");
        std::fs::write(&path, got).expect("writing a launch list");
        return Ok(());
    }
    let want = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match first_difference(got, &want) {
        None => Ok(()),
        Some((line, g, w)) => Err(format!(
            "{name}, line {line}:\n  recorded: {g}\n  expected: {w}"
        )),
    }
}

/// The first line (from 1) where `got` and `want` differ, and both versions of it.
fn first_difference(got: &str, want: &str) -> Option<(usize, String, String)> {
    let (mut g, mut w) = (got.lines(), want.lines());
    (1..).find_map(|line| match (g.next(), w.next()) {
        (None, None) => Some(None),
        (a, b) if a == b => None,
        (a, b) => Some(Some((
            line,
            a.unwrap_or("(end)").to_string(),
            b.unwrap_or("(end)").to_string(),
        ))),
    })?
}

/// The configurations recorded: the default paths; every experimental path that changes a
/// launch list of these models but `bias` (`gemm` needs cuBLAS, `pdl` changes how lists are
/// submitted, `types` which weights load); and `bias` alone, which only changes groups with
/// biases.
fn configs() -> [(&'static str, Experimental); 3] {
    [
        ("default", Experimental::default()),
        (
            "matvec-attn",
            Experimental {
                matvec: true,
                attn: true,
                ..Experimental::default()
            },
        ),
        (
            "bias",
            Experimental {
                bias: true,
                ..Experimental::default()
            },
        ),
    ]
}

/// The recorded models: the SmolLM2 and Qwen2.5 fixtures, and the tiny phi3, gpt2 and qwen3.
fn models() -> Vec<(String, GgufFile)> {
    let mut models: Vec<(String, GgufFile)> = Vec::new();
    for (name, file) in [
        ("smollm2", worker_testdata::SMOLLM2),
        ("qwen2.5", worker_testdata::QWEN25),
    ] {
        let path = worker_testdata::model(file);
        let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        models.push((name.into(), f));
    }
    for arch in ["phi3", "gpt2", "qwen3"] {
        let vocab = tiny_arch::vocab(arch);
        let bytes = tiny_arch::tiny_model(arch, &vocab, &tiny_arch::Edit::default());
        let f = GgufFile::from_bytes(bytes).expect("a tiny model");
        models.push((format!("tiny-{arch}"), f));
    }
    models
}

/// The models that need the experimental `models` path: the Gemma-3-270M fixture and the
/// tiny gemma3 (sliding windows), and the tiny gpt-oss (MXFP4 experts and `moe`, sinks,
/// windows, YaRN).
fn experimental_models() -> Vec<(String, GgufFile)> {
    let path = worker_testdata::model(worker_testdata::GEMMA3);
    let gemma = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tiny = ["gemma3", "gpt-oss"].into_iter().map(|arch| {
        let vocab = tiny_arch::vocab(arch);
        let bytes = tiny_arch::tiny_model(arch, &vocab, &tiny_arch::Edit::default());
        let f = GgufFile::from_bytes(bytes).expect("a tiny model");
        (format!("tiny-{arch}"), f)
    });
    std::iter::once(("gemma3".to_string(), gemma))
        .chain(tiny)
        .collect()
}

/// The `models` path alone.
fn models_only() -> Experimental {
    Experimental {
        models: true,
        ..Experimental::default()
    }
}

#[test]
fn without_the_models_path_gemma3_and_gpt_oss_are_refused_by_name() {
    for (name, file) in &experimental_models() {
        let mut be = CudaBackend::on(Recorder::default(), Experimental::default());
        let err = match worker_models::load(file, &mut be, OPTS) {
            Err(e) => e.to_string(),
            Ok(mut model) => {
                let mut logits = vec![0f32; model.hparams().vocab_size as usize];
                let prompt: Vec<u32> = (1..10).collect();
                let prefill = SequenceBatch::new(&prompt, 0, 0, false);
                match model.forward(&mut be, &prefill.batch(), &mut logits) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{name} ran without the models path"),
                }
            }
        };
        let want = if name == "tiny-gpt-oss" {
            "MXFP4"
        } else {
            "sliding window"
        };
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn launch_lists_of_real_and_tiny_models_are_unchanged() {
    let mut failures = Vec::new();
    for (name, file) in &models() {
        for (config, experimental) in configs() {
            // SmolLM2's experimental lists add nothing that Qwen's and the tiny ones lack;
            // `bias` changes only Qwen's.
            let recorded = match config {
                "default" => true,
                "bias" => name == "qwen2.5",
                _ => name != "smollm2",
            };
            if !recorded {
                continue;
            }
            let got = record(file, experimental);
            if let Err(e) = check(&format!("{name}.{config}.txt"), &got) {
                failures.push(e);
            }
        }
    }
    for (name, file) in &experimental_models() {
        if let Err(e) = check(&format!("{name}.models.txt"), &record(file, models_only())) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "launch lists differ from tests/launches (rewrite them with WORKER_BLESS_LAUNCHES=1 \
         only for a change checked on a device):\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_load_allocates_what_required_bytes_says() {
    for opts in [
        OPTS,
        LoadOptions {
            max_batch: 64,
            max_logit_rows: 4,
            seqs: 4,
            ..OPTS
        },
    ] {
        let all = models().into_iter().map(|m| (m, Experimental::default()));
        let new = experimental_models()
            .into_iter()
            .map(|m| (m, models_only()));
        for ((name, file), experimental) in all.chain(new) {
            let file = &file;
            let mut be = CudaBackend::on(Recorder::default(), experimental);
            let need = worker_models::required_bytes(file, &opts, &be).expect("the footprint");
            worker_models::load(file, &mut be, opts).expect("the model loads");
            let bytes = |what: &str| be.dev.bytes.get(what).copied().unwrap_or(0);
            assert_eq!(bytes("tensor"), need.activations, "{name}: activations");
            let kv = bytes("kv cache keys") + bytes("kv cache values");
            assert_eq!(kv, need.kv_cache, "{name}: kv cache");
            assert_eq!(
                be.index_host.len() as u64 * 4,
                need.indices,
                "{name}: indices"
            );
            assert_eq!(
                need.weights,
                file.tensors().iter().map(|t| t.n_bytes).sum::<u64>(),
                "{name}: weights"
            );
        }
    }
}

#[test]
fn the_first_differing_line_is_reported() {
    let want = "a (1,1,1)x(32,1,1): tensor0\nb (2,1,1)x(32,1,1): tensor1, 4\n";
    assert_eq!(first_difference(want, want), None);
    let got = "a (1,1,1)x(32,1,1): tensor0\nb (2,1,1)x(32,1,1): tensor1, 5\n";
    let (line, g, w) = first_difference(got, want).expect("a difference");
    assert_eq!(
        (line, g.as_str(), w.as_str()),
        (
            2,
            "b (2,1,1)x(32,1,1): tensor1, 5",
            "b (2,1,1)x(32,1,1): tensor1, 4"
        )
    );
    let (line, g, _) =
        first_difference("a (1,1,1)x(32,1,1): tensor0\n", want).expect("a shorter list");
    assert_eq!((line, g.as_str()), (2, "(end)"));
}
