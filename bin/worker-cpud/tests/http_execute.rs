//! End-to-end: `worker-cpud serve` on SmolLM2, llama-orch routes over real HTTP.

mod http_support;

use std::time::{Duration, Instant};

use http_support::{check_order, generate_text, Worker};
use serde_json::json;

const PROMPT: &str = "The capital of France is";

#[test]
fn execute_streams_events_in_order_with_the_text_of_generate() {
    let w = Worker::start(&["--slots", "2"]);
    let events = w.execute(&json!({
        "job_id": "job-1", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "seed": 7,
    }));
    let (text, last) = check_order(&events);
    let started = events[0].json();
    assert_eq!(started["job_id"], "job-1");
    assert_eq!(started["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert!(started["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(last.name, "end", "{last:?}");
    let end = last.json();
    assert_eq!(end["tokens_out"], 12);
    assert_eq!(end["stop_reason"], "max_tokens");
    assert_eq!(end["stop_sequence_matched"], serde_json::Value::Null);
    assert_eq!(end["seed"], 7);
    assert!(end["decode_time_ms"].is_u64());
    let indices: Vec<u64> = events
        .iter()
        .filter(|e| e.name == "token")
        .map(|e| e.json()["i"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..12).collect::<Vec<_>>());
    let reference = generate_text(PROMPT, 12);
    assert_eq!(text, reference["text"].as_str().unwrap());

    // A missing seed is generated and reported; a stop string ends the stream.
    let events = w.execute(&json!({
        "job_id": "job-2", "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
        "stop": [" of"],
    }));
    let (text2, last) = check_order(&events);
    let end = last.json();
    assert!(end["seed"].is_u64(), "{end}");
    assert!(events[0].json()["seed"].is_u64());
    // Greedy SmolLM2 says " Paris.\n\nThe United States has a population of …".
    assert_eq!(end["stop_reason"], "stop_sequence", "{end}");
    assert_eq!(end["stop_sequence_matched"], " of");
    assert!(!text2.contains(" of"), "{text2:?}");
    assert!(text.starts_with(&text2));
    let h = w.wait_idle();
    assert_eq!(h["slots_total"], 2);
}

#[test]
fn cancel_ends_the_stream_within_100_ms() {
    let w = Worker::start(&["--slots", "1"]);
    let mut stream = w.execute_stream(&json!({
        "job_id": "long", "prompt": PROMPT, "max_tokens": 400, "temperature": 0.7,
        // A fixed seed: a drawn one may end the text within the first tokens.
        "seed": 7,
    }));
    assert_eq!(stream.next_event().unwrap().name, "started");
    for _ in 0..3 {
        assert_eq!(stream.next_event().unwrap().name, "token");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        while let Some(e) = stream.next_event() {
            let terminal = e.name == "end" || e.name == "error";
            events.push(e);
            if terminal {
                let _ = tx.send(Instant::now());
            }
        }
        events
    });
    let t0 = Instant::now();
    let r = w.post("/cancel", &json!({"job_id": "long"}));
    assert_eq!(r.status, 202, "{}", r.text);
    let ended = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("terminal event");
    let latency = ended.saturating_duration_since(t0);
    eprintln!("cancel latency: {:.1} ms", latency.as_secs_f64() * 1e3);
    assert!(latency < Duration::from_millis(100), "{latency:?}");
    let events = reader.join().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.name, "error");
    assert_eq!(last.json()["code"], "CANCELLED");
    assert_eq!(last.json()["retriable"], false);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.name == "error" || e.name == "end")
            .count(),
        1
    );
    // Idempotent, also for jobs that are gone or never were.
    assert_eq!(w.post("/cancel", &json!({"job_id": "long"})).status, 202);
    assert_eq!(w.post("/cancel", &json!({"job_id": "nope"})).status, 202);
    w.wait_idle();
    assert!(w
        .metrics()
        .contains("worker_requests_total{route=\"execute\",outcome=\"cancelled\"} 1"));
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let w = Worker::start(&["--slots", "1"]);
    let mut stream = w.execute_stream(&json!({
        "job_id": "gone", "prompt": PROMPT, "max_tokens": 400, "temperature": 0.7,
    }));
    for _ in 0..3 {
        stream.next_event().unwrap();
    }
    assert_eq!(w.health()["slots_busy"], 1);
    drop(stream);
    let t0 = Instant::now();
    w.wait_idle();
    eprintln!(
        "slot freed {:.0} ms after disconnect",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let metrics = w.metrics();
    assert!(
        metrics.contains("worker_requests_total{route=\"execute\",outcome=\"disconnected\"} 1"),
        "{metrics}"
    );
    // The worker still serves.
    let (text, last) = check_order(&w.execute(&json!({
        "job_id": "after", "prompt": PROMPT, "max_tokens": 2, "temperature": 0,
    })));
    assert_eq!(last.name, "end");
    assert!(!text.is_empty());
}

#[test]
fn bad_requests_are_4xx_with_field_errors_and_never_echo_the_prompt() {
    let w = Worker::start(&["--slots", "1", "--max-tokens-out", "64"]);
    let secret = "SECRET-PROMPT-TEXT";
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "body"),
        (b"[1,2]".to_vec(), 400, "body"),
        (
            json!({"prompt": secret}).to_string().into_bytes(),
            400,
            "job_id",
        ),
        (
            json!({"job_id": "x"}).to_string().into_bytes(),
            400,
            "prompt",
        ),
        (
            json!({"job_id": "x", "prompt": 5}).to_string().into_bytes(),
            400,
            "prompt",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "max_tokens": "many"})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "max_tokens": 65})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "max_tokens": 0})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "temperature": -1})
                .to_string()
                .into_bytes(),
            400,
            "temperature",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "top_p": 0})
                .to_string()
                .into_bytes(),
            400,
            "top_p",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "min_p": 2})
                .to_string()
                .into_bytes(),
            400,
            "min_p",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "top_k": -3})
                .to_string()
                .into_bytes(),
            400,
            "top_k",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "seed": -1})
                .to_string()
                .into_bytes(),
            400,
            "seed",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "stop": ["a","b","c","d","e"]})
                .to_string()
                .into_bytes(),
            400,
            "stop",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "stop": [1]})
                .to_string()
                .into_bytes(),
            400,
            "stop",
        ),
        (
            json!({"job_id": "x", "prompt": secret, "frequency_penalty": 3})
                .to_string()
                .into_bytes(),
            400,
            "frequency_penalty",
        ),
        // An unknown key is request text too: the error names the body, not the key.
        (
            json!({"job_id": "x", "prompt": secret, "SECRET-KEY": "typo"})
                .to_string()
                .into_bytes(),
            400,
            "body",
        ),
        // Keys given twice are refused, as on the OpenAI routes.
        (
            format!(r#"{{"job_id": "x", "prompt": "{secret}", "max_tokens": 1, "max_tokens": 2}}"#)
                .into_bytes(),
            400,
            "body",
        ),
        // One stop-string limit for every route: 256 bytes.
        (
            json!({"job_id": "x", "prompt": secret, "stop": ["s".repeat(257)]})
                .to_string()
                .into_bytes(),
            400,
            "stop",
        ),
        (
            json!({"job_id": "x", "prompt": secret.repeat(200)})
                .to_string()
                .into_bytes(),
            400,
            "prompt",
        ),
    ];
    for (body, status, field) in cases {
        let r = w.post_raw("/execute", &body, &[]);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert_eq!(r.status, status, "{shown}: {}", r.text);
        let errors = r.json["errors"].as_array().expect("errors array");
        assert!(
            errors.iter().any(|e| e["field"] == field
                && e["constraint"].is_string()
                && !e["message"].as_str().unwrap().is_empty()),
            "{shown}: {}",
            r.text
        );
        assert!(!r.text.contains("SECRET"), "{shown}: {}", r.text);
    }
    // A prompt longer than the context (512 here) is refused up front.
    let r = w.post(
        "/execute",
        &json!({"job_id": "long", "prompt": format!("{secret} {}", "word ".repeat(600))}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json["code"], "CONTEXT_FULL");
    assert_eq!(r.json["errors"][0]["field"], "prompt");
    assert!(!r.text.contains("SECRET"), "{}", r.text);
    // A 10 MB body is refused with 413 and the worker stays healthy.
    let big = format!(
        "{{\"job_id\":\"big\",\"prompt\":\"{}\"}}",
        "a".repeat(10 << 20)
    );
    let (status, body) = w.post_oversized("/execute", big.into_bytes());
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!(body["errors"][0]["field"], "body");
    let h = w.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["slots_busy"], 0);
    // Tokenize and detokenize round-trip.
    let r = w.post("/tokenize", &json!({"content": PROMPT}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["tokens"], json!([504, 3575, 282, 4649, 314]));
    let r = w.post(
        "/detokenize",
        &json!({"tokens": [504, 3575, 282, 4649, 314]}),
    );
    assert_eq!(r.json["content"], PROMPT);
    let r = w.post("/detokenize", &json!({"tokens": [1_000_000]}));
    assert_eq!(r.status, 400);
    assert_eq!(w.get("/nope").0, 404);
    // A known route with the wrong method: 405 with a JSON error and `Allow`.
    let (status, body) = w.get_json("/execute");
    assert_eq!(status, 405);
    assert_eq!(body["code"], "INVALID_REQUEST", "{body}");
}

#[test]
fn health_metrics_auth_and_correlation_ids() {
    let w = Worker::start_cmd(&["--slots", "3"], |cmd| {
        cmd.env("WORKER_API_KEY", "sekrit");
    });
    // /health needs no key and reports the model.
    let h = w.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["quant_kind"], "Q4_1");
    assert_eq!(h["tokenizer_kind"], "gpt2");
    assert_eq!(h["vocab_size"], 49152);
    assert_eq!(h["context_length"], 512);
    assert_eq!(h["slots_total"], 3);
    assert_eq!(h["slots_busy"], 0);
    assert!(h["memory_bytes"].as_u64().unwrap() > 50_000_000);
    assert!(h["uptime_seconds"].is_u64());
    // Everything else does.
    let body = json!({"job_id": "a", "prompt": PROMPT, "max_tokens": 2});
    let r = w.post("/execute", &body);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json["code"], "UNAUTHORIZED");
    let wrong = w.post_raw(
        "/execute",
        body.to_string().as_bytes(),
        &[("Authorization", "Bearer sekriT")],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(w.get("/metrics").0, 401);
    let r = w.post_raw(
        "/execute",
        body.to_string().as_bytes(),
        &[
            ("Authorization", "Bearer sekrit"),
            ("X-Correlation-Id", "corr-42"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.correlation_id.as_deref(), Some("corr-42"));
    let events = http_support::parse_sse(&r.text);
    assert_eq!(events[0].json()["correlation_id"], "corr-42");
    check_order(&events);
    assert!(w.logs().contains("corr-42"));
    // The scheme is case-insensitive (RFC 7235); the key is not.
    let r = w.post_raw(
        "/tokenize",
        b"{\"content\":\"hi\"}",
        &[("Authorization", "bearer sekrit")],
    );
    assert_eq!(r.status, 200);
    assert!(r.correlation_id.is_some());
    let r = w.post_raw(
        "/tokenize",
        b"{\"content\":\"hi\"}",
        &[("Authorization", "BEARER sekrit")],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_job_past_the_inference_timeout_ends_with_timeout() {
    let w = Worker::start(&["--slots", "1", "--inference-timeout-sec", "1"]);
    let t0 = Instant::now();
    // Greedy counting never ends before the context (512 positions) is full: a few seconds of
    // decoding at the least.
    let events = w.execute(&json!({
        "job_id": "slow", "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0,
    }));
    let elapsed = t0.elapsed();
    let (_, last) = check_order(&events);
    assert_eq!(last.name, "error", "{last:?}");
    assert_eq!(last.json()["code"], "TIMEOUT");
    assert_eq!(last.json()["retriable"], true);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    w.wait_idle();
    assert!(w.metrics().contains("outcome=\"timeout\"} 1"));
}
