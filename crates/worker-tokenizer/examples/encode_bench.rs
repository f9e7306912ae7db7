//! Encode throughput on ~1 MB of mixed text: ours (GGUF vocab) against the `tokenizers`
//! crate on the same vocabulary (tokenizer.json). A program, not a test:
//!
//!     cargo run --release -p worker-tokenizer --example encode_bench

use std::time::Instant;

use worker_tokenizer::{from_gguf, EncodeOptions, HfTokenizer};

const PIECES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. It's 2024, and we'll see 1,234,567 tokens.\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{v:?}\");\n}\n",
    "def tokenize(text):\n\treturn [ord(c) for c in text if not c.isspace()]  # naive\n",
    "我想在apple工作1314151天～ 東京都渋谷区で会いましょう。한국어 텍스트입니다.\n",
    "🚀 emoji 👩‍👩‍👧‍👦 family 🏳️‍🌈 and Café naïve résumé Ελληνικά Български\n",
    "    indented     with   runs    of spaces\t\tand tabs\n\n\n",
];

fn mixed_text(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 256);
    let mut i = 0usize;
    while s.len() < bytes {
        s.push_str(PIECES[i % PIECES.len()]);
        i = i.wrapping_mul(31).wrapping_add(7) % 1_000_003;
    }
    s
}

fn time<F: FnMut() -> usize>(mut f: F) -> (f64, usize) {
    f(); // warm up
    let mut best = f64::MAX;
    let mut n = 0;
    for _ in 0..5 {
        let t = Instant::now();
        n = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, n)
}

fn main() {
    let text = mixed_text(1 << 20);
    let mb = text.len() as f64 / 1e6;
    // Per-line encoding (what a server sees) and the whole text at once.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let cases = [
        (
            "llama-bpe",
            worker_testdata::vocab("llama-bpe"),
            worker_testdata::hf_tokenizer("llama3"),
        ),
        (
            "qwen2",
            worker_testdata::model(worker_testdata::QWEN25),
            worker_testdata::hf_tokenizer("qwen3"),
        ),
    ];
    println!(
        "{:.2} MB of mixed text, {} lines; best of 5",
        mb,
        lines.len()
    );
    for (name, gguf_path, hf_path) in cases {
        let file = worker_gguf::GgufFile::open(&gguf_path).unwrap();
        let ours = from_gguf(file.metadata()).unwrap();
        let hf = HfTokenizer::from_file(&hf_path).unwrap();
        let inner = hf.inner().clone();
        let (t_ours, n_ours) = time(|| ours.encode(&text, EncodeOptions::PLAIN).unwrap().len());
        let (t_hf, n_hf) = time(|| inner.encode_fast(text.as_str(), false).unwrap().len());
        let (l_ours, _) = time(|| {
            lines
                .iter()
                .map(|l| ours.encode(l, EncodeOptions::PLAIN).unwrap().len())
                .sum()
        });
        let (l_hf, _) = time(|| {
            lines
                .iter()
                .map(|l| inner.encode_fast(*l, false).unwrap().len())
                .sum()
        });
        println!(
            "{name:10} whole text: ours {:7.2} MB/s ({n_ours} ids)  tokenizers {:7.2} MB/s ({n_hf} ids)",
            mb / t_ours,
            mb / t_hf
        );
        println!(
            "{name:10} per line:   ours {:7.2} MB/s               tokenizers {:7.2} MB/s",
            mb / l_ours,
            mb / l_hf
        );
    }
}
