//! The one error type of this crate.

use worker_common::SamplingError;
use worker_models::ModelError;
use worker_tokenizer::TokenizerError;

/// Everything that can go wrong loading the engine, accepting a request or generating.
///
/// The request errors ([`Self::EmptyPrompt`], [`Self::PromptTooLong`], [`Self::TokenOutOfRange`],
/// [`Self::Sampling`], [`Self::Tokenize`], [`Self::Constraint`]) are returned by [`crate::Engine::submit`] before
/// anything is queued; the others arrive as [`crate::Event::Error`] during generation.
///
/// Each message carries its cause and none chains it as a `source()` too, so a report that
/// prints the chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model could not be built (bad file, unsupported architecture, …).
    #[error("cannot load the model: {0}")]
    Load(ModelError),
    /// The tokenizer could not be built from the model's metadata.
    #[error("cannot build the tokenizer: {0}")]
    Tokenizer(TokenizerError),
    /// The prompt could not be tokenized, or a generated token could not be decoded.
    #[error("tokenizer: {0}")]
    Tokenize(TokenizerError),
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt does not leave room in the context to generate a token.
    #[error(
        "the prompt has {prompt_tokens} tokens but the context holds {context} positions; \
         at most {} prompt tokens leave room to generate",
        context.saturating_sub(1)
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Positions per sequence.
        context: usize,
    },
    /// A prompt token id is outside the model's vocabulary.
    #[error("prompt token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The id given.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The sampling configuration is invalid.
    #[error("invalid sampling configuration: {0}")]
    Sampling(SamplingError),
    /// The engine configuration is unusable (zero slots, …).
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// A forward pass failed; the sequences in that batch end with this error.
    #[error("forward pass failed: {0}")]
    Forward(String),
    /// A forward pass could not allocate device memory (a GPU's VRAM); the sequences in that
    /// batch end with this error, and the engine goes on serving the others.
    #[error("out of device memory in a forward pass: {0}")]
    OutOfMemory(String),
    /// The KV pool had no block for a generating sequence's next position (every block held
    /// by running sequences); that sequence ends with this error, the others go on.
    #[error("the KV cache pool is full: no block for the next position")]
    KvCacheFull,
    /// A constraint (JSON schema, grammar, regular expression) does not compile, is too
    /// large or exceeds the compile limits (from [`crate::Engine::submit`]), or failed during
    /// generation (a mask beyond the limits). The message names the keyword or limit, never
    /// the request's text beyond that.
    #[error("invalid constraint: {0}")]
    Constraint(String),
    /// The engine shut down before the request finished.
    #[error("the engine shut down before the request finished")]
    ShutDown,
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        EngineError::Load(e)
    }
}

impl From<SamplingError> for EngineError {
    fn from(e: SamplingError) -> Self {
        EngineError::Sampling(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `worker-cpud` prints errors with their chain; a cause both in the message and as the
    /// source printed `unsupported architecture "gemma3" …` twice.
    #[test]
    fn causes_are_said_once() {
        let e = EngineError::from(ModelError::UnsupportedArchitecture {
            arch: "mamba".into(),
            supported: "llama".into(),
        });
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.to_string().matches("\"mamba\"").count(), 1, "{e}");
    }
}
