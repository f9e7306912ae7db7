//! gpt-oss's "harmony" answers, as llama-server reads them (`common/parsers/gpt-oss.cpp`).
//!
//! After the generation prompt `<|start|>assistant` the model writes messages, each a header
//! and a body: `<|channel|>analysis<|message|>…<|end|>` (its reasoning),
//! `<|start|>assistant<|channel|>final<|message|>…` (the answer, ended by `<|return|>`, an
//! end-of-generation token the text never shows), a `commentary` preamble, or a tool call
//! with a recipient in the header: ` to=functions.NAME<|channel|>commentary json<|message|>{…}`
//! (ended by `<|call|>`, also end-of-generation). The markers are single special tokens that
//! the worker renders (llama.cpp makes them user-defined tokens for this reason).
//!
//! As llama-server does by default, the analysis channel becomes `reasoning_content`, never
//! `content`; final and commentary text become `content`; calls to `functions.*` become
//! `tool_calls`, and calls to other recipients (the model's builtin tools) are dropped. An
//! answer that does not open with a header is plain content. [`Stream`] releases reasoning
//! and content as they are generated, holding back only what may be the start of `<|end|>`.

use serde_json::Value;
use worker_tokenizer::Tokenizer;

use crate::tools::{Call, Choice, Tools};

const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const END: &str = "<|end|>";
const START: &str = "<|start|>";
/// What a message header may open with: a channel, a recipient (in the role header the
/// generation prompt opened), or the next message's role header.
const HEADER_OPENINGS: [&str; 3] = [CHANNEL, " to=", START];

/// A piece of an answer released while it streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Reasoning(String),
    Content(String),
}

/// A whole answer, split.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Answer {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<Call>,
}

/// What a message's body is, from its header.
#[derive(Clone, Debug, PartialEq)]
enum Body {
    Reasoning,
    Content,
    /// A call to `functions.NAME`, or (`None`) to another recipient: not streamed.
    Call(Option<String>),
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// A message header starts at this byte.
    Header(usize),
    /// A message body of this kind starts at this byte.
    Body(usize, Body),
    /// Not harmony: everything from this byte is content.
    Plain(usize),
}

/// An answer being generated: push its text as it comes, take the pieces it releases.
#[derive(Debug)]
pub(crate) struct Stream {
    text: String,
    state: State,
    /// Released up to here.
    released: usize,
    calls: Vec<Call>,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            text: String::new(),
            state: State::Header(0),
            released: 0,
            calls: Vec::new(),
        }
    }
}

/// The kind of body a message header announces.
fn body_of(header: &str) -> Body {
    if let Some(at) = header.find(" to=") {
        let recipient: String = header[at + 4..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '<')
            .collect();
        return Body::Call(recipient.strip_prefix("functions.").map(str::to_string));
    }
    let channel = header
        .find(CHANNEL)
        .map(|at| &header[at + CHANNEL.len()..])
        .unwrap_or("");
    let channel: String = channel
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    match channel.as_str() {
        "analysis" => Body::Reasoning,
        _ => Body::Content,
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| text.ends_with(&marker[..n]))
        .unwrap_or(0)
}

impl Stream {
    /// Adds `text` (more of the answer) and returns the pieces it releases.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.text.push_str(text);
        self.advance(false)
    }

    /// The end of the answer: the pieces still held back, and the calls it made.
    pub fn finish(mut self) -> (Vec<Piece>, Vec<Call>) {
        let pieces = self.advance(true);
        (pieces, self.calls)
    }

    fn advance(&mut self, end: bool) -> Vec<Piece> {
        let mut out = Vec::new();
        loop {
            match self.state.clone() {
                State::Plain(from) => {
                    self.emit(&mut out, Body::Content, from, self.text.len());
                    return out;
                }
                State::Header(from) => {
                    let header = &self.text[from..];
                    if let Some(at) = header.find(MESSAGE) {
                        let body = body_of(&header[..at]);
                        self.state = State::Body(from + at + MESSAGE.len(), body);
                        continue;
                    }
                    let harmony = HEADER_OPENINGS
                        .iter()
                        .any(|o| header.starts_with(o) || o.starts_with(header));
                    if !harmony {
                        self.state = State::Plain(from);
                        continue;
                    }
                    // A header cut short by the end of generation says nothing.
                    return out;
                }
                State::Body(from, body) => {
                    let rest = &self.text[from..];
                    if let Some(at) = rest.find(END) {
                        self.close(&mut out, body, from, from + at);
                        self.state = State::Header(from + at + END.len());
                        continue;
                    }
                    if end {
                        self.close(&mut out, body, from, self.text.len());
                    } else if let Body::Reasoning | Body::Content = body {
                        let hold = partial_suffix(rest, END);
                        self.emit(&mut out, body, from, self.text.len() - hold);
                    }
                    // (A call's body is read whole, when it ends.)
                    return out;
                }
            }
        }
    }

    /// Releases the text of a reasoning or content body between `from` and `to` not
    /// released yet.
    fn emit(&mut self, out: &mut Vec<Piece>, body: Body, from: usize, to: usize) {
        let start = self.released.max(from);
        if to > start {
            let piece = self.text[start..to].to_string();
            match body {
                Body::Reasoning => out.push(Piece::Reasoning(piece)),
                Body::Content => out.push(Piece::Content(piece)),
                Body::Call(_) => {}
            }
            self.released = to;
        }
    }

    /// A body that ends at `to`: the rest of its text, or its call (when its arguments are
    /// JSON: a call cut short by `max_tokens` is no call).
    fn close(&mut self, out: &mut Vec<Piece>, body: Body, from: usize, to: usize) {
        match body {
            Body::Call(Some(name)) => {
                let arguments = self.text[from..to].trim();
                if serde_json::from_str::<Value>(arguments).is_ok() {
                    self.calls.push(Call {
                        name,
                        arguments: arguments.to_string(),
                    });
                }
            }
            Body::Call(None) => {}
            body => self.emit(out, body, from, to),
        }
        self.released = self.released.max(to);
    }
}

/// Splits a whole answer.
pub(crate) fn parse(text: &str) -> Answer {
    let mut s = Stream::default();
    let mut pieces = s.push(text);
    let (rest, calls) = s.finish();
    pieces.extend(rest);
    let mut answer = Answer {
        calls,
        ..Answer::default()
    };
    for p in pieces {
        match p {
            Piece::Reasoning(t) => answer.reasoning.push_str(&t),
            Piece::Content(t) => answer.content.push_str(&t),
        }
    }
    answer
}

/// The Lark grammar of a harmony answer with tools: reasoning and commentary messages, then
/// (with `auto`) a final answer or a call, or (with `required` or a named choice) a call,
/// written as gpt-oss's template writes earlier calls:
/// ` to=functions.NAME<|channel|>commentary json<|message|>{arguments}`, the arguments valid
/// against the function's `parameters`. The markers are the vocabulary's special tokens, so
/// free text can never produce them.
pub(crate) fn grammar(tools: &Tools, tok: &dyn Tokenizer) -> String {
    let token = |text: &str| match tok.token_id(text).filter(|&id| tok.is_special(id)) {
        Some(id) => format!("<[{id}]>"),
        None => format!("{text:?}"),
    };
    let (channel, message, end, start) = (token(CHANNEL), token(MESSAGE), token(END), token(START));
    let calls: Vec<String> = tools
        .functions()
        .map(|(name, params)| {
            let schema = crate::tools::compact_json(params.clone());
            format!(
                "\" to=functions.{name}\" {channel} \"commentary json\" {message} %json {schema}"
            )
        })
        .collect();
    let answer = match tools.choice {
        Choice::Auto => "final | call",
        _ => "call",
    };
    format!(
        "start: note* ({answer})\n\
         note: {channel} NOTE_CHANNEL {message} TEXT? {end} {start} \"assistant\"\n\
         NOTE_CHANNEL: \"analysis\" | \"commentary\"\n\
         final: {channel} \"final\" {message} TEXT?\n\
         call: {}\n\
         TEXT: /(?s:.+)/\n",
        calls.join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(chunks: &[&str]) -> (Vec<Piece>, Vec<Call>) {
        let mut s = Stream::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        let (rest, calls) = s.finish();
        out.extend(rest);
        (out, calls)
    }

    /// Joins consecutive pieces of one kind, so that chunkings compare.
    fn joined(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for p in pieces {
            match (out.last_mut(), p) {
                (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(&b),
                (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                (_, p) => out.push(p),
            }
        }
        out
    }

    #[test]
    fn analysis_is_reasoning_and_final_is_content() {
        let text = "<|channel|>analysis<|message|>The user greets. Reply.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>Hello! How can I help?";
        let a = parse(text);
        assert_eq!(a.reasoning, "The user greets. Reply.");
        assert_eq!(a.content, "Hello! How can I help?");
        assert!(a.calls.is_empty());
        // Token by token (the markers are whole tokens), character by character: the same.
        let tokens = [
            "<|channel|>",
            "analysis",
            "<|message|>",
            "The user",
            " greets. Reply.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "final",
            "<|message|>",
            "Hello!",
            " How can I help?",
        ];
        let want = vec![
            Piece::Reasoning("The user greets. Reply.".into()),
            Piece::Content("Hello! How can I help?".into()),
        ];
        assert_eq!(joined(pieces_of(&tokens).0), want);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(joined(pieces_of(&chars).0), want);
        // Reasoning streams before the final answer exists.
        let mut s = Stream::default();
        assert_eq!(
            s.push("<|channel|>analysis<|message|>Think"),
            [Piece::Reasoning("Think".into())]
        );
        // A possible start of <|end|> is held back, then released when it is not one.
        assert_eq!(s.push(" <|e"), [Piece::Reasoning(" ".into())]);
        assert_eq!(s.push("x"), [Piece::Reasoning("<|ex".into())]);
    }

    #[test]
    fn calls_are_read_from_either_header_form() {
        let text = "<|channel|>analysis<|message|>Need weather.<|end|>\
                    <|start|>assistant to=functions.get_weather<|channel|>commentary json\
                    <|message|>{\"location\": \"Paris\"}";
        let a = parse(text);
        assert_eq!(a.reasoning, "Need weather.");
        assert_eq!(a.content, "");
        assert_eq!(
            a.calls,
            [Call {
                name: "get_weather".into(),
                arguments: "{\"location\": \"Paris\"}".into()
            }]
        );
        // The recipient in the channel header, with a constraint marker; as the first
        // message (the prompt opened the role header).
        let a = parse(
            "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{\"q\": 1}",
        );
        assert_eq!(a.calls[0].name, "lookup");
        assert_eq!(a.calls[0].arguments, "{\"q\": 1}");
        // Arguments cut short are no call.
        let a = parse(" to=functions.lookup<|channel|>commentary json<|message|>{\"q\": ");
        assert!(a.calls.is_empty());
        // A call to a builtin tool is dropped; a commentary preamble is content.
        let a = parse(
            " to=browser.search<|channel|>commentary<|message|>{}<|end|>\
             <|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>\
             <|start|>assistant<|channel|>final<|message|>Done.",
        );
        assert!(a.calls.is_empty());
        assert_eq!(a.content, "Checking.Done.");
    }

    #[test]
    fn plain_and_cut_short_answers() {
        // Not harmony at all: content.
        let a = parse("Just text, no channels.");
        assert_eq!(a.content, "Just text, no channels.");
        // Cut short inside a header, or inside the reasoning: no content invented.
        assert_eq!(parse("<|channel|>fin"), Answer::default());
        let a = parse("<|channel|>analysis<|message|>Half a thou");
        assert_eq!(
            (a.reasoning.as_str(), a.content.as_str()),
            ("Half a thou", "")
        );
        // Text where a header should be, after a message, is content.
        let a = parse("<|channel|>final<|message|>A<|end|>stray");
        assert_eq!(a.content, "Astray");
    }
}
