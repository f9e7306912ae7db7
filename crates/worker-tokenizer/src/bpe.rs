//! GGUF BPE tokenizers with ranked merges, as llama.cpp's `llm_tokenizer_bpe_session`:
//! - `gpt2`: byte-level BPE. The merges run on raw bytes instead of GPT-2's printable byte
//!   characters: the mapping is a bijection, so the result is the same, and the input never
//!   has to be re-encoded.
//! - `gemma4`: SentencePiece-style BPE. Tokens are plain UTF-8 with `▁` for a space; the text
//!   has its spaces replaced by `▁`, is cut into runs of newlines and runs of anything else,
//!   and merges start from whole characters; a piece that is not a token falls back to its
//!   bytes as `<0xXX>` tokens.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use worker_gguf::Metadata;

use crate::error::{Result, TokenizerError};
use crate::pretok::PreTokenizer;
use crate::unicode::{byte_to_char, decode_byte_level};
use crate::vocab::{attr, gguf_vocab_queries, Fragment, Kind, Vocab};
use crate::{EncodeOptions, TokenId, Tokenizer};

/// A GGUF BPE tokenizer (`tokenizer.ggml.model` = `gpt2` or `gemma4`).
pub struct GgufBpe {
    vocab: Vocab,
    pre: PreTokenizer,
    pre_name: String,
    /// How token texts spell their bytes.
    alphabet: Alphabet,
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

/// How a vocabulary's token texts spell bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Alphabet {
    /// GPT-2's printable byte characters (`gpt2`).
    ByteLevel,
    /// Plain UTF-8 with `▁` for a space, and `<0xXX>` byte tokens (`gemma4`).
    Utf8,
}

/// The space marker of SentencePiece-style vocabularies.
const SPACE_MARK: &str = "\u{2581}";

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
    /// The symbol's bytes in the word: `start..start + len`.
    start: u32,
    len: u32,
}

const NONE: u32 = u32::MAX;
/// A character that is no token and in no merge: it falls back to its bytes.
const UNKNOWN: u32 = u32::MAX - 1;

impl GgufBpe {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let model = md.get_str("tokenizer.ggml.model")?;
        let alphabet = match model {
            "gemma4" => Alphabet::Utf8,
            _ => Alphabet::ByteLevel,
        };
        let pre_name = match md.get("tokenizer.ggml.pre") {
            // llama.cpp sets the pre-tokenizer of a `gemma4` vocabulary itself.
            _ if alphabet == Alphabet::Utf8 => "gemma4".to_string(),
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
        let mut vocab = Vocab::from_metadata(md, Kind::Bpe, Some(&pre_name))?;
        if alphabet == Alphabet::Utf8 {
            // llama.cpp overrides a file that says otherwise (its PR 21500).
            vocab.add_bos = true;
        }
        let n = vocab.len() as u32;
        let spell = |t: &str| match alphabet {
            Alphabet::ByteLevel => decode_byte_level(t),
            Alphabet::Utf8 => Some(t.as_bytes().to_vec()),
        };

        let mut sym_of_bytes: HashMap<Box<[u8]>, u32> = HashMap::with_capacity(n as usize);
        for (i, t) in vocab.tokens.iter().enumerate() {
            if let Some(bytes) = spell(t) {
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
            let (Some(a), Some(b)) = (spell(&m[..pos]), spell(&m[pos + 1..])) else {
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
            .map(|(t, &a)| bpe_piece(t, a, alphabet).into_boxed_slice())
            .collect();

        Ok(Self {
            vocab,
            pre,
            pre_name,
            alphabet,
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
        if word.len() == 1 && self.alphabet == Alphabet::ByteLevel {
            self.emit(self.byte_sym[word[0] as usize], out);
            return;
        }
        // Llama 3 style; and gemma4's runs of newlines (llama.cpp's PR 21343).
        let whole = self.ignore_merges
            || (self.alphabet == Alphabet::Utf8 && word.iter().all(|&b| b == b'\n'));
        if whole {
            if let Some(&id) = self.sym_of_bytes.get(word) {
                if id < n {
                    out.push(id);
                    return;
                }
            }
        }
        syms.clear();
        let sym = |id: u32, start: usize, len: usize| Sym {
            id,
            prev: NONE,
            next: NONE,
            start: start as u32,
            len: len as u32,
        };
        match self.alphabet {
            Alphabet::ByteLevel => syms.extend(
                word.iter()
                    .enumerate()
                    .map(|(i, &b)| sym(self.byte_sym[b as usize], i, 1)),
            ),
            Alphabet::Utf8 => {
                // Words are cut from a `&str`, at character boundaries.
                let text = String::from_utf8_lossy(word);
                let mut buf = [0u8; 4];
                syms.extend(text.char_indices().map(|(i, c)| {
                    let bytes = c.encode_utf8(&mut buf).as_bytes();
                    let id = self.sym_of_bytes.get(bytes).copied().unwrap_or(UNKNOWN);
                    sym(id, i, bytes.len())
                }));
            }
        }
        let len = syms.len() as u32;
        for (i, s) in syms.iter_mut().enumerate() {
            s.prev = if i == 0 { NONE } else { i as u32 - 1 };
            s.next = if i as u32 + 1 == len {
                NONE
            } else {
                i as u32 + 1
            };
        }
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
            syms[l as usize].len += right.len;
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
            match self.alphabet {
                Alphabet::ByteLevel => self.emit(s.id, out),
                Alphabet::Utf8 if s.id < n => out.push(s.id),
                Alphabet::Utf8 => {
                    let bytes = &word[s.start as usize..(s.start + s.len) as usize];
                    self.emit_bytes(bytes, out);
                }
            }
            i = s.next;
        }
    }

    /// Emits `<0xXX>` byte tokens for `bytes` (a piece of a `gemma4` word that is not a
    /// token), skipping bytes the vocabulary has no token for, as llama.cpp does.
    fn emit_bytes(&self, bytes: &[u8], out: &mut Vec<TokenId>) {
        for &b in bytes {
            if let Some(&t) = self.vocab.token_to_id.get(&format!("<0x{b:02X}>")) {
                out.push(t);
            }
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
fn bpe_piece(text: &str, a: u32, alphabet: Alphabet) -> Vec<u8> {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if a & attr::NORMAL != 0 && alphabet == Alphabet::Utf8 {
        return text.replace(SPACE_MARK, " ").into_bytes();
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
                    let piece = match self.alphabet {
                        Alphabet::ByteLevel => Cow::Borrowed(&text[s..e]),
                        Alphabet::Utf8 => Cow::Owned(text[s..e].replace(' ', SPACE_MARK)),
                    };
                    self.pre.split(&piece, &mut words)?;
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
