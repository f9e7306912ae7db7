//! The prefix cache on the real SmolLM2-135M: a conversation behind a long system prompt
//! gives the same tokens with the cache hit, missed or disabled, for every KV entry type;
//! the second turn reuses the first turn's blocks, and nothing stays held afterwards. The
//! KV events a subscriber gets describe exactly the blocks a request computed.

use std::collections::HashMap;
use std::sync::mpsc::sync_channel;

use worker_compute::{CpuBackend, CpuConfig};
use worker_engine::{
    Completion, Engine, EngineConfig, GenerationRequest, KvEvent, KvType, SamplingConfig, KV_BLOCK,
};

fn engine(kv_type: KvType, prefix_cache: bool) -> Engine {
    let path = worker_testdata::model(worker_testdata::SMOLLM2);
    let file = worker_gguf::GgufFile::open(&path).expect("open SmolLM2");
    let backend = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let config = EngineConfig {
        slots: 2,
        context: 1024,
        max_batch: 128,
        kv_type,
        prefix_cache,
        ..EngineConfig::default()
    };
    Engine::load(&file, Box::new(backend), config).expect("load SmolLM2")
}

/// A chat prompt in SmolLM2's template: a long system prompt, then the turns given.
fn chat(turns: &[(&str, &str)]) -> String {
    let rules: String = (0..28)
        .map(|i| format!("Rule {i}: parcel {i} goes to shelf {}. ", (i * 7) % 13))
        .collect();
    let mut p = format!("<|im_start|>system\nYou sort parcels. {rules}<|im_end|>\n");
    for (role, text) in turns {
        p.push_str(&format!("<|im_start|>{role}\n{text}<|im_end|>\n"));
    }
    p + "<|im_start|>assistant\n"
}

fn run(engine: &Engine, prompt: &str) -> Completion {
    let req = GenerationRequest {
        sampling: SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        },
        max_tokens: Some(24),
        ..GenerationRequest::new(prompt)
    };
    engine
        .submit(req)
        .expect("accepted")
        .wait()
        .expect("generated")
}

/// Turn 1 twice (the second a full hit), then turn 2 behind turn 1's answer.
fn conversation(engine: &Engine) -> [Completion; 3] {
    let first = run(engine, &chat(&[("user", "Where does parcel 17 go?")]));
    let again = run(engine, &chat(&[("user", "Where does parcel 17 go?")]));
    let second = run(
        engine,
        &chat(&[
            ("user", "Where does parcel 17 go?"),
            ("assistant", &first.text),
            ("user", "And parcel 18?"),
        ]),
    );
    [first, again, second]
}

#[test]
fn hit_missed_or_disabled_the_tokens_are_the_same() {
    for kv_type in KvType::ALL {
        let cached = engine(kv_type, true);
        let [first, again, second] = conversation(&cached);
        let plain = engine(kv_type, false);
        let [p_first, p_again, p_second] = conversation(&plain);
        assert!(first.prompt_ids.len() > 400, "a long system prompt");
        assert_eq!(
            first.timings.cached_tokens, 0,
            "{kv_type:?}: nothing cached yet"
        );
        let whole = (first.prompt_ids.len() - 1) / 16 * 16;
        assert_eq!(
            again.timings.cached_tokens, whole,
            "{kv_type:?}: the whole prompt"
        );
        assert!(
            second.timings.cached_tokens >= whole,
            "{kv_type:?}: turn 2 reuses turn 1: {} of {}",
            second.timings.cached_tokens,
            second.prompt_ids.len()
        );
        for c in [&p_first, &p_again, &p_second] {
            assert_eq!(c.timings.cached_tokens, 0, "{kv_type:?}: the cache is off");
        }
        assert_eq!(first.ids, p_first.ids, "{kv_type:?}: turn 1");
        assert_eq!(again.ids, first.ids, "{kv_type:?}: turn 1 from the cache");
        assert_eq!(p_again.ids, p_first.ids, "{kv_type:?}");
        assert_eq!(second.ids, p_second.ids, "{kv_type:?}: turn 2");
        let stats = cached.kv_stats();
        assert_eq!(stats.blocks_used, 0, "{kv_type:?}: {stats:?}");
        assert!(stats.blocks_cached > 0);
        assert_eq!(plain.kv_stats().blocks_cached, 0);
    }
}

#[test]
fn kv_events_chain_the_blocks_a_request_computed_and_report_only_new_ones() {
    let engine = engine(KvType::F16, true);
    let (tx, rx) = sync_channel(1024);
    engine.report_kv_events(Box::new(tx)).expect("subscribed");
    let prompt = chat(&[("user", "Where does parcel 17 go?")]);
    let first = run(&engine, &prompt);
    // Another request's end comes after the first request's last turn was reported.
    let other = run(&engine, "Bonjour");
    let mut blocks = HashMap::new(); // (parent, tokens) -> key
    let mut clears = 0;
    for event in rx.try_iter().flatten() {
        match event {
            KvEvent::Stored {
                hashes,
                parent,
                token_ids,
            } => {
                assert_eq!(token_ids.len(), hashes.len() * KV_BLOCK);
                let mut parent = parent;
                for (key, tokens) in hashes.iter().zip(token_ids.chunks(KV_BLOCK)) {
                    let before = blocks.insert((parent, tokens.to_vec()), *key);
                    assert!(before.is_none(), "a block reported twice");
                    parent = Some(*key);
                }
            }
            KvEvent::Removed { .. } => panic!("the pool is large enough: nothing evicted"),
            KvEvent::Cleared => clears += 1,
        }
    }
    assert_eq!(clears, 0, "nothing lost");
    // Follow the first request's tokens (prompt, then output) down the reported chains.
    let all: Vec<u32> = first.prompt_ids.iter().chain(&first.ids).copied().collect();
    let mut parent = None;
    let mut found = 0;
    for tokens in all.chunks_exact(KV_BLOCK) {
        let Some(&key) = blocks.get(&(parent, tokens.to_vec())) else {
            break;
        };
        parent = Some(key);
        found += 1;
    }
    // Every full block of the computed positions: all but the last output token.
    assert_eq!(found, (all.len() - 1) / KV_BLOCK, "{} tokens", all.len());
    assert!(found > 25, "the long system prompt is in it");
    let other_blocks = (other.prompt_ids.len() + other.ids.len() - 1) / KV_BLOCK;
    assert_eq!(blocks.len(), found + other_blocks, "and nothing else");

    // The same prompt again computes no new block of its prompt.
    let again = run(&engine, &prompt);
    run(&engine, "Bonjour");
    let new_tokens: usize = rx
        .try_iter()
        .flatten()
        .map(|e| match e {
            KvEvent::Stored { token_ids, .. } => token_ids.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(again.ids, first.ids);
    assert_eq!(new_tokens, 0, "a full hit, and the output's blocks too");
}

#[test]
fn kv_events_are_refused_without_the_prefix_cache() {
    let (tx, _rx) = sync_channel(1);
    let err = engine(KvType::F16, false)
        .report_kv_events(Box::new(tx))
        .unwrap_err();
    assert!(err.to_string().contains("prefix cache"), "{err}");
}
