//! Our logits against the independent numpy reference in `tests/golden/logits/`, made by
//! `scripts/goldens/make_logits_goldens.py` (float64 numpy over gguf-py's dequantized
//! weights; it shares no code with this workspace).
//!
//! Compared per position: a strided subsample of the logits plus the reference top-10.
//! Thresholds are the measured numbers (see `BOUNDS`) with headroom, so a regression in any
//! kernel, the rope layout or the attention shows up.

#[path = "support/logits.rs"]
mod logits;

use logits::{golden, Bound, Stats};
use worker_compute::{Activations, CpuBackend, CpuConfig};
use worker_gguf::GgufFile;
use worker_models::{load, LoadOptions, SequenceBatch};

fn compare(model: &str, golden_name: &str, config: CpuConfig) -> Stats {
    let g = golden("logits", golden_name);
    let file = GgufFile::open(worker_testdata::model(model)).unwrap();
    let st = logits::compare(&file, config, &g);
    eprintln!(
        "{model} {:?}/{:?}: max abs err {:.4}, min cosine {:.6}, top-1 agreement {}/{}",
        config.kernels, config.activations, st.max_abs, st.min_cos, st.top1_agree, st.positions
    );
    st
}

/// Bounds per (model, activations) on the max abs error and the minimum cosine over every
/// position of every golden prompt (25 positions for SmolLM2, 23 for Qwen), and on how many
/// positions pick the reference's top-1 token. Each is checked with the detected SIMD
/// kernels and with the scalar reference kernels. Measured (AVX-512 machine, 2 threads):
///
/// | model   | activations | kernels | max abs err | min cosine | top-1 |
/// |---------|-------------|---------|-------------|------------|-------|
/// | SmolLM2 | f32         | both    | 0.0001      | 1.000000   | 25/25 |
/// | SmolLM2 | Q8          | AVX-512 | 2.4753      | 0.984154   | 22/25 |
/// | SmolLM2 | Q8          | scalar  | 1.6525      | 0.995236   | 23/25 |
/// | Qwen2.5 | f32         | both    | 0.0001      | 1.000000   | 23/23 |
/// | Qwen2.5 | Q8          | AVX-512 | 0.5349      | 0.997492   | 23/23 |
/// | Qwen2.5 | Q8          | scalar  | 0.6940      | 0.987215   | 23/23 |
///
/// The f32 path agrees to the rounding of the goldens (4-5 decimals), which checks every
/// dequantizer, the rope layout, GQA attention and the tied output. The Q8 path (activations
/// quantized per 32/256 values, as llama.cpp) typically costs 0.4-0.7 in max abs error with
/// cosine > 0.999 on the text prompts; the worst positions are in the arbitrary-id "raw"
/// prompts, where the result even depends on the f32 summation order (scalar vs SIMD): a
/// rounding flip in one layer's 8-bit activations propagates. Bounds: f32 1e-3; Q8 about
/// 1.5x the worst measured error and 2-3x its cosine gap.
fn check(model: &str, golden_name: &str, activations: Activations, b: Bound) {
    logits::check_bounds(model, activations, &b, |config| {
        compare(model, golden_name, config)
    });
}

#[test]
fn smollm2_logits_match_reference_with_q8_activations() {
    check(
        worker_testdata::SMOLLM2,
        "smollm2",
        Activations::Q8,
        Bound {
            max_abs: 4.0,
            min_cos: 0.97,
            min_top1: 21,
        },
    );
}

#[test]
fn smollm2_logits_match_reference_with_f32_activations() {
    check(
        worker_testdata::SMOLLM2,
        "smollm2",
        Activations::F32,
        Bound {
            max_abs: 1e-3,
            min_cos: 0.999_999,
            min_top1: 25,
        },
    );
}

#[test]
fn qwen25_logits_match_reference_with_q8_activations() {
    check(
        worker_testdata::QWEN25,
        "qwen25",
        Activations::Q8,
        Bound {
            max_abs: 1.2,
            min_cos: 0.97,
            min_top1: 21,
        },
    );
}

#[test]
fn qwen25_logits_match_reference_with_f32_activations() {
    check(
        worker_testdata::QWEN25,
        "qwen25",
        Activations::F32,
        Bound {
            max_abs: 1e-3,
            min_cos: 0.999_999,
            min_top1: 23,
        },
    );
}

/// Gemma-3-270M against llama.cpp's own logits (`gemma3-llama-cpp.json`, from
/// `scripts/goldens/make_greedy_goldens.py`, f32 KV cache) on the first five greedy prompts
/// as llama.cpp tokenized them. llama.cpp quantizes activations to 8 bits for the quantized
/// weights, so both our paths differ from it by rounding. Measured over the 42 positions
/// (2-core AVX2 machine, 2 threads):
///
/// | activations | kernels  | max abs err | min cosine | top-1 |
/// |-------------|----------|-------------|------------|-------|
/// | f32         | both     | 1.2363      | 0.996251   | 42/42 |
/// | Q8          | detected | 1.4310      | 0.995421   | 42/42 |
/// | Q8          | scalar   | 1.2569      | 0.993848   | 41/42 |
///
/// Gemma's logits on these prompts span -28.7..27.6 (std about 4.6), so the worst errors are
/// about 2% of the range. Bounds:
/// about 1.4x the worst error and 2x its cosine gap. The tiny gemma3 in `tiny_arch.rs`
/// checks the graph to 5e-5 against numpy float64.
/// (max abs, min cosine, top-1) bounds; see [`check_gemma3`].
const GEMMA3_Q8: (f32, f64, usize) = (2.0, 0.985, 39);
const GEMMA3_F32: (f32, f64, usize) = (1.8, 0.99, 40);

fn check_gemma3(activations: Activations, b: Bound) {
    logits::check_bounds("gemma3 vs llama.cpp", activations, &b, |config| {
        compare(worker_testdata::GEMMA3, "gemma3-llama-cpp", config)
    });
}

#[test]
fn gemma3_logits_match_llama_cpp_with_q8_activations() {
    check_gemma3(
        Activations::Q8,
        Bound {
            max_abs: GEMMA3_Q8.0,
            min_cos: GEMMA3_Q8.1,
            min_top1: GEMMA3_Q8.2,
        },
    );
}

#[test]
fn gemma3_logits_match_llama_cpp_with_f32_activations() {
    check_gemma3(
        Activations::F32,
        Bound {
            max_abs: GEMMA3_F32.0,
            min_cos: GEMMA3_F32.1,
            min_top1: GEMMA3_F32.2,
        },
    );
}

/// SmolLM2 on "The capital of France is" predicts " Paris". The ids are the vocabulary
/// pieces `The`, `Ġcapital`, `Ġof`, `ĠFrance`, `Ġis` (checked against the file's own token
/// list below, so no tokenizer is involved).
#[test]
fn smollm2_greedy_predicts_paris() {
    let file = GgufFile::open(worker_testdata::model(worker_testdata::SMOLLM2)).unwrap();
    let vocab = file
        .metadata()
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap();
    let ids = [504u32, 3575, 282, 4649, 314];
    let pieces: Vec<&str> = ids.iter().map(|&i| vocab[i as usize].as_str()).collect();
    assert_eq!(pieces, ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]);
    let mut backend = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let mut m = load(&file, &mut backend, LoadOptions::default()).unwrap();
    let mut logits = vec![0f32; m.hparams().vocab_size as usize];
    let batch = SequenceBatch::new(&ids, 0, 0, false);
    m.forward(&mut backend, &batch.batch(), &mut logits)
        .unwrap();
    let next = worker_common::argmax(&logits) as usize;
    assert_eq!(vocab[next], "ĠParis", "predicted token {next}");
}
