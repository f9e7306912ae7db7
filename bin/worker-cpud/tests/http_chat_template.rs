//! `serve --chat-template`: a base model without `tokenizer.chat_template` (the real
//! Gemma-3-270M) served on `/v1/chat/completions` with a template from a file (llama.cpp's
//! Gemma 2 template, whose turn format Gemma 3 shares) or given inline, and the flag's bad
//! values refused before the model loads.

mod http_support;

use http_support::{bin, Worker};
use serde_json::json;

fn chat(messages: serde_json::Value) -> serde_json::Value {
    json!({"model": "m", "messages": messages, "max_tokens": 6, "temperature": 0})
}

/// The ids `/v1/chat/completions/render` gives `body`, and those of `text` tokenized with
/// special tokens parsed.
fn rendered_and_expected(w: &Worker, body: &serde_json::Value, text: &str) -> (Vec<u64>, Vec<u64>) {
    let r = w.post("/v1/chat/completions/render", body);
    assert_eq!(r.status, 200, "{}", r.text);
    let ids = serde_json::from_value(r.json["token_ids"].clone()).unwrap();
    let t = w.post(
        "/tokenize",
        &json!({"content": text, "parse_special": true}),
    );
    assert_eq!(t.status, 200, "{}", t.text);
    (
        ids,
        serde_json::from_value(t.json["tokens"].clone()).unwrap(),
    )
}

#[test]
fn a_base_model_chats_with_a_template_from_a_file() {
    let template = worker_testdata::chat_template("google-gemma-2-2b-it");
    let template = template.to_str().unwrap();
    let w = Worker::start_model(
        &worker_testdata::model(worker_testdata::GEMMA3),
        &["--slots", "1", "--chat-template", template],
        |_| {},
    );
    let body = chat(json!([{"role": "user", "content": "Name a colour."}]));
    let (ids, expected) = rendered_and_expected(
        &w,
        &body,
        "<bos><start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n",
    );
    assert_eq!(ids, expected);
    let r = w.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["usage"]["prompt_tokens"], ids.len() as u64);
    assert!(
        r.json["choices"][0]["message"]["content"].is_string(),
        "{}",
        r.text
    );
    // The template's own refusal (Gemma 2 has no system role) is the client's 400.
    let r = w.post(
        "/v1/chat/completions",
        &chat(json!([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}])),
    );
    assert_eq!(r.status, 400, "{}", r.text);
}

#[test]
fn a_template_given_inline_replaces_the_files_own() {
    // SmolLM2 has a ChatML template; the flag's template wins.
    let w = Worker::start(&[
        "--slots",
        "1",
        "--chat-template",
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]",
    ]);
    let body = chat(json!([{"role": "user", "content": "Hello"}]));
    let (ids, expected) = rendered_and_expected(&w, &body, "[user] Hello\n[assistant]");
    assert_eq!(ids, expected);
}

#[test]
fn without_a_template_a_base_model_refuses_chat_and_still_completes() {
    let w = Worker::start_model(
        &worker_testdata::model(worker_testdata::GEMMA3),
        &["--slots", "1"],
        |_| {},
    );
    let r = w.post(
        "/v1/chat/completions",
        &chat(json!([{"role": "user", "content": "Hi"}])),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("no chat template"), "{}", r.text);
    let r = w.post(
        "/v1/completions",
        &json!({"prompt": "The sky is", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn bad_template_flags_stop_the_worker_before_it_loads() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    for (value, says) in [
        ("{% for m in messages %}", "--chat-template: "),
        (
            "/no/such/template.jinja",
            "neither a file nor a Jinja template",
        ),
    ] {
        let out = bin()
            .args(["serve", "--port", "0", "--model"])
            .arg(&model)
            .args(["--chat-template", value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{value}: {err}");
        assert!(!err.contains("model loaded"), "{err}");
    }
}
