//! End-to-end on the adapter wgpu finds (lavapipe in CI): `worker-aarmd serve` sends the
//! ready callback and answers `/health` with its type, the adapter and where its memory
//! lives, and serves a completion through the same routes as the other workers (its tokens
//! are checked against the CPU backend's in worker-compute-wgpu's tests).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

#[test]
fn serve_reports_the_adapter_and_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let receiver = std::thread::spawn(move || {
        worker_testdata::receive_one_request(listener, |_, body| {
            serde_json::from_slice::<Value>(body).expect("JSON payload")
        })
    });
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_worker-aarmd"))
        .args([
            "serve",
            "--port",
            "0",
            "--ctx-size",
            "256",
            "--worker-id",
            "g-1",
        ])
        .arg("--model")
        .arg(&model)
        .args(["--callback-url", &url])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker-aarmd serve");
    let stdout = child.stdout.take().unwrap();
    let base = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string));
    let Some(base) = base else {
        let _ = child.kill();
        panic!("worker-aarmd serve did not start");
    };
    let payload = receiver.join().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let health: Value = {
        let mut r = agent.get(&format!("{base}/health")).call().unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    let request = json!({
        "prompt": "The capital of France is",
        "max_tokens": 3,
        "temperature": 0,
    });
    let completion = agent
        .post(&format!("{base}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(request.to_string().as_bytes())
        .map(|mut r| {
            let body = r.body_mut().read_to_string().unwrap();
            (r.status().as_u16(), serde_json::from_str::<Value>(&body))
        });
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(payload["worker_id"], "g-1");
    assert_eq!(payload["worker_type"], "wgpu");
    let name = payload["device"]["name"]
        .as_str()
        .expect("the adapter's name");
    assert!(!name.is_empty());
    assert!(
        ["vulkan", "metal", "dx12"].contains(&payload["device"]["backend"].as_str().unwrap()),
        "{payload}"
    );
    // lavapipe is a software adapter: its memory is the host's.
    let memory = payload["memory_architecture"].as_str().unwrap();
    assert!(
        ["host", "unified", "vram-only"].contains(&memory),
        "{payload}"
    );
    if name.starts_with("llvmpipe") {
        assert_eq!(memory, "host");
    }
    for key in ["worker_type", "memory_architecture", "device"] {
        assert_eq!(
            health[key], payload[key],
            "health and callback agree on {key}"
        );
    }
    let (status, body) = completion.expect("completion");
    let body = body.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3, "{body}");
    assert!(!body["choices"][0]["text"].as_str().unwrap().is_empty());
}
