//! Every tokenizer kind among the fixtures (GGUF byte-level BPE with each pre-tokenizer,
//! GGUF SentencePiece, HF tokenizer.json) on arbitrary text and arbitrary id sequences; the
//! first byte picks the tokenizer. The invariants are in `worker_tokenizer::fuzzing`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use worker_tokenizer::fuzzing::{check_tokenizer, load_tokenizer};
use worker_tokenizer::Tokenizer;

fn tokenizers() -> &'static [Box<dyn Tokenizer>] {
    static ALL: OnceLock<Vec<Box<dyn Tokenizer>>> = OnceLock::new();
    ALL.get_or_init(|| {
        worker_testdata::fuzz_tokenizer_files()
            .iter()
            .map(|p| load_tokenizer(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    })
}

// Load before the first input, so the load does not count against that input's timeout.
fuzz_target!(init: { tokenizers(); }, |data: &[u8]| {
    let all = tokenizers();
    if let Some((&pick, rest)) = data.split_first() {
        check_tokenizer(all[pick as usize % all.len()].as_ref(), rest);
    }
});
