//! GGUF `gpt2` tokenizers: byte-level BPE with ranked merges, as llama.cpp's
//! `llm_tokenizer_bpe_session`.
//!
//! The merges run on raw bytes instead of GPT-2's printable byte characters: the mapping is
//! a bijection, so the result is the same, and the input never has to be re-encoded.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use worker_gguf::Metadata;

use crate::error::{Result, TokenizerError};
use crate::pretok::PreTokenizer;
use crate::unicode::{byte_to_char, decode_byte_level};
use crate::vocab::{attr, gguf_vocab_queries, Fragment, Kind, Vocab};
use crate::{EncodeOptions, TokenId, Tokenizer};

/// A GGUF byte-level BPE tokenizer (`tokenizer.ggml.model` = `gpt2`).
pub struct GgufBpe {
    vocab: Vocab,
    pre: PreTokenizer,
    pre_name: String,
    /// Llama 3 style: a word that is a token is not merged.
    ignore_merges: bool,
    /// Symbol ids by their bytes: ids below the vocabulary size are tokens; the others are
    /// merge results that are not tokens (kept so merges behave exactly as on strings).
    sym_of_bytes: HashMap<Box<[u8]>, u32>,
    extra_syms: Vec<Box<[u8]>>,
    /// `(left << 32) | right` → (rank, merged symbol).
    merges: HashMap<u64, (u32, u32)>,
    byte_sym: [u32; 256],
    /// What each token prints as (special tokens included).
    pieces: Vec<Box<[u8]>>,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

impl GgufBpe {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let pre_name = match md.get("tokenizer.ggml.pre") {
            Some(_) => md.get_str("tokenizer.ggml.pre")?.to_string(),
            None => {
                tracing::warn!(
                    "GGUF has no tokenizer.ggml.pre; using the 'default' pre-tokenizer as llama.cpp does (quality may degrade)"
                );
                "default".to_string()
            }
        };
        let pre = PreTokenizer::for_pre(&pre_name)?;
        let ignore_merges = matches!(
            pre_name.as_str(),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral"
        );
        let vocab = Vocab::from_metadata(md, Kind::Bpe, Some(&pre_name))?;
        let n = vocab.len() as u32;

        let mut sym_of_bytes: HashMap<Box<[u8]>, u32> = HashMap::with_capacity(n as usize);
        for (i, t) in vocab.tokens.iter().enumerate() {
            if let Some(bytes) = decode_byte_level(t) {
                sym_of_bytes
                    .entry(bytes.into_boxed_slice())
                    .or_insert(i as u32);
            }
        }
        let mut extra_syms: Vec<Box<[u8]>> = Vec::new();
        let mut intern = |bytes: Vec<u8>, map: &mut HashMap<Box<[u8]>, u32>| -> u32 {
            if let Some(&id) = map.get(bytes.as_slice()) {
                return id;
            }
            let id = n + extra_syms.len() as u32;
            extra_syms.push(bytes.clone().into_boxed_slice());
            map.insert(bytes.into_boxed_slice(), id);
            id
        };
        let mut byte_sym = [0u32; 256];
        for b in 0..=255u8 {
            byte_sym[b as usize] = intern(vec![b], &mut sym_of_bytes);
        }
        let merge_strs: &[String] = match md.get("tokenizer.ggml.merges") {
            Some(_) => md.get_str_array("tokenizer.ggml.merges")?,
            None => {
                return Err(TokenizerError::InvalidVocab(
                    "no tokenizer.ggml.merges".into(),
                ))
            }
        };
        let mut merges = HashMap::with_capacity(merge_strs.len());
        for (rank, m) in merge_strs.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let Some(pos) = m
                .as_bytes()
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1)
            else {
                continue;
            };
            let (Some(a), Some(b)) = (
                decode_byte_level(&m[..pos]),
                decode_byte_level(&m[pos + 1..]),
            ) else {
                // Not made of byte characters: no word can ever contain it.
                continue;
            };
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let mut ab = a.clone();
            ab.extend_from_slice(&b);
            let l = intern(a, &mut sym_of_bytes);
            let r = intern(b, &mut sym_of_bytes);
            let res = intern(ab, &mut sym_of_bytes);
            merges
                .entry((u64::from(l) << 32) | u64::from(r))
                .or_insert((rank as u32, res));
        }

        let pieces = vocab
            .tokens
            .iter()
            .zip(&vocab.attrs)
            .map(|(t, &a)| bpe_piece(t, a).into_boxed_slice())
            .collect();

        Ok(Self {
            vocab,
            pre,
            pre_name,
            ignore_merges,
            sym_of_bytes,
            extra_syms,
            merges,
            byte_sym,
            pieces,
        })
    }

    /// The `tokenizer.ggml.pre` this tokenizer was built for.
    pub fn pre(&self) -> &str {
        &self.pre_name
    }

    fn encode_word(&self, word: &[u8], out: &mut Vec<TokenId>, syms: &mut Vec<Sym>) {
        let n = self.vocab.len() as u32;
        if word.len() == 1 {
            self.emit(self.byte_sym[word[0] as usize], out);
            return;
        }
        if self.ignore_merges {
            if let Some(&id) = self.sym_of_bytes.get(word) {
                if id < n {
                    out.push(id);
                    return;
                }
            }
        }
        syms.clear();
        let len = word.len() as u32;
        syms.extend(word.iter().enumerate().map(|(i, &b)| Sym {
            id: self.byte_sym[b as usize],
            prev: if i == 0 { NONE } else { i as u32 - 1 },
            next: if i as u32 + 1 == len {
                NONE
            } else {
                i as u32 + 1
            },
        }));
        // (rank, left index, left symbol, right symbol): lowest rank first, then leftmost.
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>> = BinaryHeap::new();
        let pair = |syms: &[Sym], l: u32, heap: &mut BinaryHeap<Reverse<(u32, u32, u32, u32)>>| {
            if l == NONE {
                return;
            }
            let r = syms[l as usize].next;
            if r == NONE {
                return;
            }
            let (a, b) = (syms[l as usize].id, syms[r as usize].id);
            if let Some(&(rank, _)) = self.merges.get(&((u64::from(a) << 32) | u64::from(b))) {
                heap.push(Reverse((rank, l, a, b)));
            }
        };
        for i in 0..len - 1 {
            pair(syms, i, &mut heap);
        }
        while let Some(Reverse((_, l, a, b))) = heap.pop() {
            let left = syms[l as usize];
            if left.id != a || left.next == NONE {
                continue;
            }
            let r = left.next;
            let right = syms[r as usize];
            if right.id != b {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&((u64::from(a) << 32) | u64::from(b))) else {
                continue;
            };
            syms[l as usize].id = merged;
            syms[l as usize].next = right.next;
            syms[r as usize].id = NONE;
            if right.next != NONE {
                syms[right.next as usize].prev = l;
            }
            pair(syms, left.prev, &mut heap);
            pair(syms, l, &mut heap);
        }
        let mut i = 0u32;
        while i != NONE {
            let s = syms[i as usize];
            self.emit(s.id, out);
            i = s.next;
        }
    }

    /// Emits symbol `id`; a merge result that is not a token falls back to its single ASCII
    /// byte characters, as llama.cpp does (other bytes are dropped there too).
    fn emit(&self, id: u32, out: &mut Vec<TokenId>) {
        let n = self.vocab.len() as u32;
        if id < n {
            out.push(id);
            return;
        }
        let Some(bytes) = self.extra_syms.get((id - n) as usize) else {
            return;
        };
        let mut buf = [0u8; 4];
        for &b in bytes.iter() {
            for &u in byte_to_char(b).encode_utf8(&mut buf).as_bytes() {
                if u.is_ascii() {
                    if let Some(&t) = self
                        .vocab
                        .token_to_id
                        .get((u as char).encode_utf8(&mut [0u8; 4]) as &str)
                    {
                        out.push(t);
                    }
                }
            }
        }
    }
}

/// What a BPE token prints as, as llama.cpp's `token_to_piece` with `special` = true.
fn bpe_piece(text: &str, a: u32) -> Vec<u8> {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if a & attr::NORMAL != 0 {
        // Characters outside GPT-2's byte alphabet are kept as they are (llama.cpp prints an
        // `[UNK_BYTE_…]` marker there).
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match crate::unicode::char_to_byte(c) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
            }
        }
        return out;
    }
    if a & attr::BYTE != 0 {
        return parse_byte_token(text).map(|b| vec![b]).unwrap_or_default();
    }
    Vec::new()
}

/// The byte of a `<0xXX>` token.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer for GgufBpe {
    fn encode(&self, text: &str, options: EncodeOptions) -> Result<Vec<TokenId>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if options.add_special && self.vocab.add_bos {
            out.push(
                self.vocab
                    .bos
                    .ok_or(TokenizerError::MissingSpecialToken("BOS"))?,
            );
        }
        let mut words = Vec::new();
        let mut syms = Vec::new();
        for frag in self.vocab.partition(text, options.parse_special) {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(s, e) => {
                    let piece = &text[s..e];
                    self.pre.split(piece, &mut words)?;
                    for &(ws, we) in &words {
                        self.encode_word(&piece.as_bytes()[ws..we], &mut out, &mut syms);
                    }
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
