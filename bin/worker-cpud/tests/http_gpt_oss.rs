//! End-to-end: the tiny random-weight gpt-oss model (MXFP4 experts, o200k vocabulary, its own
//! harmony chat template; written by `crates/worker-models/tests/support/tiny_arch.rs`) served
//! by `worker-cpud serve` through `/v1/chat/completions`: the template renders (tools, tool
//! results and today's date included), answers come back split into `content` and
//! `reasoning_content` with no harmony markup in either, streamed answers put together equal
//! the whole ones, and with tools the output is held to harmony's channels (the grammar
//! compiles on the o200k vocabulary) and still parses.

mod http_support;

#[path = "../../../crates/worker-models/tests/support/tiny_arch.rs"]
mod tiny_arch;

use std::path::PathBuf;
use std::sync::OnceLock;

use http_support::{parse_sse, Worker};
use serde_json::{json, Value};

/// The model, written once per test binary.
fn model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiny-gpt-oss.gguf");
        let bytes =
            tiny_arch::tiny_model("gpt-oss", &tiny_arch::vocab("gpt-oss"), &Default::default());
        std::fs::write(&path, bytes).unwrap();
        path
    })
    .clone()
}

fn serve() -> Worker {
    Worker::start_model(&model(), &["--threads", "2"], |_| {})
}

const MARKUP: [&str; 7] = [
    "<|channel|>",
    "<|message|>",
    "<|start|>",
    "<|end|>",
    "<|constrain|>",
    "<|return|>",
    "<|call|>",
];

/// No harmony markup in `text`.
fn clean(what: &str, text: &str) {
    for m in MARKUP {
        assert!(!text.contains(m), "{what} holds {m}: {text:?}");
    }
}

fn weather() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}},
                       "required": ["city"]}}}])
}

/// The assistant message of a whole answer (checked clean) and its finish reason.
fn answer(w: &Worker, body: &Value) -> (Value, String) {
    let r = w.post("/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.text);
    let v: Value = serde_json::from_str(&r.text).unwrap();
    let m = v["choices"][0]["message"].clone();
    for field in ["content", "reasoning_content"] {
        if let Some(text) = m[field].as_str() {
            clean(field, text);
        }
    }
    for call in m["tool_calls"].as_array().into_iter().flatten() {
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
            .expect("arguments are JSON");
        assert!(args["city"].is_string(), "{args}");
    }
    let reason = v["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    (m, reason)
}

/// The same request streamed: content, reasoning and calls put together, and the finish
/// reason.
fn streamed(w: &Worker, body: &Value) -> (String, String, Vec<Value>, String) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let r = w.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let events = parse_sse(&r.text);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let (mut content, mut reasoning, mut calls, mut reason) =
        (String::new(), String::new(), Vec::new(), String::new());
    for e in &events[..events.len() - 1] {
        let v = e.json();
        let c = &v["choices"][0];
        let d = &c["delta"];
        if let Some(t) = d["content"].as_str() {
            clean("a content delta", t);
            content.push_str(t);
        }
        if let Some(t) = d["reasoning_content"].as_str() {
            clean("a reasoning delta", t);
            reasoning.push_str(t);
        }
        calls.extend(d["tool_calls"].as_array().into_iter().flatten().cloned());
        if let Some(f) = c["finish_reason"].as_str() {
            reason = f.to_string();
        }
    }
    (content, reasoning, calls, reason)
}

#[test]
fn gpt_oss_serves_chat_with_reasoning_apart_and_streams_the_same() {
    let w = serve();
    // (messages, tools and tool_choice, whether the greedy answer calls the tool): the random
    // model writes text where it is free; held to harmony's channels with tools, it calls
    // the tool (its arguments are bounded by an enum, so they end within max_tokens).
    for (messages, tools, choice, expect_call) in [
        (
            json!([{"role": "user", "content": "Hello!"}]),
            None,
            None,
            false,
        ),
        (
            json!([
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ]),
            Some(weather()),
            Some("auto"),
            true,
        ),
        (
            json!([{"role": "user", "content": "Weather in Oslo?"}]),
            Some(weather()),
            Some("required"),
            true,
        ),
    ] {
        let mut body = json!({
            "model": "tiny", "messages": messages, "max_tokens": 48, "temperature": 0,
        });
        if let Some(t) = tools {
            body["tools"] = t;
            body["tool_choice"] = json!(choice);
        }
        let (m, reason) = answer(&w, &body);
        let (content, reasoning, calls, stream_reason) = streamed(&w, &body);
        assert_eq!(content, m["content"].as_str().unwrap_or(""), "{body}");
        assert_eq!(
            reasoning,
            m["reasoning_content"].as_str().unwrap_or(""),
            "{body}"
        );
        let calls_whole = m["tool_calls"].as_array().map_or(0, Vec::len);
        assert_eq!(calls.len(), 2 * calls_whole, "two deltas a call");
        assert_eq!(stream_reason, reason);
        if expect_call {
            assert_eq!(calls_whole, 1, "{m}");
            assert_eq!(reason, "tool_calls");
        } else {
            assert!(!content.is_empty() && calls_whole == 0, "{m}");
        }
    }
}

/// The tokens of a chunk list's `logprobs.content`, with their logprobs and alternatives.
fn logprob_entries(logprobs: &Value) -> Vec<Value> {
    logprobs["content"].as_array().cloned().unwrap_or_default()
}

/// With logprobs, the streamed chunks carry every generated token's logprob once, markup and
/// held-back call text included, in order: together they equal the whole answer's.
#[test]
fn gpt_oss_streams_the_logprobs_of_every_token() {
    let w = serve();
    for tools in [None, Some(weather())] {
        let mut body = json!({
            "model": "tiny", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "max_tokens": 32, "temperature": 0, "logprobs": true, "top_logprobs": 2,
        });
        if let Some(t) = tools {
            body["tools"] = t;
            body["tool_choice"] = json!("required");
        }
        let r = w.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        let whole: Value = serde_json::from_str(&r.text).unwrap();
        let want = logprob_entries(&whole["choices"][0]["logprobs"]);
        let tokens = whole["usage"]["completion_tokens"].as_u64().unwrap() as usize;
        assert!(!want.is_empty() && want.len() <= tokens, "{whole}");
        body["stream"] = json!(true);
        let r = w.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        let events = parse_sse(&r.text);
        let got: Vec<Value> = events[..events.len() - 1]
            .iter()
            .flat_map(|e| logprob_entries(&e.json()["choices"][0]["logprobs"]))
            .collect();
        assert_eq!(got, want, "{body}");
        assert!(
            got.iter()
                .all(|t| t["top_logprobs"].as_array().unwrap().len() == 2),
            "{body}"
        );
    }
}
