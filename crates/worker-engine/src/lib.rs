//! The generation engine: queues requests, tokenizes prompts, runs prefill (the whole prompt
//! as batched matmuls) and decode steps through a [`worker_models::Model`], samples with
//! [`worker_common::Sampler`], detects stop conditions and streams UTF-8-safe text.
//!
//! ```no_run
//! use worker_compute::{CpuBackend, CpuConfig};
//! use worker_engine::{Engine, EngineConfig, Event, GenerationRequest};
//! let file = worker_gguf::GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let backend = Box::new(CpuBackend::new(CpuConfig::default()));
//! let engine = Engine::load(&file, backend, EngineConfig::default())?;
//! let mut request = GenerationRequest::new("The capital of France is");
//! request.max_tokens = Some(16);
//! for event in engine.submit(request)? {
//!     match event {
//!         Event::Token(t) => print!("{}", t.text),
//!         Event::End(end) => println!("{}[{}]", end.tail, end.stop_reason.as_str()),
//!         Event::Error(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Structure
//!
//! [`Engine`] owns one thread that owns the model, the backend and N slots (llama.cpp's
//! server slots), each a row of the KV block table. Requests arrive over a channel, each
//! carrying its own [`EventSink`] (mistral.rs's reply channel). Every turn the loop drops
//! cancelled requests, admits queued requests into free slots when the KV pool has blocks
//! for their prompts (taking the longest cached prefix of whole blocks from any earlier or
//! running request: vLLM's automatic prefix caching), then runs one forward call carrying the
//! next token of every generating slot plus prompt chunks up to a token budget (chunked
//! prefill: a long prompt never stalls the others for more than a chunk, and the chunk is
//! sized from measured step times so that their inter-token latency stays bounded). After
//! every turn, a subscriber given to [`Engine::report_kv_events`] is told which full blocks
//! entered and left the prefix cache ([`KvEvent`], what vLLM's KV events carry).
//!
//! **Architecture invariants**: this crate does no network IO and knows no wire format (no
//! serde, no HTTP); it never names a concrete backend. Every request that
//! [`Engine::submit`] accepts ends with exactly one terminal event ([`Event::End`] or
//! [`Event::Error`]); bad requests are refused by `submit` itself. Stop strings are never
//! streamed, not even in part, and streamed text never splits a UTF-8 character. Prompt and
//! output text are never logged above debug level.
#![deny(missing_docs)]

mod blocks;
mod constraint;
mod engine;
mod error;
mod kv_events;
mod pace;
mod request;
mod scheduler;
pub mod stop;

pub use blocks::KvStats;
pub use constraint::{Constraint, MAX_CONSTRAINT_BYTES};
pub use engine::{Engine, EngineConfig, EngineInfo};
pub use error::EngineError;
pub use kv_events::{KvEvent, KvEventSink};
pub use request::{
    CancelHandle, Completion, Event, EventSink, Generation, GenerationRequest, Prompt, StopReason,
    Timings, TokenEvent,
};
pub use worker_common::SamplingConfig;
pub use worker_compute::{ComputeBackend, KvType, KV_BLOCK};
