//! Pre-tokenizers for byte-level BPE: the text is cut into words before merges run, by the
//! list of splitters llama.cpp uses for each `tokenizer.ggml.pre` (see `llm_tokenizer_bpe` in
//! llama.cpp's `src/llama-vocab.cpp`).
//!
//! Each step splits every current piece further; the parts a step's pattern does not match
//! stay as pieces of their own, as in llama.cpp's `unicode_regex_split`. The common patterns
//! (GPT-2, Llama 3, Qwen2, single digits) are hand-written splitters over code point classes;
//! the rest run through `fancy-regex`.

use crate::error::{Result, TokenizerError};
use crate::unicode::{flags, LETTER, NUMBER, WHITESPACE};

/// GPT-2's pattern. llama.cpp dispatches this exact string to a hand-written splitter.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen 3.5's pattern (Qwen2's with combining marks joined to letters).
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o's (o200k: gpt-oss) pattern as llama.cpp runs it. The `tokenizer.json` has
/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+` for a word's capitalized and
/// lower-case runs; llama.cpp rewrote them as "a letter that is not a-z" and "a letter that is
/// not A-Z", since its regex engine knows only `\p{L}`. So llama.cpp (and this worker) differ
/// from HF `tokenizers` where a word holds a non-ASCII cased letter (each counts as both
/// cases) or a combining mark (not part of the word): a quirk kept, as for every GGUF
/// vocabulary, and measured in `tests/corpus.rs`.
const GPT4O: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

enum Step {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3 (`max_digits` 3) and Qwen2 (`max_digits` 1):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3 { max_digits: usize },
    /// `\p{N}`: every number character alone.
    Digits,
    /// Any other pattern.
    Regex(Box<fancy_regex::Regex>),
}

/// A pre-tokenizer: an ordered list of splitting steps.
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
}

fn regex(pattern: &str) -> Result<Step> {
    fancy_regex::Regex::new(pattern)
        .map(|r| Step::Regex(Box::new(r)))
        .map_err(|e| TokenizerError::Regex(format!("{pattern}: {e}")))
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` = `pre`.
    ///
    /// Unknown names are an error (llama.cpp refuses them too); a missing `pre` is handled by
    /// the caller, which falls back to `default` with a warning as llama.cpp does.
    pub(crate) fn for_pre(pre: &str) -> Result<Self> {
        let steps = match pre {
            "default" => vec![
                regex(r"[\p{P}\$\+<=>\^~\|]+")?,
                Step::Gpt2,
                regex(r"\p{N}+")?,
                regex("[0-9][0-9][0-9]")?,
            ],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe"
            | "chatglm-bpe" | "glm4" => vec![Step::Llama3 { max_digits: 3 }],
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => {
                vec![Step::Llama3 { max_digits: 1 }]
            }
            "qwen35" => vec![regex(QWEN35)?],
            // SentencePiece-style BPE: runs of newlines and runs of anything else.
            "gemma4" => vec![regex(r"[^\n]+|[\n]+")?],
            "gpt-4o" => vec![regex(GPT4O)?],
            // The class is written with escapes where a character has a canonical singleton
            // decomposition, so that no Unicode normalization of this file can change it.
            "deepseek-llm" => vec![
                regex("[\r\n]")?,
                regex("\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\\x{1F7D}ᾀ-ᾴᾶ-ᾼ\\x{1FBE}ῂ-ῄῆ-ῌῐ-\\x{1FD3}ῖ-\\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\\x{2126}ℨ\\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+")?,
                regex("\\s?[!-/:-~！-／：-～‘-‟　-。]+")?,
                regex("\\s+$")?,
                regex("[一-龥ࠀ-一가-퟿]+")?,
                regex(r"\p{N}+")?,
            ],
            "deepseek-coder" => vec![
                regex("[\r\n]")?,
                regex(r"\s?\p{L}+")?,
                regex(r"\s?\p{P}+")?,
                regex("[一-龥ࠀ-一가-퟿]+")?,
                Step::Digits,
            ],
            "falcon" => vec![
                regex(r"[\p{P}\$\+<=>\^~\|`]+")?,
                Step::Gpt2,
                regex("[0-9][0-9][0-9]")?,
            ],
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" => vec![Step::Digits, Step::Gpt2],
            "gpt-2" | "mpt" | "olmo" | "jais" | "phi-2" | "jina-es" | "jina-de" | "gigachat"
            | "jina-v2-es" | "jina-v2-de" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
            | "trillion" | "granite-docling" | "exaone4" => vec![Step::Gpt2],
            other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
        };
        // Sanity: every pattern above is fixed, so a compile failure is a bug; it is still
        // reported as an error rather than a panic.
        let _ = GPT2;
        Ok(Self { steps })
    }

    /// Splits `text` into words (byte ranges that partition it, in order).
    pub(crate) fn split(&self, text: &str, out: &mut Vec<(usize, usize)>) -> Result<()> {
        out.clear();
        if text.is_empty() {
            return Ok(());
        }
        out.push((0, text.len()));
        let mut next = Vec::new();
        let mut scratch = Vec::new();
        for step in &self.steps {
            next.clear();
            for &(start, end) in out.iter() {
                let piece = &text[start..end];
                match step {
                    Step::Gpt2 => split_gpt2(piece, start, &mut scratch, &mut next),
                    Step::Llama3 { max_digits } => {
                        split_llama3(piece, start, *max_digits, &mut scratch, &mut next)
                    }
                    Step::Digits => split_digits(piece, start, &mut next),
                    Step::Regex(re) => split_regex(re, piece, start, &mut next)?,
                }
            }
            std::mem::swap(out, &mut next);
        }
        Ok(())
    }
}

fn split_regex(
    re: &fancy_regex::Regex,
    piece: &str,
    base: usize,
    out: &mut Vec<(usize, usize)>,
) -> Result<()> {
    let mut last = 0;
    for m in re.find_iter(piece) {
        let m = m.map_err(|e| TokenizerError::Regex(e.to_string()))?;
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push((base + last, base + m.start()));
        }
        out.push((base + m.start(), base + m.end()));
        last = m.end();
    }
    if last < piece.len() {
        out.push((base + last, base + piece.len()));
    }
    Ok(())
}

fn split_digits(piece: &str, base: usize, out: &mut Vec<(usize, usize)>) {
    let mut last = 0;
    for (i, c) in piece.char_indices() {
        if flags(c) & NUMBER != 0 {
            if i > last {
                out.push((base + last, base + i));
            }
            let end = i + c.len_utf8();
            out.push((base + i, base + end));
            last = end;
        }
    }
    if last < piece.len() {
        out.push((base + last, base + piece.len()));
    }
}

/// A piece decoded into code points with their classes and byte offsets.
struct Cpts<'a> {
    chars: &'a [(u32, char, u8)],
    end_byte: usize,
}

impl Cpts<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.chars.len()
    }
    /// The code point at `i`, or `None` past the end of the piece.
    #[inline]
    fn cpt(&self, i: usize) -> Option<char> {
        self.chars.get(i).map(|x| x.1)
    }
    /// The class flags at `i`; past the end, no class.
    #[inline]
    fn flags(&self, i: usize) -> u8 {
        self.chars.get(i).map_or(0, |x| x.2)
    }
    #[inline]
    fn in_range(&self, i: usize) -> bool {
        i < self.chars.len()
    }
    #[inline]
    fn byte(&self, i: usize) -> usize {
        self.chars.get(i).map_or(self.end_byte, |x| x.0 as usize)
    }
}

fn decode_piece(piece: &str, base: usize, scratch: &mut Vec<(u32, char, u8)>) {
    scratch.clear();
    scratch.extend(
        piece
            .char_indices()
            .map(|(i, c)| ((base + i) as u32, c, flags(c))),
    );
}

/// Emits words for a piece given as a list of code point end indices.
struct Emitter<'a, 'b> {
    cp: &'a Cpts<'a>,
    prev: usize,
    out: &'b mut Vec<(usize, usize)>,
}

impl Emitter<'_, '_> {
    /// Ends a word at code point index `end`; returns its length in code points.
    #[inline]
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev;
        if len > 0 {
            self.out.push((self.cp.byte(self.prev), self.cp.byte(end)));
        }
        self.prev = end;
        len
    }
}

#[inline]
fn is_contraction_tail(a: Option<char>, b: Option<char>, case_insensitive: bool) -> usize {
    let low = |c: Option<char>| {
        c.map(|c| {
            if case_insensitive {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
    };
    match (low(a), low(b)) {
        (Some('s' | 't' | 'm' | 'd'), _) => 2,
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
        _ => 0,
    }
}

fn split_gpt2(
    piece: &str,
    base: usize,
    scratch: &mut Vec<(u32, char, u8)>,
    out: &mut Vec<(usize, usize)>,
) {
    decode_piece(piece, base, scratch);
    let cp = Cpts {
        chars: scratch,
        end_byte: base + piece.len(),
    };
    let mut em = Emitter {
        cp: &cp,
        prev: 0,
        out,
    };
    let n = cp.len();
    let mut pos = 0;
    while pos < n {
        let c = cp.cpt(pos);
        let f = cp.flags(pos);
        if c == Some('\'') && pos + 1 < n {
            let k = is_contraction_tail(
                cp.cpt(pos + 1),
                cp.cpt(pos + 2).filter(|_| pos + 2 < n),
                false,
            );
            if k > 0 {
                pos += em.add(pos + k);
                continue;
            }
        }
        let space = c == Some(' ');
        let mut f2 = if space { cp.flags(pos + 1) } else { f };
        let in2 = if space { cp.in_range(pos + 1) } else { true };
        if f2 & LETTER != 0 {
            pos += usize::from(space);
            while f2 & LETTER != 0 {
                pos += 1;
                f2 = cp.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if f2 & NUMBER != 0 {
            pos += usize::from(space);
            while f2 & NUMBER != 0 {
                pos += 1;
                f2 = cp.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if f2 & (WHITESPACE | LETTER | NUMBER) == 0 && in2 {
            pos += usize::from(space);
            while cp.in_range(pos) && cp.flags(pos) & (WHITESPACE | LETTER | NUMBER) == 0 {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        let mut ws = 0;
        while cp.flags(pos + ws) & WHITESPACE != 0 {
            ws += 1;
        }
        if ws > 1 && cp.in_range(pos + ws) {
            pos += ws - 1;
            em.add(pos);
            continue;
        }
        if ws > 0 {
            pos += ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

fn split_llama3(
    piece: &str,
    base: usize,
    max_digits: usize,
    scratch: &mut Vec<(u32, char, u8)>,
    out: &mut Vec<(usize, usize)>,
) {
    decode_piece(piece, base, scratch);
    let cp = Cpts {
        chars: scratch,
        end_byte: base + piece.len(),
    };
    let mut em = Emitter {
        cp: &cp,
        prev: 0,
        out,
    };
    let n = cp.len();
    let mut pos = 0;
    while pos < n {
        let c = cp.cpt(pos);
        let f = cp.flags(pos);
        if c == Some('\'') && pos + 1 < n {
            let k = is_contraction_tail(
                cp.cpt(pos + 1),
                cp.cpt(pos + 2).filter(|_| pos + 2 < n),
                true,
            );
            if k > 0 {
                pos += em.add(pos + k);
                continue;
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == Some('\r') || c == Some('\n') || f & NUMBER != 0)
            && (f & LETTER != 0 || cp.flags(pos + 1) & LETTER != 0)
        {
            pos += 1;
            while cp.flags(pos) & LETTER != 0 {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        // \p{N}{1,max}
        if f & NUMBER != 0 {
            let mut ini = pos;
            while cp.flags(pos) & NUMBER != 0 {
                pos += 1;
                if pos - ini >= max_digits {
                    em.add(pos);
                    ini = pos;
                }
            }
            em.add(pos);
            continue;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let space = c == Some(' ');
        let f2 = if space { cp.flags(pos + 1) } else { f };
        let in2 = if space { cp.in_range(pos + 1) } else { true };
        if f2 & (WHITESPACE | LETTER | NUMBER) == 0 && in2 {
            pos += usize::from(space);
            while cp.in_range(pos) && cp.flags(pos) & (WHITESPACE | LETTER | NUMBER) == 0 {
                pos += 1;
            }
            while matches!(cp.cpt(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        let mut ws = 0;
        let mut last_rn = 0;
        while cp.flags(pos + ws) & WHITESPACE != 0 {
            if matches!(cp.cpt(pos + ws), Some('\r' | '\n')) {
                last_rn = pos + ws + 1;
            }
            ws += 1;
        }
        // \s*[\r\n]+
        if last_rn > 0 {
            pos = last_rn;
            em.add(pos);
            continue;
        }
        // \s+(?!\S)
        if ws > 1 && cp.in_range(pos + ws) {
            pos += ws - 1;
            em.add(pos);
            continue;
        }
        if ws > 0 {
            pos += ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(pre: &str, text: &'a str) -> Vec<&'a str> {
        let p = PreTokenizer::for_pre(pre).unwrap();
        let mut out = Vec::new();
        p.split(text, &mut out).unwrap();
        out.iter().map(|&(s, e)| &text[s..e]).collect()
    }

    /// The hand-written splitters agree with the regex they stand for.
    #[test]
    fn custom_splitters_match_their_regex() {
        let llama3 = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let qwen2 = llama3.replace(r"\p{N}{1,3}", r"\p{N}");
        let cases = [
            "Hello world",
            "  leading",
            "trailing  ",
            "a\n\n  b",
            "I'm 12345 o'CLOCK's!!",
            "\t\tx",
            " \u{3000}y",
            "x \r\n z",
            "🙂‍↔️ éé e\u{301}",
            "1,234.5 ٣٤٥",
            "'''",
            "  ",
            " ",
            "don'T",
            "a'",
            "\n",
            "$$ hi",
            "<|im_end|>",
            "    def f():\n        return",
        ];
        for (pre, pattern) in [
            ("gpt-2", GPT2.to_string()),
            ("llama-bpe", llama3.to_string()),
            ("qwen2", qwen2),
        ] {
            let re = fancy_regex::Regex::new(&pattern).unwrap();
            for text in cases {
                let mut expect = Vec::new();
                split_regex(&re, text, 0, &mut expect).unwrap();
                let expect: Vec<&str> = expect.iter().map(|&(s, e)| &text[s..e]).collect();
                assert_eq!(words(pre, text), expect, "{pre} {text:?}");
            }
        }
    }

    #[test]
    fn unknown_pre_is_an_error() {
        assert!(PreTokenizer::for_pre("no-such-pre").is_err());
    }
}
