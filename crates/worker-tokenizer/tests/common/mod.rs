//! Shared helpers: fixture tokenizers, the test corpus, a small deterministic PRNG.

#![allow(dead_code)]

use std::sync::OnceLock;

use worker_tokenizer::{from_gguf, HfTokenizer, Tokenizer};

pub fn gguf_vocab(name: &str) -> Box<dyn Tokenizer> {
    let file = worker_gguf::GgufFile::open(worker_testdata::vocab(name)).unwrap();
    from_gguf(file.metadata()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn qwen25() -> &'static dyn Tokenizer {
    static T: OnceLock<Box<dyn Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let file =
            worker_gguf::GgufFile::open(worker_testdata::model(worker_testdata::QWEN25)).unwrap();
        from_gguf(file.metadata()).unwrap()
    })
    .as_ref()
}

/// gpt-oss's o200k vocabulary as a GGUF tokenizer (built from its `tokenizer.json` as
/// llama.cpp's converter does: `worker_testdata::gptoss_vocab`).
pub fn gptoss() -> &'static dyn Tokenizer {
    static T: OnceLock<Box<dyn Tokenizer>> = OnceLock::new();
    T.get_or_init(|| from_gguf(worker_testdata::gptoss_vocab().metadata()).unwrap())
        .as_ref()
}

/// Every case of a llama.cpp corpus golden (`{"cases": [{"text", "ids"}]}`, made by the golden
/// scripts) through `tok`: llama.cpp's ids (plain text: no BOS, special tokens not parsed),
/// and a decode giving back `back(text)`. Fails listing every difference.
pub fn check_llama_cpp_corpus(
    name: &str,
    tok: &dyn Tokenizer,
    golden: &serde_json::Value,
    back: impl Fn(&str) -> String,
) {
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
        let got = tok
            .encode(text, worker_tokenizer::EncodeOptions::PLAIN)
            .unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        let decoded = tok.decode(&got, true).unwrap();
        if decoded != back(text) {
            failures.push(format!("round trip of {text:?} gave {decoded:?}"));
        }
    }
    eprintln!(
        "{name}: {}/{} texts as llama.cpp",
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

pub fn hf(name: &str) -> HfTokenizer {
    HfTokenizer::from_file(worker_testdata::hf_tokenizer(name)).unwrap()
}

/// xorshift64*: deterministic, so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Hand-written seeds, one or more per category the corpus must cover.
const SEEDS: &[&str] = &[
    // code
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "def f(x):\n\treturn x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] >> 2; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "<div class=\"row\"><span>{{ value | safe }}</span></div>",
    "const x = arr.map((v) => v?.id ?? -1).filter(Boolean);",
    "#include <stdio.h>\r\nint main(void){return 0;}\r\n",
    "$ cargo test -p worker-tokenizer -- --nocapture 2>&1 | tee log.txt",
    "    if err != nil {\n        return fmt.Errorf(\"open %s: %w\", path, err)\n    }",
    // CJK
    "我想在apple工作1314151天～",
    "東京都渋谷区で午前９時に会いましょう。",
    "한국어 텍스트와 English가 섞여 있습니다.",
    "中文，標點符號！還有「引號」和《書名》。",
    // emoji, ZWJ sequences, flags, skin tones, variation selectors
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, ❤️ heart",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
    "🇩🇪🇫🇷🇯🇵 and 🧑🏿‍💻 coder",
    // combining marks and NFD text
    "Cafe\u{301} nai\u{308}ve re\u{301}sume\u{301}",
    "A\u{30A}ngstro\u{308}m, n\u{303}and\u{FA}, Zu\u{308}rich",
    "e\u{301}\u{301}\u{301} stacked, a\u{20DD} enclosed, Z\u{335}\u{317}a\u{336}l\u{334}g\u{337}o\u{338}",
    "한 (precomposed) vs \u{1112}\u{1161}\u{11AB} (jamo)",
    "Ω vs \u{2126} (ohm), K vs \u{212A} (kelvin), ﬁ ligature",
    // scripts
    "нещо на Български, Ελληνικά κείμενα, עברית, العربية",
    "កាន់តែពិសេសអាច हिन्दी में लिखा गया ไทย",
    "Cửa Việt, Tiếng Việt có dấu",
    // whitespace runs
    "a  b   c    d\t\te\n\n\nf",
    "   leading and trailing   ",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
    "tabs\t\t\tand\u{a0}nbsp\u{2003}em\u{3000}ideographic",
    "line\r\nwindows\rmac\u{2028}ls\u{2029}ps\u{85}nel",
    // numbers
    "3 33 333 3333 33333 333333 3333333 33333333",
    "3.3 3..3 3...3 1,234,567.89 -0.5e-10 0xDEADBEEF 1/2 ½ ² ٣٤٥ ६७",
    "Phone: +1 (555) 010-9999, date 2024-03-15T12:34:56Z",
    // contractions
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "don't won't can't shan't y'all o'clock rock'n'roll 'tis",
    "IT'S THEY'RE WE'LL I'D YOU'VE",
    // special-token look-alikes
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|> <s> </s> <unk> [INST] [/INST]",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>",
    "<tool_call>{\"name\": \"f\"}</tool_call> <think>hmm</think>",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "<|im_start <|im_end| |im_end|> <||> <|>",
    // punctuation and symbols
    "''''''```````\"\"\"\"......!!!!!!?????? ------=======",
    "¡Hola! ¿Qué tal? «guillemets» „Anführung“ — dash – en",
    "€100 £50 ¥1000 ₿0.1 © ® ™ § ¶ † ‡ • … ‰",
    "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x| ∑ ∫ ∂ ∞ ≈ ≠",
    // misc
    "Hello world",
    " Hello World!",
    "ied 4 ½ months",
    "Äpfel über Öl",
    "",
    " ",
    "\u{FEFF}BOM and \u{200B}zero\u{200C}width\u{200D}joiners",
    "mixed: abc123def456 αβγ789 ＡＢＣ１２３",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
];

/// At least 1,000 strings: the seeds, then random joins of seed pieces with random
/// separators (so runs of whitespace, digits and scripts meet at every kind of boundary).
pub fn corpus() -> &'static [String] {
    static C: OnceLock<Vec<String>> = OnceLock::new();
    C.get_or_init(|| {
        let mut out: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
        let seps = [
            "", " ", "  ", "\n", "\n\n", "\t", " \n ", "   ", "\r\n", "\u{3000}", "1", "'s ", "!",
        ];
        let mut rng = Rng::new(0x5EED);
        while out.len() < 1200 {
            let mut s = String::new();
            for _ in 0..1 + rng.below(4) {
                let seed = rng.pick(SEEDS);
                let chars: Vec<char> = seed.chars().collect();
                let a = rng.below(chars.len() + 1);
                let b = a + rng.below(chars.len() + 1 - a);
                s.extend(&chars[a..b]);
                let sep: &&str = rng.pick(&seps[..]);
                s.push_str(sep);
            }
            out.push(s);
        }
        out
    })
}
