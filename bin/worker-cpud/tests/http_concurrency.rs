//! End-to-end: many concurrent streams on a few slots, cancels and disconnects mid-stream,
//! and the bounded queue of `worker-cpud serve`.

mod http_support;

use std::sync::Arc;
use std::time::Instant;

use http_support::{check_order, Worker};
use serde_json::json;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time",
    "The best way to learn Rust is",
    "1, 2, 3, 4,",
    "My favourite colour is",
    "Water boils at",
    "The quick brown fox",
    "In the beginning",
];

fn body(job_id: &str, prompt: &str, max_tokens: usize) -> serde_json::Value {
    json!({"job_id": job_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

#[test]
fn thirty_two_concurrent_streams_equal_the_same_requests_alone() {
    // Four slots, so decode steps run four sequences through the matmul's four-row kernels:
    // those sum each row exactly as the one-row kernels do (checked bit for bit in
    // worker-compute's kernel tests), so a request's greedy text does not depend on what else
    // is in the batch.
    let w = Arc::new(Worker::start(&["--slots", "4", "--threads", "2"]));
    let mut tokens_out = 0;
    let alone: Vec<String> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (text, last) = check_order(&w.execute(&body(&format!("alone-{i}"), p, 8)));
            assert_eq!(last.name, "end");
            tokens_out += last.json()["tokens_out"].as_u64().unwrap();
            text
        })
        .collect();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..32)
        .map(|n| {
            let w = w.clone();
            std::thread::spawn(move || {
                let p = PROMPTS[n % PROMPTS.len()];
                let events = w.execute(&body(&format!("c-{n}"), p, 8));
                let (text, last) = check_order(&events);
                (n, text, last)
            })
        })
        .collect();
    let mut max_busy = 0;
    for h in handles {
        let (n, text, last) = h.join().expect("stream thread");
        assert_eq!(last.name, "end", "stream {n}: {last:?}");
        assert_eq!(text, alone[n % PROMPTS.len()], "stream {n}");
        tokens_out += last.json()["tokens_out"].as_u64().unwrap();
        max_busy = max_busy.max(w.health()["slots_busy"].as_u64().unwrap());
    }
    eprintln!(
        "32 concurrent streams of 8 tokens on 4 slots: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let h = w.wait_idle();
    assert_eq!(h["slots_total"], 4);
    let metrics = w.metrics();
    assert!(
        metrics.contains("worker_requests_total{route=\"execute\",outcome=\"ok\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("worker_generated_tokens_total {tokens_out}")),
        "{metrics}"
    );

    // Cancels and disconnects mid-stream leave no busy slot behind: seven long streams, four
    // in the slots (each has sent a token) and three queued; cancel 0, 1 and 4 (queued),
    // drop the connections of 2, 3, 5 and 6.
    let mut streams: Vec<_> = (0..7)
        .map(|n| w.execute_stream(&body(&format!("m-{n}"), PROMPTS[n], 300)))
        .collect();
    for (n, s) in streams.iter_mut().enumerate() {
        assert_eq!(s.next_event().unwrap().name, "started");
        if n < 4 {
            assert_eq!(s.next_event().unwrap().name, "token");
        }
    }
    assert_eq!(w.health()["queue_depth"], 3);
    for n in [0, 1, 4] {
        let r = w.post("/cancel", &json!({"job_id": format!("m-{n}")}));
        assert_eq!(r.status, 202);
    }
    let mut kept = Vec::new();
    for (n, mut s) in streams.into_iter().enumerate() {
        if [0, 1, 4].contains(&n) {
            let mut last = None;
            while let Some(e) = s.next_event() {
                last = Some(e);
            }
            assert_eq!(last.unwrap().json()["code"], "CANCELLED", "stream {n}");
        } else {
            kept.push(s);
        }
    }
    drop(kept);
    let h = w.wait_idle();
    assert_eq!(h["slots_busy"], 0);
    let metrics = w.metrics();
    assert!(metrics.contains("worker_slots_busy 0"), "{metrics}");
    assert!(metrics.contains("worker_queue_depth 0"), "{metrics}");
    assert!(metrics.contains("outcome=\"cancelled\"} 3"), "{metrics}");
    assert!(metrics.contains("outcome=\"disconnected\"} 4"), "{metrics}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let w = Worker::start(&["--slots", "1", "--max-queue", "1"]);
    let mut running = w.execute_stream(&body("q-0", PROMPTS[0], 300));
    assert_eq!(running.next_event().unwrap().name, "started");
    let _waiting = w.execute_stream(&body("q-1", PROMPTS[1], 300));
    let h = w.health();
    assert_eq!(
        (h["slots_busy"].as_u64(), h["queue_depth"].as_u64()),
        (Some(1), Some(1))
    );
    let r = w.post("/execute", &body("q-2", PROMPTS[2], 4));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(r.json["code"], "QUEUE_FULL");
    assert_eq!(r.json["retriable"], true);
    let r = w.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 2}));
    assert_eq!(r.status, 503);
    assert_eq!(r.json["error"]["code"], "queue_full");
    // A job id in use is refused.
    let r = w.post("/execute", &body("q-0", PROMPTS[0], 4));
    assert!(r.status == 400 || r.status == 503, "{}", r.text);
    for id in ["q-0", "q-1"] {
        w.post("/cancel", &json!({"job_id": id}));
    }
    w.wait_idle();
    let (text, last) = check_order(&w.execute(&body("q-3", PROMPTS[0], 2)));
    assert_eq!(last.name, "end");
    assert!(!text.is_empty());
}
