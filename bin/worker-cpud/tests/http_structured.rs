//! End-to-end: structured output on `worker-cpud serve` with SmolLM2: `response_format`
//! (`json_object`, `json_schema`) and the `grammar` extension on `/v1/chat/completions`,
//! `/v1/completions` and `/execute`, streamed and not, and the 400s for constraints that
//! cannot be enforced.

mod http_support;

use http_support::{parse_sse, Worker};
use serde_json::{json, Value};

const SCHEMA: &str = r#"{
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0},
        "coastal": {"type": "boolean"}
    },
    "required": ["city", "population", "coastal"],
    "additionalProperties": false
}"#;

fn check_city(text: &str) {
    let v: Value = serde_json::from_str(text).expect("the content is JSON");
    let o = v.as_object().expect("an object");
    assert_eq!(o.len(), 3, "{text}");
    assert!(o["city"].as_str().is_some_and(|c| c.chars().count() <= 20));
    assert!(o["population"].as_u64().is_some());
    assert!(o["coastal"].is_boolean());
}

fn chat(schema: &Value, stream: bool, seed: u64) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Describe Paris as JSON."}],
        "max_tokens": 120,
        "temperature": 0.8,
        "seed": seed,
        "stream": stream,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "city", "schema": schema, "strict": true}},
    })
}

#[test]
fn json_schema_chat_answers_validate_streamed_and_not() {
    let w = Worker::start(&["--slots", "2"]);
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let r = w.post("/v1/chat/completions", &chat(&schema, false, 1));
    assert_eq!(r.status, 200, "{}", r.text);
    let choice = &r.json["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{}", r.text);
    check_city(choice["message"]["content"].as_str().unwrap());

    let r = w.post("/v1/chat/completions", &chat(&schema, true, 1));
    assert_eq!(r.status, 200, "{}", r.text);
    let mut content = String::new();
    let mut finish = Value::Null;
    for e in parse_sse(&r.text) {
        if e.data == "[DONE]" {
            continue;
        }
        let c = e.json();
        let delta = &c["choices"][0]["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        if !c["choices"][0]["finish_reason"].is_null() {
            finish = c["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(finish, "stop");
    check_city(&content);
    // The same seed streamed and not: the same answer.
    let plain = w.post("/v1/chat/completions", &chat(&schema, false, 1));
    assert_eq!(plain.json["choices"][0]["message"]["content"], content);

    let body = json!({
        "messages": [{"role": "user", "content": "Give me a JSON object."}],
        "max_tokens": 200,
        "response_format": {"type": "json_object"},
    });
    let r = w.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let choice = &r.json["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap();
    if choice["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(text).unwrap().is_object(),
            "{text}"
        );
    } else {
        assert_eq!(choice["finish_reason"], "length");
    }
}

#[test]
fn grammars_constrain_completions_and_execute() {
    let w = Worker::start(&["--slots", "1"]);
    let body = json!({
        "prompt": "My phone number is",
        "max_tokens": 30,
        "grammar": {"regex": " [0-9]{3}-[0-9]{4}"},
    });
    let r = w.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.len(), 9, "{text}");
    assert_eq!(r.json["choices"][0]["finish_reason"], "stop");

    let events = w.execute(&json!({
        "job_id": "j-grammar",
        "prompt": "The answer is",
        "max_tokens": 20,
        "grammar": {"lark": "start: \" \" (\"yes\" | \"no\") \".\""},
    }));
    let text: String = events
        .iter()
        .filter(|e| e.name == "token")
        .map(|e| e.json()["t"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(text == " yes." || text == " no.", "{text}");
    assert_eq!(events.last().unwrap().name, "end");
}

#[test]
fn constraints_that_cannot_be_enforced_get_400s() {
    let w = Worker::start(&["--slots", "1"]);
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let schema_format = |schema: Value| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "response_format": schema_format(json!({"type": "array", "uniqueItems": true}))}),
            "response_format",
            Some("uniqueItems"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "response_format": schema_format(json!({"$ref": "#/$defs/nowhere"}))}),
            "response_format",
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "response_format": schema_format(json!({"type": "wobbly"}))}),
            "response_format",
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "grammar": {"lark": "start: missing_rule"}}),
            "grammar",
            None,
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "grammar": {"regex": "(unclosed"}}),
            "grammar",
            None,
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "grammar": {"regex": "a".repeat(300_000)}}),
            "grammar.regex",
            None,
        ),
    ];
    for (path, body, param, names) in cases {
        let r = w.post(path, &body);
        assert_eq!(r.status, 400, "{param}: {}", r.text);
        let e = &r.json["error"];
        assert_eq!(e["type"], "invalid_request_error", "{}", r.text);
        assert_eq!(e["param"], param, "{}", r.text);
        if let Some(word) = names {
            assert!(e["message"].as_str().unwrap().contains(word), "{}", r.text);
        }
    }
    let r = w.post(
        "/execute",
        &json!({"job_id": "j", "prompt": "x", "grammar": {"regex": "["}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(w.wait_idle()["status"], "ok");
}

/// A tool call streamed (its text held back to the end) still carries every generated
/// token's logprob once, in order: the chunks together equal the whole answer's, for the
/// `auto` choice (content released as it comes) and the `required` one (all held).
#[test]
fn streamed_tool_calls_carry_every_tokens_logprobs() {
    let w = Worker::start(&["--slots", "1"]);
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]);
    for choice in ["auto", "required"] {
        let mut body = json!({
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "max_tokens": 40, "temperature": 0, "logprobs": true, "top_logprobs": 1,
            "tools": tools, "tool_choice": choice,
        });
        let r = w.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        let want = r.json["choices"][0]["logprobs"]["content"].clone();
        assert!(want.as_array().is_some_and(|a| !a.is_empty()), "{}", r.text);
        body["stream"] = json!(true);
        let r = w.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        let got: Vec<Value> = parse_sse(&r.text)
            .iter()
            .filter(|e| e.data != "[DONE]")
            .flat_map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                v["choices"][0]["logprobs"]["content"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(Value::Array(got), want, "{choice}");
    }
}
