//! The objects the OpenAI routes answer with, typed: each shape is defined once here and
//! serialized by serde, so a response and its streamed chunks cannot drift apart.

use serde::Serialize;

/// A `chat.completion`, `chat.completion.chunk` or `text_completion` object.
#[derive(Debug, Serialize)]
pub(crate) struct Completion<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    /// Always `null`: no fingerprint is promised.
    pub system_fingerprint: Option<&'a str>,
    pub choices: Vec<C>,
    /// Absent from a chunk unless `stream_options.include_usage`; then `null` on every
    /// chunk but the last, which has no choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<&'a Usage>>,
}

/// Token counts of one answer.
#[derive(Debug, Serialize)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt tokens: those served from the prefix cache.
#[derive(Debug, Serialize)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// The one choice of a non-streamed chat completion.
#[derive(Debug, Serialize)]
pub(crate) struct ChatChoice {
    pub index: u32,
    pub message: Message,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

/// The assistant's message: its text (`null` beside tool calls when there is none) and calls.
#[derive(Debug, Serialize)]
pub(crate) struct Message {
    pub role: &'static str,
    pub content: Option<String>,
    /// The model's reasoning, apart from its answer (gpt-oss's analysis channel), as
    /// llama-server and vLLM name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    /// An assistant message of plain text.
    pub fn text(content: String) -> Self {
        Message {
            role: "assistant",
            content: Some(content),
            reasoning_content: None,
            tool_calls: Vec::new(),
        }
    }
}

/// One call in `message.tool_calls`.
#[derive(Debug, Serialize)]
pub(crate) struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// The function a [`ToolCall`] names, with its arguments as JSON text.
#[derive(Debug, Serialize)]
pub(crate) struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// The one choice of a streamed chat chunk.
#[derive(Debug, Serialize)]
pub(crate) struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// What a chat chunk adds to the message; `{}` on a last chunk that adds nothing.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A piece of the model's reasoning (see [`Message::reasoning_content`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A streamed piece of a tool call: `index`, `id`, `type` and the name first, then the
/// arguments.
#[derive(Debug, Serialize)]
pub(crate) struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Debug, Serialize)]
pub(crate) struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// The one choice of a text completion, whole (with its finish reason) or a chunk of it.
#[derive(Debug, Serialize)]
pub(crate) struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A chat answer's `logprobs`: one entry per token.
#[derive(Debug, Serialize)]
pub(crate) struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

/// One chosen token, its log-probability, bytes and the most likely alternatives.
#[derive(Debug, Serialize)]
pub(crate) struct TokenLogprob {
    pub token: String,
    pub logprob: Option<f32>,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative in [`TokenLogprob::top_logprobs`].
#[derive(Debug, Serialize)]
pub(crate) struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A text completion's `logprobs`, in the legacy column layout.
#[derive(Debug, Serialize)]
pub(crate) struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// Per token, the alternatives' text and log-probability.
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList<'a> {
    pub object: &'static str,
    pub data: [ModelObject<'a>; 1],
}

/// The one model a worker serves.
#[derive(Debug, Serialize)]
pub(crate) struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}
