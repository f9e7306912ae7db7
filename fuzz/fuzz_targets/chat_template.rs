//! The chat templates of the fixtures (GGUF models and vocabularies, HF tokenizer_config.json)
//! rendered on arbitrary message lists; the first byte picks the template. The invariants are
//! in `worker_tokenizer::fuzzing`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use worker_tokenizer::fuzzing::{check_template, load_chat_template};
use worker_tokenizer::ChatTemplate;

fn templates() -> &'static [ChatTemplate] {
    static ALL: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    ALL.get_or_init(|| {
        worker_testdata::chat_template_files()
            .iter()
            .filter_map(|p| load_chat_template(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    })
}

// Load before the first input, so the load does not count against that input's timeout.
fuzz_target!(init: { templates(); }, |data: &[u8]| {
    let all = templates();
    if let Some((&pick, rest)) = data.split_first() {
        check_template(&all[pick as usize % all.len()], rest);
    }
});
