//! The engine handle: owns the engine thread, validates and tokenizes requests, and hands
//! them to the loop over a channel.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use worker_common::Sampler;
use worker_compute::ComputeBackend;
use worker_gguf::GgufFile;
use worker_models::{LoadOptions, Model};
use worker_tokenizer::{EncodeOptions, Tokenizer};

use crate::request::{CancelHandle, EventSink, Generation, GenerationRequest, Prompt};
use crate::scheduler::{Command, Job, Scheduler};
use crate::EngineError;

/// Sizes of an engine built by [`Engine::load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences generated at once, each in its own KV cache slot.
    pub slots: usize,
    /// Positions per sequence, prompt and generated tokens together (capped at the model's
    /// context length).
    pub context: usize,
    /// Most prompt tokens per forward call (the prefill chunk).
    pub max_batch: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            slots: 1,
            context: 4096,
            max_batch: 512,
        }
    }
}

/// Facts about the loaded model that callers need to validate requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Logits per row.
    pub vocab_size: usize,
    /// Positions per sequence.
    pub context: usize,
    /// Sequences generated at once.
    pub slots: usize,
    /// Device bytes the backend holds once the model is loaded, where it counts them
    /// ([`ComputeBackend::allocated_bytes`]).
    pub device_bytes: Option<u64>,
}

/// The generation engine: a model, its backend and its tokenizer, driven by one thread.
///
/// `Engine` is `Send + Sync`; share it (in an `Arc`) between the threads that submit
/// requests. Dropping it ends pending requests with [`EngineError::ShutDown`] and joins the
/// thread.
pub struct Engine {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    tokenizer: Arc<dyn Tokenizer>,
    info: EngineInfo,
}

impl Engine {
    /// Builds the tokenizer and model from `file`, with weights and KV cache on `backend`.
    pub fn load(
        file: &GgufFile,
        mut backend: Box<dyn ComputeBackend>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        if config.slots == 0 || config.context == 0 || config.max_batch == 0 {
            return Err(EngineError::Config(format!(
                "{config:?}: slots, context and max_batch must be positive"
            )));
        }
        let tokenizer: Arc<dyn Tokenizer> = worker_tokenizer::from_gguf(file.metadata())
            .map_err(EngineError::Tokenizer)?
            .into();
        let model = worker_models::load(
            file,
            backend.as_mut(),
            LoadOptions {
                max_batch: config.max_batch,
                max_logit_rows: config.slots,
                slots: config.slots,
                max_positions: config.context,
            },
        )?;
        Engine::new(model, backend, tokenizer)
    }

    /// Starts the engine thread on a model already loaded on `backend`. The slot count,
    /// context and batch sizes are the model's [`LoadOptions`].
    pub fn new(
        model: Box<dyn Model>,
        backend: Box<dyn ComputeBackend>,
        tokenizer: Arc<dyn Tokenizer>,
    ) -> Result<Engine, EngineError> {
        let opts = *model.options();
        let info = EngineInfo {
            vocab_size: model.hparams().vocab_size as usize,
            context: opts.max_positions,
            slots: opts.slots,
            device_bytes: backend.allocated_bytes(),
        };
        let (commands, rx) = mpsc::channel();
        let tok = tokenizer.clone();
        let thread = std::thread::Builder::new()
            .name("worker-engine".into())
            .spawn(move || Scheduler::new(model, backend, tok.as_ref()).run(rx))
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands,
            thread: Some(thread),
            tokenizer,
            info,
        })
    }

    /// The tokenizer the engine uses.
    pub fn tokenizer(&self) -> &Arc<dyn Tokenizer> {
        &self.tokenizer
    }

    /// Sizes of the loaded model.
    pub fn info(&self) -> EngineInfo {
        self.info
    }

    /// Tokenizes a text prompt as requests do (BOS only when the model asks for it, special
    /// tokens parsed).
    pub fn tokenize_prompt(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizer
            .encode(text, EncodeOptions::PROMPT)
            .map_err(EngineError::Tokenize)
    }

    /// Validates and queues `request`; its events arrive on the returned [`Generation`].
    ///
    /// Bad requests (empty prompt, prompt too long for the context, invalid sampling values,
    /// token ids outside the vocabulary) fail here, before anything is queued.
    pub fn submit(&self, request: GenerationRequest) -> Result<Generation, EngineError> {
        let (tx, events) = mpsc::channel();
        let cancel = self.submit_to(request, Box::new(tx))?;
        Ok(Generation {
            events,
            cancel,
            done: false,
        })
    }

    /// Like [`Self::submit`], with events going to `sink`; returns the request's cancel
    /// handle. A sink that reports nobody listening cancels the request.
    pub fn submit_to(
        &self,
        request: GenerationRequest,
        sink: Box<dyn EventSink>,
    ) -> Result<CancelHandle, EngineError> {
        let prompt_ids = match &request.prompt {
            Prompt::Text(text) => self.tokenize_prompt(text)?,
            Prompt::Ids(ids) => ids.clone(),
        };
        if prompt_ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&id) = prompt_ids
            .iter()
            .find(|&&id| id as usize >= self.info.vocab_size)
        {
            return Err(EngineError::TokenOutOfRange {
                id,
                vocab_size: self.info.vocab_size,
            });
        }
        if prompt_ids.len() >= self.info.context {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt_ids.len(),
                context: self.info.context,
            });
        }
        let sampler = Sampler::new(request.sampling.clone(), self.info.vocab_size)?;
        let cancel = CancelHandle::default();
        let job = Job {
            prompt_ids,
            sampler,
            max_tokens: request.max_tokens,
            stop: request.stop,
            logprobs: request.logprobs,
            sink,
            cancel: cancel.clone(),
        };
        self.commands
            .send(Command::Submit(Box::new(job)))
            .map_err(|_| EngineError::ShutDown)?;
        Ok(cancel)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish()
    }
}
