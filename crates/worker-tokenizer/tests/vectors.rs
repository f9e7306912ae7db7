//! llama.cpp's tokenizer test vectors: every `.inp`/`.out` pair that ships with the vocab
//! files of a tokenizer we support must pass 100%, with `add_special` and `parse_special`
//! off as in llama.cpp's `test-tokenizer-0`.

use worker_tokenizer::{from_gguf, EncodeOptions, Tokenizer};

/// Vocabularies with vectors whose tokenizer we implement.
const SUPPORTED: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "phi-3",
    "qwen2",
    "qwen35",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
    "mpt",
    "starcoder",
    "refact",
    "command-r",
    "gemma-4",
];

fn load(name: &str) -> Box<dyn Tokenizer> {
    let path = worker_testdata::vocab(name);
    let file = worker_gguf::GgufFile::open(&path).unwrap();
    from_gguf(file.metadata()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    let path = worker_testdata::vocab(name);
    let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
    // Texts are separated by the marker; most files also end with it (gemma-4's does not).
    let inp = inp.strip_suffix("\n__ggml_vocab_test__\n").unwrap_or(&inp);
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: .inp and .out differ in length"
    );
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn llama_cpp_vectors_pass() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for &name in SUPPORTED {
        let tok = load(name);
        let cases = vectors(name);
        let mut pass = 0;
        for (text, want) in &cases {
            let got = tok.encode(text, EncodeOptions::PLAIN).unwrap();
            if &got == want {
                pass += 1;
            } else {
                failures.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"));
            }
            // Decoding gives the text back (SentencePiece turns U+2581 into a space).
            let back = tok.decode(&got, true).unwrap();
            assert_eq!(
                back,
                text.replace('\u{2581}', " "),
                "{name}: round trip of {text:?}"
            );
        }
        report.push(format!("{name}: {pass}/{}", cases.len()));
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A vocab file whose tokenizer we do not implement (BERT's WordPiece) is refused with a
/// clear error.
#[test]
fn unsupported_vocabs_are_errors() {
    let path = worker_testdata::vocab("bert-bge");
    let file = worker_gguf::GgufFile::open(&path).unwrap();
    let err = from_gguf(file.metadata())
        .err()
        .expect("bert-bge")
        .to_string();
    assert!(err.contains("unsupported tokenizer model"), "{err}");
}
