//! The `tokenizer` and `chat_template` fuzz targets' entry functions on seeded pseudo-random
//! inputs, so a plain `cargo test` (no nightly, no cargo-fuzz) keeps their invariants on
//! every tokenizer kind and every chat template among the fixtures.

use std::path::PathBuf;

use worker_tokenizer::fuzzing::{
    check_template, check_tokenizer, load_chat_template, load_tokenizer,
};
use worker_tokenizer::Tokenizer;

/// Loads every file on its own thread: the big vocabularies take a second or two each.
fn load_all(files: Vec<PathBuf>) -> Vec<Box<dyn Tokenizer>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|p| {
                s.spawn(move || {
                    load_tokenizer(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load"))
            .collect()
    })
}

#[test]
fn tokenizers_keep_their_invariants_on_seeded_inputs() {
    let t0 = std::time::Instant::now();
    let tokenizers = load_all(worker_testdata::fuzz_tokenizer_files());
    eprintln!(
        "{} tokenizers loaded in {:?}",
        tokenizers.len(),
        t0.elapsed()
    );
    let inputs = worker_testdata::seeded_inputs(0x5eed_0002, 3000, 300);
    for (i, input) in inputs.iter().enumerate() {
        check_tokenizer(tokenizers[i % tokenizers.len()].as_ref(), input);
    }
    eprintln!("{} inputs in {:?}", inputs.len(), t0.elapsed());
}

#[test]
fn chat_templates_render_seeded_message_lists_without_panicking() {
    let t0 = std::time::Instant::now();
    let templates: Vec<_> = worker_testdata::chat_template_files()
        .iter()
        .map(|p| {
            load_chat_template(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .unwrap_or_else(|| panic!("{} has no chat template", p.display()))
        })
        .collect();
    eprintln!("{} templates loaded in {:?}", templates.len(), t0.elapsed());
    let inputs = worker_testdata::seeded_inputs(0x5eed_0003, 3000, 200);
    for (i, input) in inputs.iter().enumerate() {
        check_template(&templates[i % templates.len()], input);
    }
    eprintln!("{} inputs in {:?}", inputs.len(), t0.elapsed());
}
