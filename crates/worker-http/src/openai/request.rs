//! The OpenAI request bodies and their validation into a [`GenerationRequest`], apart from
//! the routes so that tests and fuzz targets can run them on any bytes without a server.
//!
//! Requests are typed serde structs that refuse unknown fields; options we do not implement
//! (`n` > 1, `functions`, `echo`, `best_of`, `suffix`) are refused with OpenAI's error shape
//! rather than ignored. `response_format` (`json_object`, `json_schema`) and the `grammar`
//! extension constrain the output (see the `constrain` module); `tools` are parsed and
//! rendered by the `tools` module.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use worker_common::{SamplingConfig, SamplingError};
use worker_engine::GenerationRequest;
use worker_tokenizer::{ChatContext, ChatMessage};

use crate::error::ApiError;
use crate::tools::{self, Tools};
use crate::validate::{self, Rules};
use crate::{constrain, json, schema};

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
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
#[serde(
    untagged,
    expecting = "a string or an array of content parts {\"type\": \"text\", \"text\": …}"
)]
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
#[serde(untagged, expecting = "a string or an array of one string")]
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

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(param, "supported value", message).openai()
}

fn unsupported(param: &str) -> ApiError {
    invalid(param, format!("{param} is not supported by this worker"))
}

/// Reads `bytes` as `T`: one JSON object with unique keys (the rule of every route), then
/// the schema, with errors that name the field and never the value.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let object = Value::Object(json::object(bytes).map_err(ApiError::openai)?);
    schema::from_value(&object)
        .map_err(|e| ApiError::field(e.field(), &e.expected, e.message()).openai())
}

/// A validated OpenAI request: the generation and how to answer it.
pub(crate) struct Prepared {
    pub request: GenerationRequest,
    pub stream: bool,
    pub include_usage: bool,
    /// The field the request's constraint came from.
    pub constraint_field: Option<&'static str>,
    /// The request's tools, unless `tool_choice` is `none`.
    pub tools: Option<Tools>,
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

/// A sampling refusal, without the value given.
fn sampling_error(e: &SamplingError) -> ApiError {
    let field = e.field().unwrap_or("sampling");
    let message = match e {
        SamplingError::OutOfRange {
            field, constraint, ..
        } => format!("{field} must be {constraint}"),
        other => other.to_string(),
    };
    invalid(field, message)
}

fn prepare(
    rules: &Rules<'_>,
    common: Common,
    prompt: String,
    max_tokens: Option<u64>,
    logprobs: Option<usize>,
) -> Result<Prepared, ApiError> {
    if common.n.is_some_and(|n| n != 1) {
        return Err(invalid("n", "only n = 1 is supported"));
    }
    let _ = (&common.model, &common.user);
    let max_out = rules.max_tokens_out as u64;
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
    if !validate::stops_ok(&stop) {
        return Err(invalid(
            "stop",
            format!("stop must be {}", validate::STOP_CONSTRAINT),
        ));
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
    sampling.validate().map_err(|e| sampling_error(&e))?;
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

/// Parses and validates a `/v1/chat/completions` body, rendering its messages with the
/// model's chat template.
pub(crate) fn parse_chat(rules: &Rules<'_>, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let mut r: ChatRequest = parse(bytes)?;
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
    let tools = tools::parse(
        r.tools.as_ref(),
        r.tool_choice.as_ref(),
        r.parallel_tool_calls.as_ref(),
        rules.chat_template,
    )
    .map_err(|e| ApiError::invalid(vec![e]).openai())?;
    let prompt = render_chat(rules, &r.messages, tools.as_ref())?;
    let max = r.max_completion_tokens.or(r.max_tokens);
    let mut prepared = prepare(rules, common_of!(r), prompt, max, logprobs)?
        .constrain(r.response_format.as_ref(), r.grammar.as_ref())?;
    prepared.tools = tools;
    Ok(prepared)
}

fn render_chat(
    rules: &Rules<'_>,
    messages: &[MessageIn],
    tools: Option<&Tools>,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "messages must not be empty"));
    }
    let Some(template) = rules.chat_template else {
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
        bos_token: rules.bos_text.to_string(),
        eos_token: rules.eos_text.to_string(),
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
        let reason = e.to_string();
        // The template's own words (`raise_exception('roles must alternate')`) help the
        // client; a template that quotes a message back does not get to echo it.
        if validate::echoes(&reason, out.iter().map(|m| m.content.as_str())) {
            tracing::debug!(error = %reason, "chat template refused the messages");
            invalid("messages", "the chat template refused the messages")
        } else {
            invalid(
                "messages",
                format!("the chat template refused the messages: {reason}"),
            )
        }
    })
}

/// Parses and validates a `/v1/completions` body.
pub(crate) fn parse_completion(rules: &Rules<'_>, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let mut r: CompletionRequest = parse(bytes)?;
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
    prepare(rules, common_of!(r), prompt, max, logprobs)?
        .constrain(r.response_format.as_ref(), r.grammar.as_ref())
}
