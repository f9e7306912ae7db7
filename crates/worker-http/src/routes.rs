//! The router, the small routes (`/health`, `/metrics`, `/tokenize`, `/detokenize`,
//! `/v1/models`) and the server's life cycle (serve, drain, stop).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use worker_engine::Engine;
use worker_tokenizer::EncodeOptions;

use crate::error::ApiError;
use crate::metrics::Gauges;
use crate::model::ModelCard;
use crate::state::{AppState, ServerConfig};
use crate::validate::{Fields, Rules};
use crate::{conn, execute, json, middleware, openai, HttpError};

/// Once the open jobs have been told to end, their streams get this long to close before the
/// server stops anyway (the contract allows 5 s from SIGTERM in all; the drain takes at most
/// 3 of them).
const CLOSE_GRACE: Duration = Duration::from_millis(1000);

/// How often the drain looks whether the open jobs have finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The HTTP server of one worker.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server for `engine`, reporting `card`.
    pub fn new(engine: Arc<Engine>, card: ModelCard, config: ServerConfig) -> Self {
        Server {
            state: Arc::new(AppState::new(engine, card, config)),
        }
    }

    /// Every route, with auth, correlation ids and the body limit.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/execute", post(execute::execute))
            .route("/cancel", post(execute::cancel))
            .route("/tokenize", post(tokenize))
            .route("/detokenize", post(detokenize))
            .route("/v1/models", get(openai::models))
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1/completions", post(openai::completions))
            .route("/v1/chat/completions/render", post(openai::render::chat))
            .route("/v1/completions/render", post(openai::render::completion))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(state.config.body_limit))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                middleware::auth,
            ))
            .layer(axum::middleware::from_fn(middleware::correlation))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` completes; then drains: `/health` says
    /// "draining" (503) and new generations get 503 with `Retry-After` while the open ones
    /// run on for up to the configured drain timeout; then every stream still open ends with
    /// a terminal `SHUTTING_DOWN` event, the listener closes, and this returns once the
    /// connections are closed (at most [`CLOSE_GRACE`] later).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let state = self.state.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut stopped = stop_rx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let timeout = state.config.drain_timeout;
            tracing::info!(
                open_jobs = state.open_jobs(),
                timeout_ms = timeout.as_millis() as u64,
                "shutdown requested: draining"
            );
            state.begin_drain();
            let idle = async {
                while state.open_jobs() > 0 {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
            };
            if tokio::time::timeout(timeout, idle).await.is_err() {
                tracing::info!("drain timeout reached");
            }
            state.end_open_jobs();
            let _ = stop_tx.send(true);
        });
        let server = conn::serve(listener, self.router(), self.state.clone(), stop_rx);
        let deadline = async move {
            if stopped.wait_for(|s| *s).await.is_ok() {
                tokio::time::sleep(CLOSE_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = server => {}
            () = deadline => tracing::warn!("streams still open after the grace period; stopping"),
        }
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

async fn not_found() -> Response {
    let e = ApiError::new(worker_common::ErrorCode::InvalidRequest, "no such route");
    (StatusCode::NOT_FOUND, Json(e.body())).into_response()
}

/// A known route asked with another method: 405 with a JSON body (axum adds `Allow`).
async fn method_not_allowed() -> Response {
    let e = ApiError::new(
        worker_common::ErrorCode::InvalidRequest,
        "this route does not take that method",
    );
    (StatusCode::METHOD_NOT_ALLOWED, Json(e.body())).into_response()
}

/// `GET /health`: 200 while serving, 503 while draining.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let draining = state.is_draining();
    let kv = state.engine.kv_stats();
    let mut body = json!({
        "status": if draining { "draining" } else { "ok" },
        "model": state.card.id,
        "quant_kind": state.card.quant_kind,
        "tokenizer_kind": state.card.tokenizer_kind,
        "vocab_size": state.info.vocab_size,
        "context_length": state.info.context,
        "memory_bytes": state.card.memory_in_use(&kv),
        "kv_cache": {
            "type": state.info.kv_type.as_str(),
            "block_positions": worker_engine::KV_BLOCK,
            "blocks_total": kv.blocks_total,
            "blocks_used": kv.blocks_used,
            "blocks_cached": kv.blocks_cached,
            "bytes_total": state.info.kv_pool_bytes,
            "bytes_in_use": (kv.blocks_used + kv.blocks_cached) as u64 * kv.block_bytes,
            "prefix_cache": state.info.prefix_cache,
            "prompt_tokens": kv.prompt_tokens,
            "cached_prompt_tokens": kv.cached_prompt_tokens,
            "evictions": kv.evictions,
        },
        "uptime_seconds": state.started.elapsed().as_secs(),
        "slots_busy": state.slots_busy(),
        "slots_total": state.info.slots,
        "queue_depth": state.queue_depth(),
    });
    if let Some(w) = &state.config.worker {
        body["worker_type"] = json!(w.worker_type);
        body["memory_architecture"] = json!(w.memory_architecture.as_str());
        if let Some(d) = &w.device {
            body["device"] = crate::callback::device(d);
        }
    }
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&Gauges {
        model: &state.card.id,
        queue_depth: state.queue_depth(),
        slots_busy: state.slots_busy(),
        slots_total: state.info.slots,
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        kv: state.engine.kv_stats(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /tokenize {content, add_special?, parse_special?}` → `{tokens}`.
async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = json::body_bytes(body).and_then(|b| parse_tokenize(&b));
    let (text, options) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // Tokenizing up to the body limit of text is CPU work: keep it off the async threads.
    let engine = state.engine.clone();
    let encoded = tokio::task::spawn_blocking(move || engine.tokenizer().encode(&text, options))
        .await
        .ok()
        .and_then(Result::ok);
    match encoded {
        Some(tokens) => Json(json!({ "tokens": tokens })).into_response(),
        None => ApiError::field("content", "tokenizable", "the text could not be tokenized")
            .into_response(),
    }
}

/// Parses a `/tokenize` body: the text and how to encode it.
pub(crate) fn parse_tokenize(bytes: &[u8]) -> Result<(String, EncodeOptions), ApiError> {
    let obj = json::object(bytes)?;
    let obj = &obj;
    let mut f = Fields::new(obj);
    f.deny_unknown(&["content", "add_special", "parse_special"]);
    let content = match obj.get("content") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => f.required_string("content", execute::MAX_PROMPT_CHARS),
    };
    let mut flag = |name: &str| match obj.get(name) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            f.errors.push(crate::error::FieldError::new(
                name,
                "a boolean",
                format!("{name} must be a boolean"),
            ));
            false
        }
    };
    let options = EncodeOptions {
        add_special: flag("add_special"),
        parse_special: flag("parse_special"),
    };
    f.finish()?;
    Ok((content.unwrap_or_default(), options))
}

/// Parses a `/detokenize` body: token ids below the vocabulary size.
pub(crate) fn parse_detokenize(rules: &Rules<'_>, bytes: &[u8]) -> Result<Vec<u32>, ApiError> {
    let obj = json::object(bytes)?;
    let mut f = Fields::new(&obj);
    f.deny_unknown(&["tokens"]);
    f.finish()?;
    let vocab = rules.vocab_size as u64;
    let constraint = format!("an array of token ids < {vocab}");
    let bad = || {
        ApiError::field(
            "tokens",
            &constraint,
            format!("tokens must be {constraint}"),
        )
    };
    let Some(serde_json::Value::Array(items)) = obj.get("tokens") else {
        return Err(bad());
    };
    items
        .iter()
        .map(|v| v.as_u64().filter(|&id| id < vocab).map(|id| id as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(bad)
}

/// `POST /detokenize {tokens}` → `{content}`.
async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rules = state.rules();
    let result =
        json::body_bytes(body)
            .and_then(|b| parse_detokenize(&rules, &b))
            .and_then(|ids| {
                state.engine.tokenizer().decode(&ids, false).map_err(|_| {
                    ApiError::field("tokens", "decodable", "the ids could not be decoded")
                })
            });
    match result {
        Ok(content) => Json(json!({ "content": content })).into_response(),
        Err(e) => e.into_response(),
    }
}
