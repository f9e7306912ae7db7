//! Reading request bodies: size limit, JSON syntax, and the rejections they turn into.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use worker_common::ErrorCode;

use crate::error::ApiError;

/// The body, or `PAYLOAD_TOO_LARGE` / `INVALID_REQUEST`.
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
        } else {
            ApiError::field("body", "readable", "the request body could not be read")
        }
    })
}

/// Parses `bytes` as one JSON object. The syntax error names the line and column, never the
/// content.
pub(crate) fn object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::field(
            "body",
            "a JSON object",
            "the request body must be a JSON object",
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
