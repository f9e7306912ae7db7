//! llama-bench's two throughput tests on a loaded model, the one driver of `cargo xtask bench`
//! and `worker-orcd bench`.
//!
//! The definitions are llama-bench's: `pp` is one batched forward pass over `pp` tokens from
//! an empty context; `tg` is `tg` single-token forward passes from an empty context, each
//! feeding the greedy token of the one before. With a `depth` (llama-bench's `-d`), both start
//! after that many tokens already in the context instead. Our own third test, without a
//! depth: `batch_seqs` sequences decoding `tg` tokens each, one forward pass per step for all
//! of them (a server's continuous batch; llama-bench has no such test). The prompt is fixed
//! pseudo-random ids, as llama-bench's random tokens. Each test runs once to warm up, then
//! `reps` times; the mean is reported. Timing is wall clock around the forward calls, which end with the logits
//! on the host, so device work is inside it.

use std::time::Instant;

use worker_common::argmax;
use worker_compute::ComputeBackend;

use crate::{Batch, LoadOptions, Model, ModelError, SequenceBatch};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchSpec {
    /// Prompt tokens of the prefill test.
    pub pp: usize,
    /// Decode steps of the generation test.
    pub tg: usize,
    /// Timed repetitions of each test, after one warm-up.
    pub reps: usize,
    /// Tokens in the context before each test (prefilled once, untimed: the tests write
    /// positions from `depth` on, so the context stays).
    pub depth: usize,
    /// Sequences of the batched decode test (the server's case): `tg` steps in which each of
    /// them decodes one token, all in one forward pass, from an empty context. Run only
    /// without a depth, and with at least 2.
    pub batch_seqs: usize,
}

/// Rows per forward pass of the untimed prefill of a [`BenchSpec::depth`] context.
const DEPTH_BATCH: usize = 512;

impl BenchSpec {
    /// Positions the tests write (the prefill's, or the decode steps'), after the depth.
    pub fn positions(&self) -> usize {
        self.depth + self.pp.max(self.tg).max(1)
    }

    /// Rows of the largest forward pass: the prefill test's, a piece of the depth, or a
    /// step of the batched decode.
    fn max_batch(&self) -> usize {
        self.pp
            .max(self.depth.min(DEPTH_BATCH))
            .max(self.batched_seqs())
            .max(1)
    }

    /// Sequences of the batched decode test, 0 when it does not run.
    fn batched_seqs(&self) -> usize {
        match (self.depth, self.batch_seqs) {
            (0, n) if n >= 2 => n,
            _ => 0,
        }
    }

    /// Load options that fit the tests: batches of `pp` rows (or pieces of the depth), one
    /// sequence of [`BenchSpec::positions`] positions plus one.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_batch: self.max_batch(),
            max_logit_rows: self.batched_seqs().max(1),
            seqs: self.batched_seqs().max(1),
            max_positions: self.positions() + 1,
            ..LoadOptions::default()
        }
    }
}

/// Where a run is, for a caller that reads counters of its backend around the timed decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A timed `tg` repetition is about to start.
    DecodeStart,
    /// That repetition has ended.
    DecodeEnd,
}

/// Mean throughput of each test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Prefill tokens per second.
    pub pp_tokens_per_s: f64,
    /// Decode tokens per second.
    pub tg_tokens_per_s: f64,
    /// Mean seconds of one decode step.
    pub step_s: f64,
    /// Tokens per second of the batched decode test, all its sequences together (0 when it
    /// did not run).
    pub batched_tokens_per_s: f64,
    /// The last token the decode chose (to go on decoding after the tests).
    pub last_token: u32,
}

/// Runs `spec` on `model`, loaded on `backend` (at least one timed repetition); `mark` is
/// called (outside the timed spans) around every timed decode repetition.
pub fn run<B: ComputeBackend>(
    model: &mut dyn Model,
    backend: &mut B,
    spec: &BenchSpec,
    mut mark: impl FnMut(Mark, &mut B),
) -> Result<Throughput, ModelError> {
    let vocab = model.hparams().vocab_size as usize;
    let mut logits = vec![0f32; vocab];
    let tokens = tokens(spec.depth + spec.pp, vocab);
    let (context, prompt) = tokens.split_at(spec.depth);
    let batch = spec.max_batch();
    for (i, piece) in context.chunks(batch).enumerate() {
        let piece = SequenceBatch::new(piece, (i * batch) as u32, 0, false);
        model.forward(backend, &piece.batch(), &mut logits)?;
    }
    let start = spec.depth as u32;
    let prefill = SequenceBatch::new(prompt, start, 0, false);
    let (mut pp_s, mut tg_s, mut batched_s) = (0f64, 0f64, 0f64);
    let seqs = spec.batched_seqs();
    let mut batched_logits = vec![0f32; seqs * vocab];
    let mut token = 0;
    let reps = spec.reps.max(1);
    for rep in 0..=reps {
        let t = Instant::now();
        if spec.pp > 0 {
            model.forward(backend, &prefill.batch(), &mut logits)?;
        }
        let pp = t.elapsed().as_secs_f64();
        if rep > 0 {
            mark(Mark::DecodeStart, backend);
        }
        let t = Instant::now();
        token = prompt.first().copied().unwrap_or(0);
        for pos in 0..spec.tg as u32 {
            let step = SequenceBatch::new(&[token], start + pos, 0, false);
            model.forward(backend, &step.batch(), &mut logits)?;
            token = argmax(&logits);
        }
        let tg = t.elapsed().as_secs_f64();
        if rep > 0 {
            mark(Mark::DecodeEnd, backend);
        }
        let t = Instant::now();
        if seqs > 0 {
            decode_together(model, backend, seqs, spec.tg, &mut batched_logits)?;
        }
        let batched = t.elapsed().as_secs_f64();
        if rep > 0 {
            pp_s += pp;
            tg_s += tg;
            batched_s += batched;
        }
    }
    let reps = reps as f64;
    let rate = |tokens: usize, s: f64| tokens as f64 * reps / s.max(1e-12);
    Ok(Throughput {
        pp_tokens_per_s: rate(spec.pp, pp_s),
        tg_tokens_per_s: rate(spec.tg, tg_s),
        step_s: tg_s / (reps * spec.tg.max(1) as f64),
        batched_tokens_per_s: match seqs {
            0 => 0.0,
            n => rate(n * spec.tg, batched_s),
        },
        last_token: token,
    })
}

/// `steps` forward passes of one token for each of `seqs` sequences (table rows `0..seqs`,
/// from position 0), each row feeding its own greedy token; `logits` holds `seqs` rows.
fn decode_together<B: ComputeBackend>(
    model: &mut dyn Model,
    backend: &mut B,
    seqs: usize,
    steps: usize,
    logits: &mut [f32],
) -> Result<(), ModelError> {
    let vocab = logits.len() / seqs.max(1);
    let rows: Vec<u32> = (0..seqs as u32).collect();
    // A different first token per sequence.
    let mut step_tokens = tokens(seqs, vocab);
    let mut positions = vec![0; seqs];
    for pos in 0..steps as u32 {
        positions.fill(pos);
        let batch = Batch {
            tokens: &step_tokens,
            positions: &positions,
            seqs: &rows,
            block_table: &[],
            logit_rows: &rows,
        };
        model.forward(backend, &batch, logits)?;
        for (t, row) in step_tokens.iter_mut().zip(logits.chunks_exact(vocab)) {
            *t = argmax(row);
        }
    }
    Ok(())
}

/// `n` fixed pseudo-random ids below `vocab` (xorshift), as llama-bench's random tokens: the
/// tests' context (the depth's tokens) and then the prefill test's prompt.
pub fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab.max(1) as u64) as u32
        })
        .collect()
}
