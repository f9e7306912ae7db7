//! What goes into the engine (a [`GenerationRequest`]) and what comes back (a stream of
//! [`Event`]s ending with exactly one terminal event).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use worker_common::SamplingConfig;

use crate::{Constraint, EngineError};

/// The prompt of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Text, tokenized as llama.cpp's CLI and server do: BOS only when the model's metadata
    /// asks for it, and special tokens written in the text (`<|im_start|>`) parsed.
    Text(String),
    /// Token ids, used as given.
    Ids(Vec<u32>),
}

/// One generation job.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// How to pick tokens.
    pub sampling: SamplingConfig,
    /// Most tokens to generate (the end-of-generation token not counted); `None` generates
    /// until another stop condition, at the latest when the context is full.
    pub max_tokens: Option<usize>,
    /// Stop strings: generation ends when the generated text contains one; neither it nor
    /// anything after it is part of the output.
    pub stop: Vec<String>,
    /// When set, each token event carries its log-probability and this many most likely
    /// alternatives.
    pub logprobs: Option<usize>,
    /// When set, every generated token keeps the output inside this constraint's language;
    /// generation stops ([`StopReason::Eos`]) when the output is complete, and only then may
    /// an end-of-generation token be chosen.
    pub constraint: Option<Constraint>,
    /// End-of-generation tokens (and [`Self::stop_token_ids`]) cannot be chosen before this
    /// many tokens are generated (vLLM's `min_tokens`).
    pub min_tokens: usize,
    /// End-of-generation tokens are never chosen: generation runs to another stop condition
    /// (vLLM's and llama.cpp's `ignore_eos`; banned as llama.cpp does, so the output never
    /// holds one).
    pub ignore_eos: bool,
    /// More tokens that end generation as an end-of-generation token does, and like it are
    /// not part of the output (vLLM's `stop_token_ids`).
    pub stop_token_ids: Vec<u32>,
    /// A stop string that ends generation stays at the end of the output (vLLM's
    /// `include_stop_str_in_output`, SGLang's `no_stop_trim`).
    pub include_stop: bool,
    /// Special tokens (other than the end of generation) are written into the output text
    /// instead of skipped (vLLM's `skip_special_tokens: false`).
    pub render_special: bool,
}

impl GenerationRequest {
    /// A request for `prompt` text with default sampling and no limits but the context.
    pub fn new(prompt: impl Into<String>) -> Self {
        GenerationRequest {
            prompt: Prompt::Text(prompt.into()),
            sampling: SamplingConfig::default(),
            max_tokens: None,
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            include_stop: false,
            render_special: false,
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (EOS, EOT, …), or a constrained output
    /// is complete.
    Eos,
    /// The generated text contained this stop string.
    StopSequence(String),
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The sequence filled its context: no position is left for the next token.
    ContextFull,
    /// The request was cancelled or its receiver dropped.
    Cancelled,
}

impl StopReason {
    /// The stable name: `eos`, `stop_sequence`, `max_tokens`, `context_full`, `cancelled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopSequence(_) => "stop_sequence",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// The token id.
    pub id: u32,
    /// Text that is final now: whole UTF-8 characters, never part of a stop string. It may be
    /// empty while text is held back (an incomplete character, a possible stop string), and
    /// may then carry text of earlier tokens.
    pub text: String,
    /// The token's log-probability, when the request asked for log-probabilities.
    pub logprob: Option<f32>,
    /// The most likely alternatives as `(id, logprob)`, when asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Prefill and decode timings of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Prompt tokens run through the model.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead.
    pub cached_tokens: usize,
    /// Time of the prompt's forward passes.
    pub prefill: Duration,
    /// Decode steps (forward passes of one generated token) this sequence took part in.
    pub decode_steps: usize,
    /// Time of those steps, sampling included.
    pub decode: Duration,
}

impl Timings {
    /// Prompt tokens per second, if any prompt ran.
    pub fn prefill_tokens_per_s(&self) -> Option<f64> {
        rate(self.prompt_tokens, self.prefill)
    }

    /// Decode steps per second, if any step ran.
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        rate(self.decode_steps, self.decode)
    }
}

fn rate(n: usize, t: Duration) -> Option<f64> {
    (n > 0 && !t.is_zero()).then(|| n as f64 / t.as_secs_f64())
}

/// The summary that ends a successful generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Why it ended.
    pub stop_reason: StopReason,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The generated ids, one per [`TokenEvent`] (an end-of-generation token is not included).
    pub ids: Vec<u32>,
    /// Text held back until the end that no token event carried (a partial stop string that
    /// never completed, an incomplete character); a streaming client prints it last.
    pub tail: String,
    /// The whole generated text: every [`TokenEvent::text`] followed by [`Self::tail`].
    pub text: String,
    /// Prefill and decode timings.
    pub timings: Timings,
}

/// What the engine sends back for a request. Every accepted request gets zero or more
/// [`Event::Token`]s, then exactly one terminal event ([`Event::End`] or [`Event::Error`]).
#[derive(Debug)]
pub enum Event {
    /// A generated token.
    Token(TokenEvent),
    /// The generation finished.
    End(Completion),
    /// The generation failed.
    Error(EngineError),
}

impl Event {
    /// Whether this is the last event of its request.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Event::Token(_))
    }
}

/// Where a request's events go. [`crate::Engine::submit`] uses a standard channel; a server
/// can pass its own (an async channel) to [`crate::Engine::submit_to`].
pub trait EventSink: Send {
    /// Delivers an event; returns `false` when nobody listens any more, which cancels the
    /// request.
    fn send(&mut self, event: Event) -> bool;
}

impl EventSink for mpsc::Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

/// Cancels a request from any thread; the engine notices within one decode step and ends the
/// request with [`StopReason::Cancelled`].
#[derive(Clone, Debug, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks for cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The caller's side of a submitted request: its events, in order, and a cancel handle.
/// Dropping it cancels the request.
#[derive(Debug)]
pub struct Generation {
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) cancel: CancelHandle,
    pub(crate) done: bool,
}

impl Generation {
    /// A handle that cancels this request.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Cancels this request.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the next event; `None` after the terminal event. If the engine vanished
    /// without ending the request, the terminal event is [`EngineError::ShutDown`].
    pub fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self
            .events
            .recv()
            .unwrap_or(Event::Error(EngineError::ShutDown));
        self.done = event.is_terminal();
        Some(event)
    }

    /// Waits for the end, dropping token events.
    pub fn wait(mut self) -> Result<Completion, EngineError> {
        while let Some(event) = self.next_event() {
            match event {
                Event::Token(_) => {}
                Event::End(c) => return Ok(c),
                Event::Error(e) => return Err(e),
            }
        }
        Err(EngineError::ShutDown)
    }
}

impl Drop for Generation {
    /// Cancels the request if it has not ended, so a request still waiting for a slot is
    /// dropped too, not only one that is generating.
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}

impl Iterator for Generation {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.next_event()
    }
}
