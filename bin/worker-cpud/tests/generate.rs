//! End-to-end: the real `worker-cpud` binary generating on SmolLM2.

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-cpud"))
}

#[test]
fn generate_json_greedy_paris() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let out = worker()
        .args(["generate", "--prompt", "The capital of France is"])
        .args([
            "--temperature",
            "0",
            "--max-tokens",
            "6",
            "--threads",
            "2",
            "--json",
        ])
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run worker-cpud");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(
        v["prompt_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    assert_eq!(v["ids"].as_array().map(Vec::len), Some(6));
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"), "{v}");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn generate_streams_text_and_reads_flags_from_env() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let out = worker()
        .arg("generate")
        .env("WORKER_MODEL", &model)
        .env("WORKER_PROMPT", "The capital of France is")
        .env("WORKER_TEMPERATURE", "0")
        .env("WORKER_MAX_TOKENS", "3")
        .env("WORKER_THREADS", "2")
        .output()
        .expect("run worker-cpud");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(" Paris"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let cases: [(&[&str], &str); 3] = [
        (
            &["--model", "/nonexistent.gguf", "--prompt", "x"],
            "/nonexistent.gguf",
        ),
        (&["--prompt", ""], "empty"),
        (&["--prompt", "x", "--ctx-size", "1"], "context"),
    ];
    for (args, needle) in cases {
        let mut cmd = worker();
        cmd.arg("generate").env("WORKER_MODEL", &model).args(args);
        let out = cmd.output().expect("run worker-cpud");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn check_reports_the_model() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let out = worker()
        .arg("check")
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run worker-cpud");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama architecture"));
}
