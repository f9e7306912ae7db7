//! Gemma-3-270M's SentencePiece tokenizer (262k pieces, no space prefix) against llama.cpp's
//! on the real model's vocabulary: a varied corpus tokenized by llama.cpp
//! (`tests/golden/tokenizer/gemma3-llama-cpp.json`, made by
//! `scripts/goldens/make_greedy_goldens.py`), every id equal, and every round trip exact
//! (U+2581 coming back as the space it stands for).

mod common;

use serde_json::Value;
use worker_tokenizer::from_gguf;

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
    // SentencePiece decodes U+2581 (its space marker) as a space, as llama.cpp does.
    common::check_llama_cpp_corpus("gemma3", tok.as_ref(), &golden, |t| {
        t.replace('\u{2581}', " ")
    });
}
