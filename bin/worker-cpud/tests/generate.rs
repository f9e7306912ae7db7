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

/// The weights are held once: after the load the backend owns its copy and the file's memory
/// map is released, so the peak resident memory stays within the file plus the KV cache plus
/// 10%, plus a fixed allowance. Holding the weights twice (the map's pages beside the copy)
/// adds the whole file, 94 MiB for SmolLM2, well past both.
#[cfg(target_os = "linux")]
#[test]
fn generate_holds_the_weights_once() {
    const MIB: u64 = 1 << 20;
    // What a run needs beside the weights and the KV cache, 47 MiB at the peak on SmolLM2
    // (measured with heaptrack and /proc): the activation buffers of a 512-token prefill
    // chunk (15 MiB), the tokenizer (8 MiB), the file's parsed metadata (3 MiB, dropped with
    // the file), and about 20 MiB of code, libc, thread stacks, allocator overhead and the
    // file's mapped header. Those 47 MiB fit in the 10% and this allowance together with
    // 12 MiB to spare; a second copy of the weights (94 MiB) does not.
    const ALLOWANCE: u64 = 48 * MIB;
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let file_bytes = std::fs::metadata(&model).expect("model file").len();
    // A short context keeps the KV cache small, so the bound stays tight around the weights
    // whether or not the backend makes the whole cache resident up front.
    let out = worker()
        .args(["generate", "--prompt", "The capital of France is"])
        .args(["--temperature", "0", "--max-tokens", "8", "--threads", "2"])
        .args(["--ctx-size", "256", "--json"])
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run worker-cpud");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let bytes = |key: &str| v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"));
    // The pool: 30 layers x 256 positions x 3 KV heads x (64 + 64) widths x 2 bytes (f16).
    assert_eq!(bytes("kv_cache_bytes"), 30 * 256 * 3 * 128 * 2);
    let (peak, rss) = (bytes("peak_rss_bytes"), bytes("rss_bytes"));
    assert!(0 < rss && rss <= peak, "{v}");
    let bound = (file_bytes + bytes("kv_cache_bytes")) * 11 / 10 + ALLOWANCE;
    assert!(
        peak <= bound,
        "peak resident memory {:.1} MiB over the bound {:.1} MiB (file {:.1} MiB, KV cache \
         {:.1} MiB, +10%, +{} MiB)",
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        file_bytes as f64 / MIB as f64,
        bytes("kv_cache_bytes") as f64 / MIB as f64,
        ALLOWANCE / MIB,
    );
    for key in ["load_ms", "first_token_ms"] {
        assert!(v[key].as_f64().is_some_and(|ms| ms > 0.0), "{key} in {v}");
    }
}
