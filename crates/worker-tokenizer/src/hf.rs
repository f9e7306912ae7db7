//! HF `tokenizer.json` through the `tokenizers` crate, behind the same trait.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use crate::error::{Result, TokenizerError};
use crate::unicode::char_to_byte;
use crate::{EncodeOptions, TokenId, Tokenizer};

/// A tokenizer loaded from an HF `tokenizer.json` (with `tokenizer_config.json` beside it for
/// the BOS/EOS tokens and the chat template, when present).
pub struct HfTokenizer {
    /// Special added tokens are matched in the text.
    parse: tokenizers::Tokenizer,
    /// Special added tokens are encoded as plain text (non-special added tokens still match).
    plain: tokenizers::Tokenizer,
    pieces: Vec<Box<[u8]>>,
    texts: Vec<String>,
    special: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

fn hf_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Hf(e.to_string())
}

fn config_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    }
}

impl HfTokenizer {
    /// Loads `tokenizer.json` at `path`, and `tokenizer_config.json` beside it if it exists.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| TokenizerError::Io {
            path: path.display().to_string(),
            error,
        })?;
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let config = match std::fs::read(&cfg_path) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(hf_err)?),
            Err(_) => None,
        };
        Self::from_bytes(&bytes, config.as_ref())
    }

    /// Builds the tokenizer from the bytes of a `tokenizer.json` and an optional parsed
    /// `tokenizer_config.json`.
    pub fn from_bytes(json: &[u8], config: Option<&serde_json::Value>) -> Result<Self> {
        let parse = tokenizers::Tokenizer::from_bytes(json).map_err(hf_err)?;
        let mut plain = parse.clone();
        plain.set_encode_special_tokens(true);
        let byte_level = matches!(
            parse.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        );
        let added = parse.get_added_tokens_decoder();
        let n = parse.get_vocab_size(true);
        let mut pieces = Vec::with_capacity(n);
        let mut special = HashSet::new();
        let mut texts = Vec::with_capacity(n);
        for id in 0..n as u32 {
            texts.push(parse.id_to_token(id).unwrap_or_default());
            if let Some(t) = added.get(&id) {
                if t.special {
                    special.insert(id);
                }
                pieces.push(t.content.as_bytes().to_vec().into_boxed_slice());
                continue;
            }
            let piece = parse.id_to_token(id).unwrap_or_default();
            let bytes = if byte_level {
                piece
                    .chars()
                    .flat_map(|c| match char_to_byte(c) {
                        Some(b) => vec![b],
                        None => c.to_string().into_bytes(),
                    })
                    .collect()
            } else if let Some(b) = crate::bpe::parse_byte_token(&piece) {
                vec![b]
            } else {
                piece.replace('\u{2581}', " ").into_bytes()
            };
            pieces.push(bytes.into_boxed_slice());
        }
        let id_of = |name: Option<String>| name.and_then(|t| parse.token_to_id(&t));
        let bos = id_of(config.and_then(|c| config_token(c, "bos_token")));
        let eos = id_of(config.and_then(|c| config_token(c, "eos_token")));
        let eot = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"]
            .iter()
            .find_map(|t| parse.token_to_id(t));
        let add_bos = config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let chat_template = config
            .and_then(|c| c.get("chat_template"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        Ok(Self {
            parse,
            plain,
            pieces,
            texts,
            special,
            bos,
            eos,
            eot,
            add_bos,
            chat_template,
        })
    }

    /// The chat template from `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The underlying `tokenizers` tokenizer (special tokens parsed).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.parse
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, options: EncodeOptions) -> Result<Vec<TokenId>> {
        let tok = if options.parse_special {
            &self.parse
        } else {
            &self.plain
        };
        let enc = tok.encode_fast(text, options.add_special).map_err(hf_err)?;
        Ok(enc.get_ids().to_vec())
    }

    fn token_bytes(&self, id: TokenId, render_special: bool) -> Result<Cow<'_, [u8]>> {
        let piece = self
            .pieces
            .get(id as usize)
            .ok_or(TokenizerError::TokenOutOfRange {
                id,
                vocab_size: self.pieces.len(),
            })?;
        if !render_special && self.special.contains(&id) {
            return Ok(Cow::Borrowed(&[]));
        }
        Ok(Cow::Borrowed(piece))
    }

    fn token_text(&self, id: TokenId) -> Result<&str> {
        self.texts
            .get(id as usize)
            .map(String::as_str)
            .ok_or(TokenizerError::TokenOutOfRange {
                id,
                vocab_size: self.texts.len(),
            })
    }

    fn token_id(&self, text: &str) -> Option<TokenId> {
        self.parse.token_to_id(text)
    }

    fn is_special(&self, id: TokenId) -> bool {
        self.special.contains(&id)
    }

    fn bos(&self) -> Option<TokenId> {
        self.bos
    }
    fn eos(&self) -> Option<TokenId> {
        self.eos
    }
    fn eot(&self) -> Option<TokenId> {
        self.eot
    }
    fn is_eog(&self, id: TokenId) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }
    fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    fn adds_bos(&self) -> bool {
        self.add_bos
    }
    fn strips_leading_space(&self) -> bool {
        false
    }
}
