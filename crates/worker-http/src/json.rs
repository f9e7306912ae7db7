//! Reading request bodies: size limit, JSON syntax, duplicate keys, and the rejections they
//! turn into. Every route reads its body through [`object`], so they all share one rule: a
//! body is one JSON object and no object in it names a key twice.

use std::fmt;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use worker_common::ErrorCode;

use crate::error::ApiError;
use crate::limits::{caused_by, BodyCutByShutdown, BodyTimedOut};

/// The body, or `PAYLOAD_TOO_LARGE` / `REQUEST_TIMEOUT` / `SHUTTING_DOWN` /
/// `INVALID_REQUEST`.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            let mut e = ApiError::field(
                "body",
                "within the body size limit",
                "the request body is larger than the worker accepts",
            );
            e.code = ErrorCode::PayloadTooLarge;
            e
        } else if caused_by::<BodyTimedOut>(&rejection) {
            let mut e = ApiError::field(
                "body",
                "sent at the minimum rate",
                "the request body did not arrive within the body read timeout",
            );
            e.code = ErrorCode::RequestTimeout;
            e
        } else if caused_by::<BodyCutByShutdown>(&rejection) {
            ApiError::new(ErrorCode::ShuttingDown, "the worker is shutting down")
        } else {
            ApiError::field("body", "readable", "the request body could not be read")
        }
    })
}

/// Parses `bytes` as one JSON object. A syntax error names the line and column, never the
/// content; an object (at any depth) that repeats a key is refused, without naming the key.
pub(crate) fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err(ApiError::field(
            "body",
            "a JSON object",
            "the request body must be a JSON object",
        )),
        Err(e) if e.to_string().starts_with(DUPLICATE_KEY) => Err(ApiError::field(
            "body",
            "unique keys",
            format!(
                "the request body repeats a key in one object (line {} column {})",
                e.line(),
                e.column()
            ),
        )),
        Err(e) => Err(ApiError::field(
            "body",
            "valid JSON",
            format!(
                "the request body is not valid JSON ({} at line {} column {})",
                syntax_kind(&e),
                e.line(),
                e.column()
            ),
        )),
    }
}

fn syntax_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "bad data",
        serde_json::error::Category::Io => "read error",
    }
}

/// The message of the error [`Strict`] raises; it names no key.
const DUPLICATE_KEY: &str = "duplicate key";

/// A JSON value read like `serde_json::Value`, except that an object repeating a key is an
/// error instead of keeping the last value. serde_json has no such option; this visitor is
/// what its own `Value` visitor does plus the one check.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            let Strict(v) = access.next_value()?;
            map.insert(key, v);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> ApiError {
        object(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_without_naming_them() {
        for body in [
            r#"{"SECRET": 1, "SECRET": 2}"#,
            r#"{"a": {"SECRET": 1, "SECRET": 1}}"#,
            r#"{"a": [{"b": 1}, {"SECRET": 1, "SECRET": 2}]}"#,
        ] {
            let e = refusal(body);
            assert_eq!(e.errors[0].constraint, "unique keys", "{body}");
            assert!(!e.message.contains("SECRET"), "{}", e.message);
        }
        let map = object(br#"{"a": {"b": [1, 2.5, null, true, "x"]}, "c": -3}"#).unwrap();
        assert_eq!(
            Value::Object(map),
            serde_json::json!({"a": {"b": [1, 2.5, null, true, "x"]}, "c": -3})
        );
    }

    #[test]
    fn syntax_errors_give_the_position_not_the_text() {
        let e = refusal(r#"{"prompt": "SECRET"#);
        assert!(e.message.contains("line 1"), "{}", e.message);
        assert!(!e.message.contains("SECRET"), "{}", e.message);
        let e = refusal(r#"["SECRET"]"#);
        assert_eq!(e.errors[0].constraint, "a JSON object");
    }
}
