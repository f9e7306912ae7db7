//! The engine on the real SmolLM2-135M model: greedy output, every stop reason, cancellation,
//! reproducibility, streaming, batched decoding of several sequences, and request errors.

use std::sync::OnceLock;

use worker_compute::{CpuBackend, CpuConfig};
use worker_engine::{
    Completion, Engine, EngineConfig, EngineError, Event, GenerationRequest, Prompt,
    SamplingConfig, StopReason,
};

const PROMPT: &str = "The capital of France is";

fn load(config: EngineConfig) -> Engine {
    let path = worker_testdata::model(worker_testdata::SMOLLM2);
    let file = worker_gguf::GgufFile::open(&path).expect("open SmolLM2");
    let backend = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    Engine::load(&file, Box::new(backend), config).expect("load SmolLM2")
}

/// One engine with several slots, shared by the tests (they run concurrently, so their
/// sequences are decoded together in batches).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        load(EngineConfig {
            slots: 4,
            context: 512,
            max_batch: 64,
            ..EngineConfig::default()
        })
    })
}

fn request(prompt: &str, temperature: f32, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        sampling: SamplingConfig {
            temperature,
            seed: 42,
            ..SamplingConfig::default()
        },
        max_tokens: Some(max_tokens),
        ..GenerationRequest::new(prompt)
    }
}

/// Runs `req` to its end; returns the concatenated streamed text and the completion.
fn run(engine: &Engine, req: GenerationRequest) -> (String, Completion) {
    let mut streamed = String::new();
    let mut ids = Vec::new();
    let mut terminal = 0;
    let mut end = None;
    for event in engine.submit(req).expect("request accepted") {
        assert_eq!(terminal, 0, "an event after the terminal event");
        match event {
            Event::Token(t) => {
                streamed.push_str(&t.text);
                ids.push(t.id);
            }
            Event::End(c) => {
                terminal += 1;
                end = Some(c);
            }
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    let end = end.expect("a terminal event");
    assert_eq!(ids, end.ids, "one token event per generated id");
    streamed.push_str(&end.tail);
    (streamed, end)
}

#[test]
fn greedy_capital_of_france_is_paris() {
    let (text, end) = run(engine(), request(PROMPT, 0.0, 4));
    assert!(text.starts_with(" Paris"), "{text:?}");
    assert_eq!(end.text, text);
    assert_eq!(end.stop_reason, StopReason::MaxTokens);
    // No BOS: SmolLM2's metadata does not ask for one.
    assert_eq!(end.prompt_ids, [504, 3575, 282, 4649, 314]);
    assert_eq!(end.timings.prompt_tokens, 5);
    assert_eq!(end.timings.decode_steps, 3);
}

#[test]
fn max_tokens_counts_generated_tokens() {
    for max in [1, 3, 7] {
        let (_, end) = run(engine(), request(PROMPT, 0.0, max));
        assert_eq!(end.ids.len(), max);
        assert_eq!(end.stop_reason, StopReason::MaxTokens);
    }
}

#[test]
fn stop_string_split_across_tokens_ends_generation_unseen() {
    // Greedy gives " Paris.\n\nThe United States …"; "ris." spans the tokens " Paris" and ".".
    for (stop, before) in [("ris.", " Pa"), ("United", " Paris.\n\nThe ")] {
        let mut req = request(PROMPT, 0.0, 24);
        req.stop = vec!["never".into(), stop.into()];
        let (text, end) = run(engine(), req);
        assert_eq!(end.stop_reason, StopReason::StopSequence(stop.into()));
        assert_eq!(end.stop_reason.as_str(), "stop_sequence");
        assert_eq!(text, before);
        assert_eq!(end.text, before);
        assert!(!text.contains(stop));
    }
}

#[test]
fn cancel_ends_with_cancelled() {
    let mut req = request(PROMPT, 0.8, 0);
    req.max_tokens = None;
    let mut generation = engine().submit(req).unwrap();
    let mut tokens = 0;
    let end = loop {
        match generation.next_event().expect("a terminal event") {
            Event::Token(_) => {
                tokens += 1;
                if tokens == 2 {
                    generation.cancel();
                }
            }
            Event::End(c) => break c,
            Event::Error(e) => panic!("{e}"),
        }
    };
    assert_eq!(end.stop_reason, StopReason::Cancelled);
    // The engine notices within one decode step.
    assert!(end.ids.len() <= 3, "{} tokens after cancel", end.ids.len());
    assert!(generation.next_event().is_none());
}

#[test]
fn dropping_the_receiver_frees_the_slot() {
    // More abandoned requests than slots: if a dropped receiver did not cancel, the slots
    // would stay busy generating to the end of the context, and this would take minutes.
    for _ in 0..6 {
        let mut req = request(PROMPT, 0.8, 0);
        req.max_tokens = None;
        drop(engine().submit(req).unwrap());
    }
    let (text, _) = run(engine(), request(PROMPT, 0.0, 2));
    assert!(text.starts_with(" Paris"));
}

#[test]
fn same_seed_same_tokens() {
    let a = run(engine(), request(PROMPT, 0.8, 12)).1;
    let b = run(engine(), request(PROMPT, 0.8, 12)).1;
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.text, b.text);
}

/// The same seed gives the same tokens whatever the thread count: each dot product is summed
/// by one thread, so threads change who computes a value, never how.
#[test]
fn same_seed_same_tokens_across_thread_counts() {
    let one_thread = Engine::load(
        &worker_gguf::GgufFile::open(worker_testdata::model(worker_testdata::SMOLLM2)).unwrap(),
        Box::new(CpuBackend::new(CpuConfig {
            threads: 1,
            ..CpuConfig::default()
        })),
        EngineConfig {
            slots: 1,
            context: 128,
            max_batch: 64,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    for seed in [7, 8] {
        let mut req = request("Once upon a time", 0.8, 16);
        req.sampling.seed = seed;
        let a = run(&one_thread, req.clone()).1;
        let b = run(engine(), req).1;
        assert_eq!(a.ids, b.ids, "seed {seed}: 1 thread vs 2 threads");
    }
}

#[test]
fn streamed_text_is_the_final_text() {
    for seed in 0..3 {
        let mut req = request("Once upon a time, in a small village", 1.0, 16);
        req.sampling.seed = seed;
        req.stop = vec!["the".into()];
        req.logprobs = Some(2);
        let (streamed, end) = run(engine(), req);
        assert_eq!(streamed, end.text, "seed {seed}");
    }
}

#[test]
fn logprobs_come_with_each_token() {
    let mut req = request(PROMPT, 0.0, 2);
    req.logprobs = Some(3);
    for event in engine().submit(req).unwrap() {
        if let Event::Token(t) = event {
            let lp = t.logprob.expect("a logprob");
            assert!(lp <= 0.0 && lp.is_finite());
            assert_eq!(t.top_logprobs.len(), 3);
            assert_eq!(
                t.top_logprobs[0].0, t.id,
                "greedy picks the most likely token"
            );
        }
    }
}

#[test]
fn concurrent_sequences_decode_like_single_ones() {
    let prompts = [
        PROMPT,
        "def fibonacci(n):",
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run(engine(), request(p, 0.0, 8)).1.ids)
        .collect();
    let together: Vec<_> = prompts
        .iter()
        .map(|p| engine().submit(request(p, 0.0, 8)).unwrap())
        .collect();
    for (generation, want) in together.into_iter().zip(alone) {
        assert_eq!(generation.wait().unwrap().ids, want);
    }
}

#[test]
fn special_tokens_in_the_prompt_are_parsed() {
    let ids = engine()
        .tokenize_prompt("<|im_start|>user")
        .expect("tokenize");
    let im_start = engine().tokenizer().token_id("<|im_start|>").unwrap();
    assert_eq!(ids[0], im_start);
}

#[test]
fn eos_ends_a_chat_turn() {
    let prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n";
    let (_, end) = run(engine(), request(prompt, 0.0, 64));
    assert_eq!(end.stop_reason, StopReason::Eos, "{:?}", end.text);
}

#[test]
fn ignore_eos_and_min_tokens_keep_a_finished_turn_going() {
    let prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n";
    let (_, natural) = run(engine(), request(prompt, 0.0, 64));
    assert_eq!(natural.stop_reason, StopReason::Eos);
    let n = natural.ids.len();
    // Until min_tokens the end of the turn cannot be chosen; the first n tokens are the
    // same (the ban changes nothing before the model wanted to stop).
    let mut req = request(prompt, 0.0, 64);
    req.min_tokens = n + 3;
    let (_, longer) = run(engine(), req);
    assert!(
        longer.ids.len() >= n + 3,
        "{} < {}",
        longer.ids.len(),
        n + 3
    );
    assert_eq!(longer.ids[..n], natural.ids[..]);
    // ignore_eos runs to max_tokens, and no end-of-generation token is in the output.
    let mut req = request(prompt, 0.0, n + 5);
    req.ignore_eos = true;
    let (_, ignored) = run(engine(), req);
    assert_eq!(ignored.stop_reason, StopReason::MaxTokens);
    assert_eq!(ignored.ids.len(), n + 5);
    let tok = engine().tokenizer();
    assert!(ignored.ids.iter().all(|&id| !tok.is_eog(id)));
}

#[test]
fn a_stop_token_id_ends_like_eos_and_a_kept_stop_string_ends_the_text() {
    // Greedy gives " Paris.\n\nThe …": stop at the id of its second token.
    let (_, free) = run(engine(), request(PROMPT, 0.0, 6));
    let mut req = request(PROMPT, 0.0, 6);
    req.stop_token_ids = vec![free.ids[1]];
    let (text, end) = run(engine(), req);
    assert_eq!(end.stop_reason, StopReason::Eos);
    assert_eq!(end.ids, free.ids[..1]);
    assert_eq!(text, " Paris");
    // min_tokens holds the stop token back too: the output then differs from the free one.
    let mut req = request(PROMPT, 0.0, 6);
    req.stop_token_ids = vec![free.ids[1]];
    req.min_tokens = 2;
    let (_, held) = run(engine(), req);
    assert_ne!(held.ids[1], free.ids[1]);
    // include_stop keeps the stop string that ended the output, streamed and final.
    let mut req = request(PROMPT, 0.0, 24);
    req.stop = vec!["ris.".into()];
    req.include_stop = true;
    let (text, end) = run(engine(), req);
    assert_eq!(end.stop_reason, StopReason::StopSequence("ris.".into()));
    assert_eq!(text, " Paris.");
    assert_eq!(end.text, text);
}

#[test]
fn a_full_context_stops_with_context_full() {
    let engine = load(EngineConfig {
        slots: 1,
        context: 8,
        max_batch: 4,
        ..EngineConfig::default()
    });
    let mut req = request(PROMPT, 0.0, 0);
    req.max_tokens = None;
    let (text, end) = run(&engine, req);
    assert_eq!(end.stop_reason, StopReason::ContextFull);
    // Five prompt positions and three fed tokens fill eight; the fourth token is sampled
    // from the last position's logits. The prompt ran in two chunks of at most four.
    assert_eq!(end.ids.len(), 4);
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn bad_requests_are_refused_up_front() {
    let e = engine();
    let refuse = |req: GenerationRequest| e.submit(req).expect_err("refused");
    let mut req = request("", 0.0, 1);
    req.prompt = Prompt::Ids(vec![]);
    assert!(matches!(refuse(req), EngineError::EmptyPrompt));
    assert!(matches!(
        refuse(request("", 0.0, 1)),
        EngineError::EmptyPrompt
    ));
    let long = "word ".repeat(600);
    assert!(matches!(
        refuse(request(&long, 0.0, 1)),
        EngineError::PromptTooLong { context: 512, .. }
    ));
    let mut req = request(PROMPT, 0.0, 1);
    req.prompt = Prompt::Ids(vec![1, 49_152]);
    assert!(matches!(
        refuse(req),
        EngineError::TokenOutOfRange { id: 49_152, .. }
    ));
    let mut req = request(PROMPT, 0.0, 1);
    req.sampling.top_p = 0.0;
    assert!(matches!(refuse(req), EngineError::Sampling(_)));
    // max_tokens 0 is accepted and ends at once.
    let (_, end) = run(e, request(PROMPT, 0.0, 0));
    assert_eq!(end.stop_reason, StopReason::MaxTokens);
    assert!(end.ids.is_empty());
}

#[test]
fn streamed_text_never_splits_a_character() {
    // Greedy SmolLM2 answers with emoji, each spread over three byte-level tokens.
    let prompt = "<|im_start|>user\nWrite three emoji and the Chinese word for hello.<|im_end|>\n\
                  <|im_start|>assistant\n";
    let mut pieces = Vec::new();
    let mut end = None;
    for event in engine().submit(request(prompt, 0.0, 9)).unwrap() {
        match event {
            Event::Token(t) => pieces.push(t.text),
            Event::End(c) => end = Some(c),
            Event::Error(e) => panic!("{e}"),
        }
    }
    let end = end.unwrap();
    assert_eq!(pieces.len(), 9);
    assert!(
        pieces.iter().any(String::is_empty),
        "held-back bytes: {pieces:?}"
    );
    assert!(!end.text.contains('\u{FFFD}'), "{:?}", end.text);
    assert_eq!(end.text.chars().count(), 3, "{:?}", end.text);
    assert_eq!(pieces.concat(), end.text);
}
