//! The loop on a fake model (no fixtures, milliseconds): the model answers every row with
//! "the previous token plus one" (modulo 63) and records each forward call, so tests can check what
//! the scheduler batched, in which order, and what it did with the KV blocks. Slots and the
//! wait queue, cancellation (running, abandoned and still queued), stop strings, batching of
//! decode steps and of prompt chunks, a failing forward call, and the KV pool's limits.

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
    /// A forward call whose batch holds this token fails.
    fail_on: Option<u32>,
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
        if let Some(t) = self.fail_on.filter(|t| batch.tokens.contains(t)) {
            return Err(ModelError::BadBatch(format!(
                "token {t} breaks the fake model"
            )));
        }
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
    let (engine, calls, _) = engine_with_gate(config, false, None);
    (engine, calls)
}

/// [`fake_engine`] whose forward calls each wait for a permit sent on the returned sender.
fn gated_engine(config: EngineConfig) -> (Engine, mpsc::Receiver<Call>, mpsc::Sender<()>) {
    let (engine, calls, gate) = engine_with_gate(config, true, None);
    (engine, calls, gate.unwrap())
}

fn engine_with_gate(
    config: EngineConfig,
    gated: bool,
    fail_on: Option<u32>,
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
        fail_on,
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

/// The text of every token event of `g`, in order, and how it ended.
fn stream(g: Generation) -> (Vec<String>, Result<Completion, EngineError>) {
    let mut texts = Vec::new();
    for event in g {
        match event {
            Event::Token(t) => texts.push(t.text),
            Event::End(c) => return (texts, Ok(c)),
            Event::Error(e) => return (texts, Err(e)),
        }
    }
    (texts, Err(EngineError::ShutDown))
}

#[test]
fn requests_beyond_the_slots_wait_in_order_and_no_call_carries_more_sequences_than_slots() {
    let (engine, calls, gate) = gated_engine(EngineConfig {
        slots: 2,
        ..config()
    });
    // Four one-token prompts that the fake model continues by +1: 1, 11, 21, 31.
    let gens: Vec<Generation> = (0..4)
        .map(|i| engine.submit(request(vec![10 * i + 1], 3)).unwrap())
        .collect();
    permit(&gate, 100);
    for (i, g) in gens.into_iter().enumerate() {
        let start = 10 * i as u32 + 1;
        assert_eq!(
            finish(g).unwrap().ids,
            vec![start + 1, start + 2, start + 3]
        );
    }
    let calls: Vec<Call> = calls.try_iter().collect();
    let prefilled_in = |prompt: u32| {
        calls
            .iter()
            .position(|c| (0..c.tokens.len()).any(|r| c.tokens[r] == prompt && c.positions[r] == 0))
            .unwrap()
    };
    for c in &calls {
        let mut seqs = c.seqs.clone();
        seqs.dedup();
        assert!(seqs.len() <= 2, "more sequences than slots: {c:?}");
        assert!(
            c.seqs.iter().all(|&s| s < 2),
            "a row outside the slots: {c:?}"
        );
    }
    // Admitted in the order they came: the third before the fourth, and neither before one
    // of the first two had ended (3 tokens: its prompt's call and two decode calls).
    assert!(prefilled_in(21) <= prefilled_in(31));
    assert!(prefilled_in(21) >= prefilled_in(1).min(prefilled_in(11)) + 3);
}

#[test]
fn a_request_cancelled_while_queued_ends_cancelled_and_never_runs() {
    let (engine, calls, gate) = gated_engine(EngineConfig {
        slots: 1,
        ..config()
    });
    let running = engine.submit(request(vec![1], 5)).unwrap();
    let queued = engine.submit(request(vec![40], 5)).unwrap();
    queued.cancel();
    permit(&gate, 100);
    let end = finish(queued).unwrap();
    assert_eq!(end.stop_reason, StopReason::Cancelled);
    assert!(end.ids.is_empty() && end.text.is_empty(), "{end:?}");
    assert_eq!(finish(running).unwrap().ids, vec![2, 3, 4, 5, 6]);
    let calls: Vec<Call> = calls.try_iter().collect();
    assert!(
        calls.iter().all(|c| !c.tokens.contains(&40)),
        "the cancelled prompt ran: {calls:?}"
    );
}

#[test]
fn stop_strings_end_the_text_before_them_and_are_never_streamed_even_in_part() {
    let (engine, _calls) = fake_engine(config());
    // Prompt 1 generates 2, 3, 4, 5, … which print as "c", "d", "e", "f", …
    let stopped = |stop: &str, include_stop: bool| {
        let req = GenerationRequest {
            stop: vec!["zz".into(), stop.into()],
            include_stop,
            ..request(vec![1], 10)
        };
        stream(engine.submit(req).unwrap())
    };
    let (texts, end) = stopped("ef", false);
    let end = end.unwrap();
    assert_eq!(end.stop_reason, StopReason::StopSequence("ef".into()));
    assert_eq!((texts.concat().as_str(), end.text.as_str()), ("cd", "cd"));
    assert!(
        texts.iter().all(|t| !t.contains('e')),
        "part of the stop string streamed: {texts:?}"
    );
    assert_eq!(
        end.ids,
        vec![2, 3, 4, 5],
        "the tokens up to the one completing the match"
    );
    let (_, end) = stopped("ef", true);
    assert_eq!(end.unwrap().text, "cdef", "include_stop keeps it");
    // A prefix of a stop string is held back, then let go when the match fails.
    let (texts, end) = stopped("dx", false);
    let end = end.unwrap();
    assert_eq!(end.stop_reason, StopReason::MaxTokens);
    assert_eq!(end.text, "cdefghijkl");
    assert_eq!(texts.concat(), "cdefghijkl");
    assert_eq!(texts[1], "", "'d' waits: it may start \"dx\"");
    assert_eq!(texts[2], "de");
}

#[test]
fn generating_sequences_share_every_decode_call() {
    let (engine, calls, gate) = gated_engine(EngineConfig {
        slots: 3,
        ..config()
    });
    let gens: Vec<Generation> = [1u32, 20, 40]
        .into_iter()
        .map(|p| engine.submit(request(vec![p], 6)).unwrap())
        .collect();
    permit(&gate, 100);
    for (g, p) in gens.into_iter().zip([1u32, 20, 40]) {
        assert_eq!(finish(g).unwrap().ids, (p + 1..p + 7).collect::<Vec<u32>>());
    }
    let calls: Vec<Call> = calls.try_iter().collect();
    // Once all three generate, each call carries exactly one decode row per sequence.
    let shared = calls
        .iter()
        .filter(|c| {
            let mut s = c.seqs.clone();
            s.sort_unstable();
            s == [0, 1, 2] && c.positions.iter().all(|&p| p > 0) && c.logit_rows == 3
        })
        .count();
    assert!(shared >= 4, "{calls:?}");
    let rows: usize = calls.iter().map(|c| c.tokens.len()).sum();
    assert_eq!(
        rows,
        3 * 6,
        "one row per prompt token and per token fed back"
    );
}

#[test]
fn a_failed_forward_call_ends_the_sequences_in_it_and_the_engine_goes_on() {
    let (engine, _calls, _) = engine_with_gate(config(), false, Some(41));
    // 39 generates 40, then feeding 40 gives 41: the call carrying 41 fails.
    let failed = finish(engine.submit(request(vec![39], 10)).unwrap());
    match failed {
        Err(EngineError::Forward(e)) => assert!(e.to_string().contains("token 41"), "{e}"),
        other => panic!("expected a forward error, got {other:?}"),
    }
    let after = finish(engine.submit(request(vec![1], 3)).unwrap());
    assert_eq!(after.unwrap().ids, vec![2, 3, 4]);
    let s = wait_for(&engine, |s| s.blocks_used == 0);
    assert_eq!(s.blocks_used, 0, "the failed sequence gave its blocks back");
}
