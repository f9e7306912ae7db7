//! End-to-end: start-up (ready callback) and shutdown (SIGTERM) of `worker-cpud serve`.

mod http_support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use http_support::{agent, Worker};
use serde_json::{json, Value};

/// Receives the ready callback on `listener`; before answering it, asks the worker named in
/// the payload for /health. Returns the payload, that /health status and the request line.
fn receive_callback(listener: TcpListener) -> (Value, u16, String) {
    worker_testdata::receive_one_request(listener, |request_line, body| {
        let payload: Value = serde_json::from_slice(body).expect("JSON payload");
        let uri = payload["uri"].as_str().expect("uri").to_string();
        let health = agent()
            .get(&format!("{uri}/health"))
            .call()
            .map_or(0, |r| r.status().as_u16());
        (payload, health, request_line.to_string())
    })
}

#[test]
fn ready_callback_arrives_after_the_server_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let receiver = std::thread::spawn(move || receive_callback(listener));
    let w = Worker::start_cmd(&["--worker-id", "w-7", "--slots", "2"], |cmd| {
        cmd.env("WORKER_CALLBACK_URL", &url);
    });
    let (payload, health, request_line) = receiver.join().unwrap();
    assert!(request_line.starts_with("POST /ready "), "{request_line}");
    assert_eq!(
        health, 200,
        "the worker answered /health during the callback"
    );
    assert_eq!(payload["worker_id"], "w-7");
    assert!(payload["model_ref"]
        .as_str()
        .unwrap()
        .ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(payload["memory_architecture"], "host");
    assert_eq!(payload["worker_type"], "cpu");
    assert!(payload["memory_bytes"].as_u64().unwrap() > 50_000_000);
    assert_eq!(payload["uri"], w.base.as_str());
    let caps: Vec<&str> = payload["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        caps.contains(&"execute") && caps.contains(&"openai"),
        "{caps:?}"
    );
    let health = w.health();
    for key in ["memory_bytes", "memory_architecture", "worker_type"] {
        assert_eq!(
            health[key], payload[key],
            "health and callback agree on {key}"
        );
    }
}

#[test]
fn a_failed_callback_exits_1_with_a_clear_line() {
    // Nothing listens on a port we bound and closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let out = http_support::bin()
        .args(["serve", "--port", "0", "--threads", "1", "--ctx-size", "64"])
        .args(["--callback-url", &format!("http://127.0.0.1:{port}/ready")])
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ready callback"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sigterm_ends_open_streams_and_exits_0_within_5_s() {
    // A short drain that a 2000-token greedy stream (no end-of-text before its limit)
    // outlives on any machine slower than 4000 tokens/s: it ends with SHUTTING_DOWN.
    let mut w = Worker::start(&["--slots", "2", "--drain-timeout-sec", "0.5"]);
    let mut stream = w.execute_stream(&json!({
        "job_id": "open", "prompt": "Once upon a time", "max_tokens": 2000,
        "temperature": 0,
    }));
    for _ in 0..3 {
        stream.next_event().unwrap();
    }
    let t0 = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut last = None;
    while let Some(e) = stream.next_event() {
        last = Some(e);
    }
    let last = last.expect("a terminal event");
    assert_eq!(last.name, "error", "{last:?}");
    assert_eq!(last.json()["code"], "SHUTTING_DOWN");
    assert_eq!(last.json()["retriable"], true);
    let status = loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "exited {status} {:.0} ms after SIGTERM",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(status.success(), "{status}: {}", w.logs());
}

/// During the drain after SIGTERM, /health says "draining" (503) and new requests get 503
/// with Retry-After, while open streams run to their own end; the worker exits 0 as soon as
/// they have, before the drain timeout.
#[test]
fn sigterm_drains_open_streams_then_exits_0() {
    let mut w = Worker::start(&["--slots", "2", "--drain-timeout-sec", "3"]);
    assert_eq!(w.get("/health").0, 200);
    let mut stream = w.execute_stream(&json!({
        "job_id": "short", "prompt": "Once upon a time", "max_tokens": 48,
        "temperature": 0,
    }));
    assert_eq!(stream.next_event().unwrap().name, "started");
    let t0 = Instant::now();
    w.sigterm();
    let draining = loop {
        let (status, health) = w.get_json("/health");
        if status == 503 {
            break health;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "/health still {status}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(draining["status"], "draining", "{draining}");
    for (path, body) in [
        (
            "/execute",
            json!({"job_id": "late", "prompt": "Hi", "max_tokens": 2}),
        ),
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2})),
    ] {
        let r = w.post(path, &body);
        assert_eq!(r.status, 503, "{path}: {}", r.text);
        assert_eq!(r.retry_after.as_deref(), Some("1"), "{path}");
    }
    let mut names = Vec::new();
    while let Some(e) = stream.next_event() {
        names.push(e.name);
    }
    assert_eq!(names.last().map(String::as_str), Some("end"), "{names:?}");
    let status = loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", w.logs());
}
