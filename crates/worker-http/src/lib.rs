//! The worker's HTTP face: the llama-orch routes (`/execute` as Server-Sent Events, `/cancel`,
//! `/health`), the OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`), `/tokenize`, `/detokenize`, Prometheus `/metrics`, validation, bearer auth,
//! correlation ids, the bounded wait queue and the ready callback; and, beside HTTP, the
//! publisher of the engine's KV events over ZeroMQ for KV-aware routers ([`KvEventPublisher`]).
//! Every worker binary (`worker-cpud`, `worker-orcd`) serves through it unchanged.
//!
//! ```no_run
//! # async fn run(engine: worker_engine::Engine, file: &worker_gguf::GgufFile) -> Result<(), worker_http::HttpError> {
//! use std::sync::Arc;
//! use worker_http::{ModelCard, Server, ServerConfig};
//! let card = ModelCard::from_gguf("smollm2", file, &engine.info())?;
//! let server = Server::new(Arc::new(engine), card, ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, worker_http::shutdown_signal()).await
//! # }
//! ```
//!
//! **Architecture invariants**: this is the only crate that knows JSON and HTTP (and the KV
//! events' MessagePack and ZeroMQ); the types it gets from `worker-engine` and
//! `worker-common` are plain and are converted here, by hand or through the serde structs of
//! the `openai` and `kv_events` modules. It must not run the model or sample:
//! every generation goes through [`worker_engine::Engine`]. No request may panic the process,
//! and prompt or output text is never logged above debug level nor echoed in an error.
#![deny(missing_docs)]

mod callback;
mod cli;
mod conn;
mod constrain;
mod error;
mod execute;
pub mod fuzzing;
mod harmony;
mod json;
mod kv_events;
mod limits;
mod loading;
mod metrics;
mod middleware;
mod model;
mod openai;
mod routes;
mod schema;
mod seed;
mod state;
mod time;
mod tools;
mod validate;

pub use callback::send_ready_callback;
pub use cli::{load_model, run, run_blocking, serve_model, BackendResult, ServeArgs, WorkerKind};
pub use error::HttpError;
pub use kv_events::{KvEventPublisher, KvEventsConfig};
pub use limits::ConnectionLimits;
pub use loading::LoadingPort;
pub use model::ModelCard;
pub use routes::{shutdown_signal, Server};
pub use state::ServerConfig;
