//! gpt-oss's o200k tokenizer (its GGUF keys built from `tokenizer.json` as llama.cpp's
//! converter writes them: `worker_testdata::gptoss_vocab`) against llama.cpp on the tiny
//! gpt-oss model's vocabulary (`tests/golden/tokenizer/gptoss-llama-cpp.json`, made by
//! `scripts/goldens/make_tiny_model_goldens.py`): a varied corpus, every id equal and every
//! round trip exact; harmony markup with and without special-token parsing (llama.cpp always
//! parses `<|channel|>`, `<|message|>`, `<|start|>`, `<|constrain|>` and `<|end|>`, which it
//! makes user-defined tokens); the end-of-generation tokens (`<|return|>`, `<|call|>`,
//! `<|endoftext|>`, not `<|end|>`) and no BOS.

mod common;

use common::gptoss;
use serde_json::Value;
use worker_tokenizer::EncodeOptions;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/tokenizer/gptoss-llama-cpp.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gptoss_tokenizer_matches_llama_cpp_on_a_corpus() {
    common::check_llama_cpp_corpus("gpt-oss", gptoss(), &golden(), str::to_string);
}

#[test]
fn harmony_markup_end_of_generation_and_bos_follow_llama_cpp() {
    let g = golden();
    let tok = gptoss();
    for case in g["special"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let plain = tok.encode(text, EncodeOptions::PLAIN).unwrap();
        assert_eq!(
            plain,
            ids(&case["plain"]),
            "{text:?} without special parsing"
        );
        let parsed = EncodeOptions {
            add_special: false,
            parse_special: true,
        };
        assert_eq!(
            tok.encode(text, parsed).unwrap(),
            ids(&case["parsed"]),
            "{text:?} with special parsing"
        );
    }
    let eog: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&t| tok.is_eog(t))
        .collect();
    assert_eq!(eog, ids(&g["eog"]));
    assert_eq!(tok.adds_bos(), g["add_bos"].as_bool().unwrap());
    // The markers llama-server reads channels by come out as text, without asking.
    let markers = tok
        .encode("<|channel|>final<|message|>", EncodeOptions::PLAIN)
        .unwrap();
    assert_eq!(
        tok.decode(&markers, false).unwrap(),
        "<|channel|>final<|message|>"
    );
}
