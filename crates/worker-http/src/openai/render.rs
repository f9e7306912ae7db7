//! vLLM's renderer routes, `/v1/chat/completions/render` and `/v1/completions/render`: the
//! token ids the generation route would run for the same body, without generating. A
//! KV-aware router (vllm-router's `kv_aware`) asks for them to hash the prompt's blocks and
//! find the worker that holds them; it needs the worker's own chat template and tokenizer to
//! get the ids the worker will actually compute.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use worker_engine::Prompt;

use super::request::{self, Prepared};
use crate::error::ApiError;
use crate::json;
use crate::state::AppState;
use crate::validate::Rules;

/// What vLLM's `GenerateRequest` says that a router reads: the prompt's token ids and the
/// model (sampling parameters are not rendered).
#[derive(Serialize)]
struct Rendered {
    token_ids: Vec<u32>,
    model: String,
}

/// `POST /v1/chat/completions/render` → `{token_ids, model}`.
pub(crate) async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&state, body, request::parse_chat, |r| {
        Json(r).into_response()
    })
    .await
}

/// `POST /v1/completions/render` → `[{token_ids, model}]`, one per prompt, as vLLM answers.
pub(crate) async fn completion(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&state, body, request::parse_completion, |r| {
        Json([r]).into_response()
    })
    .await
}

/// Parses `body` as the generation route does, then renders it and answers with `shape`.
async fn answer(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    parse: fn(&Rules<'_>, &[u8]) -> Result<Prepared, ApiError>,
    shape: fn(Rendered) -> Response,
) -> Response {
    let prepared = json::body_bytes(body)
        .map_err(ApiError::openai)
        .and_then(|b| parse(&state.rules(), &b));
    match render(state, prepared).await {
        Ok(r) => shape(r),
        Err(e) => e.openai().into_response(),
    }
}

/// Tokenizes the prompt of a parsed request as [`worker_engine::Engine::submit`] would.
async fn render(
    state: &AppState,
    prepared: Result<Prepared, ApiError>,
) -> Result<Rendered, ApiError> {
    let prepared = prepared?;
    let token_ids = match prepared.request.prompt {
        Prompt::Ids(ids) => ids,
        Prompt::Text(text) => {
            // Tokenizing up to the body limit of text is CPU work: off the async threads.
            let engine = state.engine.clone();
            tokio::task::spawn_blocking(move || engine.tokenize_prompt(&text))
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| {
                    ApiError::field("prompt", "tokenizable", "the prompt could not be tokenized")
                })?
        }
    };
    Ok(Rendered {
        token_ids,
        model: state.card.id.clone(),
    })
}
