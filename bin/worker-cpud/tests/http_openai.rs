//! End-to-end: the OpenAI-compatible routes of `worker-cpud serve` on SmolLM2.

mod http_support;

use http_support::{generate_text, parse_sse, Worker};
use serde_json::{json, Value};

/// The `data:` payloads of an OpenAI stream, checking it ends with `[DONE]`.
fn chunks(text: &str) -> Vec<Value> {
    let events = parse_sse(text);
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{text}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            assert_eq!(e.name, "message");
            e.json()
        })
        .collect()
}

#[test]
fn chat_completions_streaming_and_not_agree() {
    let w = Worker::start(&["--slots", "2"]);
    let body = json!({
        "model": "anything",
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 10, "temperature": 0,
    });
    let r = w.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json;
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.trim().is_empty(), "{content:?}");
    let usage = &v["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens <= 10);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion_tokens
    );
    let reason = choice["finish_reason"].as_str().unwrap();
    assert_eq!(
        reason,
        if completion_tokens == 10 {
            "length"
        } else {
            "stop"
        }
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let r = w.post("/v1/chat/completions", &stream_body);
    assert_eq!(r.status, 200, "{}", r.text);
    let chunks = chunks(&r.text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(text, content);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], reason);
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    // The same usage, except that the second request found the first one's full KV block
    // in the prefix cache.
    let (mut streamed, mut plain) = (chunks[n - 1]["usage"].clone(), v["usage"].clone());
    assert_eq!(plain["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(streamed["prompt_tokens_details"]["cached_tokens"], 16);
    streamed["prompt_tokens_details"].take();
    plain["prompt_tokens_details"].take();
    assert_eq!(streamed, plain);
    assert!(chunks[..n - 1].iter().all(|c| c["usage"].is_null()));

    // Log-probabilities, and max_completion_tokens as the limit.
    let r = w.post(
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_completion_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2,
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let lp = r.json["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(lp.len(), 3);
    for t in &lp {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t["top_logprobs"][0]["token"], t["token"]);
    }
    assert_eq!(r.json["choices"][0]["finish_reason"], "length");
}

#[test]
fn completions_match_generate_and_stream_the_same_text() {
    let w = Worker::start(&["--slots", "2"]);
    let prompt = "The capital of France is";
    let reference = generate_text(prompt, 8);
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "seed": 1});
    let r = w.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["object"], "text_completion");
    assert_eq!(r.json["choices"][0]["text"], reference["text"]);
    assert_eq!(r.json["choices"][0]["finish_reason"], "length");
    assert_eq!(r.json["usage"]["prompt_tokens"], 5);
    assert_eq!(r.json["usage"]["completion_tokens"], 8);

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["logprobs"] = json!(2);
    let r = w.post("/v1/completions", &sb);
    let chunks = chunks(&r.text);
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, reference["text"].as_str().unwrap());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    let first = &chunks[0]["choices"][0]["logprobs"];
    assert_eq!(first["tokens"], json!([" Paris"]));
    assert_eq!(first["text_offset"], json!([0]));

    // A stop string ends with finish_reason "stop" and is not part of the text.
    let r = w.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "stop": ["."]}),
    );
    assert_eq!(r.json["choices"][0]["text"], " Paris");
    assert_eq!(r.json["choices"][0]["finish_reason"], "stop");

    let (status, models) = w.get_json("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(models["data"][0]["object"], "model");
}

#[test]
fn unsupported_and_invalid_options_get_openai_errors() {
    let w = Worker::start(&["--slots", "1", "--max-tokens-out", "32"]);
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "n": 2}),
            "n",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "tools": [{"type": "function"}]}),
            "tools[0]",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "response_format": {"type": "yaml"}}),
            "response_format",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "max_tokens": 5, "max_completion_tokens": 5}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "max_tokens": 33}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "top_logprobs": 3}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "temperature": 3}),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "top_p": 0}),
            "top_p",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "max_tokens": "ten"}),
            "max_tokens",
        ),
        // Errors name the field and the type expected, never the text given.
        (
            "/v1/chat/completions",
            json!({"messages": "SECRET text"}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": ["SECRET text"]}),
            "messages[0]",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logit_bias": {"SECRET": "SECRET"}}),
            "logit_bias.*",
        ),
        // One stop-string limit for every route: 256 bytes.
        (
            "/v1/completions",
            json!({"prompt": "x", "stop": "s".repeat(257)}),
            "stop",
        ),
        ("/v1/chat/completions", json!({"msgs": msgs}), "messages"),
        (
            "/v1/completions",
            json!({"prompt": "x", "echo": true}),
            "echo",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "best_of": 3}),
            "best_of",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        ("/v1/completions", json!({"prompt": ["x", "y"]}), "prompt"),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 4, "min_tokens": 5}),
            "min_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop_token_ids": [49152]}),
            "stop_token_ids",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "repetition_penalty": 0}),
            "repetition_penalty",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "continue_final_message": true}),
            "continue_final_message",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "ignore_eos": "yes"}),
            "ignore_eos",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 6}),
            "logprobs",
        ),
    ];
    for (path, body, param) in cases {
        let r = w.post(path, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        let e = &r.json["error"];
        assert_eq!(e["type"], "invalid_request_error", "{body}: {}", r.text);
        assert_eq!(e["param"], param, "{body}: {}", r.text);
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert!(e["code"].is_string());
        assert!(!r.text.contains("SECRET"), "{body}: {}", r.text);
    }
    // Keys given twice are refused, as on /execute.
    let r = w.post_raw(
        "/v1/completions",
        br#"{"prompt": "x", "max_tokens": 1, "max_tokens": 2}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["error"]["param"], "body", "{}", r.text);
    let r = w.post_raw("/v1/completions", b"{\"prompt\": ", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["type"], "invalid_request_error");
    assert_eq!(w.wait_idle()["status"], "ok");
}

/// What a router in front of us adds to every body (vllm-router 0.1.17 sends these): vLLM's
/// extension fields are honoured, and keys nobody here knows are ignored and counted.
#[test]
fn router_extension_fields_are_honoured_and_unknown_ones_counted() {
    let w = Worker::start(&["--slots", "1"]);
    let extensions = json!({
        "logprobs": false, "no_stop_trim": false, "ignore_eos": false,
        "continue_final_message": false, "skip_special_tokens": true,
        "separate_reasoning": true, "stream_reasoning": true,
        "return_hidden_states": false, "include_reasoning": true,
    });
    let mut chat = json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0,
    });
    let plain = w.post("/v1/chat/completions", &chat);
    assert_eq!(plain.status, 200, "{}", plain.text);
    for (k, v) in extensions.as_object().unwrap() {
        chat[k] = v.clone();
    }
    let routed = w.post("/v1/chat/completions", &chat);
    assert_eq!(routed.status, 200, "{}", routed.text);
    assert_eq!(
        routed.json["choices"][0]["message"]["content"],
        plain.json["choices"][0]["message"]["content"]
    );
    // separate_reasoning, stream_reasoning, return_hidden_states and include_reasoning are
    // SGLang's; this worker has no reasoning parser, so they are ignored (and counted).
    assert_eq!(w.metric("worker_ignored_request_fields_total"), 4.0);
    assert!(!w.logs().contains("separate_reasoning"), "{}", w.logs());
    // The gauges routers and the Gateway API Inference Extension read, under vLLM's names.
    let metrics = w.metrics();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ] {
        let line = format!("{name}{{model_name=\"SmolLM2-135M-Instruct.Q4_1\"}} ");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    // ignore_eos + min_tokens: exactly max_tokens tokens, finish_reason length.
    let body = json!({
        "prompt": "The capital of France is", "max_tokens": 24, "temperature": 0,
        "ignore_eos": true,
    });
    let r = w.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["usage"]["completion_tokens"], 24, "{}", r.text);
    assert_eq!(r.json["choices"][0]["finish_reason"], "length");

    // A stop string kept in the text with include_stop_str_in_output.
    let base = json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
    let free = w.post("/v1/completions", &base).json["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = free.split_whitespace().nth(1).unwrap().to_owned();
    let mut kept = base.clone();
    kept["stop"] = json!([stop]);
    kept["include_stop_str_in_output"] = json!(true);
    let r = w.post("/v1/completions", &kept);
    let text = r.json["choices"][0]["text"].as_str().unwrap();
    assert_eq!(r.json["choices"][0]["finish_reason"], "stop", "{}", r.text);
    assert!(
        text.ends_with(&stop) && free.starts_with(text),
        "{text:?} {free:?}"
    );
    kept["include_stop_str_in_output"] = json!(false);
    let r = w.post("/v1/completions", &kept);
    let trimmed = r.json["choices"][0]["text"].as_str().unwrap();
    assert_eq!(format!("{trimmed}{stop}"), text);
    assert_eq!(w.wait_idle()["status"], "ok");
}

/// `continue_final_message` continues the assistant's last text instead of opening a new
/// turn (vLLM's semantics), and cannot be combined with `add_generation_prompt`.
#[test]
fn continue_final_message_continues_the_assistant_text() {
    let w = Worker::start(&["--slots", "1"]);
    let messages = json!([
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]);
    let body = json!({
        "messages": messages, "max_tokens": 6, "temperature": 0,
        "continue_final_message": true, "add_generation_prompt": false,
    });
    let r = w.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    let mut both = body.clone();
    both["add_generation_prompt"] = json!(true);
    let r = w.post("/v1/chat/completions", &both);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["error"]["param"], "continue_final_message",
        "{}",
        r.text
    );
}
