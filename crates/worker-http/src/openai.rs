//! The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.
//!
//! Requests are typed serde structs that refuse unknown fields; options we do not implement
//! (`n` > 1, `functions`, `echo`, `best_of`, `suffix`) are refused with OpenAI's error shape rather
//! than ignored. `response_format` (`json_object`, `json_schema`) and the `grammar` extension
//! constrain the output (see the `constrain` module); `tools` are handled by the `tools`
//! module. Streaming answers are `data: {chunk}` lines
//! ending with `data: [DONE]`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker_common::{ErrorCode, SamplingConfig};
use worker_engine::{Completion, GenerationRequest, StopReason, TokenEvent};
use worker_tokenizer::{ChatContext, ChatMessage};

use crate::constrain;
use crate::error::ApiError;
use crate::metrics::{Outcome, Route};
use crate::middleware::CorrelationId;
use crate::state::{AppState, Running, Step};
use crate::tools::{self, Tools};
use crate::{json, time};

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A content part of a chat message; only text is supported.
#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// Sampling and limits both routes share.
#[derive(Debug)]
struct Common {
    model: Option<String>,
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    stop: Option<StopField>,
    seed: Option<u64>,
    n: Option<u32>,
    logit_bias: Option<HashMap<String, f32>>,
    user: Option<String>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    messages: Vec<MessageIn>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    /// Extension: `{"lark": "…"}` or `{"regex": "…"}`.
    #[serde(default)]
    grammar: Option<Value>,
    // serde's `flatten` cannot be combined with `deny_unknown_fields`, so the shared fields
    // are repeated here and copied into `Common` by hand.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    logit_bias: Option<HashMap<String, f32>>,
    #[serde(default)]
    user: Option<String>,
}

/// `prompt` of `/v1/completions`: a string or a one-element array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionRequest {
    prompt: PromptField,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    logprobs: Option<u32>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    best_of: Option<u32>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    response_format: Option<Value>,
    /// Extension: `{"lark": "…"}` or `{"regex": "…"}`.
    #[serde(default)]
    grammar: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    logit_bias: Option<HashMap<String, f32>>,
    #[serde(default)]
    user: Option<String>,
}

macro_rules! common_of {
    ($r:expr) => {
        Common {
            model: $r.model.take(),
            stream: $r.stream,
            stream_options: $r.stream_options.take(),
            temperature: $r.temperature,
            top_p: $r.top_p,
            top_k: $r.top_k,
            min_p: $r.min_p,
            repetition_penalty: $r.repetition_penalty,
            presence_penalty: $r.presence_penalty,
            frequency_penalty: $r.frequency_penalty,
            stop: $r.stop.take(),
            seed: $r.seed,
            n: $r.n,
            logit_bias: $r.logit_bias.take(),
            user: $r.user.take(),
        }
    };
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
    prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt tokens: those served from the prefix cache.
#[derive(Debug, Serialize)]
struct PromptTokensDetails {
    cached_tokens: usize,
}

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

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(param, "supported value", message).openai()
}

fn unsupported(param: &str) -> ApiError {
    invalid(param, format!("{param} is not supported by this worker"))
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    json::object(bytes).map_err(ApiError::openai)?;
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        // serde names the field in its message; keep the message, drop line/column noise.
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        ApiError::field("body", "OpenAI request schema", message).openai()
    })
}

/// What the two routes share once the prompt is known.
struct Prepared {
    request: GenerationRequest,
    stream: bool,
    include_usage: bool,
    /// The field the request's constraint came from.
    constraint_field: Option<&'static str>,
    /// The request's tools, unless `tool_choice` is `none`.
    tools: Option<Tools>,
}

impl Prepared {
    /// Constrains the output as `response_format` / `grammar` ask.
    fn constrain(
        mut self,
        response_format: Option<&Value>,
        grammar: Option<&Value>,
    ) -> Result<Self, ApiError> {
        let requested = constrain::from_fields(response_format, grammar)
            .map_err(|e| ApiError::invalid(vec![e]).openai())?;
        if let Some(r) = requested {
            self.request.constraint = Some(r.constraint);
            self.constraint_field = Some(r.field);
        }
        Ok(self)
    }
}

fn prepare(
    state: &AppState,
    common: Common,
    prompt: String,
    max_tokens: Option<u64>,
    logprobs: Option<usize>,
) -> Result<Prepared, ApiError> {
    if common.n.is_some_and(|n| n != 1) {
        return Err(invalid("n", "only n = 1 is supported"));
    }
    let _ = (&common.model, &common.user);
    let max_out = state.config.max_tokens_out as u64;
    let max_tokens = match max_tokens {
        Some(0) => return Err(invalid("max_tokens", "max_tokens must be at least 1")),
        Some(m) if m > max_out => {
            return Err(invalid(
                "max_tokens",
                format!("max_tokens must be at most {max_out}"),
            ))
        }
        Some(m) => m,
        None => max_out,
    };
    let stop = match common.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(invalid("stop", "stop takes at most 4 non-empty strings"));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in common.logit_bias.unwrap_or_default() {
        let id: u32 = k
            .parse()
            .map_err(|_| invalid("logit_bias", "logit_bias keys must be token ids"))?;
        if !(-100.0..=100.0).contains(&v) {
            return Err(invalid(
                "logit_bias",
                "logit_bias values must be in [-100, 100]",
            ));
        }
        logit_bias.push((id, v));
    }
    let d = SamplingConfig::default();
    // OpenAI's defaults: temperature 1, top_p 1, no top-k or min-p cut unless asked.
    let sampling = SamplingConfig {
        temperature: common.temperature.unwrap_or(1.0),
        top_p: common.top_p.unwrap_or(1.0),
        top_k: common.top_k.unwrap_or(0),
        min_p: common.min_p.unwrap_or(0.0),
        repetition_penalty: common.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: common.presence_penalty.unwrap_or(0.0),
        frequency_penalty: common.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        seed: common.seed.unwrap_or_else(crate::routes::fresh_seed),
        ..d
    };
    if sampling.temperature > 2.0 {
        return Err(invalid("temperature", "temperature must be in [0, 2]"));
    }
    if let Err(e) = sampling.validate() {
        return Err(invalid(e.field().unwrap_or("sampling"), e.to_string()));
    }
    let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
    Ok(Prepared {
        request: GenerationRequest {
            sampling,
            max_tokens: Some(max_tokens as usize),
            stop,
            logprobs,
            ..GenerationRequest::new(prompt)
        },
        stream: common.stream,
        include_usage,
        constraint_field: None,
        tools: None,
    })
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
        .and_then(|b| parse::<ChatRequest>(&b))
        .and_then(|mut r| {
            for (name, given) in [
                ("functions", r.functions.is_some()),
                ("function_call", r.function_call.is_some()),
            ] {
                if given {
                    return Err(unsupported(name));
                }
            }
            if r.max_tokens.is_some() && r.max_completion_tokens.is_some() {
                return Err(invalid(
                    "max_tokens",
                    "give max_tokens or max_completion_tokens, not both",
                ));
            }
            let logprobs = match (r.logprobs.unwrap_or(false), r.top_logprobs) {
                (_, Some(n)) if n > 20 => {
                    return Err(invalid("top_logprobs", "top_logprobs must be in [0, 20]"))
                }
                (false, Some(_)) => {
                    return Err(invalid("top_logprobs", "top_logprobs needs logprobs: true"))
                }
                (true, n) => Some(n.unwrap_or(0) as usize),
                (false, None) => None,
            };
            let hermes = state
                .card
                .chat_template
                .as_ref()
                .is_some_and(|t| t.supports_tools() && t.uses_hermes_tool_calls());
            let tools = tools::parse(
                r.tools.as_ref(),
                r.tool_choice.as_ref(),
                r.parallel_tool_calls.as_ref(),
                hermes,
            )
            .map_err(|e| ApiError::invalid(vec![e]).openai())?;
            let prompt = render_chat(&state, &r.messages, tools.as_ref())?;
            let max = r.max_completion_tokens.or(r.max_tokens);
            let prepared = prepare(&state, common_of!(r), prompt, max, logprobs)?
                .constrain(r.response_format.as_ref(), r.grammar.as_ref())?;
            with_tools(&state, prepared, tools)
        });
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return reject(&state, route, e),
    };
    run(state, route, Kind::Chat, correlation, prepared).await
}

/// Adds the tools' constraint (see [`tools::constraint_of`]).
fn with_tools(
    state: &AppState,
    mut prepared: Prepared,
    tools: Option<Tools>,
) -> Result<Prepared, ApiError> {
    let Some(tools) = tools.filter(|t| t.choice != tools::Choice::None) else {
        return Ok(prepared);
    };
    let given = prepared.request.constraint.is_some();
    prepared.request.constraint = tools::constraint_of(&state.engine, &tools, given)?;
    prepared.constraint_field = Some("tools");
    prepared.tools = Some(tools);
    Ok(prepared)
}

fn render_chat(
    state: &AppState,
    messages: &[MessageIn],
    tools: Option<&Tools>,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "messages must not be empty"));
    }
    let Some(template) = &state.card.chat_template else {
        return Err(invalid(
            "messages",
            "the model has no chat template; use /v1/completions",
        ));
    };
    let mut out = Vec::with_capacity(messages.len());
    let mut json_messages = Vec::with_capacity(messages.len());
    let tool_turns = tools.is_some()
        || messages
            .iter()
            .any(|m| m.role == "tool" || m.tool_calls.is_some());
    for (i, m) in messages.iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool"
        ) {
            return Err(invalid(
                "messages",
                "role must be system, developer, user, assistant or tool",
            ));
        }
        let _ = &m.name;
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        _ => {
                            return Err(invalid(
                                "messages",
                                "only text content parts are supported",
                            ))
                        }
                    }
                }
                s
            }
        };
        if tool_turns {
            let j = tools::message_json(
                &m.role,
                content,
                m.tool_calls.as_ref(),
                m.tool_call_id.as_deref(),
                i,
            )
            .map_err(|e| ApiError::invalid(vec![e]).openai())?;
            json_messages.push(j);
        } else {
            out.push(ChatMessage::new(m.role.clone(), content));
        }
    }
    let ctx = ChatContext {
        add_generation_prompt: true,
        bos_token: state.card.bos_text.clone(),
        eos_token: state.card.eos_text.clone(),
    };
    let rendered = if !tool_turns {
        template.render(&out, &ctx)
    } else if template.supports_tools() {
        let list = tools
            .filter(|t| t.choice != tools::Choice::None)
            .map(|t| &t.list);
        template.render_json(&Value::Array(json_messages), list, &ctx)
    } else {
        let generic = tools::generic_messages(json_messages, tools);
        template.render_json(&Value::Array(generic), None, &ctx)
    };
    rendered.map_err(|e| {
        invalid(
            "messages",
            format!("the chat template refused the messages: {e}"),
        )
    })
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
        .and_then(|b| parse::<CompletionRequest>(&b))
        .and_then(|mut r| {
            if r.echo == Some(true) {
                return Err(unsupported("echo"));
            }
            if r.best_of.is_some_and(|b| b != 1) {
                return Err(unsupported("best_of"));
            }
            if r.suffix.is_some() {
                return Err(unsupported("suffix"));
            }
            if r.logprobs.is_some_and(|n| n > 5) {
                return Err(invalid("logprobs", "logprobs must be in [0, 5]"));
            }
            let prompt = match std::mem::replace(&mut r.prompt, PromptField::Many(Vec::new())) {
                PromptField::One(p) => p,
                PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
                PromptField::Many(_) => return Err(invalid("prompt", "prompt must be one string")),
            };
            let logprobs = r.logprobs.map(|n| n as usize);
            let max = r.max_tokens.or(Some(16));
            prepare(&state, common_of!(r), prompt, max, logprobs)?
                .constrain(r.response_format.as_ref(), r.grammar.as_ref())
        });
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
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let id = format!("{prefix}-{:016x}", crate::routes::fresh_seed());
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
    let ctx = ChunkCtx {
        id,
        created: time::unix_seconds(),
        model: state.card.id.clone(),
        kind,
        logprobs,
        state: state.clone(),
        tools: prepared.tools,
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

    /// One token's entry in a chat `logprobs.content` array.
    fn chat_logprob(&self, t: &TokenEvent) -> Value {
        let (token, bytes) = self.piece(t.id);
        let top: Vec<Value> = t
            .top_logprobs
            .iter()
            .map(|&(id, lp)| {
                let (token, bytes) = self.piece(id);
                json!({"token": token, "logprob": lp, "bytes": bytes})
            })
            .collect();
        json!({"token": token, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
    }

    /// Completion-style logprobs for a run of tokens, `offset` bytes into the text.
    fn text_logprobs(&self, tokens: &[TokenEvent], mut offset: usize) -> Value {
        let mut toks = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        for t in tokens {
            let (token, _) = self.piece(t.id);
            offsets.push(offset);
            offset += token.len();
            toks.push(token);
            lps.push(t.logprob);
            let top: serde_json::Map<String, Value> = t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (self.piece(id).0, json!(lp)))
                .collect();
            tops.push(Value::Object(top));
        }
        json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }
}

fn error_body(e: &ApiError) -> Value {
    e.clone().openai().body()
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
    let choice = match ctx.kind {
        Kind::Chat => {
            let logprobs = ctx.logprobs.then(|| {
                json!({"content": tokens.iter().map(|t| ctx.chat_logprob(t)).collect::<Vec<_>>()})
            });
            let (message, reason) = match &ctx.tools {
                Some(t) => t.message(&text, reason),
                None => (json!({"role": "assistant", "content": text}), reason),
            };
            json!({
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": reason,
            })
        }
        Kind::Text => json!({
            "index": 0,
            "text": text,
            "logprobs": ctx.logprobs.then(|| ctx.text_logprobs(&tokens, 0)),
            "finish_reason": reason,
        }),
    };
    Json(json!({
        "id": ctx.id,
        "object": ctx.object(false),
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": null,
        "choices": [choice],
        "usage": usage(&end),
    }))
    .into_response()
}

struct ChunkStream {
    /// With tools: the output so far, held back until the end.
    held: String,
    ctx: ChunkCtx,
    running: Running,
    include_usage: bool,
    pending: std::collections::VecDeque<Value>,
    text_offset: usize,
    ended: bool,
}

impl ChunkStream {
    fn chunk(&self, choices: Value, usage: Option<&Usage>) -> Value {
        let mut v = json!({
            "id": self.ctx.id,
            "object": self.ctx.object(true),
            "created": self.ctx.created,
            "model": self.ctx.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = json!(usage);
        }
        v
    }

    fn delta(&mut self, text: &str, token: Option<&TokenEvent>, reason: Option<&str>) -> Value {
        let choice = match self.ctx.kind {
            Kind::Chat => {
                let delta = if reason.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                let logprobs = token
                    .filter(|_| self.ctx.logprobs)
                    .map(|t| json!({"content": [self.ctx.chat_logprob(t)]}));
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
            }
            Kind::Text => {
                let logprobs = token.filter(|_| self.ctx.logprobs).map(|t| {
                    self.ctx
                        .text_logprobs(std::slice::from_ref(t), self.text_offset)
                });
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason})
            }
        };
        self.text_offset += text.len();
        self.chunk(json!([choice]), None)
    }

    /// The end of an answer with tools: its content and calls as deltas.
    fn push_tool_end(&mut self, t: &Tools, tail: &str, reason: &'static str) {
        let text = std::mem::take(&mut self.held) + tail;
        let (deltas, reason) = t.stream_end(&text, reason);
        for delta in deltas {
            let c = json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]);
            let chunk = self.chunk(c, None);
            self.pending.push_back(chunk);
        }
        let c = json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]);
        let last = self.chunk(c, None);
        self.pending.push_back(last);
    }

    fn push(&mut self, step: Step) {
        match step {
            Step::Token(t) if self.ctx.tools.is_some() => self.held.push_str(&t.text),
            Step::End(c) if self.ctx.tools.is_some() => {
                if let Some(t) = self.ctx.tools.take() {
                    self.push_tool_end(&t, &c.tail, finish_reason(&c));
                }
                if self.include_usage {
                    let u = usage(&c);
                    let chunk = self.chunk(json!([]), Some(&u));
                    self.pending.push_back(chunk);
                }
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
                if self.include_usage {
                    let u = usage(&c);
                    let chunk = self.chunk(json!([]), Some(&u));
                    self.pending.push_back(chunk);
                }
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
        held: String::new(),
        ctx,
        running,
        include_usage,
        pending: Default::default(),
        text_offset: 0,
        ended: false,
    };
    if st.ctx.kind == Kind::Chat {
        let first = st.chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}]),
            None,
        );
        st.pending.push_back(first);
    }
    stream::unfold((st, false), |(mut st, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(v) = st.pending.pop_front() {
                return Some((Ok(SseEvent::default().data(v.to_string())), (st, false)));
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
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.card.id,
            "object": "model",
            "created": time::unix_seconds().saturating_sub(state.started.elapsed().as_secs()),
            "owned_by": "llama-orch",
        }],
    }))
    .into_response()
}
