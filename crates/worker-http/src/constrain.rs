//! Structured output on every route: OpenAI's `response_format` (`text`, `json_object`,
//! `json_schema`) and our `grammar` extension (`{"lark": "…"}` or `{"regex": "…"}`), turned
//! into the engine's [`Constraint`].
//!
//! Only the shape is checked here; the engine compiles the constraint at submit and refuses
//! one that does not compile (an unenforceable keyword, a `$ref` to nowhere, a grammar that
//! does not parse), which [`attribute`] then attributes to the field it came from.

use serde_json::Value;
use worker_engine::{Constraint, MAX_CONSTRAINT_BYTES};

use crate::error::{ApiError, FieldError};

/// The field a constraint came from, for errors.
pub(crate) const RESPONSE_FORMAT: &str = "response_format";
/// The `grammar` extension field.
pub(crate) const GRAMMAR: &str = "grammar";

/// A constraint and the request field it came from.
#[derive(Debug)]
pub(crate) struct Requested {
    pub constraint: Constraint,
    pub field: &'static str,
}

/// Reads `response_format` and `grammar` (either may be absent or null); at most one of them
/// may constrain the output.
pub(crate) fn from_fields(
    response_format: Option<&Value>,
    grammar: Option<&Value>,
) -> Result<Option<Requested>, FieldError> {
    let format = match response_format.filter(|v| !v.is_null()) {
        Some(v) => response_format_of(v)?,
        None => None,
    };
    let grammar = match grammar.filter(|v| !v.is_null()) {
        Some(v) => Some(grammar_of(v)?),
        None => None,
    };
    match (format, grammar) {
        (Some(_), Some(_)) => Err(FieldError::new(
            GRAMMAR,
            "one constraint",
            "give response_format json_object/json_schema or grammar, not both",
        )),
        (Some(constraint), None) => Ok(Some(Requested {
            constraint,
            field: RESPONSE_FORMAT,
        })),
        (None, Some(constraint)) => Ok(Some(Requested {
            constraint,
            field: GRAMMAR,
        })),
        (None, None) => Ok(None),
    }
}

fn bad(field: &str, constraint: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, constraint, message)
}

fn response_format_of(v: &Value) -> Result<Option<Constraint>, FieldError> {
    const SHAPE: &str = "{\"type\": \"text\" | \"json_object\" | \"json_schema\"}";
    let Some(obj) = v.as_object() else {
        return Err(bad(
            RESPONSE_FORMAT,
            SHAPE,
            "response_format must be an object",
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let field = "response_format.json_schema";
            let Some(js) = obj.get("json_schema").and_then(Value::as_object) else {
                return Err(bad(
                    field,
                    "{name, schema, strict}",
                    "response_format json_schema needs a json_schema object",
                ));
            };
            if js.get("name").is_some_and(|n| !n.is_string()) {
                return Err(bad(
                    "response_format.json_schema.name",
                    "a string",
                    "json_schema.name must be a string",
                ));
            }
            if js
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return Err(bad(
                    "response_format.json_schema.strict",
                    "a boolean",
                    "json_schema.strict must be a boolean",
                ));
            }
            // Enforced whether `strict` is true or not: an unenforced schema is never
            // reported as followed.
            let schema = match js.get("schema") {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s,
                Some(_) => {
                    return Err(bad(
                        "response_format.json_schema.schema",
                        "a JSON schema object",
                        "json_schema.schema must be an object",
                    ))
                }
                None => {
                    return Err(bad(
                        "response_format.json_schema.schema",
                        "required",
                        "json_schema.schema is required",
                    ))
                }
            };
            let text = schema.to_string();
            check_size("response_format.json_schema.schema", &text)?;
            Ok(Some(Constraint::JsonSchema(text)))
        }
        _ => Err(bad(
            RESPONSE_FORMAT,
            SHAPE,
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

fn grammar_of(v: &Value) -> Result<Constraint, FieldError> {
    const SHAPE: &str = "{\"lark\": string} or {\"regex\": string}";
    let obj = v.as_object().filter(|o| o.len() == 1);
    let entry = obj.and_then(|o| o.iter().next());
    let (kind, text) = match entry {
        Some((k, Value::String(s))) => (k.as_str(), s),
        _ => {
            return Err(bad(
                GRAMMAR,
                SHAPE,
                "grammar must be an object with one string field, lark or regex",
            ))
        }
    };
    let field = match kind {
        "lark" => "grammar.lark",
        "regex" => "grammar.regex",
        _ => return Err(bad(GRAMMAR, SHAPE, "grammar takes lark or regex")),
    };
    if text.trim().is_empty() {
        return Err(bad(field, "non-empty", "the grammar is empty"));
    }
    check_size(field, text)?;
    Ok(match kind {
        "lark" => Constraint::Lark(text.clone()),
        _ => Constraint::Regex(text.clone()),
    })
}

fn check_size(field: &str, text: &str) -> Result<(), FieldError> {
    if text.len() > MAX_CONSTRAINT_BYTES {
        return Err(bad(
            field,
            "size limit",
            format!("at most {MAX_CONSTRAINT_BYTES} bytes are accepted"),
        ));
    }
    Ok(())
}

/// Points a constraint the engine refused (its field `constraint`) at the request field it
/// came from; other errors pass unchanged.
pub(crate) fn attribute(e: ApiError, field: &str) -> ApiError {
    if !e.errors.iter().any(|f| f.field == "constraint") {
        return e;
    }
    let errors = e
        .errors
        .into_iter()
        .map(|mut f| {
            if f.field == "constraint" {
                f.field = field.to_string();
            }
            f
        })
        .collect();
    let mut renamed = ApiError::invalid(errors);
    renamed.flavor = e.flavor;
    renamed.code = e.code;
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(format: Value, grammar: Value) -> Result<Option<Constraint>, String> {
        from_fields(Some(&format), Some(&grammar))
            .map(|r| r.map(|r| r.constraint))
            .map_err(|e| e.field)
    }

    #[test]
    fn shapes() {
        let none = Value::Null;
        assert_eq!(check(json!({"type": "text"}), none.clone()), Ok(None));
        assert_eq!(
            check(json!({"type": "json_object"}), none.clone()),
            Ok(Some(Constraint::JsonObject))
        );
        assert_eq!(
            check(
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}, "strict": true}}),
                none.clone()
            ),
            Ok(Some(Constraint::JsonSchema(
                "{\"type\":\"integer\"}".into()
            )))
        );
        assert_eq!(
            check(none.clone(), json!({"regex": "a+"})),
            Ok(Some(Constraint::Regex("a+".into())))
        );
        assert_eq!(
            check(none.clone(), json!({"lark": "start: \"a\""})),
            Ok(Some(Constraint::Lark("start: \"a\"".into())))
        );
    }

    #[test]
    fn bad_shapes_name_the_field() {
        let none = Value::Null;
        let cases = [
            (json!({"type": "yaml"}), none.clone(), "response_format"),
            (json!("json"), none.clone(), "response_format"),
            (
                json!({"type": "json_schema"}),
                none.clone(),
                "response_format.json_schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "x"}}),
                none.clone(),
                "response_format.json_schema.schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": 3}}),
                none.clone(),
                "response_format.json_schema.schema",
            ),
            (none.clone(), json!({"ebnf": "x"}), "grammar"),
            (none.clone(), json!({"lark": "a", "regex": "b"}), "grammar"),
            (none.clone(), json!({"regex": ""}), "grammar.regex"),
            (
                json!({"type": "json_object"}),
                json!({"regex": "a"}),
                "grammar",
            ),
        ];
        for (format, grammar, field) in cases {
            assert_eq!(check(format, grammar), Err(field.to_string()));
        }
        let huge = "a".repeat(MAX_CONSTRAINT_BYTES + 1);
        assert_eq!(
            check(none, json!({"regex": huge})),
            Err("grammar.regex".to_string())
        );
    }
}
