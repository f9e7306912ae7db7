//! The loop on a fake model (no fixtures, milliseconds): the model answers every row with
//! "the previous token plus one" (modulo 63) and records each forward call, so tests can check what
//! the scheduler batched, in which order, and what it did with the KV blocks.

use std::borrow::Cow;
use std::sync::mpsc;

use worker_compute::{ComputeBackend, CpuBackend, CpuConfig, KvCacheConfig, KvType, KV_BLOCK};
use worker_gguf::{HyperParams, RopeScaling};
use worker_models::LoadOptions;
use worker_tokenizer::{EncodeOptions, TokenId, TokenizerError};

use super::*;
use crate::request::Generation;
use crate::{Engine, EngineConfig, GenerationRequest, Prompt, SamplingConfig};

const VOCAB: usize = 64;
/// The end-of-sequence token, which the fake model never answers.
const EOS: u32 = 63;

/// One recorded forward call.
#[derive(Clone, Debug)]
struct Call {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    seqs: Vec<u32>,
    logit_rows: usize,
}

struct FakeModel {
    hp: HyperParams,
    opts: LoadOptions,
    kv: KvCacheConfig,
    calls: mpsc::Sender<Call>,
    /// When set, each forward call first waits for one permit: the test sets the pace.
    gate: Option<mpsc::Receiver<()>>,
}

impl Model for FakeModel {
    fn hparams(&self) -> &HyperParams {
        &self.hp
    }
    fn options(&self) -> &LoadOptions {
        &self.opts
    }
    fn kv_cache(&self) -> &KvCacheConfig {
        &self.kv
    }
    fn forward(
        &mut self,
        _: &mut dyn ComputeBackend,
        batch: &Batch<'_>,
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        assert!(batch.tokens.len() <= self.opts.max_batch);
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        let _ = self.calls.send(Call {
            tokens: batch.tokens.to_vec(),
            positions: batch.positions.to_vec(),
            seqs: batch.seqs.to_vec(),
            logit_rows: batch.logit_rows.len(),
        });
        logits.fill(0.0);
        for (j, &r) in batch.logit_rows.iter().enumerate() {
            let next = (batch.tokens[r as usize] + 1) % EOS;
            logits[j * VOCAB + next as usize] = 10.0;
        }
        Ok(())
    }
}

/// Every id prints as one lowercase letter.
struct FakeTokenizer;

impl Tokenizer for FakeTokenizer {
    fn encode(&self, text: &str, _: EncodeOptions) -> worker_tokenizer::Result<Vec<TokenId>> {
        Ok(text.bytes().map(|b| u32::from(b) % EOS).collect())
    }
    fn token_bytes(&self, id: TokenId, _: bool) -> worker_tokenizer::Result<Cow<'_, [u8]>> {
        if id as usize >= VOCAB {
            return Err(TokenizerError::TokenOutOfRange {
                id,
                vocab_size: VOCAB,
            });
        }
        Ok(Cow::Owned(vec![b'a' + (id % 26) as u8]))
    }
    fn token_text(&self, _: TokenId) -> worker_tokenizer::Result<&str> {
        Ok("?")
    }
    fn token_id(&self, _: &str) -> Option<TokenId> {
        None
    }
    fn is_special(&self, id: TokenId) -> bool {
        id == EOS
    }
    fn bos(&self) -> Option<TokenId> {
        None
    }
    fn eos(&self) -> Option<TokenId> {
        Some(EOS)
    }
    fn eot(&self) -> Option<TokenId> {
        None
    }
    fn is_eog(&self, id: TokenId) -> bool {
        id == EOS
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn adds_bos(&self) -> bool {
        false
    }
    fn strips_leading_space(&self) -> bool {
        false
    }
}

fn hparams(context: u32) -> HyperParams {
    HyperParams {
        architecture: "fake".into(),
        context_length: context,
        embedding_length: 8,
        block_count: 1,
        feed_forward_length: 8,
        head_count: 1,
        head_count_kv: 1,
        head_dim: 8,
        value_head_dim: 8,
        rope_dimension_count: 8,
        rope_freq_base: 10000.0,
        rope_scaling: RopeScaling::None,
        rms_norm_epsilon: Some(1e-5),
        layer_norm_epsilon: None,
        sliding_window: None,
        experts: None,
        vocab_size: VOCAB as u32,
    }
}

/// An engine on the fake model with `config`'s sizes; the receiver gets every forward call.
fn fake_engine(config: EngineConfig) -> (Engine, mpsc::Receiver<Call>) {
    let (engine, calls, _) = engine_with_gate(config, false);
    (engine, calls)
}

/// [`fake_engine`] whose forward calls each wait for a permit sent on the returned sender.
fn gated_engine(config: EngineConfig) -> (Engine, mpsc::Receiver<Call>, mpsc::Sender<()>) {
    let (engine, calls, gate) = engine_with_gate(config, true);
    (engine, calls, gate.unwrap())
}

fn engine_with_gate(
    config: EngineConfig,
    gated: bool,
) -> (Engine, mpsc::Receiver<Call>, Option<mpsc::Sender<()>>) {
    let (permits, gate) = mpsc::channel();
    let hp = hparams(config.context as u32);
    let opts = config.load_options();
    let kv = opts.kv_cache_config(&hp, KvType::F32, worker_compute::KvLayout::Paged);
    let (tx, rx) = mpsc::channel();
    let model = FakeModel {
        hp,
        opts,
        kv,
        calls: tx,
        gate: gated.then_some(gate),
    };
    let backend = CpuBackend::new(CpuConfig {
        threads: 1,
        ..CpuConfig::default()
    });
    let engine = Engine::new(
        Box::new(model),
        Box::new(backend),
        std::sync::Arc::new(FakeTokenizer),
        &config,
    )
    .unwrap();
    (engine, rx, gated.then_some(permits))
}

/// Lets the gated engine run `n` more forward calls.
fn permit(gate: &mpsc::Sender<()>, n: usize) {
    for _ in 0..n {
        gate.send(()).unwrap();
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        slots: 4,
        context: 256,
        max_batch: 32,
        prefill_chunk: 8,
        ..EngineConfig::default()
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Ids(prompt),
        max_tokens: Some(max_tokens),
        sampling: SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        },
        ..GenerationRequest::new("")
    }
}

/// Waits for the end of `g`: its generated ids, or its error.
fn finish(g: Generation) -> Result<Completion, EngineError> {
    g.wait()
}

/// Waits until the engine has published `done(stats)`.
fn wait_for(engine: &Engine, done: impl Fn(&KvStats) -> bool) -> KvStats {
    for _ in 0..2000 {
        let s = engine.kv_stats();
        if done(&s) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("stats never reached the state: {:?}", engine.kv_stats());
}

#[test]
fn a_long_prompt_is_prefilled_in_budgeted_chunks_beside_a_generating_stream() {
    let (engine, calls, gate) = gated_engine(config());
    // A stream that generates long enough to overlap the prompt below.
    let a = engine.submit(request(vec![1], 40)).unwrap();
    // Let `a` start generating, then send 50 prompt tokens.
    permit(&gate, 1);
    let first = calls.recv().unwrap();
    assert_eq!(first.tokens, vec![1], "a alone: its whole prompt");
    let b = engine.submit(request((2..52).collect(), 1)).unwrap();
    permit(&gate, 100);
    let a_end = finish(a).unwrap();
    let b_end = finish(b).unwrap();
    assert_eq!(a_end.ids, (2..42).collect::<Vec<u32>>());
    assert_eq!(b_end.ids, vec![52]);
    let calls: Vec<Call> = calls.try_iter().collect();
    // a is in slot 0, b in slot 1. Every call carried at most 8 of b's prompt tokens, and
    // while b's prompt ran, every call also carried a's next token.
    let mut b_prompt = Vec::new();
    for c in &calls {
        let b_rows: Vec<u32> = (0..c.seqs.len())
            .filter(|&r| c.seqs[r] == 1)
            .map(|r| c.tokens[r])
            .collect();
        assert!(b_rows.len() <= 8, "{} prompt rows in {c:?}", b_rows.len());
        if !b_rows.is_empty() {
            assert_eq!(c.seqs[0], 0, "a's token comes first: {c:?}");
        }
        b_prompt.extend(b_rows);
    }
    assert_eq!(
        b_prompt,
        (2..52).collect::<Vec<u32>>(),
        "b's prompt, in order, once"
    );
}

#[test]
fn alone_a_prompt_runs_in_whole_batches_and_asks_logits_only_at_its_end() {
    let (engine, calls) = fake_engine(config());
    let end = finish(
        engine
            .submit(request((0..70).map(|i| i % 50).collect(), 2))
            .unwrap(),
    );
    assert_eq!(end.unwrap().ids, vec![20, 21]);
    let calls: Vec<Call> = calls.try_iter().collect();
    let sizes: Vec<(usize, usize)> = calls
        .iter()
        .map(|c| (c.tokens.len(), c.logit_rows))
        .collect();
    assert_eq!(sizes, vec![(32, 0), (32, 0), (6, 1), (1, 1)]);
}

#[test]
fn a_repeated_prompt_reuses_whole_blocks_and_generates_the_same() {
    let (engine, calls) = fake_engine(config());
    let prompt: Vec<u32> = (0..40).map(|i| i % 60).collect();
    let first = finish(engine.submit(request(prompt.clone(), 3)).unwrap()).unwrap();
    assert_eq!(first.timings.cached_tokens, 0);
    let _: Vec<Call> = calls.try_iter().collect();
    let second = finish(engine.submit(request(prompt.clone(), 3)).unwrap()).unwrap();
    assert_eq!(second.ids, first.ids);
    assert_eq!(second.timings.cached_tokens, 2 * KV_BLOCK);
    assert_eq!(second.timings.prompt_tokens, 40 - 2 * KV_BLOCK);
    let calls: Vec<Call> = calls.try_iter().collect();
    assert_eq!(
        calls[0].positions[0] as usize,
        2 * KV_BLOCK,
        "starts after the hit"
    );
    let s = wait_for(&engine, |s| s.blocks_used == 0);
    assert_eq!(s.cached_prompt_tokens, 32);
    assert_eq!(s.prompt_tokens, 80);
    assert!(s.blocks_cached >= 2);
}

#[test]
fn cancelled_and_abandoned_requests_give_back_exactly_their_blocks() {
    let (engine, calls, gate) = gated_engine(EngineConfig {
        max_batch: 64,
        ..config()
    });
    let shared: Vec<u32> = (0..48).collect();
    // A long-running holder of the shared prefix (all 48 tokens in the first call)...
    let holder = engine.submit(request(shared.clone(), 200)).unwrap();
    permit(&gate, 1);
    assert_eq!(calls.recv().unwrap().tokens.len(), 48);
    // ...then two requests sharing it, run beside it: one is cancelled, the other's
    // receiver is dropped.
    let mut p = shared.clone();
    p.extend([5, 6, 7]);
    let c = engine.submit(request(p.clone(), 200)).unwrap();
    let d = engine.submit(request(p, 200)).unwrap();
    let turn = loop {
        permit(&gate, 1);
        let call = calls.recv().unwrap();
        if call.tokens.len() > 1 {
            break call;
        }
    };
    // The holder's token, then only the 3 tokens after the shared blocks of c (and of d,
    // unless it came a turn later).
    for seq in 1..3 {
        let rows = turn.seqs.iter().filter(|&&s| s == seq).count();
        assert!(rows == 3 || (seq == 2 && rows == 0), "{turn:?}");
    }
    // c and d took the holder's 3 blocks each.
    wait_for(&engine, |s| s.cached_prompt_tokens == 2 * 48);
    c.cancel();
    drop(d);
    holder.cancel();
    permit(&gate, 100);
    let s = wait_for(&engine, |s| s.blocks_used == 0);
    assert!(s.blocks_cached > 0, "sealed blocks stay cached: {s:?}");
    // The pool is whole again: a request needing every block of a slot's context fits.
    let long = finish(
        engine
            .submit(request((0..250).map(|i| i % 60).collect(), 1))
            .unwrap(),
    );
    assert!(long.is_ok(), "{long:?}");
}

#[test]
fn an_exhausted_pool_ends_only_the_sequence_that_found_no_block() {
    // 8 blocks of 16 positions: two 60-token prompts (4 blocks each) fit, their 5th block
    // does not.
    // Gated, so that a cannot finish before b is admitted.
    let (engine, _calls, gate) = gated_engine(EngineConfig {
        kv_cache_bytes: Some(8 * 2 * 8 * 4 * KV_BLOCK as u64),
        prefix_cache: false,
        ..config()
    });
    let a = engine.submit(request((0..60).collect(), 20)).unwrap();
    let b = engine.submit(request((1..61).collect(), 20)).unwrap();
    permit(&gate, 200);
    let results = [finish(a), finish(b)];
    let failed = results
        .iter()
        .filter(|r| matches!(r, Err(EngineError::KvCacheFull)))
        .count();
    assert_eq!(failed, 1, "{results:?}");
    let ok = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert_eq!(
        ok.ids.len(),
        20,
        "the other one goes on with the freed blocks"
    );
    wait_for(&engine, |s| s.blocks_used == 0);
}

#[test]
fn a_prompt_waits_for_blocks_held_by_running_sequences() {
    let (engine, _calls) = fake_engine(EngineConfig {
        kv_cache_bytes: Some(8 * 2 * 8 * 4 * KV_BLOCK as u64),
        prefix_cache: false,
        ..config()
    });
    assert_eq!(
        engine.info().context,
        8 * KV_BLOCK,
        "no sequence is longer than the pool"
    );
    let a = engine
        .submit(request((0..90).map(|i| i % 50).collect(), 5))
        .unwrap(); // 6 blocks
    let b = engine.submit(request((1..61).collect(), 5)).unwrap(); // 4 blocks: waits
    assert_eq!(finish(a).unwrap().ids.len(), 5);
    assert_eq!(finish(b).unwrap().ids.len(), 5);
    let too_long = engine.submit(request(vec![1; 200], 1));
    assert!(matches!(too_long, Err(EngineError::PromptTooLong { .. })));
    // Alone, a sequence that outgrows the pool ends as at the end of its context.
    let long = finish(engine.submit(request(vec![1; 100], 100)).unwrap()).unwrap();
    assert_eq!(long.stop_reason, StopReason::ContextFull);
    // 28 tokens fill the pool's 128 positions; the 29th is sampled from the last of them.
    assert_eq!(long.ids.len(), 8 * KV_BLOCK - 100 + 1);
}
