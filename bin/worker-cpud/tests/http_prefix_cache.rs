//! End-to-end: a multi-turn chat behind a long system prompt on `worker-cpud serve`, with the
//! prefix cache on and off: the same text either way, the next turn served mostly from the
//! cache, and the KV figures of `/health` and `/metrics` following it. What KV-aware routers
//! use: the render routes' token ids, and the KV events flag (its wire format is checked in
//! worker-http and, against vllm-router and pyzmq, by scripts/router_check.py).

mod http_support;

use http_support::Worker;
use serde_json::{json, Value};

fn system_prompt() -> String {
    (0..30)
        .map(|i| format!("Rule {i}: parcel {i} goes to shelf {}. ", (i * 5) % 11))
        .collect()
}

/// Two turns of one conversation; returns each answer and its usage.
fn conversation(w: &Worker) -> Vec<(String, Value)> {
    let system = system_prompt();
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": "Where does parcel 12 go?"}),
    ];
    let mut out = Vec::new();
    for next in ["And parcel 13?", "Thanks. And parcel 14?"] {
        let r = w.post(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 12, "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        let text = r.json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        out.push((text.clone(), r.json["usage"].clone()));
        messages.push(json!({"role": "assistant", "content": text}));
        messages.push(json!({"role": "user", "content": next}));
    }
    out
}

#[test]
fn the_next_turn_comes_from_the_cache_and_says_the_same() {
    let cached = Worker::start(&["--slots", "2"]);
    let with = conversation(&cached);
    let plain = Worker::start(&["--slots", "2", "--prefix-cache", "false"]);
    let without = conversation(&plain);
    for ((a, ua), (b, ub)) in with.iter().zip(&without) {
        assert_eq!(a, b, "the same answer with and without the cache");
        assert_eq!(ua["prompt_tokens"], ub["prompt_tokens"]);
        assert_eq!(ub["prompt_tokens_details"]["cached_tokens"], 0);
    }
    let (first, second) = (&with[0].1, &with[1].1);
    assert_eq!(first["prompt_tokens_details"]["cached_tokens"], 0);
    let hit = second["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = second["prompt_tokens"].as_u64().unwrap();
    assert!(
        hit >= first["prompt_tokens"].as_u64().unwrap() / 16 * 16 - 16 && hit < prompt,
        "turn 2 reuses turn 1's blocks: {hit} of {prompt}"
    );

    let h = cached.wait_idle();
    let kv = &h["kv_cache"];
    assert_eq!(kv["type"], "f16");
    assert_eq!(kv["prefix_cache"], true);
    assert_eq!(kv["blocks_used"], 0, "{h}");
    assert!(kv["blocks_cached"].as_u64().unwrap() > 0, "{h}");
    assert_eq!(kv["cached_prompt_tokens"].as_u64().unwrap(), hit);
    let m = cached.metrics();
    assert!(
        m.contains(&format!("worker_prefix_cache_hit_tokens_total {hit}\n")),
        "{m}"
    );
    assert!(m.contains("worker_kv_cache_blocks_used 0\n"), "{m}");
    assert_eq!(plain.wait_idle()["kv_cache"]["blocks_cached"], 0);
}

#[test]
fn a_bad_kv_type_is_refused_at_start() {
    let out = http_support::bin()
        .args(["serve", "--model", "x.gguf", "--kv-type", "q4_0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("f32, f16, q8_0"), "{err}");
}

#[test]
fn the_render_routes_give_the_token_ids_a_request_runs() {
    let w = Worker::start(&["--slots", "1"]);
    let messages = json!([
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": "Where does parcel 12 go?"},
    ]);
    // vllm-router adds vLLM's extension fields to what it renders, as to what it sends.
    let body = json!({"model": "m", "messages": messages, "max_tokens": 4, "stream": false,
                      "no_stop_trim": false, "skip_special_tokens": true});
    let r = w.post("/v1/chat/completions/render", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["model"], "SmolLM2-135M-Instruct.Q4_1");
    let ids: Vec<u64> = serde_json::from_value(r.json["token_ids"].clone()).unwrap();
    let run = w.post("/v1/chat/completions", &body);
    assert_eq!(run.status, 200, "{}", run.text);
    assert_eq!(ids.len() as u64, run.json["usage"]["prompt_tokens"]);
    // SmolLM2's template: each turn opens with <|im_start|> (special, so /detokenize leaves
    // it out), and the assistant's header closes the prompt.
    let text = w.post("/detokenize", &json!({"tokens": ids})).json["content"].clone();
    let text = text.as_str().unwrap();
    assert!(
        text.starts_with("system\nRule 0:") && text.ends_with("go?\nassistant\n"),
        "{text:?}"
    );
    let im_start = w.post(
        "/tokenize",
        &json!({"content": "<|im_start|>", "parse_special": true}),
    );
    assert_eq!(json!([ids[0]]), im_start.json["tokens"]);

    let prompt = "The capital of France is";
    let r = w.post(
        "/v1/completions/render",
        &json!({"prompt": prompt, "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let tokenized = w.post(
        "/tokenize",
        &json!({"content": prompt, "parse_special": true}),
    );
    assert_eq!(
        r.json[0]["token_ids"], tokenized.json["tokens"],
        "{}",
        r.text
    );
    assert_eq!(
        r.json.as_array().unwrap().len(),
        1,
        "one per prompt, as vLLM answers"
    );

    let bad = w.post("/v1/completions/render", &json!({"prompt": prompt, "n": 2}));
    assert_eq!(
        bad.status, 400,
        "refused as the generation route refuses it"
    );
    assert_eq!(bad.json["error"]["param"], "n", "{}", bad.text);
}

#[test]
fn kv_events_start_with_the_prefix_cache_and_are_refused_without_it() {
    let w = Worker::start(&["--kv-events-endpoint", "tcp://127.0.0.1:0"]);
    let log = w.logs();
    assert!(log.contains("publishing KV events"), "{log}");

    let out = http_support::bin()
        .args(["serve", "--model"])
        .arg(worker_testdata::model(worker_testdata::SMOLLM2))
        .args(["--port", "0", "--prefix-cache", "false"])
        .args(["--kv-events-endpoint", "tcp://127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KV events") && err.contains("prefix cache"),
        "{err}"
    );
}
