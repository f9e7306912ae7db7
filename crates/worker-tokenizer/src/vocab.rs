//! The part of a GGUF vocabulary both GGUF backends share: token texts, scores, attributes,
//! special token ids, end-of-generation set, and the special-token partition of a text.
//!
//! Everything here follows llama.cpp's `llama_vocab::impl::load` and
//! `tokenizer_st_partition` (src/llama-vocab.cpp), because users compare our token ids with
//! llama.cpp's.

use std::collections::{HashMap, HashSet};

use worker_gguf::Metadata;

use crate::error::{Result, TokenizerError};

/// Token attributes, numbered as llama.cpp's `llama_token_attr`.
pub(crate) mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// GGUF `tokenizer.ggml.token_type` values.
fn attr_from_type(t: i32) -> u32 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// Which GGUF tokenizer a vocabulary is for; it decides llama.cpp's defaults.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// `gpt2`: byte-level BPE.
    Bpe,
    /// `llama`: SentencePiece BPE.
    Spm,
}

/// A piece of the input after special tokens were cut out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Ordinary text: a byte range of the input.
    Text(usize, usize),
    /// A special (control, user-defined or unknown) token found in the text.
    Token(u32),
}

/// A GGUF vocabulary.
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u32>,
    pub token_to_id: HashMap<String, u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eog: HashSet<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// Control, user-defined and unknown tokens, longest text first.
    special_cache: Vec<u32>,
}

fn opt_id(md: &Metadata, key: &str) -> Option<u32> {
    md.get(key)
        .and_then(|v| v.to_u64())
        .and_then(|v| u32::try_from(v).ok())
}

fn opt_bool(md: &Metadata, key: &str) -> Option<bool> {
    md.get(key).and_then(|_| md.get_bool(key).ok())
}

/// Texts llama.cpp recognizes as end-of-turn tokens when `eot_token_id` is not set, in the
/// order we pick the first present one (llama.cpp takes whichever its hash map yields first).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Texts llama.cpp treats as end-of-generation, whatever their type; it also makes them
/// control tokens. This is why Qwen2.5's ordinary token `</s>` ends generation in llama.cpp
/// (and so in this worker): `</s>` is in this list.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

impl Vocab {
    pub(crate) fn from_metadata(md: &Metadata, kind: Kind, pre: Option<&str>) -> Result<Self> {
        let tokens_in = md.get_str_array("tokenizer.ggml.tokens")?;
        let n = tokens_in.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(TokenizerError::InvalidVocab(format!("{n} tokens")));
        }
        let scores = match md.get("tokenizer.ggml.scores") {
            Some(_) => md.get_f32_array("tokenizer.ggml.scores")?.to_vec(),
            None => vec![0.0; n],
        };
        if scores.len() < n {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} scores for {n} tokens",
                scores.len()
            )));
        }
        let mut attrs = match md.get("tokenizer.ggml.token_type") {
            Some(_) => {
                let types = md.get_i32_array("tokenizer.ggml.token_type")?;
                if types.len() < n {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "{} token types for {n} tokens",
                        types.len()
                    )));
                }
                types[..n].iter().map(|&t| attr_from_type(t)).collect()
            }
            None => vec![attr::NORMAL; n],
        };

        let mut tokens = Vec::with_capacity(n);
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens_in.iter().enumerate() {
            let text = if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.clone()
            };
            if let Some(prev) = token_to_id.insert(text.clone(), i as u32) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "duplicate token {text:?} has ids {prev} and {i}"
                )));
            }
            tokens.push(text);
        }

        let is_llama3 = matches!(
            pre,
            Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral")
        );
        let (mut add_bos, mut add_eos, mut add_space_prefix) = match kind {
            Kind::Spm => (true, false, true),
            Kind::Bpe => (is_llama3, false, false),
        };
        if let Some(v) = opt_bool(md, "tokenizer.ggml.add_space_prefix") {
            add_space_prefix = v;
        }
        let (default_bos, default_eos, default_unk) = match kind {
            Kind::Spm => (Some(1), Some(2), Some(0)),
            Kind::Bpe => (Some(11), Some(11), None),
        };
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let pick = |key: &str, default: Option<u32>| match opt_id(md, key) {
            Some(id) if (id as usize) < n => Some(id),
            _ => in_range(default),
        };
        let bos = pick("tokenizer.ggml.bos_token_id", default_bos);
        let eos = pick("tokenizer.ggml.eos_token_id", default_eos);
        let mut eot = pick("tokenizer.ggml.eot_token_id", None);
        let eom = pick("tokenizer.ggml.eom_token_id", None);
        let _unk = pick("tokenizer.ggml.unknown_token_id", default_unk);
        let mut fim_pad = pick("tokenizer.ggml.fim_pad_token_id", None);
        let mut fim_rep = pick("tokenizer.ggml.fim_rep_token_id", None);
        let mut fim_sep = pick("tokenizer.ggml.fim_sep_token_id", None);
        if let Some(v) = opt_bool(md, "tokenizer.ggml.add_bos_token") {
            add_bos = v;
        }
        if let Some(v) = opt_bool(md, "tokenizer.ggml.add_eos_token") {
            add_eos = v;
        }

        // Auto-detected tokens become control tokens, as in llama.cpp.
        let find = |texts: &[&str], attrs: &mut Vec<u32>| -> Option<u32> {
            texts
                .iter()
                .find_map(|t| token_to_id.get(*t).copied())
                .inspect(|&id| {
                    attrs[id as usize] |= attr::CONTROL;
                })
        };
        if eot.is_none() {
            eot = find(EOT_TEXTS, &mut attrs);
        }
        if fim_pad.is_none() {
            fim_pad = find(FIM_PAD_TEXTS, &mut attrs);
        }
        if fim_rep.is_none() {
            fim_rep = find(FIM_REP_TEXTS, &mut attrs);
        }
        if fim_sep.is_none() {
            fim_sep = find(FIM_SEP_TEXTS, &mut attrs);
        }
        for (i, t) in tokens.iter().enumerate() {
            if attrs[i] & attr::CONTROL != 0 && t.contains("unused") {
                attrs[i] |= attr::UNUSED;
            }
        }
        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                eog.insert(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
        // gpt-oss: these are always rendered.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(text) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // o200k_harmony / solar-open: `<|end|>` is not end-of-generation there.
        let has =
            |eog: &HashSet<u32>, t: &str| token_to_id.get(t).is_some_and(|id| eog.contains(id));
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>") && has(&eog, "<|end|>"))
            || (has(&eog, "<|calls|>") && has(&eog, "<|flush|>") && has(&eog, "<|end|>"))
        {
            if let Some(&id) = token_to_id.get("<|end|>") {
                eog.remove(&id);
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        // gemma4 / paddleocr: `</s>` is not end-of-generation when `<|tool_response>` is.
        if has(&eog, "<|tool_response>") && has(&eog, "</s>") {
            if let Some(&id) = token_to_id.get("</s>") {
                eog.remove(&id);
                attrs[id as usize] = attr::NORMAL;
            }
        }

        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_cache.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });

        // Phi-3: special tokens eat the whitespace after them (llama.cpp keys this on the
        // model name).
        let name = md.get_str("general.name").unwrap_or("").to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special_cache {
                attrs[id as usize] |= attr::RSTRIP;
            }
            if let Some(&id) = token_to_id.get("</s>") {
                attrs[id as usize] |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = token_to_id.get(t) {
                    attrs[id as usize] &= !attr::RSTRIP;
                }
            }
        }

        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken("BOS"));
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken("EOS"));
        }

        Ok(Self {
            tokens,
            scores,
            attrs,
            token_to_id,
            bos,
            eos,
            eot,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            special_cache,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn attr(&self, id: u32) -> Result<u32> {
        self.attrs
            .get(id as usize)
            .copied()
            .ok_or(TokenizerError::TokenOutOfRange {
                id,
                vocab_size: self.len(),
            })
    }

    /// Cuts special tokens out of `text`: control and unknown tokens only when
    /// `parse_special`, user-defined tokens always (as llama.cpp and HF `tokenizers` do).
    pub(crate) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let bytes = text.as_bytes();
        let mut next = Vec::new();
        for &id in &self.special_cache {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let tok = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(s, e) if text[*s..*e].contains(tok)))
            {
                continue;
            }
            next.clear();
            for &f in &frags {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                while start < end {
                    let Some(rel) = text[start..end].find(tok) else {
                        next.push(Fragment::Text(start, end));
                        break;
                    };
                    let m = start + rel;
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + tok.len();
                    if a & attr::RSTRIP != 0 {
                        while start < end && is_c_space(bytes[start]) {
                            start += 1;
                        }
                    }
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// The [`crate::Tokenizer`] methods both GGUF backends answer from their [`Vocab`]
/// (`self.vocab`) and rendered pieces (`self.pieces`) alone, written once.
macro_rules! gguf_vocab_queries {
    () => {
        fn token_bytes(&self, id: TokenId, render_special: bool) -> Result<Cow<'_, [u8]>> {
            let a = self.vocab.attr(id)?;
            if !render_special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
                return Ok(Cow::Borrowed(&[]));
            }
            Ok(Cow::Borrowed(&self.pieces[id as usize]))
        }

        fn token_text(&self, id: TokenId) -> Result<&str> {
            self.vocab.attr(id)?;
            Ok(&self.vocab.tokens[id as usize])
        }

        fn token_id(&self, text: &str) -> Option<TokenId> {
            self.vocab.token_to_id.get(text).copied()
        }

        fn is_special(&self, id: TokenId) -> bool {
            self.vocab
                .attr(id)
                .is_ok_and(|a| a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        }

        fn bos(&self) -> Option<TokenId> {
            self.vocab.bos
        }
        fn eos(&self) -> Option<TokenId> {
            self.vocab.eos
        }
        fn eot(&self) -> Option<TokenId> {
            self.vocab.eot
        }
        fn is_eog(&self, id: TokenId) -> bool {
            self.vocab.eog.contains(&id)
        }
        fn vocab_size(&self) -> usize {
            self.vocab.len()
        }
        fn adds_bos(&self) -> bool {
            self.vocab.add_bos
        }
        fn strips_leading_space(&self) -> bool {
            self.vocab.add_space_prefix
        }
    };
}
pub(crate) use gguf_vocab_queries;
