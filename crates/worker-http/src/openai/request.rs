//! The OpenAI request bodies and their validation into a [`GenerationRequest`], apart from
//! the routes so that tests and fuzz targets can run them on any bytes without a server.
//!
//! Requests are typed serde structs: the fields both routes share ([`Common`], with the
//! vLLM / SGLang sampling extensions) and each route's own. Keys neither names are ignored
//! and counted, as vLLM and llama-server do (routers add fields of their own); options we
//! know but do not implement (`n` > 1, `functions`, `echo`, `best_of`, `suffix`) are refused
//! with OpenAI's error shape rather than ignored. `response_format` (`json_object`,
//! `json_schema`) and the `grammar` extension constrain the output (see the `constrain`
//! module); `tools` are parsed and rendered by the `tools` module.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use worker_common::limits::{self, Bound};
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

/// The fields chat and completions share: sampling, stops, streaming, constraints, and the
/// vLLM / SGLang extensions that map onto what the engine does. Read from the same body as
/// the route's own struct; a key neither struct names is ignored (and counted), as vLLM and
/// llama-server do, so routers that add their own fields are served.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
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
    response_format: Option<Value>,
    /// Extension: `{"lark": "…"}` or `{"regex": "…"}`.
    grammar: Option<Value>,
    /// vLLM: end-of-generation tokens are never chosen.
    ignore_eos: bool,
    /// vLLM: no end-of-generation or stop token before this many tokens.
    min_tokens: Option<u64>,
    /// vLLM: token ids that end generation.
    stop_token_ids: Option<Vec<u32>>,
    /// vLLM: special tokens are left out of the text (the default).
    skip_special_tokens: Option<bool>,
    /// vLLM: the stop string that ended generation stays in the text.
    include_stop_str_in_output: bool,
    /// SGLang's name for `include_stop_str_in_output`.
    no_stop_trim: bool,
}

/// `POST /v1/chat/completions` body, beside [`Common`].
#[derive(Debug, Deserialize)]
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
    /// vLLM: end the prompt with the template's assistant header (the default).
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    /// vLLM: the last (assistant) message is left open and continued.
    #[serde(default)]
    continue_final_message: bool,
    /// OpenAI: how much a reasoning model thinks first (`low`, `medium`, `high`): the
    /// template's `reasoning_effort` variable (gpt-oss writes it into its system message).
    #[serde(default)]
    reasoning_effort: Option<String>,
    /// vLLM, llama-server: further variables for the chat template (Qwen3's
    /// `enable_thinking`, …).
    #[serde(default)]
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// The variables the worker itself gives a chat template, which a request may not set.
const TEMPLATE_OWN_VARIABLES: [&str; 5] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
];

/// A chat request's own template variables: its `chat_template_kwargs`, with its
/// `reasoning_effort` over them.
fn template_variables(
    kwargs: Option<serde_json::Map<String, Value>>,
    effort: Option<String>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut variables = kwargs.unwrap_or_default();
    for name in variables.keys() {
        if let Some(own) = TEMPLATE_OWN_VARIABLES.iter().find(|v| **v == name) {
            return Err(invalid(
                "chat_template_kwargs",
                format!("{own} is given to the template by the worker"),
            ));
        }
        if name.starts_with("__") {
            return Err(invalid(
                "chat_template_kwargs",
                "names starting with __ are reserved",
            ));
        }
    }
    if let Some(effort) = effort {
        if !matches!(effort.as_str(), "low" | "medium" | "high") {
            return Err(invalid(
                "reasoning_effort",
                "reasoning_effort must be low, medium or high",
            ));
        }
        variables.insert("reasoning_effort".into(), Value::String(effort));
    }
    Ok(variables)
}

/// `prompt` of `/v1/completions`: a string or a one-element array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of one string")]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions` body, beside [`Common`].
#[derive(Debug, Deserialize)]
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
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(param, "supported value", message).openai()
}

fn unsupported(param: &str) -> ApiError {
    invalid(param, format!("{param} is not supported by this worker"))
}

/// Reads `bytes` as the shared fields and the route's `T`: one JSON object with unique keys
/// (the rule of every route), then the schemas, with errors that name the field and never
/// the value. Returns how many keys neither schema reads; their names go to the debug log
/// only (they are request text).
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(Common, T, usize), ApiError> {
    let object = json::object(bytes).map_err(ApiError::openai)?;
    let known = [
        schema::struct_fields::<Common>(),
        schema::struct_fields::<T>(),
    ];
    let unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !known.iter().any(|fields| fields.contains(k)))
        .collect();
    if !unknown.is_empty() {
        tracing::debug!(fields = ?unknown, "ignoring request fields this worker does not know");
    }
    let ignored = unknown.len();
    let object = Value::Object(object);
    let schema_error =
        |e: schema::SchemaError| ApiError::field(e.field(), &e.expected, e.message()).openai();
    let common = schema::from_value(&object).map_err(schema_error)?;
    let route = schema::from_value(&object).map_err(schema_error)?;
    Ok((common, route, ignored))
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
    /// Body keys no schema reads, ignored.
    pub ignored_fields: usize,
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

/// `value` if it keeps to `bound`, the rule `/execute` applies too.
fn bounded(bound: &Bound, value: Option<f32>) -> Result<Option<f32>, ApiError> {
    match value {
        Some(x) if !bound.accepts(f64::from(x)) => Err(invalid(
            bound.field,
            format!("{} must be {}", bound.field, bound.rule),
        )),
        v => Ok(v),
    }
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
    let min_tokens = common.min_tokens.unwrap_or(0);
    if min_tokens > max_tokens {
        return Err(invalid(
            "min_tokens",
            "min_tokens must be at most max_tokens",
        ));
    }
    let stop = match common.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if !limits::stops_ok(&stop) {
        return Err(invalid(
            "stop",
            format!("stop must be {}", limits::STOP_RULE),
        ));
    }
    let stop_token_ids = common.stop_token_ids.unwrap_or_default();
    let vocab = rules.vocab_size;
    if stop_token_ids.len() > limits::MAX_STOP_TOKEN_IDS
        || stop_token_ids.iter().any(|&id| id as usize >= vocab)
    {
        return Err(invalid(
            "stop_token_ids",
            format!(
                "stop_token_ids must be at most {} token ids below {vocab}",
                limits::MAX_STOP_TOKEN_IDS
            ),
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in common.logit_bias.unwrap_or_default() {
        let id: u32 = k
            .parse()
            .map_err(|_| invalid("logit_bias", "logit_bias keys must be token ids"))?;
        if !limits::LOGIT_BIAS.accepts(f64::from(v)) {
            return Err(invalid(
                "logit_bias",
                format!("logit_bias must be {}", limits::LOGIT_BIAS.rule),
            ));
        }
        logit_bias.push((id, v));
    }
    let d = SamplingConfig::default();
    // OpenAI's defaults: temperature 1, top_p 1, no top-k or min-p cut unless asked.
    let sampling = SamplingConfig {
        temperature: bounded(&limits::TEMPERATURE, common.temperature)?.unwrap_or(1.0),
        top_p: bounded(&limits::TOP_P, common.top_p)?.unwrap_or(1.0),
        top_k: common.top_k.unwrap_or(0),
        min_p: bounded(&limits::MIN_P, common.min_p)?.unwrap_or(0.0),
        repetition_penalty: bounded(&limits::REPETITION_PENALTY, common.repetition_penalty)?
            .unwrap_or(d.repetition_penalty),
        presence_penalty: bounded(&limits::PRESENCE_PENALTY, common.presence_penalty)?
            .unwrap_or(0.0),
        frequency_penalty: bounded(&limits::FREQUENCY_PENALTY, common.frequency_penalty)?
            .unwrap_or(0.0),
        logit_bias,
        seed: common.seed.unwrap_or_else(crate::seed::fresh_seed),
        ..d
    };
    sampling.validate().map_err(|e| sampling_error(&e))?;
    let requested =
        constrain::from_fields(common.response_format.as_ref(), common.grammar.as_ref())
            .map_err(|e| ApiError::invalid(vec![e]).openai())?;
    let (constraint, constraint_field) = match requested {
        Some(r) => (Some(r.constraint), Some(r.field)),
        None => (None, None),
    };
    let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
    Ok(Prepared {
        request: GenerationRequest {
            sampling,
            max_tokens: Some(max_tokens as usize),
            stop,
            logprobs,
            constraint,
            min_tokens: min_tokens as usize,
            ignore_eos: common.ignore_eos,
            stop_token_ids,
            include_stop: common.include_stop_str_in_output || common.no_stop_trim,
            render_special: !common.skip_special_tokens.unwrap_or(true),
            ..GenerationRequest::new(prompt)
        },
        stream: common.stream,
        include_usage,
        constraint_field,
        tools: None,
        ignored_fields: 0,
    })
}

/// How a rendered chat prompt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenEnd {
    /// With the template's assistant header: the model answers (the default).
    AssistantHeader,
    /// With the last message as the template closes it (vLLM's `add_generation_prompt:
    /// false`).
    Nothing,
    /// Inside the last (assistant) message, whose text the model continues (vLLM's
    /// `continue_final_message`).
    ContinueLast,
}

/// Parses and validates a `/v1/chat/completions` body, rendering its messages with the
/// model's chat template.
pub(crate) fn parse_chat(rules: &Rules<'_>, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let (common, mut r, ignored) = parse::<ChatRequest>(bytes)?;
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
    let open_end = match (r.add_generation_prompt, r.continue_final_message) {
        (Some(true), true) => {
            return Err(invalid(
                "continue_final_message",
                "continue_final_message needs add_generation_prompt: false",
            ))
        }
        (_, true) => OpenEnd::ContinueLast,
        (Some(false), false) => OpenEnd::Nothing,
        (None | Some(true), false) => OpenEnd::AssistantHeader,
    };
    let variables = template_variables(r.chat_template_kwargs.take(), r.reasoning_effort.take())?;
    let prompt = render_chat(rules, &r.messages, tools.as_ref(), open_end, variables)?;
    let max = r.max_completion_tokens.or(r.max_tokens);
    let mut prepared = prepare(rules, common, prompt, max, logprobs)?;
    prepared.tools = tools;
    prepared.ignored_fields = ignored;
    Ok(prepared)
}

fn render_chat(
    rules: &Rules<'_>,
    messages: &[MessageIn],
    tools: Option<&Tools>,
    open_end: OpenEnd,
    variables: serde_json::Map<String, Value>,
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
        add_generation_prompt: open_end == OpenEnd::AssistantHeader,
        bos_token: rules.bos_text.to_string(),
        eos_token: rules.eos_text.to_string(),
        now: None,
        variables,
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
    let rendered = rendered.map_err(|e| {
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
    })?;
    // Templates that print `bos_token` (Llama 3, Gemma) would get a second BOS from the
    // tokenizer; drop the printed one.
    let rendered = match rendered.strip_prefix(rules.bos_text) {
        Some(rest) if rules.adds_bos && !rules.bos_text.is_empty() => rest.to_string(),
        _ => rendered,
    };
    match open_end {
        OpenEnd::ContinueLast => continue_last(rendered, messages),
        OpenEnd::AssistantHeader | OpenEnd::Nothing => Ok(rendered),
    }
}

/// `rendered` cut just after the text of the last message, which must be the assistant's,
/// so that the model continues it (what vLLM does for `continue_final_message`).
fn continue_last(mut rendered: String, messages: &[MessageIn]) -> Result<String, ApiError> {
    let last = messages.last().filter(|m| m.role == "assistant");
    let text = match last.map(|m| &m.content) {
        Some(Some(Content::Text(t))) => t.as_str(),
        Some(_) => "",
        None => {
            return Err(invalid(
                "continue_final_message",
                "continue_final_message needs an assistant message last",
            ))
        }
    };
    match rendered.rfind(text) {
        Some(at) if !text.is_empty() => {
            rendered.truncate(at + text.len());
            Ok(rendered)
        }
        _ => Err(invalid(
            "continue_final_message",
            "continue_final_message needs the last message's text in the rendered prompt",
        )),
    }
}

/// Parses and validates a `/v1/completions` body.
pub(crate) fn parse_completion(rules: &Rules<'_>, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let (common, mut r, ignored) = parse::<CompletionRequest>(bytes)?;
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
    let mut prepared = prepare(rules, common, prompt, max, logprobs)?;
    prepared.ignored_fields = ignored;
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker_engine::Prompt;
    use worker_tokenizer::ChatTemplate;

    /// llama.cpp's copy of a real model's chat template.
    fn real_template(name: &str) -> ChatTemplate {
        let path = worker_testdata::chat_template(name);
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} (run `cargo xtask fetch`): {e}", path.display()));
        ChatTemplate::new(&source).unwrap()
    }

    /// The prompt `body` renders to with `template`, or the field its error names.
    fn render(template: &ChatTemplate, body: &str) -> Result<String, String> {
        let rules = Rules {
            max_tokens_out: 64,
            vocab_size: 1000,
            chat_template: Some(template),
            bos_text: "",
            adds_bos: false,
            eos_text: "",
        };
        match parse_chat(&rules, body.as_bytes()) {
            Ok(p) => match p.request.prompt {
                Prompt::Text(t) => Ok(t),
                Prompt::Ids(_) => panic!("a chat renders to text"),
            },
            Err(e) => Err(e.errors[0].field.clone()),
        }
    }

    const HI: &str = r#""messages": [{"role": "user", "content": "Hi"}]"#;

    /// gpt-oss's template writes `reasoning_effort` into its system message ("medium" when
    /// the request gives none); any other value is refused by name.
    #[test]
    fn reasoning_effort_reaches_the_template() {
        let gpt_oss = real_template("openai-gpt-oss-120b");
        let default = render(&gpt_oss, &format!("{{{HI}}}")).unwrap();
        assert!(default.contains("Reasoning: medium"), "{default}");
        for effort in ["low", "medium", "high"] {
            let body = format!(r#"{{{HI}, "reasoning_effort": "{effort}"}}"#);
            let text = render(&gpt_oss, &body).unwrap();
            assert!(text.contains(&format!("Reasoning: {effort}\n")), "{text}");
        }
        let body = format!(r#"{{{HI}, "reasoning_effort": "extreme"}}"#);
        assert_eq!(render(&gpt_oss, &body).unwrap_err(), "reasoning_effort");
        // It takes precedence over the same name in chat_template_kwargs.
        let body = format!(
            r#"{{{HI}, "reasoning_effort": "low",
                "chat_template_kwargs": {{"reasoning_effort": "high"}}}}"#
        );
        assert!(render(&gpt_oss, &body).unwrap().contains("Reasoning: low"));
    }

    /// Qwen3's template reads `enable_thinking` from chat_template_kwargs; the variables the
    /// worker sets itself, reserved names and a non-object are refused.
    #[test]
    fn chat_template_kwargs_reach_the_template() {
        let qwen3 = real_template("Qwen-Qwen3-0.6B");
        let thinking = render(&qwen3, &format!("{{{HI}}}")).unwrap();
        let body = format!(r#"{{{HI}, "chat_template_kwargs": {{"enable_thinking": false}}}}"#);
        let not = render(&qwen3, &body).unwrap();
        assert!(!thinking.contains("<think>"), "{thinking}");
        assert!(
            not.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            "{not}"
        );
        for kwargs in [
            r#"{"messages": []}"#,
            r#"{"add_generation_prompt": false}"#,
            r#"{"__strftime_now_epoch": 0}"#,
            r#"[]"#,
            r#""enable_thinking""#,
        ] {
            let body = format!(r#"{{{HI}, "chat_template_kwargs": {kwargs}}}"#);
            assert_eq!(
                render(&qwen3, &body).unwrap_err(),
                "chat_template_kwargs",
                "{kwargs}"
            );
        }
    }
}
