//! Entry points for the fuzz targets in `fuzz/` and for the seeded tests that stand in for
//! them in CI (which has no nightly): every request parser and validator on arbitrary bytes,
//! with the invariants they must keep. Not for serving: nothing here is used by the routes.
//!
//! [`fuzz_request`] turns bytes into a request body for one route, either the bytes
//! themselves or a JSON document built from them near that route's schema (its field names,
//! right and wrong types, duplicate keys, deep nesting, chat messages), with [`CANARY`] in
//! every string and in made-up keys. [`check_request`] runs the route's parser on it and
//! panics, as a fuzzer wants, if an invariant breaks: an accepted request must be within
//! the limits, a refused one must be a 4xx error with a message, and no error may contain
//! the canary: nothing a request sends is echoed.

use std::sync::OnceLock;

use worker_tokenizer::ChatTemplate;

use crate::error::ApiError;
use crate::validate::Rules;
use crate::{execute, openai, routes};

/// The marker every generated string and made-up key carries; no error text may contain it.
pub const CANARY: &str = "CANARY-d3c0y";

/// The routes whose bodies are parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzRoute {
    /// `POST /execute`.
    Execute,
    /// `POST /cancel`.
    Cancel,
    /// `POST /tokenize`.
    Tokenize,
    /// `POST /detokenize`.
    Detokenize,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
}

impl FuzzRoute {
    /// Every route, in the order the first input byte picks them.
    pub const ALL: [FuzzRoute; 6] = [
        FuzzRoute::Execute,
        FuzzRoute::Cancel,
        FuzzRoute::Tokenize,
        FuzzRoute::Detokenize,
        FuzzRoute::ChatCompletions,
        FuzzRoute::Completions,
    ];

    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            FuzzRoute::Execute => "/execute",
            FuzzRoute::Cancel => "/cancel",
            FuzzRoute::Tokenize => "/tokenize",
            FuzzRoute::Detokenize => "/detokenize",
            FuzzRoute::ChatCompletions => "/v1/chat/completions",
            FuzzRoute::Completions => "/v1/completions",
        }
    }

    /// The fields the route's body may name (the prompt-bearing ones twice, to be picked
    /// more often).
    fn fields(self) -> &'static [&'static str] {
        match self {
            FuzzRoute::Execute => execute::EXECUTE_FIELDS,
            FuzzRoute::Cancel => &["job_id"],
            FuzzRoute::Tokenize => &["content", "add_special", "parse_special"],
            FuzzRoute::Detokenize => &["tokens"],
            FuzzRoute::ChatCompletions => &[
                "messages",
                "messages",
                "max_tokens",
                "max_completion_tokens",
                "logprobs",
                "top_logprobs",
                "tools",
                "response_format",
                "stream",
                "stream_options",
                "temperature",
                "top_p",
                "top_k",
                "stop",
                "seed",
                "n",
                "logit_bias",
                "reasoning_effort",
                "chat_template_kwargs",
            ],
            FuzzRoute::Completions => &[
                "prompt",
                "prompt",
                "max_tokens",
                "logprobs",
                "echo",
                "best_of",
                "suffix",
                "stream",
                "temperature",
                "min_p",
                "repetition_penalty",
                "presence_penalty",
                "stop",
                "seed",
                "logit_bias",
                "user",
            ],
        }
    }
}

/// Reads choices from the fuzz bytes; zeros once they run out, so any input makes a body.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n.max(1)
    }

    fn pick<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items[self.below(items.len())]
    }
}

/// Strings the generator writes, each with the canary (or made of it).
fn string(c: &mut Choices<'_>) -> String {
    let s = match c.below(8) {
        0 => String::new(),
        1 => CANARY.repeat(1 + c.below(40)),
        2 => format!("{CANARY}\\u00e9\\ud83d\\ude00\\n\\t\\\"\\\\"),
        3 => format!("{} {CANARY}", c.below(1000)),
        4 => format!("<|im_start|>{CANARY}<|im_end|>"),
        5 => format!("\\u0000{CANARY}\\ud800"),
        _ => CANARY.to_string(),
    };
    format!("\"{s}\"")
}

fn number(c: &mut Choices<'_>) -> String {
    match c.below(10) {
        0 => "18446744073709551615".into(),
        1 => "-9223372036854775808".into(),
        2 => "1e308".into(),
        3 => "1e400".into(),
        4 => "-0.0".into(),
        5 => format!("{}.5", c.byte()),
        6 => "100000000000000000000".into(),
        7 => format!("-{}", c.byte()),
        _ => c.byte().to_string(),
    }
}

/// A JSON value, `depth` levels down.
fn value(c: &mut Choices<'_>, depth: usize) -> String {
    let kind = if depth >= 4 { c.below(5) } else { c.below(12) };
    match kind {
        0 => "null".into(),
        1 => if c.byte().is_multiple_of(2) {
            "true"
        } else {
            "false"
        }
        .into(),
        2 | 3 => number(c),
        4 => string(c),
        5 | 6 => {
            let items: Vec<String> = (0..c.below(5)).map(|_| value(c, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        7 => object(
            c,
            depth + 1,
            &["role", "content", "type", "text", "include_usage"],
        ),
        8 | 9 => message(c, depth + 1),
        10 => {
            let n = 1 + c.below(300);
            format!("{}{}", "[".repeat(n), "]".repeat(n))
        }
        _ => format!(
            "[{}]",
            (0..c.below(6))
                .map(|_| c.byte().to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// A value of the type field `key` takes (where the generator knows it), so that many bodies
/// pass the schema and reach the validators, or are accepted.
fn typed(c: &mut Choices<'_>, key: &str, depth: usize) -> String {
    match key {
        "messages" => {
            let items: Vec<String> = (0..c.below(5)).map(|_| message(c, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        "job_id" | "prompt" | "content" | "model" | "user" => string(c),
        "max_tokens"
        | "max_completion_tokens"
        | "top_k"
        | "seed"
        | "n"
        | "best_of"
        | "top_logprobs" => c.below(12).to_string(),
        "stream" | "echo" | "logprobs" | "add_special" | "parse_special" => {
            if c.below(2) == 0 { "true" } else { "false" }.into()
        }
        "temperature" | "top_p" | "min_p" | "repetition_penalty" | "presence_penalty"
        | "frequency_penalty" => format!("{:.2}", c.below(300) as f64 / 100.0 - 0.5),
        "stop" => match c.below(3) {
            0 => string(c),
            1 => format!(
                "[{}]",
                (0..c.below(6))
                    .map(|_| string(c))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => "[\"\\n\"]".into(),
        },
        "tokens" => format!(
            "[{}]",
            (0..c.below(8))
                .map(|_| (c.byte() as usize * 5).to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        "stream_options" => "{\"include_usage\": true}".into(),
        "logit_bias" => format!("{{\"{}\": {}}}", c.below(2000), number(c)),
        "response_format" => "{\"type\": \"text\"}".into(),
        _ => value(c, depth),
    }
}

/// A chat message, right or wrong.
fn message(c: &mut Choices<'_>, depth: usize) -> String {
    let role = c.pick(&[
        "user",
        "system",
        "assistant",
        "tool",
        "developer",
        "wizard",
        CANARY,
    ]);
    let content = match c.below(5) {
        0 => value(c, depth + 1),
        1 => format!(
            "[{{\"type\": \"{}\", \"text\": {}}}]",
            c.pick(&["text", "image_url", CANARY]),
            string(c)
        ),
        _ => string(c),
    };
    let extra = match c.below(6) {
        0 => format!(", \"{CANARY}\": 1"),
        1 => format!(", \"name\": {}", string(c)),
        2 => ", \"role\": \"user\"".into(),
        _ => String::new(),
    };
    format!("{{\"role\": \"{role}\", \"content\": {content}{extra}}}")
}

/// An object whose keys come from `keys`, made-up ones (with the canary), or repeats.
fn object(c: &mut Choices<'_>, depth: usize, keys: &[&str]) -> String {
    let mut entries: Vec<(String, String)> = Vec::new();
    for _ in 0..c.below(9) {
        let key = match c.below(10) {
            0 => format!("{CANARY}-{}", c.below(3)),
            1 if !entries.is_empty() => entries[c.below(entries.len())].0.clone(),
            _ => c.pick(keys).to_string(),
        };
        let v = match c.below(3) {
            0 => value(c, depth + 1),
            _ => typed(c, &key, depth + 1),
        };
        entries.push((key, v));
    }
    let body: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// A body with the route's required fields and a few others, all of the right type: most
/// are accepted, or refused by a validator rather than the schema.
fn plausible(c: &mut Choices<'_>, route: FuzzRoute) -> String {
    let required: &[&str] = match route {
        FuzzRoute::Execute => &["job_id", "prompt"],
        FuzzRoute::Cancel => &["job_id"],
        FuzzRoute::Tokenize => &["content"],
        FuzzRoute::Detokenize => &["tokens"],
        FuzzRoute::ChatCompletions => &["messages"],
        FuzzRoute::Completions => &["prompt"],
    };
    let mut keys: Vec<&str> = required.to_vec();
    for _ in 0..c.below(4) {
        let k = c.pick(route.fields());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let entries: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{k}\": {}", typed(c, k, 1)))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// The route and body that `data` stands for: the first byte picks the route, the second
/// what the rest is: the body as is, or the choices of the JSON generator (a plausible body,
/// or one mixing known and made-up keys, right and wrong types, repeats and deep nesting).
pub fn arbitrary_request(data: &[u8]) -> (FuzzRoute, Vec<u8>) {
    let route = FuzzRoute::ALL[data.first().map_or(0, |&b| b as usize) % FuzzRoute::ALL.len()];
    let rest = data.get(2..).unwrap_or_default();
    let mut c = Choices { data: rest, at: 0 };
    let body = match data.get(1).map_or(0, |b| b % 4) {
        0 => return (route, rest.to_vec()),
        1 => plausible(&mut c, route),
        _ => object(&mut c, 0, route.fields()),
    };
    (route, body.into_bytes())
}

/// A ChatML template that also refuses `developer` messages in its own words and quotes a
/// `tool` message back in its exception, to exercise the echo guard.
const TEMPLATE: &str = "{%- for m in messages -%}\
{%- if m['role'] == 'developer' -%}{{ raise_exception('developer messages are not supported') }}{%- endif -%}\
{%- if m['role'] == 'tool' and m['content'] | length > 3 -%}{{ raise_exception('bad tool message: ' ~ m['content']) }}{%- endif -%}\
<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n\
{%- endfor -%}\
{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}";

fn rules() -> Rules<'static> {
    static TEMPLATE_: OnceLock<ChatTemplate> = OnceLock::new();
    Rules {
        max_tokens_out: 64,
        vocab_size: 1000,
        chat_template: Some(
            TEMPLATE_.get_or_init(|| ChatTemplate::new(TEMPLATE).expect("fuzz template")),
        ),
        bos_text: "<s>",
        adds_bos: true,
        eos_text: "</s>",
    }
}

/// Parses and validates `body` as `route` does and checks the invariants (see the module
/// docs); panics when one breaks.
pub fn check_request(route: FuzzRoute, body: &[u8]) {
    let rules = rules();
    let max = rules.max_tokens_out;
    let result = match route {
        FuzzRoute::Execute => execute::parse_execute(&rules, body).map(|r| {
            assert!(!r.job_id.is_empty() && r.job_id.chars().count() <= 256);
            let m = r.request.max_tokens.expect("max_tokens is always set");
            assert!((1..=max).contains(&m), "max_tokens {m}");
            assert!(
                worker_common::limits::stops_ok(&r.request.stop),
                "{:?}",
                r.request.stop
            );
        }),
        FuzzRoute::Cancel => execute::parse_cancel(body).map(|id| {
            assert!(!id.is_empty() && id.chars().count() <= 256);
        }),
        FuzzRoute::Tokenize => routes::parse_tokenize(body).map(drop),
        FuzzRoute::Detokenize => routes::parse_detokenize(&rules, body).map(|ids| {
            assert!(ids.iter().all(|&id| (id as usize) < rules.vocab_size));
        }),
        FuzzRoute::ChatCompletions => {
            openai::request::parse_chat(&rules, body).map(|p| check_prepared(&p, max))
        }
        FuzzRoute::Completions => {
            openai::request::parse_completion(&rules, body).map(|p| check_prepared(&p, max))
        }
    };
    if let Err(e) = result {
        check_error(route, &e);
    }
}

fn check_prepared(p: &openai::request::Prepared, max: usize) {
    let m = p.request.max_tokens.expect("max_tokens is always set");
    assert!((1..=max).contains(&m), "max_tokens {m}");
    assert!(
        worker_common::limits::stops_ok(&p.request.stop),
        "{:?}",
        p.request.stop
    );
    assert!(
        p.request.sampling.validate().is_ok(),
        "{:?}",
        p.request.sampling
    );
}

fn check_error(route: FuzzRoute, e: &ApiError) {
    assert!(
        e.status().is_client_error(),
        "{route:?}: {} {}",
        e.status(),
        e.message
    );
    assert!(!e.message.is_empty(), "{route:?}: empty message");
    assert!(
        e.errors.iter().all(|f| !f.field.is_empty()),
        "{route:?}: {:?}",
        e.errors
    );
    for body in [e.body(), e.clone().openai().body()] {
        let text = body.to_string();
        assert!(
            !text.contains(CANARY),
            "{route:?} echoes request text: {text}"
        );
        assert!(
            !text.contains("d3c0y"),
            "{route:?} echoes request text: {text}"
        );
    }
}

/// [`arbitrary_request`] then [`check_request`]: the body of the `http_request` fuzz target.
pub fn fuzz_request(data: &[u8]) {
    let (route, body) = arbitrary_request(data);
    check_request(route, &body);
}
