//! GGUF tokenizer metadata built from an HF `tokenizer.json`, as llama.cpp's converter writes
//! it (`convert_hf_to_gguf.py`, `_set_vocab_gpt2` and gguf-py's `SpecialVocab`), for the models
//! whose vocabulary reaches us only as `tokenizer.json` (gpt-oss's o200k).
//!
//! What the converter writes for a byte-level BPE vocabulary: `tokenizer.ggml.model` = `gpt2`,
//! `tokenizer.ggml.pre` (the name its pre-tokenizer hash maps to), one token per id up to the
//! model's vocabulary size (ids the tokenizer lacks become `[PAD{id}]`, type UNUSED), token
//! types (NORMAL; added tokens CONTROL when special, else USER_DEFINED), the merges as
//! `"left right"` strings, and the BOS, EOS and padding ids of `tokenizer_config.json`'s
//! `bos_token`, `eos_token` and `pad_token` (plus `add_bos_token` / `add_eos_token` where that
//! file sets them).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;
use worker_gguf::{Array, GgufFile, GgufWriter, Value};

/// gguf-py's `TokenType` values.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `tokenizer.*` keys for the byte-level BPE `tokenizer.json` at `tokenizer` (with its
/// `tokenizer_config.json` beside it), pre-tokenizer `pre`, padded to `vocab_size` tokens.
///
/// Panics on a file that is not a byte-level BPE `tokenizer.json`: it is for tests, where a
/// broken fixture must fail loudly.
pub fn gguf_bpe_keys(tokenizer: &Path, pre: &str, vocab_size: usize) -> Vec<(String, Value)> {
    let json = read_json(tokenizer);
    let config = read_json(&tokenizer.with_file_name("tokenizer_config.json"));
    let model = &json["model"];
    assert_eq!(
        model["type"],
        "BPE",
        "{}: not a BPE model",
        tokenizer.display()
    );
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, text: &str, ty: i32| {
        let slot = tokens
            .get_mut(id as usize)
            .unwrap_or_else(|| panic!("token id {id} beyond the vocabulary size {vocab_size}"));
        *slot = Some((text.to_string(), ty));
    };
    for (text, id) in model["vocab"].as_object().expect("model.vocab") {
        put(id.as_u64().expect("a token id"), text, NORMAL);
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    for t in json["added_tokens"].as_array().expect("added_tokens") {
        let (id, text) = (
            t["id"].as_u64().expect("id"),
            t["content"].as_str().expect("content"),
        );
        let special = t["special"].as_bool().unwrap_or(false);
        put(id, text, if special { CONTROL } else { USER_DEFINED });
        ids.insert(text.to_string(), id as u32);
    }
    let (texts, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED)))
        .unzip();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .expect("model.merges")
        .iter()
        .map(|m| match m {
            Json::String(s) => s.clone(),
            Json::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().expect("merge part"),
                pair[1].as_str().expect("merge part")
            ),
            other => panic!("a merge that is neither a string nor a pair: {other}"),
        })
        .collect();
    let mut keys = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(Array::String(texts)),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(Array::String(merges)),
        ),
    ];
    for (field, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(id) = config[field].as_str().and_then(|t| ids.get(t)) {
            keys.push((format!("tokenizer.ggml.{key}"), Value::U32(*id)));
        }
    }
    for flag in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = config[flag].as_bool() {
            keys.push((format!("tokenizer.ggml.{flag}"), Value::Bool(b)));
        }
    }
    keys
}

/// gpt-oss's vocabulary (o200k with the harmony tokens, `tokenizers/gptoss`) as a GGUF holding
/// only its `tokenizer.*` keys, padded to the released models' 201088 tokens, pre-tokenizer
/// `gpt-4o` (the name llama.cpp's converter gives its pre-tokenizer hash).
pub fn gptoss_vocab() -> GgufFile {
    let mut w = GgufWriter::new();
    for (k, v) in gguf_bpe_keys(&crate::hf_tokenizer("gptoss"), "gpt-4o", GPTOSS_VOCAB_SIZE) {
        w.set(&k, v);
    }
    GgufFile::from_bytes(w.to_bytes().expect("a GGUF of metadata only"))
        .expect("the GGUF just written")
}

/// Tokens in gpt-oss's GGUF: its `config.json` `vocab_size` (the tokenizer's 200019 ids,
/// padded).
pub const GPTOSS_VOCAB_SIZE: usize = 201_088;
