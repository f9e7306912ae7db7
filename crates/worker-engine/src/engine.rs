//! The engine handle: owns the engine thread, validates and tokenizes requests, and hands
//! them to the loop over a channel.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use worker_common::Sampler;
use worker_compute::{ComputeBackend, KvLayout, KvType, KV_BLOCK};
use worker_gguf::GgufFile;
use worker_models::{LoadOptions, Model};
use worker_tokenizer::{EncodeOptions, Tokenizer};

use crate::blocks::KvStats;
use crate::constraint::Grammars;
use crate::kv_events::KvEventSink;
use crate::request::{CancelHandle, EventSink, Generation, GenerationRequest, Prompt};
use crate::scheduler::{Command, EndRules, Job, LoopConfig, Scheduler};
use crate::EngineError;

/// Sizes of an engine built by [`Engine::load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences generated at once (at most `max_batch`).
    pub slots: usize,
    /// Positions per sequence, prompt and generated tokens together (capped at the model's
    /// context length).
    pub context: usize,
    /// Most tokens per forward call: the prefill chunk of a prompt that runs alone.
    pub max_batch: usize,
    /// Most prompt tokens in a forward call that also carries generating sequences (chunked
    /// prefill); fewer when measured step times say that keeps their inter-token latency
    /// within 2.5 times a decode-only step.
    pub prefill_chunk: usize,
    /// KV entry type asked for (the backend may store another; [`EngineInfo`] says).
    pub kv_type: KvType,
    /// Bytes of the KV pool; `None` for every slot at full context.
    pub kv_cache_bytes: Option<u64>,
    /// Whether full KV blocks are shared between requests by prefix.
    pub prefix_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            slots: 1,
            context: 4096,
            max_batch: 512,
            prefill_chunk: 256,
            kv_type: KvType::F16,
            kv_cache_bytes: None,
            prefix_cache: true,
        }
    }
}

impl EngineConfig {
    /// The model's load options under this configuration.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_batch: self.max_batch,
            max_logit_rows: self.slots,
            seqs: self.slots,
            max_positions: self.context,
            kv_type: self.kv_type,
            kv_cache_bytes: self.kv_cache_bytes,
        }
    }
}

/// Facts about the loaded model that callers need to validate requests and report memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Logits per row.
    pub vocab_size: usize,
    /// Positions per sequence (at most what the KV pool holds).
    pub context: usize,
    /// Sequences generated at once.
    pub slots: usize,
    /// KV entry type the backend stores.
    pub kv_type: KvType,
    /// Bytes of the whole KV pool (its pages are touched only as blocks are written).
    pub kv_pool_bytes: u64,
    /// Whether the prefix cache is on.
    pub prefix_cache: bool,
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
    stats: Arc<Mutex<KvStats>>,
    grammars: Grammars,
}

impl Engine {
    /// Builds the tokenizer and model from `file`, with weights and KV cache on `backend`.
    pub fn load(
        file: &GgufFile,
        mut backend: Box<dyn ComputeBackend>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        if config.slots == 0
            || config.context == 0
            || config.max_batch == 0
            || config.prefill_chunk == 0
        {
            return Err(EngineError::Config(format!(
                "{config:?}: slots, context, max_batch and prefill_chunk must be positive"
            )));
        }
        if config.slots > config.max_batch {
            return Err(EngineError::Config(format!(
                "{} slots but batches of {}: every generating slot needs a row of each step",
                config.slots, config.max_batch
            )));
        }
        let tokenizer: Arc<dyn Tokenizer> = worker_tokenizer::from_gguf(file.metadata())
            .map_err(EngineError::Tokenizer)?
            .into();
        let model = worker_models::load(file, backend.as_mut(), config.load_options())?;
        Engine::new(model, backend, tokenizer, &config)
    }

    /// Starts the engine thread on a model already loaded on `backend`. The slot count,
    /// context and batch sizes are the model's [`LoadOptions`]; of `config`, the loop's own
    /// settings (prefill chunk, prefix cache) are used.
    pub fn new(
        model: Box<dyn Model>,
        backend: Box<dyn ComputeBackend>,
        tokenizer: Arc<dyn Tokenizer>,
        config: &EngineConfig,
    ) -> Result<Engine, EngineError> {
        let opts = *model.options();
        let kv = *model.kv_cache();
        let pool_positions = kv.blocks.saturating_mul(KV_BLOCK);
        let loop_config = LoopConfig {
            prefill_chunk: config.prefill_chunk,
            prefix_cache: config.prefix_cache,
        };
        let info = EngineInfo {
            vocab_size: model.hparams().vocab_size as usize,
            context: opts.max_positions.min(pool_positions),
            slots: opts.seqs,
            kv_type: kv.ty,
            kv_pool_bytes: kv.bytes(),
            prefix_cache: config.prefix_cache && backend.kv_layout() == KvLayout::Paged,
            device_bytes: backend.allocated_bytes(),
        };
        let grammars = Grammars::new(tokenizer.clone(), info.vocab_size)?;
        let stats = Arc::new(Mutex::new(KvStats::default()));
        let (commands, rx) = mpsc::channel();
        let tok = tokenizer.clone();
        let loop_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("worker-engine".into())
            .spawn(move || {
                Scheduler::new(model, backend, tok.as_ref(), loop_config, loop_stats).run(rx)
            })
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands,
            thread: Some(thread),
            tokenizer,
            info,
            stats,
            grammars,
        })
    }

    /// The KV pool's counters as of the engine's last turn.
    pub fn kv_stats(&self) -> KvStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// From now on, tells `sink` after every turn which full blocks entered the prefix cache
    /// and which left it (see [`crate::KvEvent`]); replaces an earlier sink. Subscribe before
    /// the first request for the subscriber to see every block the cache holds. Fails when
    /// the prefix cache is off, since nothing would ever be reported.
    pub fn report_kv_events(&self, sink: Box<dyn KvEventSink>) -> Result<(), EngineError> {
        if !self.info.prefix_cache {
            return Err(EngineError::Config(
                "KV events report the prefix cache, which is off (disabled, or a backend \
                 whose KV cache is not paged)"
                    .into(),
            ));
        }
        self.commands
            .send(Command::ReportKvEvents(sink))
            .map_err(|_| EngineError::ShutDown)
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

    /// Compiles `constraint` as [`Self::submit`] would, without generating: a caller that
    /// leaves its output free can still refuse schemas that do not compile.
    pub fn check_constraint(&self, constraint: &crate::Constraint) -> Result<(), EngineError> {
        self.grammars.compile(constraint).map(|_| ())
    }

    /// Validates and queues `request`; its events arrive on the returned [`Generation`].
    ///
    /// Bad requests (empty prompt, prompt too long for the context, invalid sampling values,
    /// token ids outside the vocabulary, a constraint that does not compile) fail here,
    /// before anything is queued. A constraint is compiled on the caller's thread, within
    /// llguidance's limits, so a large schema never stalls the engine loop.
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
        let grammar = match &request.constraint {
            Some(c) => Some(self.grammars.compile(c)?),
            None => None,
        };
        let cancel = CancelHandle::default();
        let job = Job {
            prompt_ids,
            sampler,
            max_tokens: request.max_tokens,
            stop: request.stop,
            logprobs: request.logprobs,
            grammar,
            ends: EndRules {
                min_tokens: request.min_tokens,
                ignore_eos: request.ignore_eos,
                stop_token_ids: request.stop_token_ids,
                include_stop: request.include_stop,
                render_special: request.render_special,
            },
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
