//! Chat templates: the Jinja template in `tokenizer.chat_template`, rendered with `minijinja`
//! and its Python-compatibility methods (`.strip()`, `.items()`, …), set up as HF
//! `transformers`' `apply_chat_template` sets up jinja2 (`trim_blocks`, `lstrip_blocks`,
//! `raise_exception`, `tojson`, `strftime_now`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use worker_gguf::Metadata;

use crate::error::{Result, TokenizerError};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The variables a template sees besides `messages`.
#[derive(Clone, Debug, Default)]
pub struct ChatContext {
    /// Append the opening of the assistant's turn.
    pub add_generation_prompt: bool,
    /// The text of the BOS token (`bos_token`), empty if none.
    pub bos_token: String,
    /// The text of the EOS token (`eos_token`), empty if none.
    pub eos_token: String,
    /// The instant `strftime_now` formats (UTC); `None` for the system clock. Set for
    /// reproducible renderings (tests, goldens).
    pub now: Option<SystemTime>,
    /// Further variables (a request's `chat_template_kwargs`, `reasoning_effort`), beside
    /// the ones above; where a name is also one of those, theirs is used.
    pub variables: serde_json::Map<String, serde_json::Value>,
}

/// How a template's model writes tool calls, recognised from the markup the template itself
/// renders for earlier calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallStyle {
    /// Hermes/Qwen: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one per call.
    Hermes,
    /// Llama 3.1+: the whole answer is one JSON object `{"name": …, "parameters": {…}}`.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS]` followed by a JSON array of `{"name", "arguments"}` objects;
    /// call ids are 9 alphanumeric characters.
    Mistral,
    /// gpt-oss's harmony: a message to `functions.NAME` on the commentary channel.
    Harmony,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    tools: bool,
    harmony: bool,
    tool_call_style: Option<ToolCallStyle>,
}

const NAME: &str = "chat_template";
/// The variable that carries [`ChatContext::now`] to `strftime_now` (seconds since the epoch).
const NOW: &str = "__strftime_now_epoch";

/// [`ChatContext::now`] as the seconds the template's `strftime_now` reads, if set.
fn now_secs(ctx: &ChatContext) -> Option<f64> {
    ctx.now
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// The style of the markup `source` renders for earlier tool calls.
fn tool_call_style(source: &str) -> Option<ToolCallStyle> {
    if harmony(source) {
        Some(ToolCallStyle::Harmony)
    } else if source.contains("<tool_call>") {
        Some(ToolCallStyle::Hermes)
    } else if source.contains("[TOOL_CALLS]") {
        Some(ToolCallStyle::Mistral)
    } else if source.contains("<|python_tag|>") || source.contains("ipython") {
        // Llama 3.1's template writes earlier calls as `{"name": …, "parameters": …}` and
        // tool results under the `ipython` role.
        Some(ToolCallStyle::Llama3Json)
    } else {
        None
    }
}

/// Whether the template writes answers in harmony's channels (gpt-oss).
fn harmony(source: &str) -> bool {
    source.contains("<|channel|>") && source.contains("<|message|>")
}

fn template_err(e: minijinja::Error) -> TokenizerError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    TokenizerError::Template(msg)
}

impl ChatTemplate {
    /// Compiles template `source`; a syntax error is reported, not panicked.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_err)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function(
            "strftime_now",
            |state: &minijinja::State, format: String| -> String {
                let now = state
                    .lookup(NOW)
                    .and_then(|v| f64::try_from(v).ok())
                    .map_or_else(SystemTime::now, |secs| {
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs)
                    });
                crate::strftime::strftime(&format, now)
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(template_err)?;
        Ok(Self {
            env,
            tools: source.contains("tools"),
            harmony: harmony(source),
            tool_call_style: tool_call_style(source),
        })
    }

    /// The template in GGUF key `tokenizer.chat_template`, if the file has one.
    pub fn from_gguf(md: &Metadata) -> Result<Option<Self>> {
        match md.get("tokenizer.chat_template") {
            None => Ok(None),
            Some(_) => Self::new(md.get_str("tokenizer.chat_template")?).map(Some),
        }
    }

    /// Whether the template reads a `tools` variable (renders a tool list itself).
    pub fn supports_tools(&self) -> bool {
        self.tools
    }

    /// Whether the model answers in harmony's channels (gpt-oss: `<|channel|>analysis`
    /// reasoning, then `<|channel|>final`), which the answer must be split by.
    pub fn harmony(&self) -> bool {
        self.harmony
    }

    /// How the model writes tool calls, where the template renders tools and earlier calls
    /// in a known style; `None` for a template without (recognised) tool support.
    pub fn tool_call_style(&self) -> Option<ToolCallStyle> {
        self.tool_call_style.filter(|_| self.tools)
    }

    /// Renders messages given as JSON objects, as OpenAI clients send them (`role`,
    /// `content`, and on earlier turns `tool_calls` or `tool_call_id`), with `tools` (the
    /// request's tool list, absent when `None`) as the template's `tools` variable.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        ctx: &ChatContext,
    ) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(template_err)?;
        let tools = tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t)));
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            tools => tools,
            add_generation_prompt => ctx.add_generation_prompt,
            bos_token => &ctx.bos_token,
            eos_token => &ctx.eos_token,
            __strftime_now_epoch => now_secs(ctx),
            ..minijinja::Value::from(minijinja::value::Serde(&ctx.variables))
        })
        .map_err(template_err)
    }

    /// Renders `messages`.
    pub fn render(&self, messages: &[ChatMessage], ctx: &ChatContext) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(template_err)?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => ctx.add_generation_prompt,
            bos_token => &ctx.bos_token,
            eos_token => &ctx.eos_token,
            __strftime_now_epoch => now_secs(ctx),
            ..minijinja::Value::from(minijinja::value::Serde(&ctx.variables))
        })
        .map_err(template_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_reported() {
        assert!(ChatTemplate::new("{% for %}").unwrap_err().is_template());
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let e = t.render(&[], &ChatContext::default()).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
        let t = ChatTemplate::new("{{ messages[0].content.strip() }}").unwrap();
        let out = t
            .render(
                &[ChatMessage::new("user", "  hi ")],
                &ChatContext::default(),
            )
            .unwrap();
        assert_eq!(out, "hi");
    }

    #[test]
    fn strftime_now_reads_the_context_clock() {
        let t = ChatTemplate::new("Today: {{ strftime_now('%Y-%m-%d') }}").unwrap();
        let ctx = ChatContext {
            now: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_420_567)),
            ..ChatContext::default()
        };
        assert_eq!(t.render(&[], &ctx).unwrap(), "Today: 2026-12-04");
        // The system clock otherwise.
        let today = t.render(&[], &ChatContext::default()).unwrap();
        let date = today.strip_prefix("Today: ").unwrap().as_bytes();
        let shape = date.len() == 10
            && date.iter().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            });
        assert!(shape, "{today}");
    }

    /// Further variables reach the template through both render calls; one named like a
    /// context field does not replace it.
    #[test]
    fn variables_reach_the_template_beside_the_context() {
        let t = ChatTemplate::new("{{ bos_token }}|{{ effort }}|{{ flag is defined }}").unwrap();
        let mut variables = serde_json::Map::new();
        variables.insert("effort".into(), "high".into());
        variables.insert("bos_token".into(), "X".into());
        let ctx = ChatContext {
            bos_token: "<s>".into(),
            variables,
            ..ChatContext::default()
        };
        assert_eq!(t.render(&[], &ctx).unwrap(), "<s>|high|False");
        let json = t.render_json(&serde_json::json!([]), None, &ctx).unwrap();
        assert_eq!(json, "<s>|high|False");
    }
}
