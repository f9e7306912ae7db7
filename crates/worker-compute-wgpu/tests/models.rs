//! Real models on the wgpu backend against the CPU backend (f32 activations, the same f16 KV
//! cache): the logits of every prompt row after a batched prefill (the tiled mat-mul), then
//! greedy continuations decoded one token at a time (the mat-vec), each backend feeding its
//! own tokens. The continuations must be equal, or first differ where the CPU's top two
//! logits are a near-tie, which rounding may flip.
//!
//! Tolerances: both backends run f32 arithmetic on the same stored weights and round keys
//! and values to f16 for the cache; summation order alone moves a logit by about 1e-6
//! relative, but a key that lands on the other side of an f16 rounding boundary moves by a
//! whole f16 step (2^-11 relative) and carries that into every later layer. Measured on
//! lavapipe: normalized squared errors of 5e-9 to 7e-8 (largest absolute differences 2e-3
//! to 6e-3 on logits of magnitude 10 to 30). The bound, 1e-6, is ten times the largest; a
//! wrong kernel gives errors of order 1. A near-tie is a gap below [`NEAR_TIE`] between the
//! two tokens' CPU logits, ten times the largest absolute difference measured.
//!
//! Lavapipe is slow (a decode step of Qwen2.5 takes seconds), so prompts are short and the
//! continuations a few tokens: CI runs this file.

mod support;

use support::{cpu, gpu, nmse};
use worker_common::argmax;
use worker_compute::ComputeBackend;
use worker_gguf::GgufFile;
use worker_models::{load, LoadOptions, Model, SequenceBatch};
use worker_tokenizer::EncodeOptions;

const LOGITS_NMSE: f64 = 1e-6;
/// Logit gap under which a flipped greedy token is rounding, not a bug.
const NEAR_TIE: f32 = 0.06;

/// A model loaded on one backend.
struct Run {
    be: Box<dyn ComputeBackend>,
    model: Box<dyn Model>,
}

impl Run {
    fn forward(&mut self, b: &SequenceBatch, out: &mut [f32]) {
        self.model
            .forward(self.be.as_mut(), &b.batch(), out)
            .unwrap_or_else(|e| panic!("{} backend: {e}", self.be.name()));
    }
}

fn compare(name: &str, prompt: &str, steps: usize) {
    let started = std::time::Instant::now();
    let path = worker_testdata::model(name);
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = worker_tokenizer::from_gguf(file.metadata()).unwrap();
    let ids = tok.encode(prompt, EncodeOptions::PROMPT).unwrap();
    let opts = LoadOptions {
        max_batch: ids.len(),
        max_logit_rows: ids.len(),
        max_positions: ids.len() + steps + 1,
        ..LoadOptions::default()
    };
    let mut runs = [Box::new(cpu()) as Box<dyn ComputeBackend>, Box::new(gpu())].map(|mut be| {
        let model = load(&file, be.as_mut(), opts).unwrap();
        Run { be, model }
    });
    let vocab = runs[0].model.hparams().vocab_size as usize;
    // Prefill, logits of every row.
    let all = SequenceBatch::new(&ids, 0, 0, true);
    let mut want = vec![0f32; ids.len() * vocab];
    let mut got = want.clone();
    runs[0].forward(&all, &mut want);
    runs[1].forward(&all, &mut got);
    let e = nmse(&got, &want);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{name}: prefill of {} tokens: logits nmse {e:.2e}, max abs {worst:.2e}",
        ids.len()
    );
    assert!(e <= LOGITS_NMSE, "{name}: prefill logits nmse {e:.3e}");
    // Greedy, each backend on its own tokens, from the last prompt row's logits.
    let mut logits = [
        want[(ids.len() - 1) * vocab..].to_vec(),
        got[(ids.len() - 1) * vocab..].to_vec(),
    ];
    let mut tokens: [Vec<u32>; 2] = Default::default();
    for s in 0..steps {
        let (c, g) = (argmax(&logits[0]), argmax(&logits[1]));
        if c != g {
            let gap = (logits[0][c as usize] - logits[0][g as usize]).abs();
            eprintln!("{name}: step {s}: cpu {c}, wgpu {g}, cpu logit gap {gap:.4}");
            assert!(
                gap < NEAR_TIE,
                "{name}: greedy step {s} differs (cpu {c}, wgpu {g}) with a cpu logit gap of {gap}"
            );
            return;
        }
        let e = nmse(&logits[1], &logits[0]);
        assert!(e <= LOGITS_NMSE, "{name}: step {s}: logits nmse {e:.3e}");
        for (run, (t, l)) in runs
            .iter_mut()
            .zip(tokens.iter_mut().zip(logits.iter_mut()))
        {
            t.push(c);
            let b = SequenceBatch::new(&[c], (ids.len() + s) as u32, 0, false);
            run.forward(&b, l);
        }
    }
    eprintln!(
        "{name}: {steps} greedy tokens equal: {:?} ({:.1} s)",
        tokens[0],
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn smollm2_logits_and_greedy_tokens_match_the_cpu() {
    compare(
        worker_testdata::SMOLLM2,
        "The capital of France is Paris. The capital of Germany is",
        8,
    );
}

#[test]
fn qwen25_logits_and_greedy_tokens_match_the_cpu() {
    compare(worker_testdata::QWEN25, "def fibonacci(n):", 4);
}

#[test]
fn gemma3_logits_and_greedy_tokens_match_the_cpu() {
    compare(worker_testdata::GEMMA3, "Roses are red, violets are", 3);
}
