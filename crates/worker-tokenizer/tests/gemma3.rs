//! Gemma-3-270M's SentencePiece tokenizer (262k pieces, no space prefix) against llama.cpp's
//! on the real model's vocabulary: a varied corpus tokenized by llama.cpp
//! (`tests/golden/tokenizer/gemma3-llama-cpp.json`, made by
//! `scripts/goldens/make_greedy_goldens.py`), every id equal, and every round trip exact
//! (U+2581 coming back as the space it stands for).

use serde_json::Value;
use worker_tokenizer::{from_gguf, EncodeOptions};

#[test]
fn gemma3_tokenizer_matches_llama_cpp_on_a_corpus() {
    let path = format!(
        "{}/../../tests/golden/tokenizer/gemma3-llama-cpp.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let file =
        worker_gguf::GgufFile::open(worker_testdata::model(worker_testdata::GEMMA3)).unwrap();
    let tok = from_gguf(file.metadata()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, EncodeOptions::PLAIN).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // SentencePiece decodes U+2581 (its space marker) as a space, as llama.cpp does.
        let back = tok.decode(&got, true).unwrap();
        if back != text.replace('\u{2581}', " ") {
            failures.push(format!("round trip of {text:?} gave {back:?}"));
        }
    }
    eprintln!(
        "gemma3: {}/{} texts as llama.cpp",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(cases.len() >= 400, "{} texts", cases.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
