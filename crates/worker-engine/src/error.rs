//! The one error type of this crate.

use std::fmt;
use std::sync::Arc;

use worker_common::SamplingError;
use worker_models::ModelError;
use worker_tokenizer::TokenizerError;

/// Everything that can go wrong loading the engine, accepting a request or generating.
///
/// The request errors ([`Self::EmptyPrompt`], [`Self::PromptTooLong`], [`Self::TokenOutOfRange`],
/// [`Self::Sampling`], [`Self::Tokenize`], [`Self::Constraint`]) are returned by [`crate::Engine::submit`] before
/// anything is queued; the others arrive as [`crate::Event::Error`] during generation.
///
/// A report that prints the chain says each cause once: [`Self::Forward`] and
/// [`Self::OutOfMemory`] chain the model's error as their `source()` and leave it out of
/// their message; every other variant carries its cause (with that cause's own chain) in the
/// message and chains nothing.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model could not be built (bad file, unsupported architecture, …).
    #[error("cannot load the model: {}", WithCauses(.0))]
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
    ///
    /// The error is shared by every sequence of the batch, hence the [`Arc`].
    #[error("forward pass failed")]
    Forward(#[source] Arc<ModelError>),
    /// A forward pass could not allocate device memory (a GPU's VRAM); the sequences in that
    /// batch end with this error, and the engine goes on serving the others.
    /// The error (shared like [`Self::Forward`]'s) is one for which [`ModelError::is_oom`]
    /// holds.
    #[error("out of device memory in a forward pass")]
    OutOfMemory(#[source] Arc<ModelError>),
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

/// An error followed by its `source()` chain, `: `-separated, for a variant that says its
/// cause in its message instead of chaining it (a device error keeps the driver's message
/// as its source).
struct WithCauses<'a>(&'a dyn std::error::Error);

impl fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
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

    /// A driver's message reaches the report once: chained by a failed forward pass, said in
    /// the message of a failed load.
    #[test]
    fn a_device_error_keeps_the_driver_message() {
        let device = || {
            ModelError::from(worker_compute::ComputeError::Device {
                op: "upload_weight",
                source: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            })
        };
        let forward = EngineError::Forward(Arc::new(device()));
        let mut chain = vec![forward.to_string()];
        let mut cause = std::error::Error::source(&forward);
        while let Some(e) = cause {
            chain.push(e.to_string());
            cause = e.source();
        }
        let report = chain.join(": ");
        assert_eq!(
            report.matches("CUDA_ERROR_ILLEGAL_ADDRESS").count(),
            1,
            "{report}"
        );
        let load = EngineError::from(device());
        assert!(std::error::Error::source(&load).is_none());
        assert_eq!(
            load.to_string()
                .matches("CUDA_ERROR_ILLEGAL_ADDRESS")
                .count(),
            1,
            "{load}"
        );
    }
}
