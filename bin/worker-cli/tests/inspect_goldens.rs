//! `worker-cli inspect --json` on the fixture models and on the tiny gpt-oss model (MoE
//! tensors of three dimensions, MXFP4) agrees with gguf-py's `gguf-dump` and `GGUFReader`
//! (goldens made by `scripts/goldens/make_inspect_goldens.py`) on every metadata key, type
//! and value, and on every tensor's type, shape, data offset and size.

#[path = "../../../crates/worker-models/tests/support/tiny_arch.rs"]
mod tiny_arch;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use worker_testdata::{model, GEMMA3, QWEN25, SMOLLM2};

fn golden(model_file: &str) -> Value {
    let golden_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/inspect")
        .join(model_file.replace(".gguf", ".json"));
    serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap()
}

fn check(model_file: &str) {
    check_file(&model(model_file), &golden(model_file));
}

fn check_file(path: &Path, golden: &Value) {
    let model_file = path.display();
    let out = Command::new(env!("CARGO_BIN_EXE_worker-cli"))
        .arg("inspect")
        .arg("--json")
        .arg(path)
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
fn tiny_gpt_oss_matches_gguf_dump() {
    let bytes = tiny_arch::tiny_model("gpt-oss", &tiny_arch::vocab("gpt-oss"), &Default::default());
    let golden = golden("tiny-gpt-oss.gguf");
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        golden["model_sha256"].as_str().unwrap(),
        "the tiny gpt-oss model is not the one the golden describes; rerun \
         scripts/goldens/make_inspect_goldens.py"
    );
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inspect-tiny-gpt-oss.gguf");
    std::fs::write(&path, bytes).unwrap();
    check_file(&path, &golden);
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
