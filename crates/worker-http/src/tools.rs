//! Tool calling on `/v1/chat/completions`: `tools`, `tool_choice` and `parallel_tool_calls`
//! checked, the tools rendered into the prompt, the output constrained where the choice
//! demands a call, and the model's calls parsed into OpenAI's `tool_calls`.
//!
//! The format follows the model's template ([`ToolCallStyle`]), else the generic one:
//!
//! - **Hermes** (the model's template renders `tools` and writes `<tool_call>`, as
//!   Qwen2.5's does): the template renders the tools and earlier calls; a call is
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`. With `required` or a named
//!   choice the output is constrained to one call (or several, with `parallel_tool_calls`)
//!   whose arguments validate against the function's `parameters`. With `auto` the output is
//!   free text until the model writes the opening marker, and from there a well-formed call
//!   (a lazy grammar, as llama.cpp's grammar triggers): text, calls, or text then calls.
//! - **Llama 3** (the template renders earlier calls as `{"name": …, "parameters": …}`):
//!   the whole answer is one such JSON object (one call: Llama 3.1's template refuses
//!   more); with `auto`, an answer that does not start with `{` is text.
//! - **Mistral** (the template writes `[TOOL_CALLS]`): the marker, then a JSON array of
//!   `{"name", "arguments"}` objects; with `auto`, optionally after free text. Call ids are
//!   9 alphanumeric characters, as Mistral's templates demand of earlier turns.
//! - **Harmony** (gpt-oss: the template writes `<|channel|>` headers): the template renders
//!   the tools; a call is a message ` to=functions.NAME<|channel|>commentary json<|message|>`
//!   followed by its arguments, after any reasoning (see [`crate::harmony`], which also
//!   splits every gpt-oss answer into reasoning and content). The whole answer is
//!   constrained: reasoning and commentary messages, then (with `auto`) a final answer or a
//!   call, or a call whose arguments validate.
//! - **Generic** (any other template, as llama-server does): the tool list and the answer
//!   format are put in a system message, and the answer is JSON, always constrained:
//!   `{"tool_calls": [{"name": …, "arguments": {…}}]}`, or with `auto`
//!   `{"content": "…"}` for a plain answer.
//!
//! Tool-call markup never reaches `content`. Streamed with `auto`, the text before a call
//! goes out as it is generated ([`ContentStream`]: in the Hermes and Mistral formats up to
//! the opening marker, in the Llama 3 format unless the answer opens with `{`); the calls
//! (and anything else held back) are sent at the end as OpenAI's chunks: per call its
//! index, id and name, then its arguments.

use serde_json::{json, Map, Value};
use worker_engine::{Constraint, Engine};
use worker_tokenizer::{ChatTemplate, Tokenizer, ToolCallStyle};

use crate::error::{ApiError, FieldError};
use crate::openai::response::{
    Delta, FunctionCall, FunctionDelta, Message, ToolCall, ToolCallDelta,
};

/// How the request lets the model call tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The model picks text or calls.
    Auto,
    /// No call: the tools are not shown to the model.
    None,
    /// At least one call.
    Required,
    /// A call of this function.
    Named(String),
}

/// How tools reach the model and calls come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `<tool_call>{…}</tool_call>`, rendered by the model's own template.
    Hermes,
    /// One `{"name", "parameters"}` object as the whole answer (Llama 3.1+).
    Llama3,
    /// `[TOOL_CALLS][{"name", "arguments"}, …]` (Mistral).
    Mistral,
    /// gpt-oss's channels: a call is a message to `functions.NAME`.
    Harmony,
    /// JSON answers described in a system message.
    Generic,
}

/// A request's validated tools.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    /// The `tools` array as given (each `{type: "function", function: {…}}`).
    pub list: Value,
    names: Vec<String>,
    params: Vec<Value>,
    pub choice: Choice,
    parallel: bool,
    pub format: Format,
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

fn bad(field: &str, constraint: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, constraint, message)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tools are given.
/// The format follows the tool-call style of the model's `template`, if it has one.
pub(crate) fn parse(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<&Value>,
    template: Option<&ChatTemplate>,
) -> Result<Option<Tools>, FieldError> {
    let parallel = match parallel.filter(|v| !v.is_null()) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "parallel_tool_calls",
                "a boolean",
                "parallel_tool_calls must be a boolean",
            ))
        }
    };
    let Some(list) = tools.filter(|v| !v.is_null()) else {
        if tool_choice.is_some_and(|c| !c.is_null() && c != "none" && c != "auto") {
            return Err(bad("tool_choice", "tools given", "tool_choice needs tools"));
        }
        return Ok(None);
    };
    let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
        return Err(bad(
            "tools",
            "a non-empty array",
            "tools must be a non-empty array",
        ));
    };
    let mut names = Vec::new();
    let mut params = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let field = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                &field,
                "type function",
                "every tool must have type \"function\"",
            ));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(bad(
                &field,
                "a function object",
                "the tool has no function object",
            ));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        if !valid_name(name) {
            return Err(bad(
                &format!("{field}.function.name"),
                "[A-Za-z0-9_.-]{1,64}",
                "a function name must be 1 to 64 letters, digits, _ . or -",
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(bad(
                &format!("{field}.function.name"),
                "unique",
                "duplicate tool name",
            ));
        }
        let Some(p) = f.get("parameters").filter(|p| p.is_object()) else {
            return Err(bad(
                &format!("{field}.function.parameters"),
                "a JSON schema object",
                "every function needs a parameters schema (an object)",
            ));
        };
        names.push(name.to_string());
        params.push(p.clone());
    }
    let choice = match tool_choice.filter(|v| !v.is_null()) {
        None => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            _ => {
                return Err(bad(
                    "tool_choice",
                    "auto | none | required | {type, function: {name}}",
                    "tool_choice must be auto, none, required or a named function",
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match name {
                Some(n) if v.get("type").and_then(Value::as_str) == Some("function") => {
                    if !names.iter().any(|x| x == n) {
                        return Err(bad(
                            "tool_choice",
                            "a function in tools",
                            "tool_choice names a function that is not in tools",
                        ));
                    }
                    Choice::Named(n.to_string())
                }
                _ => {
                    return Err(bad(
                        "tool_choice",
                        "{\"type\": \"function\", \"function\": {\"name\": …}}",
                        "a named tool_choice is {type: function, function: {name}}",
                    ))
                }
            }
        }
    };
    Ok(Some(Tools {
        list: list.clone(),
        names,
        params,
        choice,
        parallel,
        format: match template.and_then(ChatTemplate::tool_call_style) {
            Some(ToolCallStyle::Hermes) => Format::Hermes,
            Some(ToolCallStyle::Llama3Json) => Format::Llama3,
            Some(ToolCallStyle::Mistral) => Format::Mistral,
            Some(ToolCallStyle::Harmony) => Format::Harmony,
            None => Format::Generic,
        },
    }))
}

impl Tools {
    /// Most calls in one answer: one without `parallel_tool_calls` or with a named choice,
    /// else one per tool (small models otherwise repeat calls until `max_tokens`).
    fn most_calls(&self) -> usize {
        if self.parallel
            && !matches!(self.choice, Choice::Named(_))
            && self.format != Format::Llama3
        {
            self.names.len()
        } else {
            1
        }
    }

    /// The schema of one call object `{name, arguments}` (`parameters` in the Llama 3
    /// format) of the functions the choice allows.
    fn call_schema(&self) -> Value {
        let args_key = if self.format == Format::Llama3 {
            "parameters"
        } else {
            "arguments"
        };
        let calls: Vec<Value> = self
            .functions()
            .map(|(n, p)| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": n}, args_key: p},
                    "required": ["name", args_key],
                    "additionalProperties": false,
                })
            })
            .collect();
        if calls.len() == 1 {
            calls.into_iter().next().unwrap_or(Value::Null)
        } else {
            json!({"anyOf": calls})
        }
    }

    fn with_compact_json(schema: Value) -> Value {
        compact_json(schema)
    }

    /// The functions the choice allows: name and `parameters` schema.
    pub fn functions(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.names
            .iter()
            .zip(&self.params)
            .filter(|(n, _)| match &self.choice {
                Choice::Named(want) => *n == want,
                _ => true,
            })
            .map(|(n, p)| (n.as_str(), p))
    }

    /// The constraint that makes the output a well-formed call (or, with `auto`, text or
    /// well-formed calls); `None` when the output stays free (`none`).
    pub fn constraint(&self, tok: &dyn Tokenizer) -> Option<Constraint> {
        match (self.format, &self.choice) {
            (_, Choice::None) => None,
            (Format::Hermes, _) => Some(Constraint::Lark(self.hermes_grammar(tok))),
            (Format::Mistral, _) => Some(Constraint::Lark(self.mistral_grammar(tok))),
            (Format::Harmony, _) => Some(Constraint::Lark(crate::harmony::grammar(self, tok))),
            (Format::Llama3, choice) => {
                let call = Self::with_compact_json(self.call_schema());
                Some(Constraint::Lark(if *choice == Choice::Auto {
                    // Text is anything that does not open a JSON object.
                    format!("start: TEXT? | %json {call}\nTEXT: /[^{{](?s:.*)/\n")
                } else {
                    format!("start: %json {call}\n")
                }))
            }
            (Format::Generic, choice) => {
                let mut calls = json!({
                    "type": "array", "items": self.call_schema(), "minItems": 1,
                });
                calls["maxItems"] = json!(self.most_calls());
                let with_calls = json!({
                    "type": "object",
                    "properties": {"tool_calls": calls},
                    "required": ["tool_calls"],
                    "additionalProperties": false,
                });
                let schema = if *choice == Choice::Auto {
                    json!({"anyOf": [with_calls, {
                        "type": "object",
                        "properties": {"content": {"type": "string"}},
                        "required": ["content"],
                        "additionalProperties": false,
                    }]})
                } else {
                    with_calls
                };
                Some(Constraint::JsonSchema(
                    Self::with_compact_json(schema).to_string(),
                ))
            }
        }
    }

    /// The Lark grammar of a Hermes-format answer: one or more calls
    /// `<tool_call>\n{json}\n</tool_call>` separated by newlines (at most
    /// [`Self::most_calls`]); with `auto`, optionally preceded by free text, or free text alone.
    fn hermes_grammar(&self, tok: &dyn Tokenizer) -> String {
        let schema = Self::with_compact_json(self.call_schema());
        let close = marker(tok, "</tool_call>");
        let open = marker(tok, "<tool_call>");
        let body = format!("body: \"\\n\" %json {schema} \"\\n\" {close}");
        // What follows the first opening marker: `body ("\n" OPEN body (…)?)?`.
        let mut after_open = String::from("body");
        for _ in 1..self.most_calls() {
            after_open = format!("body (\"\\n\" {open} {after_open})?");
        }
        self.marked_grammar(
            tok,
            "<tool_call>",
            &format!("after_open: {after_open}\n{body}\n"),
        )
    }

    /// The Lark grammar of a Mistral-format answer: `[TOOL_CALLS]` and a JSON array of calls;
    /// with `auto`, optionally preceded by free text, or free text alone.
    fn mistral_grammar(&self, tok: &dyn Tokenizer) -> String {
        let calls = Self::with_compact_json(json!({
            "type": "array", "items": self.call_schema(),
            "minItems": 1, "maxItems": self.most_calls(),
        }));
        self.marked_grammar(tok, "[TOOL_CALLS]", &format!("after_open: %json {calls}\n"))
    }

    /// A grammar whose calls start with the marker `open` and continue with the rule
    /// `after_open` (defined in `rules`). With `auto` the calls may follow free text or be
    /// absent; the free text never contains the marker.
    fn marked_grammar(&self, tok: &dyn Tokenizer, open: &str, rules: &str) -> String {
        let token = marker(tok, open);
        if self.choice != Choice::Auto {
            return format!("start: {token} after_open\n{rules}");
        }
        if special_token(tok, open).is_some() {
            // Free text cannot produce the special token: it ends where the marker comes.
            return format!("start: TEXT? ({token} after_open)?\nTEXT: /(?s:.+)/\n{rules}");
        }
        // A plain-text marker: the text alone never contains it, and the text before a call
        // ends (lazily) at its first occurrence.
        let escaped = regex_escape(open);
        format!(
            "start: TEXT? | prefix after_open\n\
             TEXT: /(?s:.+)/ & ~/(?s:.*){escaped}(?s:.*)/\n\
             prefix[lazy]: /(?s:.*)/ {token}\n{rules}"
        )
    }

    /// The system message text that describes the tools in the generic format.
    pub fn generic_system_text(&self) -> String {
        let mut text =
            String::from("You can call these tools (JSON schemas of their arguments follow):\n");
        for (n, p) in self.names.iter().zip(&self.params) {
            text.push_str(&format!("- {n}: {p}\n"));
        }
        text.push_str(
            "To call tools, answer with JSON only: {\"tool_calls\": [{\"name\": <tool name>, \
             \"arguments\": <arguments object>}]}.",
        );
        if self.choice == Choice::Auto {
            text.push_str(" To answer without a tool: {\"content\": <your answer>}.");
        }
        text
    }

    /// Splits a finished output into content and calls.
    pub fn parse_output(&self, text: &str) -> (String, Vec<Call>) {
        match self.format {
            Format::Hermes => parse_hermes(text),
            Format::Llama3 => parse_llama3(text),
            Format::Mistral => parse_mistral(text),
            Format::Harmony => {
                let a = crate::harmony::parse(text);
                (a.content, a.calls)
            }
            Format::Generic => parse_generic(text),
        }
    }
}

/// `schema` with llguidance's compact JSON layout (`, ` and `: `, no free whitespace), as the
/// templates write arguments.
pub(crate) fn compact_json(mut schema: Value) -> Value {
    if let Some(m) = schema.as_object_mut() {
        m.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// The id of `text` if it is one special token of the vocabulary.
fn special_token(tok: &dyn Tokenizer, text: &str) -> Option<u32> {
    tok.token_id(text).filter(|&id| tok.is_special(id))
}

/// A marker as a Lark item: its special token where the vocabulary has one, so the model can
/// produce it as it was trained to (and free text never can), else the literal text.
fn marker(tok: &dyn Tokenizer, text: &str) -> String {
    match special_token(tok, text) {
        Some(id) => format!("<[{id}]>"),
        None => format!("{text:?}"),
    }
}

/// `text` with the characters that mean something in a regular expression escaped.
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn call_of(v: &Value) -> Option<Call> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
        None => "{}".into(),
    };
    Some(Call { name, arguments })
}

fn parse_hermes(text: &str) -> (String, Vec<Call>) {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        content.push_str(&rest[..at]);
        let body = &rest[at + OPEN.len()..];
        let (inner, after) = match body.find(CLOSE) {
            Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
            None => (body, ""),
        };
        if let Some(call) = serde_json::from_str::<Value>(inner.trim())
            .ok()
            .as_ref()
            .and_then(call_of)
        {
            calls.push(call);
        }
        rest = after;
    }
    content.push_str(rest);
    (content.trim().to_string(), calls)
}

/// A Llama 3 answer is a call when it is one JSON object with a name; anything else is text.
fn parse_llama3(text: &str) -> (String, Vec<Call>) {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        if let Some(call) = serde_json::from_str::<Value>(trimmed)
            .ok()
            .as_ref()
            .and_then(call_of)
        {
            return (String::new(), vec![call]);
        }
        // Cut short (max_tokens): a half-written call is not content either.
        return (String::new(), Vec::new());
    }
    (trimmed.to_string(), Vec::new())
}

/// Text before `[TOOL_CALLS]` is content; the JSON array after it holds the calls.
fn parse_mistral(text: &str) -> (String, Vec<Call>) {
    const OPEN: &str = "[TOOL_CALLS]";
    let Some(at) = text.find(OPEN) else {
        return (text.trim().to_string(), Vec::new());
    };
    let calls = serde_json::from_str::<Value>(text[at + OPEN.len()..].trim())
        .ok()
        .and_then(|v| v.as_array().map(|a| a.iter().filter_map(call_of).collect()))
        .unwrap_or_default();
    (text[..at].trim().to_string(), calls)
}

fn parse_generic(text: &str) -> (String, Vec<Call>) {
    let Ok(v) = serde_json::from_str::<Value>(text.trim()) else {
        // Cut short (max_tokens): no call can be trusted and no JSON markup is content.
        return (String::new(), Vec::new());
    };
    if let Some(c) = v.get("content").and_then(Value::as_str) {
        return (c.to_string(), Vec::new());
    }
    let calls = v
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(call_of).collect())
        .unwrap_or_default();
    (String::new(), calls)
}

impl Tools {
    /// The assistant message answering a request with tools, and its finish reason
    /// (`tool_calls` when a complete output holds calls).
    pub fn message(&self, text: &str, reason: &'static str) -> (Message, &'static str) {
        let (content, calls) = self.parse_output(text);
        if calls.is_empty() {
            return (Message::text(content), reason);
        }
        let message = Message {
            role: "assistant",
            content: (!content.is_empty()).then_some(content),
            reasoning_content: None,
            tool_calls: tool_calls(&calls, self.format),
        };
        (message, calls_reason(reason))
    }

    /// The deltas that end a streamed answer whose whole text is `text`, of which `sent`
    /// went out as content already, and its finish reason.
    pub fn stream_end(
        &self,
        text: &str,
        sent: &str,
        reason: &'static str,
    ) -> (Vec<Delta>, &'static str) {
        let (content, calls) = self.parse_output(text);
        let reason = if calls.is_empty() {
            reason
        } else {
            calls_reason(reason)
        };
        let rest = content.strip_prefix(sent).unwrap_or_default();
        (stream_deltas(rest, &calls, self.format), reason)
    }

    /// The streamer of this answer's leading content, where the format lets content come
    /// before calls and the choice lets the model write text.
    pub fn content_stream(&self) -> Option<ContentStream> {
        if self.choice != Choice::Auto {
            return None;
        }
        let marker = match self.format {
            Format::Hermes => Some("<tool_call>"),
            Format::Mistral => Some("[TOOL_CALLS]"),
            Format::Llama3 => None,
            // Streamed by `crate::harmony::Stream`, reasoning and content apart.
            Format::Generic | Format::Harmony => return None,
        };
        Some(ContentStream {
            marker,
            sent: String::new(),
            sent_to: 0,
            decided: marker.is_some(),
            done: false,
        })
    }
}

/// The content of a streamed `auto` answer, released as it is generated: what comes before
/// the call marker (or, with no marker, all of an answer that does not open with `{`),
/// trimmed as the parsed content is: leading whitespace dropped, trailing whitespace and
/// anything that may be the start of the marker held back until more text decides it. So
/// what it releases is always a prefix of the content [`Tools::parse_output`] finds in the
/// whole answer.
#[derive(Debug)]
pub(crate) struct ContentStream {
    marker: Option<&'static str>,
    /// The content released so far.
    sent: String,
    /// Where in the answer the released content ends.
    sent_to: usize,
    /// Whether the answer is known to be text (always, with a marker).
    decided: bool,
    /// The marker (or a leading `{`) was seen: nothing more is released.
    done: bool,
}

impl ContentStream {
    /// The content released so far.
    pub fn sent(&self) -> &str {
        &self.sent
    }

    /// The content that `text`, the answer so far, releases beyond what was released.
    pub fn advance(&mut self, text: &str) -> Option<String> {
        if self.done {
            return None;
        }
        if !self.decided {
            match text.trim_start().chars().next() {
                None => return None,
                Some('{') => {
                    self.done = true;
                    return None;
                }
                Some(_) => self.decided = true,
            }
        }
        let end = match self.marker {
            Some(m) => match text.find(m) {
                Some(at) => {
                    self.done = true;
                    at
                }
                None => text.len() - partial_suffix(text, m),
            },
            None => text.len(),
        };
        let visible = &text[..end];
        let mut begin = self.sent_to;
        if self.sent.is_empty() {
            begin = visible.len() - visible.trim_start().len();
        }
        let stop = visible.trim_end().len();
        if stop <= begin {
            return None;
        }
        let piece = &visible[begin..stop];
        self.sent.push_str(piece);
        self.sent_to = stop;
        Some(piece.to_string())
    }
}

/// The length of the longest proper prefix of `marker` that `text` ends with.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&k| text.ends_with(&marker[..k]))
        .unwrap_or(0)
}

/// A complete output with calls finishes with `tool_calls`; a cut one stays `length`.
/// The finish reason of an answer that made calls: `tool_calls` where it stopped by itself.
pub(crate) fn calls_reason(reason: &'static str) -> &'static str {
    if reason == "stop" {
        "tool_calls"
    } else {
        reason
    }
}

/// The constraint of a request with `tools` (a call where the choice demands one, text or
/// well-formed calls with `auto`). Refuses tools beside another constraint (`given`), and
/// schemas that do not compile, naming `tools`.
pub(crate) fn constraint_of(
    engine: &Engine,
    tools: &Tools,
    given: bool,
) -> Result<Option<Constraint>, ApiError> {
    if given {
        return Err(ApiError::field(
            "tools",
            "one constraint",
            "tools cannot be combined with response_format or grammar",
        )
        .openai());
    }
    let tok = engine.tokenizer().as_ref();
    let to_api = |e| crate::constrain::attribute(ApiError::from_engine(&e), "tools").openai();
    let constraint = tools.constraint(tok);
    if let Some(c) = &constraint {
        engine.check_constraint(c).map_err(to_api)?;
    }
    Ok(constraint)
}

/// A fresh call id: `call_` and 16 hex digits, or in the Mistral format the 9 alphanumeric
/// characters its templates demand when the call comes back in a later turn.
fn call_id(format: Format) -> String {
    let mut n = crate::seed::fresh_seed();
    if format != Format::Mistral {
        return format!("call_{n:016x}");
    }
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..9)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// OpenAI's `tool_calls` array for `calls`, each given a fresh id.
pub(crate) fn tool_calls(calls: &[Call], format: Format) -> Vec<ToolCall> {
    calls
        .iter()
        .map(|c| ToolCall {
            id: call_id(format),
            kind: "function",
            function: FunctionCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        })
        .collect()
}

/// The streamed deltas of a held-back answer: its content, then per call one delta with
/// index, id, type and name (empty arguments) and one with the arguments.
pub(crate) fn stream_deltas(content: &str, calls: &[Call], format: Format) -> Vec<Delta> {
    let mut out = Vec::new();
    if !content.is_empty() {
        out.push(Delta {
            content: Some(content.to_owned()),
            ..Delta::default()
        });
    }
    for (index, c) in tool_calls(calls, format).into_iter().enumerate() {
        let ToolCall { id, kind, function } = c;
        out.push(Delta {
            tool_calls: vec![ToolCallDelta {
                index,
                id: Some(id),
                kind: Some(kind),
                function: FunctionDelta {
                    name: Some(function.name),
                    arguments: String::new(),
                },
            }],
            ..Delta::default()
        });
        out.push(Delta {
            tool_calls: vec![ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: function.arguments,
                },
            }],
            ..Delta::default()
        });
    }
    out
}

/// Checks the tool-related fields of one message and returns it as the JSON object the
/// template sees (`tool_calls` arguments as objects, as HF templates expect).
pub(crate) fn message_json(
    role: &str,
    content: String,
    tool_calls: Option<&Value>,
    tool_call_id: Option<&str>,
    index: usize,
) -> Result<Value, FieldError> {
    let field = format!("messages[{index}]");
    let mut m = Map::new();
    m.insert("role".into(), json!(role));
    m.insert("content".into(), json!(content));
    if role == "tool" {
        let Some(id) = tool_call_id.filter(|s| !s.is_empty()) else {
            return Err(bad(
                &format!("{field}.tool_call_id"),
                "required",
                "a tool message needs tool_call_id",
            ));
        };
        m.insert("tool_call_id".into(), json!(id));
    }
    if let Some(calls) = tool_calls.filter(|v| !v.is_null()) {
        let bad_calls = || {
            bad(
                &format!("{field}.tool_calls"),
                "[{id, type: function, function: {name, arguments}}]",
                "tool_calls must be an array of function calls",
            )
        };
        if role != "assistant" {
            return Err(bad_calls());
        }
        let items = calls.as_array().ok_or_else(bad_calls)?;
        let mut out = Vec::new();
        for c in items {
            let f = c.get("function").ok_or_else(bad_calls)?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(bad_calls)?;
            let args = match f.get("arguments") {
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(json!(s)),
                Some(v) => v.clone(),
                None => json!({}),
            };
            out.push(json!({
                "id": c.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": name, "arguments": args},
            }));
        }
        m.insert("tool_calls".into(), Value::Array(out));
    }
    Ok(Value::Object(m))
}

/// Rewrites messages for a template without tool support: the tool list joins (or becomes)
/// the system message, earlier calls become the assistant's JSON answers, and tool results
/// become user messages that say which call they answer.
pub(crate) fn generic_messages(messages: Vec<Value>, tools: Option<&Tools>) -> Vec<Value> {
    let mut out: Vec<Value> = messages
        .into_iter()
        .map(|mut m| {
            let role = m["role"].as_str().unwrap_or("").to_string();
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                    .collect();
                return json!({"role": "assistant",
                              "content": json!({"tool_calls": calls}).to_string()});
            }
            if role == "tool" {
                let id = m["tool_call_id"].as_str().unwrap_or("").to_string();
                let content = m["content"].as_str().unwrap_or("").to_string();
                return json!({"role": "user",
                              "content": format!("Result of tool call {id}: {content}")});
            }
            if let Some(obj) = m.as_object_mut() {
                obj.remove("tool_call_id");
            }
            m
        })
        .collect();
    if let Some(t) = tools.filter(|t| t.choice != Choice::None) {
        let text = t.generic_system_text();
        match out.first_mut() {
            Some(first) if first["role"] == "system" => {
                let joined = format!("{}\n\n{text}", first["content"].as_str().unwrap_or(""));
                first["content"] = json!(joined);
            }
            _ => out.insert(0, json!({"role": "system", "content": text})),
        }
    }
    out
}

#[cfg(test)]
mod tests;
