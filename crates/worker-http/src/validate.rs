//! Field-by-field validation of a JSON object, collecting every error, and the limits every
//! route shares. Messages name the field and its constraint and never repeat the value
//! given (a value may be prompt text), nor a key the request made up.

use serde_json::{Map, Value};
use worker_common::limits::{Bound, MAX_STOPS, MAX_STOP_BYTES, STOP_RULE};
use worker_tokenizer::ChatTemplate;

use crate::error::{ApiError, FieldError};

/// Whether `text` (an error message about to go out) quotes a run of at least 8 bytes of one
/// of `inputs` (request text).
pub(crate) fn echoes<'a>(text: &str, inputs: impl Iterator<Item = &'a str> + Clone) -> bool {
    const RUN: usize = 8;
    text.char_indices().any(|(i, _)| {
        let Some(window) = text.get(i..i + RUN) else {
            return false;
        };
        inputs.clone().any(|input| input.contains(window))
    })
}

/// What validating a request needs to know of the server and its model; the parsers take
/// this rather than the whole server state, so tests and fuzz targets can run them alone.
#[derive(Clone, Copy)]
pub(crate) struct Rules<'a> {
    /// Most tokens one request may generate (and the default).
    pub max_tokens_out: usize,
    /// Token ids below this are valid (`/detokenize`).
    pub vocab_size: usize,
    /// The model's chat template, if it has one.
    pub chat_template: Option<&'a ChatTemplate>,
    /// Text of the BOS token, for templates that print it.
    pub bos_text: &'a str,
    /// Whether tokenizing a prompt adds BOS (then a rendered chat's leading BOS text is
    /// dropped, so the prompt has one BOS, as llama-server and vLLM give it).
    pub adds_bos: bool,
    /// Text of the EOS token, for templates that print it.
    pub eos_text: &'a str,
}

/// A JSON object being read into a typed request.
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub errors: Vec<FieldError>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            errors: Vec::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn fail(&mut self, name: &str, constraint: &str, message: String) {
        self.errors.push(FieldError::new(name, constraint, message));
    }

    fn missing(&mut self, name: &str, constraint: &str) {
        self.fail(
            name,
            "required",
            format!("{name} is required ({constraint})"),
        );
    }

    fn wrong_type(&mut self, name: &str, constraint: &str, v: &Value) {
        self.fail(
            name,
            constraint,
            format!("{name} must be {constraint}, got {}", type_name(v)),
        );
    }

    /// Refuses fields not in `known`, with one error naming how many there are and the
    /// fields accepted; the unknown keys themselves are request text and are not repeated.
    pub fn deny_unknown(&mut self, known: &[&str]) {
        let unknown = self
            .obj
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .count();
        if unknown > 0 {
            let what = if unknown == 1 {
                "an unknown field".to_string()
            } else {
                format!("{unknown} unknown fields")
            };
            self.fail(
                "body",
                "known fields",
                format!(
                    "the body has {what}; the accepted fields are {}",
                    known.join(", ")
                ),
            );
        }
    }

    /// A string of `1..=max_chars` characters.
    pub fn string(&mut self, name: &str, max_chars: usize) -> Option<String> {
        let v = self.get(name)?;
        match v.as_str() {
            Some("") => {
                self.fail(name, "non-empty", format!("{name} must not be empty"));
                None
            }
            Some(s) if s.chars().count() > max_chars => {
                self.fail(
                    name,
                    &format!("at most {max_chars} characters"),
                    format!("{name} is longer than {max_chars} characters"),
                );
                None
            }
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(name, "a string", v);
                None
            }
        }
    }

    pub fn required_string(&mut self, name: &str, max_chars: usize) -> Option<String> {
        if self.get(name).is_none() {
            self.missing(name, "a non-empty string");
            return None;
        }
        self.string(name, max_chars)
    }

    /// An integer in `min..=max`.
    pub fn uint(&mut self, name: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(name)?;
        let constraint = format!("an integer in [{min}, {max}]");
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.fail(name, &constraint, format!("{name} must be {constraint}"));
                None
            }
            None if v.is_number() => {
                self.fail(name, &constraint, format!("{name} must be {constraint}"));
                None
            }
            None => {
                self.wrong_type(name, &constraint, v);
                None
            }
        }
    }

    /// A number inside `bound`, the rule every route shares.
    pub fn bounded(&mut self, bound: &Bound) -> Option<f32> {
        let (name, rule) = (bound.field, bound.rule);
        let v = self.get(name)?;
        match v.as_f64() {
            Some(x) if bound.accepts(x) => Some(x as f32),
            Some(_) => {
                self.fail(name, rule, format!("{name} must be {rule}"));
                None
            }
            None => {
                self.wrong_type(name, rule, v);
                None
            }
        }
    }

    /// A string or an array of at most [`MAX_STOPS`] non-empty strings of at most
    /// [`MAX_STOP_BYTES`] bytes.
    pub fn stop(&mut self, name: &str) -> Vec<String> {
        let (max, constraint) = (MAX_STOPS, STOP_RULE);
        let Some(v) = self.get(name) else {
            return Vec::new();
        };
        let items: Vec<&Value> = match v {
            Value::String(_) => vec![v],
            Value::Array(a) => a.iter().collect(),
            _ => {
                self.wrong_type(name, constraint, v);
                return Vec::new();
            }
        };
        if items.len() > max {
            self.fail(
                name,
                constraint,
                format!(
                    "{name} has {} entries, at most {max} are allowed",
                    items.len()
                ),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(s) if !s.is_empty() && s.len() <= MAX_STOP_BYTES => out.push(s.to_string()),
                _ => {
                    self.fail(
                        name,
                        constraint,
                        format!(
                            "every {name} entry must be a non-empty string of at most \
                             {MAX_STOP_BYTES} bytes"
                        ),
                    );
                    return Vec::new();
                }
            }
        }
        out
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker_common::limits;

    fn check(body: &str, read: impl FnOnce(&mut Fields), fields: &[&str]) {
        let Value::Object(obj) = serde_json::from_str(body).unwrap() else {
            panic!("not an object")
        };
        let mut f = Fields::new(&obj);
        read(&mut f);
        let got: Vec<&str> = f.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(got, fields, "{body}");
    }

    #[test]
    fn errors_name_fields_and_hide_values() {
        check(
            r#"{"a": "x"}"#,
            |f| {
                let _ = f.required_string("p", 10);
            },
            &["p"],
        );
        check(
            r#"{"p": 5}"#,
            |f| {
                let _ = f.string("p", 10);
            },
            &["p"],
        );
        check(
            r#"{"n": -1}"#,
            |f| {
                let _ = f.uint("n", 1, 5);
            },
            &["n"],
        );
        check(
            r#"{"n": 2.5}"#,
            |f| {
                let _ = f.uint("n", 1, 5);
            },
            &["n"],
        );
        check(
            r#"{"n": 3}"#,
            |f| {
                let _ = f.uint("n", 1, 5);
            },
            &[],
        );
        check(
            r#"{"temperature": "hot"}"#,
            |f| {
                let _ = f.bounded(&limits::TEMPERATURE);
            },
            &["temperature"],
        );
        check(
            r#"{"temperature": 2.5}"#,
            |f| {
                let _ = f.bounded(&limits::TEMPERATURE);
            },
            &["temperature"],
        );
        check(
            r#"{"s": ["a","b","c","d","e"]}"#,
            |f| {
                let _ = f.stop("s");
            },
            &["s"],
        );
        check(r#"{"s": "a"}"#, |f| assert_eq!(f.stop("s"), ["a"]), &[]);
        let long = format!(r#"{{"s": ["{}"]}}"#, "x".repeat(MAX_STOP_BYTES + 1));
        check(&long, |f| assert!(f.stop("s").is_empty()), &["s"]);
        check(r#"{"x": 1, "y": 2}"#, |f| f.deny_unknown(&["x"]), &["body"]);
        let Value::Object(obj) = serde_json::from_str(r#"{"SECRET": 1, "x": 2}"#).unwrap() else {
            panic!()
        };
        let mut f = Fields::new(&obj);
        f.deny_unknown(&["y"]);
        assert_eq!(f.errors.len(), 1);
        assert!(!f.errors[0].message.contains("SECRET"), "{:?}", f.errors);
        assert!(
            f.errors[0].message.contains("2 unknown fields"),
            "{:?}",
            f.errors
        );
        let Value::Object(obj) = serde_json::from_str(r#"{"p": ["secret prompt"]}"#).unwrap()
        else {
            panic!()
        };
        let mut f = Fields::new(&obj);
        f.string("p", 10);
        assert!(!f.errors[0].message.contains("secret"));
    }

    #[test]
    fn echoes_finds_quoted_runs() {
        let inputs = ["my secret prompt", "x"];
        assert!(echoes("refused: my secret prompt", inputs.iter().copied()));
        assert!(echoes("refused: secret p…", inputs.iter().copied()));
        assert!(!echoes("roles must alternate", inputs.iter().copied()));
        assert!(!echoes("short", inputs.iter().copied()));
        assert!(echoes("ünïcödé text", ["ïcödé"].iter().copied()));
        assert!(!echoes("ünïcödé text", ["ïcö"].iter().copied()));
    }
}
