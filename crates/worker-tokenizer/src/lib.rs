//! Tokenization for the worker: GGUF byte-level BPE (`gpt2`) and SentencePiece (`llama`)
//! vocabularies, HF `tokenizer.json` (`HfTokenizer`, with the `hf` feature), a streaming
//! UTF-8 decoder, and chat templates.
//!
//! For GGUF vocabularies llama.cpp is the reference: the same text must give the same ids as
//! `llama_tokenize` (checked against the test vectors that ship with llama.cpp's vocab
//! files), including its quirks, each marked where it is copied.
//!
//! ```no_run
//! use worker_tokenizer::{from_gguf, EncodeOptions, StreamDecoder};
//! let file = worker_gguf::GgufFile::open("model.gguf")?;
//! let tok = from_gguf(file.metadata())?;
//! let ids = tok.encode("Hello world", EncodeOptions::PROMPT)?;
//! let mut dec = StreamDecoder::new(tok.as_ref());
//! for id in ids {
//!     print!("{}", dec.push(id)?);
//! }
//! print!("{}", dec.flush());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate must not depend on any compute backend, must not log prompt or output text
//! above debug level, and must not panic on any input text, id or model file.

#![deny(missing_docs)]

use std::borrow::Cow;

mod bpe;
mod error;
pub mod fuzzing;
#[cfg(feature = "hf")]
mod hf;
mod pretok;
mod spm;
mod stream;
mod strftime;
mod template;
mod unicode;
mod vocab;

pub use bpe::GgufBpe;
pub use error::{Result, TokenizerError};
#[cfg(feature = "hf")]
pub use hf::HfTokenizer;
pub use spm::GgufSpm;
pub use stream::StreamDecoder;
pub use strftime::strftime;
pub use template::{ChatContext, ChatMessage, ChatTemplate, ToolCallStyle};

use worker_gguf::Metadata;

/// A token id.
pub type TokenId = u32;

/// How [`Tokenizer::encode`] treats special tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add BOS/EOS where the model asks for them (`add_bos_token`, `add_eos_token`).
    pub add_special: bool,
    /// Turn the text of control tokens (`<|im_start|>`) into those tokens. When false they
    /// are tokenized as plain text. User-defined tokens are always matched, as in llama.cpp.
    pub parse_special: bool,
}

impl EncodeOptions {
    /// Plain text: no BOS/EOS, special-token text stays text.
    pub const PLAIN: Self = Self {
        add_special: false,
        parse_special: false,
    };
    /// A rendered prompt: BOS/EOS as the model asks, special tokens parsed.
    pub const PROMPT: Self = Self {
        add_special: true,
        parse_special: true,
    };
}

/// A tokenizer: GGUF BPE, GGUF SentencePiece or HF `tokenizer.json`.
pub trait Tokenizer: Send + Sync {
    /// Encodes `text` into token ids.
    fn encode(&self, text: &str, options: EncodeOptions) -> Result<Vec<TokenId>>;

    /// The bytes token `id` prints as (a byte token gives one byte, which may be part of a
    /// UTF-8 character). Control tokens print as nothing unless `render_special`.
    fn token_bytes(&self, id: TokenId, render_special: bool) -> Result<Cow<'_, [u8]>>;

    /// The token's text as stored in the vocabulary (`Ġhello`, `▁hello`, `<0x0A>`).
    fn token_text(&self, id: TokenId) -> Result<&str>;

    /// The id of the token whose vocabulary text is `text`.
    fn token_id(&self, text: &str) -> Option<TokenId>;

    /// The printed text of one token; a partial UTF-8 character becomes U+FFFD.
    fn token_to_piece(&self, id: TokenId) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.token_bytes(id, true)?).into_owned())
    }

    /// Decodes a whole sequence (the inverse of [`Tokenizer::encode`]; see
    /// [`StreamDecoder::from_start`]).
    fn decode(&self, ids: &[TokenId], render_special: bool) -> Result<String> {
        stream::decode_all(self, ids, render_special)
    }

    /// Whether `id` is a control, user-defined or unknown token.
    fn is_special(&self, id: TokenId) -> bool;
    /// The beginning-of-sequence token.
    fn bos(&self) -> Option<TokenId>;
    /// The end-of-sequence token.
    fn eos(&self) -> Option<TokenId>;
    /// The end-of-turn token.
    fn eot(&self) -> Option<TokenId>;
    /// Whether generating `id` ends generation.
    fn is_eog(&self, id: TokenId) -> bool;
    /// The number of token ids.
    fn vocab_size(&self) -> usize;
    /// Whether the model asks for BOS in front of a prompt.
    fn adds_bos(&self) -> bool;
    /// Whether encoding puts a space in front of the text (SentencePiece `add_space_prefix`)
    /// that decoding from the start removes.
    fn strips_leading_space(&self) -> bool;
}

/// The tokenizer described by GGUF metadata (`tokenizer.ggml.model`).
pub fn from_gguf(md: &Metadata) -> Result<Box<dyn Tokenizer>> {
    let model = md.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" | "gemma4" => Ok(Box::new(GgufBpe::from_metadata(md)?)),
        "llama" => Ok(Box::new(GgufSpm::from_metadata(md)?)),
        other => Err(TokenizerError::UnsupportedModel(other.to_string())),
    }
}
