//! GGUF `llama` tokenizers: SentencePiece-style BPE over scored pieces with byte fallback,
//! as llama.cpp's `llm_tokenizer_spm_session` (Llama 2, Phi-3, …).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use worker_gguf::Metadata;

use crate::bpe::parse_byte_token;
use crate::error::{Result, TokenizerError};
use crate::vocab::{attr, gguf_vocab_queries, Fragment, Kind, Vocab};
use crate::{EncodeOptions, TokenId, Tokenizer};

/// A GGUF SentencePiece tokenizer (`tokenizer.ggml.model` = `llama`).
pub struct GgufSpm {
    vocab: Vocab,
    byte_tokens: [Option<u32>; 256],
    pieces: Vec<Box<[u8]>>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; on a tie, the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    n: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

impl GgufSpm {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let vocab = Vocab::from_metadata(md, Kind::Spm, None)?;
        let mut byte_tokens = [None; 256];
        for b in 0..=255u8 {
            byte_tokens[b as usize] = vocab
                .token_to_id
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| {
                    if b.is_ascii() {
                        vocab.token_to_id.get(&(b as char).to_string())
                    } else {
                        None
                    }
                })
                .copied();
        }
        let pieces = vocab
            .tokens
            .iter()
            .zip(&vocab.attrs)
            .map(|(t, &a)| spm_piece(t, a).into_boxed_slice())
            .collect();
        Ok(Self {
            vocab,
            byte_tokens,
            pieces,
        })
    }

    fn tokenize(&self, text: &str, out: &mut Vec<TokenId>) -> Result<()> {
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, c) in text.char_indices() {
            let idx = syms.len();
            syms.push(Sym {
                start: i,
                n: c.len_utf8(),
                prev: if idx == 0 { NONE } else { idx - 1 },
                next: idx + 1,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        let mut heap = BinaryHeap::new();
        let try_add = |syms: &[Sym], l: usize, r: usize, heap: &mut BinaryHeap<Bigram>| {
            if l == NONE || r == NONE {
                return;
            }
            let s = syms[l].start;
            let size = syms[l].n + syms[r].n;
            let Some(piece) = text.get(s..s + size) else {
                return;
            };
            if let Some(&id) = self.vocab.token_to_id.get(piece) {
                heap.push(Bigram {
                    score: self.vocab.scores[id as usize],
                    left: l,
                    right: r,
                    size,
                });
            }
        };
        for i in 1..syms.len() {
            try_add(&syms, i - 1, i, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.n == 0 || r.n == 0 || l.n + r.n != bg.size {
                continue;
            }
            syms[bg.left].n += r.n;
            syms[bg.right].n = 0;
            syms[bg.left].next = r.next;
            if r.next != NONE {
                syms[r.next].prev = bg.left;
            }
            try_add(&syms, syms[bg.left].prev, bg.left, &mut heap);
            try_add(&syms, bg.left, syms[bg.left].next, &mut heap);
        }
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            let piece = &text[s.start..s.start + s.n];
            // A final symbol is either a token or a single character that is not one (merges
            // only ever make tokens), so llama.cpp's `rev_merge` resegmentation never applies.
            match self.vocab.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        out.push(
                            self.byte_tokens[b as usize]
                                .ok_or(TokenizerError::MissingByteToken(b))?,
                        );
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }
}

/// What an SPM token prints as, as llama.cpp's `token_to_piece` with `special` = true.
fn spm_piece(text: &str, a: u32) -> Vec<u8> {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if a & attr::NORMAL != 0 {
        return text.replace('\u{2581}', " ").into_bytes();
    }
    if a & attr::BYTE != 0 {
        return parse_byte_token(text).map(|b| vec![b]).unwrap_or_default();
    }
    Vec::new()
}

impl Tokenizer for GgufSpm {
    fn encode(&self, text: &str, options: EncodeOptions) -> Result<Vec<TokenId>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if options.add_special && self.vocab.add_bos {
            out.push(
                self.vocab
                    .bos
                    .ok_or(TokenizerError::MissingSpecialToken("BOS"))?,
            );
        }
        let mut prev_special = true;
        let mut buf = String::new();
        for frag in self.vocab.partition(text, options.parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(s, e) => {
                    buf.clear();
                    if self.vocab.add_space_prefix && prev_special {
                        buf.push('\u{2581}');
                    }
                    for c in text[s..e].chars() {
                        buf.push(if c == ' ' { '\u{2581}' } else { c });
                    }
                    self.tokenize(&buf, &mut out)?;
                    prev_special = false;
                }
            }
        }
        if options.add_special && self.vocab.add_eos {
            out.push(
                self.vocab
                    .eos
                    .ok_or(TokenizerError::MissingSpecialToken("EOS"))?,
            );
        }
        Ok(out)
    }

    gguf_vocab_queries!();
}
