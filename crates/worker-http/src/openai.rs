//! The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//! and vLLM's `/render` twins of the first two ([`render`]).
//!
//! Requests are parsed and validated in [`request`]; this module runs them and answers.
//! Streaming answers are `data: {chunk}` lines ending with `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use serde_json::Value;
use worker_common::ErrorCode;
use worker_engine::{Completion, StopReason, TokenEvent};

use crate::error::ApiError;
use crate::harmony;
use crate::metrics::{Outcome, Route};
use crate::middleware::CorrelationId;
use crate::state::{AppState, Running, Step};
use crate::tools::{self, Tools};
use crate::{constrain, json, time};

pub(crate) mod render;
pub(crate) mod request;
pub(crate) mod response;

use request::Prepared;
use response::{
    ChatChoice, ChatChunkChoice, ChatLogprobs, Delta, Message, ModelList, ModelObject,
    PromptTokensDetails, TextChoice, TextLogprobs, TokenLogprob, TopLogprob, Usage,
};

fn usage(c: &Completion) -> Usage {
    Usage {
        prompt_tokens: c.prompt_ids.len(),
        completion_tokens: c.ids.len(),
        total_tokens: c.prompt_ids.len() + c.ids.len(),
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: c.timings.cached_tokens,
        },
    }
}

fn finish_reason(c: &Completion) -> &'static str {
    match c.stop_reason {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

/// Which OpenAI object a response is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

fn reject(state: &AppState, route: Route, e: ApiError) -> Response {
    state
        .metrics
        .count_request(route, Outcome::from_code(e.code));
    e.openai().into_response()
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let route = Route::ChatCompletions;
    let prepared = json::body_bytes(body)
        .map_err(ApiError::openai)
        .and_then(|b| request::parse_chat(&state.rules(), &b))
        .and_then(|p| with_tools(&state, p));
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return reject(&state, route, e),
    };
    run(state, route, Kind::Chat, correlation, prepared).await
}

/// Adds the tools' constraint (see [`tools::constraint_of`]).
fn with_tools(state: &AppState, mut prepared: Prepared) -> Result<Prepared, ApiError> {
    let Some(tools) = prepared
        .tools
        .take()
        .filter(|t| t.choice != tools::Choice::None)
    else {
        return Ok(prepared);
    };
    let given = prepared.request.constraint.is_some();
    prepared.request.constraint = tools::constraint_of(&state.engine, &tools, given)?;
    prepared.constraint_field = Some("tools");
    prepared.tools = Some(tools);
    Ok(prepared)
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let route = Route::Completions;
    let prepared = json::body_bytes(body)
        .map_err(ApiError::openai)
        .and_then(|b| request::parse_completion(&state.rules(), &b));
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return reject(&state, route, e),
    };
    run(state, route, Kind::Text, correlation, prepared).await
}

/// Starts the job and answers, streaming or not.
async fn run(
    state: Arc<AppState>,
    route: Route,
    kind: Kind,
    correlation: CorrelationId,
    prepared: Prepared,
) -> Response {
    state.metrics.ignored_fields(prepared.ignored_fields);
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let id = format!("{prefix}-{:016x}", crate::seed::fresh_seed());
    let logprobs = prepared.request.logprobs.is_some();
    let started = state
        .start(id.clone(), route, correlation.0, prepared.request)
        .await;
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            let e = match prepared.constraint_field {
                Some(field) => constrain::attribute(e, field),
                None => e,
            };
            return reject(&state, route, e);
        }
    };
    let harmony = kind == Kind::Chat
        && state
            .card
            .chat_template
            .as_ref()
            .is_some_and(|t| t.harmony());
    let ctx = ChunkCtx {
        id,
        created: time::unix_seconds(),
        model: state.card.id.clone(),
        kind,
        logprobs,
        state: state.clone(),
        tools: prepared.tools,
        harmony,
    };
    if prepared.stream {
        Sse::new(chunk_stream(ctx, running, prepared.include_usage)).into_response()
    } else {
        collect(ctx, running).await
    }
}

/// What every chunk or response repeats.
struct ChunkCtx {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    logprobs: bool,
    state: Arc<AppState>,
    tools: Option<Tools>,
    /// The model answers in harmony's channels (gpt-oss): reasoning apart from content.
    harmony: bool,
}

impl ChunkCtx {
    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn piece(&self, id: u32) -> (String, Vec<u8>) {
        let tok = self.state.engine.tokenizer();
        let bytes = tok
            .token_bytes(id, true)
            .map(|b| b.into_owned())
            .unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Chat-style logprobs of `tokens`.
    fn chat_logprobs<'t>(&self, tokens: impl IntoIterator<Item = &'t TokenEvent>) -> ChatLogprobs {
        let content = tokens
            .into_iter()
            .map(|t| {
                let (token, bytes) = self.piece(t.id);
                let top_logprobs = t
                    .top_logprobs
                    .iter()
                    .map(|&(id, logprob)| {
                        let (token, bytes) = self.piece(id);
                        TopLogprob {
                            token,
                            logprob,
                            bytes,
                        }
                    })
                    .collect();
                TokenLogprob {
                    token,
                    logprob: t.logprob,
                    bytes,
                    top_logprobs,
                }
            })
            .collect();
        ChatLogprobs { content }
    }

    /// Completion-style logprobs for a run of tokens, `offset` bytes into the text.
    fn text_logprobs(&self, tokens: &[TokenEvent], mut offset: usize) -> TextLogprobs {
        let mut out = TextLogprobs {
            tokens: Vec::new(),
            token_logprobs: Vec::new(),
            top_logprobs: Vec::new(),
            text_offset: Vec::new(),
        };
        for t in tokens {
            let (token, _) = self.piece(t.id);
            out.text_offset.push(offset);
            offset += token.len();
            out.tokens.push(token);
            out.token_logprobs.push(t.logprob);
            let top = t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (self.piece(id).0, Value::from(lp)))
                .collect();
            out.top_logprobs.push(top);
        }
        out
    }

    /// The object every answer and chunk is, around `choices`.
    fn completion<'a, C>(
        &'a self,
        streaming: bool,
        choices: Vec<C>,
        usage: Option<Option<&'a Usage>>,
    ) -> response::Completion<'a, C> {
        response::Completion {
            id: &self.id,
            object: self.object(streaming),
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        }
    }
}

/// `value` as JSON text (these types always serialize).
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn error_body(e: &ApiError) -> String {
    e.clone().openai().body().to_string()
}

/// Non-streaming: waits for the end and answers with one object.
async fn collect(ctx: ChunkCtx, mut running: Running) -> Response {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let end = loop {
        match running.next().await {
            Some(Step::Token(t)) => {
                text.push_str(&t.text);
                if ctx.logprobs {
                    tokens.push(t);
                }
            }
            Some(Step::End(c)) => break c,
            Some(Step::Failed(e)) => return e.openai().into_response(),
            None => {
                return ApiError::new(ErrorCode::Internal, "the job ended without a result")
                    .openai()
                    .into_response()
            }
        }
    };
    text.push_str(&end.tail);
    let reason = finish_reason(&end);
    let usage = usage(&end);
    match ctx.kind {
        Kind::Chat => {
            let logprobs = ctx.logprobs.then(|| ctx.chat_logprobs(&tokens));
            let (message, finish_reason) = match &ctx.tools {
                _ if ctx.harmony => harmony_message(&text, reason, ctx.tools.as_ref()),
                Some(t) => t.message(&text, reason),
                None => (Message::text(text), reason),
            };
            let choice = ChatChoice {
                index: 0,
                message,
                logprobs,
                finish_reason,
            };
            Json(ctx.completion(false, vec![choice], Some(Some(&usage)))).into_response()
        }
        Kind::Text => {
            let choice = TextChoice {
                index: 0,
                logprobs: ctx.logprobs.then(|| ctx.text_logprobs(&tokens, 0)),
                text,
                finish_reason: Some(reason),
            };
            Json(ctx.completion(false, vec![choice], Some(Some(&usage)))).into_response()
        }
    }
}

/// A gpt-oss answer as an assistant message: its reasoning as `reasoning_content`, its final
/// and commentary text as `content`, its calls as `tool_calls` where the request gave tools
/// (finish reason `tool_calls`).
fn harmony_message(
    text: &str,
    reason: &'static str,
    tools: Option<&Tools>,
) -> (Message, &'static str) {
    let a = harmony::parse(text);
    let calls = tools.map_or_else(Vec::new, |t| tools::tool_calls(&a.calls, t.format));
    let reason = if calls.is_empty() {
        reason
    } else {
        tools::calls_reason(reason)
    };
    let message = Message {
        role: "assistant",
        content: (calls.is_empty() || !a.content.is_empty()).then_some(a.content),
        reasoning_content: (!a.reasoning.is_empty()).then_some(a.reasoning),
        tool_calls: calls,
    };
    (message, reason)
}

struct ChunkStream {
    /// gpt-oss: the answer's channels, released as reasoning and content deltas.
    harmony: Option<harmony::Stream>,
    /// With tools: the output so far, held back until the end.
    held: String,
    /// With tools and `auto`: the content released before the end.
    content: Option<tools::ContentStream>,
    /// With logprobs, gpt-oss or tools: the tokens whose logprobs no chunk has carried yet
    /// (their text held back, or markup that never shows), for the next chunk sent.
    unsent: Vec<TokenEvent>,
    ctx: ChunkCtx,
    running: Running,
    include_usage: bool,
    /// Chunks (JSON text) ready to be sent.
    pending: std::collections::VecDeque<String>,
    text_offset: usize,
    ended: bool,
}

impl ChunkStream {
    /// A chunk around `choices`, as JSON text.
    fn chunk<C: Serialize>(&self, choices: Vec<C>, usage: Option<&Usage>) -> String {
        let usage = self.include_usage.then_some(usage);
        to_json(&self.ctx.completion(true, choices, usage))
    }

    /// A chat chunk of one delta.
    fn chat_chunk(
        &self,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> String {
        let choice = ChatChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason,
        };
        self.chunk(vec![choice], None)
    }

    fn delta(
        &mut self,
        text: &str,
        token: Option<&TokenEvent>,
        reason: Option<&'static str>,
    ) -> String {
        let token = token.filter(|_| self.ctx.logprobs);
        let chunk = match self.ctx.kind {
            Kind::Chat => {
                let delta = Delta {
                    content: (reason.is_none() || !text.is_empty()).then(|| text.to_owned()),
                    ..Delta::default()
                };
                let logprobs = token.map(|t| self.ctx.chat_logprobs([t]));
                self.chat_chunk(delta, logprobs, reason)
            }
            Kind::Text => {
                let choice = TextChoice {
                    index: 0,
                    text: text.to_owned(),
                    logprobs: token.map(|t| {
                        self.ctx
                            .text_logprobs(std::slice::from_ref(t), self.text_offset)
                    }),
                    finish_reason: reason,
                };
                self.chunk(vec![choice], None)
            }
        };
        self.text_offset += text.len();
        chunk
    }

    /// The logprobs of the tokens in [`ChunkStream::unsent`], for the chunk about to be sent.
    fn take_logprobs(&mut self) -> Option<ChatLogprobs> {
        if self.unsent.is_empty() {
            return None;
        }
        let logprobs = self.ctx.chat_logprobs(&self.unsent);
        self.unsent.clear();
        Some(logprobs)
    }

    /// Keeps `t` for the logprobs of the next chunk, where the request asked for them.
    fn hold_logprobs(&mut self, t: TokenEvent) {
        if self.ctx.logprobs {
            self.unsent.push(t);
        }
    }

    /// A chat chunk of `delta` with the unsent tokens' logprobs.
    fn push_delta(&mut self, delta: Delta, finish_reason: Option<&'static str>) {
        let logprobs = self.take_logprobs();
        let chunk = self.chat_chunk(delta, logprobs, finish_reason);
        self.pending.push_back(chunk);
    }

    /// The end of an answer with tools: its content and calls as deltas.
    fn push_tool_end(&mut self, t: &Tools, tail: &str, reason: &'static str) {
        let text = std::mem::take(&mut self.held) + tail;
        let sent = self.content.as_ref().map_or("", |c| c.sent());
        let (deltas, reason) = t.stream_end(&text, sent, reason);
        for delta in deltas {
            self.push_delta(delta, None);
        }
        self.push_delta(Delta::default(), Some(reason));
    }

    /// With `include_usage`: the last chunk, usage and no choices.
    fn push_usage(&mut self, c: &Completion) {
        if self.include_usage {
            let chunk = self.chunk::<TextChoice>(Vec::new(), Some(&usage(c)));
            self.pending.push_back(chunk);
        }
    }

    /// Reasoning and content deltas of a gpt-oss answer.
    fn push_pieces(&mut self, pieces: Vec<harmony::Piece>) {
        for p in pieces {
            let delta = match p {
                harmony::Piece::Reasoning(text) => Delta {
                    reasoning_content: Some(text),
                    ..Delta::default()
                },
                harmony::Piece::Content(text) => Delta {
                    content: Some(text),
                    ..Delta::default()
                },
            };
            self.push_delta(delta, None);
        }
    }

    /// The end of a gpt-oss answer: what was held back, the calls (where the request gave
    /// tools), the finish reason.
    fn push_harmony_end(&mut self, mut h: harmony::Stream, c: &Completion) {
        let mut pieces = h.push(&c.tail);
        let (rest, calls) = h.finish();
        pieces.extend(rest);
        self.push_pieces(pieces);
        let mut reason = finish_reason(c);
        if let Some(t) = self.ctx.tools.take().filter(|_| !calls.is_empty()) {
            for delta in tools::stream_deltas("", &calls, t.format) {
                self.push_delta(delta, None);
            }
            reason = tools::calls_reason(reason);
        }
        self.push_delta(Delta::default(), Some(reason));
    }

    fn push(&mut self, step: Step) {
        match step {
            Step::Token(t) if self.harmony.is_some() => {
                let pieces = self.harmony.as_mut().map(|h| h.push(&t.text));
                self.hold_logprobs(t);
                self.push_pieces(pieces.unwrap_or_default());
            }
            Step::End(c) if self.harmony.is_some() => {
                if let Some(h) = self.harmony.take() {
                    self.push_harmony_end(h, &c);
                }
                self.push_usage(&c);
                self.ended = true;
            }
            Step::Token(t) if self.ctx.tools.is_some() => {
                self.held.push_str(&t.text);
                self.hold_logprobs(t);
                let piece = self.content.as_mut().and_then(|c| c.advance(&self.held));
                if let Some(text) = piece {
                    let delta = Delta {
                        content: Some(text),
                        ..Delta::default()
                    };
                    self.push_delta(delta, None);
                }
            }
            Step::End(c) if self.ctx.tools.is_some() => {
                if let Some(t) = self.ctx.tools.take() {
                    self.push_tool_end(&t, &c.tail, finish_reason(&c));
                }
                self.push_usage(&c);
                self.ended = true;
            }
            Step::Token(t) => {
                if !t.text.is_empty() || self.ctx.logprobs {
                    let c = self.delta(&t.text, Some(&t), None);
                    self.pending.push_back(c);
                }
            }
            Step::End(c) => {
                let last = self.delta(&c.tail, None, Some(finish_reason(&c)));
                self.pending.push_back(last);
                self.push_usage(&c);
                self.ended = true;
            }
            Step::Failed(e) => {
                self.pending.push_back(error_body(&e));
                self.ended = true;
            }
        }
    }
}

fn chunk_stream(
    ctx: ChunkCtx,
    running: Running,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let mut st = ChunkStream {
        harmony: ctx.harmony.then(harmony::Stream::default),
        held: String::new(),
        content: ctx.tools.as_ref().and_then(Tools::content_stream),
        unsent: Vec::new(),
        ctx,
        running,
        include_usage,
        pending: Default::default(),
        text_offset: 0,
        ended: false,
    };
    if st.ctx.kind == Kind::Chat {
        let role = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            ..Delta::default()
        };
        let first = st.chat_chunk(role, None, None);
        st.pending.push_back(first);
    }
    stream::unfold((st, false), |(mut st, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(v) = st.pending.pop_front() {
                return Some((Ok(SseEvent::default().data(v)), (st, false)));
            }
            if st.ended {
                return Some((Ok(SseEvent::default().data("[DONE]")), (st, true)));
            }
            match st.running.next().await {
                Some(step) => st.push(step),
                None => st.ended = true,
            }
        }
    })
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(ModelList {
        object: "list",
        data: [ModelObject {
            id: &state.card.id,
            object: "model",
            created: time::unix_seconds().saturating_sub(state.started.elapsed().as_secs()),
            owned_by: "llama-orch",
        }],
    })
    .into_response()
}
