//! `worker-cli inspect --json` on both fixture models agrees with gguf-py's `gguf-dump` and
//! `GGUFReader` (goldens made by `scripts/goldens/make_inspect_goldens.py`) on every metadata
//! key, type and value, and on every tensor's type, shape, data offset and size.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use worker_testdata::{model, GEMMA3, QWEN25, SMOLLM2};

fn check(model_file: &str) {
    let golden_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/inspect")
        .join(model_file.replace(".gguf", ".json"));
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-cli"))
        .arg("inspect")
        .arg("--json")
        .arg(model(model_file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(ours["version"], golden["version"]);
    assert_eq!(ours["data_offset"], golden["data_offset"]);
    let (ours_md, golden_md) = (
        ours["metadata"].as_array().unwrap(),
        golden["metadata"].as_array().unwrap(),
    );
    assert_eq!(ours_md.len(), golden_md.len(), "{model_file}: key count");
    for (a, b) in ours_md.iter().zip(golden_md) {
        assert_eq!(a, b, "{model_file}: metadata entry differs");
    }
    let (ours_t, golden_t) = (
        ours["tensors"].as_array().unwrap(),
        golden["tensors"].as_array().unwrap(),
    );
    assert_eq!(ours_t.len(), golden_t.len(), "{model_file}: tensor count");
    for (a, b) in ours_t.iter().zip(golden_t) {
        assert_eq!(a, b, "{model_file}: tensor differs");
    }
}

#[test]
fn smollm2_matches_gguf_dump() {
    check(SMOLLM2);
}

#[test]
fn qwen25_matches_gguf_dump() {
    check(QWEN25);
}

#[test]
fn gemma3_matches_gguf_dump() {
    check(GEMMA3);
}

#[test]
fn bad_file_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("not-gguf-{}.gguf", std::process::id()));
    std::fs::write(&path, b"GGML not a gguf file").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-cli"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF file"), "{err}");
}
