//! `POST /execute` (the llama-orch job route, answered as Server-Sent Events) and
//! `POST /cancel`.
//!
//! Event order: `started`, then `token {t, i}` per generated token with a `metrics` event
//! every `metrics_every` tokens, then exactly one terminal event: `end` or `error`. Text the
//! engine held back to the end (a partial stop string that never completed) arrives as one
//! more `token` event carrying the index of the last token, so the `t` fields always
//! concatenate to the whole output.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream::{self, Stream};
use serde_json::json;
use worker_common::{limits, SamplingConfig};
use worker_engine::{Completion, GenerationRequest, StopReason};

use crate::constrain;
use crate::error::ApiError;
use crate::metrics::{Outcome, Route};
use crate::middleware::CorrelationId;
use crate::state::{AppState, Running, Step};
use crate::validate::{Fields, Rules};
use crate::{json, time};

/// The fields `/execute` accepts.
pub(crate) const EXECUTE_FIELDS: &[&str] = &[
    "job_id",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "seed",
    "response_format",
    "grammar",
];

/// Most prompt characters accepted (the body limit bounds it first in practice).
pub(crate) const MAX_PROMPT_CHARS: usize = 4 << 20;

/// A validated `/execute` body.
pub(crate) struct ExecuteRequest {
    pub job_id: String,
    pub request: GenerationRequest,
    /// The field the request's constraint came from.
    pub constraint_field: Option<&'static str>,
}

/// Parses and validates an `/execute` body.
pub(crate) fn parse_execute(rules: &Rules<'_>, bytes: &[u8]) -> Result<ExecuteRequest, ApiError> {
    let obj = json::object(bytes)?;
    let mut f = Fields::new(&obj);
    f.deny_unknown(EXECUTE_FIELDS);
    let job_id = f.required_string("job_id", 256);
    let prompt = f.required_string("prompt", MAX_PROMPT_CHARS);
    let max_out = rules.max_tokens_out as u64;
    let max_tokens = f.uint("max_tokens", 1, max_out).unwrap_or(max_out);
    let d = SamplingConfig::default();
    let sampling = SamplingConfig {
        temperature: f.bounded(&limits::TEMPERATURE).unwrap_or(d.temperature),
        top_p: f.bounded(&limits::TOP_P).unwrap_or(d.top_p),
        top_k: f
            .uint("top_k", 0, u64::from(u32::MAX))
            .map_or(d.top_k, |k| k as u32),
        min_p: f.bounded(&limits::MIN_P).unwrap_or(d.min_p),
        repetition_penalty: f
            .bounded(&limits::REPETITION_PENALTY)
            .unwrap_or(d.repetition_penalty),
        presence_penalty: f
            .bounded(&limits::PRESENCE_PENALTY)
            .unwrap_or(d.presence_penalty),
        frequency_penalty: f
            .bounded(&limits::FREQUENCY_PENALTY)
            .unwrap_or(d.frequency_penalty),
        seed: f
            .uint("seed", 0, u64::MAX)
            .unwrap_or_else(crate::seed::fresh_seed),
        ..d
    };
    let stop = f.stop("stop");
    let requested = constrain::from_fields(obj.get("response_format"), obj.get("grammar"));
    let requested = match requested {
        Ok(r) => r,
        Err(e) => {
            f.errors.push(e);
            None
        }
    };
    f.finish()?;
    let (Some(job_id), Some(prompt)) = (job_id, prompt) else {
        return Err(ApiError::new(
            worker_common::ErrorCode::InvalidRequest,
            "job_id and prompt are required",
        ));
    };
    let constraint_field = requested.as_ref().map(|r| r.field);
    Ok(ExecuteRequest {
        job_id,
        request: GenerationRequest {
            sampling,
            max_tokens: Some(max_tokens as usize),
            stop,
            constraint: requested.map(|r| r.constraint),
            ..GenerationRequest::new(prompt)
        },
        constraint_field,
    })
}

/// `POST /execute`.
pub(crate) async fn execute(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = json::body_bytes(body).and_then(|b| parse_execute(&state.rules(), &b));
    let ExecuteRequest {
        job_id,
        request,
        constraint_field,
    } = match parsed {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .count_request(Route::Execute, Outcome::from_code(e.code));
            return e.into_response();
        }
    };
    let seed = request.sampling.seed;
    let started = state
        .start(job_id.clone(), Route::Execute, correlation.0, request)
        .await;
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            let e = match constraint_field {
                Some(field) => constrain::attribute(e, field),
                None => e,
            };
            state
                .metrics
                .count_request(Route::Execute, Outcome::from_code(e.code));
            return e.into_response();
        }
    };
    let stream = event_stream(job_id, seed, running);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(5)))
        .into_response()
}

/// State of one `/execute` stream.
struct ExecuteStream {
    running: Running,
    seed: u64,
    pending: VecDeque<SseEvent>,
    ended: bool,
}

fn sse(name: &str, data: serde_json::Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

fn event_stream(
    job_id: String,
    seed: u64,
    running: Running,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let started = sse(
        "started",
        json!({
            "job_id": job_id,
            "model": running.state.card.id,
            "started_at": time::rfc3339_now(),
            "seed": seed,
            "correlation_id": running.correlation_id,
        }),
    );
    let st = ExecuteStream {
        running,
        seed,
        pending: VecDeque::from([started]),
        ended: false,
    };
    stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.ended {
                return None;
            }
            match st.running.next().await {
                None => st.ended = true,
                Some(step) => st.push(step),
            }
        }
    })
}

impl ExecuteStream {
    fn push(&mut self, step: Step) {
        match step {
            Step::Token(t) => {
                let i = self.running.tokens - 1;
                self.pending
                    .push_back(sse("token", json!({"t": t.text, "i": i})));
                let every = self.running.state.config.metrics_every.max(1);
                if self.running.tokens.is_multiple_of(every) {
                    let state = &self.running.state;
                    let ms = self.running.decode_time().as_secs_f64() * 1e3;
                    self.pending.push_back(sse(
                        "metrics",
                        json!({
                            "tokens_out": self.running.tokens,
                            "decode_time_ms": ms.round() as u64,
                            "tokens_per_sec": rate(self.running.tokens.saturating_sub(1), ms),
                            "slots_busy": state.slots_busy(),
                            "queue_depth": state.queue_depth(),
                        }),
                    ));
                }
            }
            Step::End(c) => {
                if !c.tail.is_empty() {
                    let i = self.running.tokens.saturating_sub(1);
                    self.pending
                        .push_back(sse("token", json!({"t": c.tail, "i": i})));
                }
                self.pending.push_back(sse("end", self.end_event(&c)));
                self.ended = true;
            }
            Step::Failed(e) => {
                self.pending.push_back(sse(
                    "error",
                    json!({
                        "code": e.code.as_str(),
                        "message": e.message,
                        "retriable": e.code.retriable(),
                    }),
                ));
                self.ended = true;
            }
        }
    }

    fn end_event(&self, c: &Completion) -> serde_json::Value {
        let matched = match &c.stop_reason {
            StopReason::StopSequence(s) => Some(s.clone()),
            _ => None,
        };
        let t = &c.timings;
        json!({
            "tokens_out": c.ids.len(),
            "prompt_tokens": c.prompt_ids.len(),
            "cached_prompt_tokens": t.cached_tokens,
            "decode_time_ms": (t.decode.as_secs_f64() * 1e3).round() as u64,
            "prefill_time_ms": (t.prefill.as_secs_f64() * 1e3).round() as u64,
            "stop_reason": c.stop_reason.as_str(),
            "stop_sequence_matched": matched,
            "seed": self.seed,
        })
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        (n as f64 * 1e4 / ms).round() / 10.0
    } else {
        0.0
    }
}

/// Parses a `/cancel` body: the job id.
pub(crate) fn parse_cancel(bytes: &[u8]) -> Result<String, ApiError> {
    let obj = json::object(bytes)?;
    let mut f = Fields::new(&obj);
    f.deny_unknown(&["job_id"]);
    let id = f.required_string("job_id", 256);
    f.finish().map(|()| id.unwrap_or_default())
}

/// `POST /cancel {job_id}`: 202 whether or not the job still runs.
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match json::body_bytes(body).and_then(|b| parse_cancel(&b)) {
        Err(e) => e.into_response(),
        Ok(job_id) => {
            let running = state.cancel(&job_id);
            let id = crate::middleware::loggable(&job_id);
            tracing::info!(job_id = %id, running, "cancel requested");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"job_id": job_id, "cancelled": running})),
            )
                .into_response()
        }
    }
}
