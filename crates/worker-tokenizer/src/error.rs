//! The crate's one error type.

/// Everything that can go wrong while loading a tokenizer, encoding, decoding or rendering a
/// chat template. Nothing in this crate panics on bad input; it returns one of these.
///
/// Each message carries its cause and none chains it as a `source()` too, so a report that
/// prints the chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A GGUF metadata key is missing or has the wrong type.
    #[error("tokenizer metadata: {0}")]
    Gguf(worker_gguf::GgufError),
    /// `tokenizer.ggml.model` names a tokenizer we do not implement.
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\", \"llama\")")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error("unsupported pre-tokenizer {0:?} for a gpt2 (byte-level BPE) vocabulary")]
    UnsupportedPre(String),
    /// The vocabulary in the file is inconsistent (duplicate tokens, short arrays, …).
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Adding BOS/EOS was asked for, but the vocabulary has no such token.
    #[error("{0} token requested but the vocabulary defines none")]
    MissingSpecialToken(&'static str),
    /// SentencePiece byte fallback found no token for a byte.
    #[error("no byte-fallback token for byte 0x{0:02X}")]
    MissingByteToken(u8),
    /// A pre-tokenizer regular expression failed (bad pattern or backtracking limit).
    #[error("pre-tokenizer regex: {0}")]
    Regex(String),
    /// The HF `tokenizers` crate reported an error, `tokenizer_config.json` is not valid
    /// JSON, or HF support is not built in (the `hf` feature).
    #[error("tokenizer.json: {0}")]
    Hf(String),
    /// Reading a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        error: std::io::Error,
    },
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
}

impl From<worker_gguf::GgufError> for TokenizerError {
    fn from(e: worker_gguf::GgufError) -> Self {
        TokenizerError::Gguf(e)
    }
}

impl TokenizerError {
    /// Whether the error comes from the chat template rather than the tokenizer.
    pub fn is_template(&self) -> bool {
        matches!(self, TokenizerError::Template(_))
    }
}

/// Result alias for this crate.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
