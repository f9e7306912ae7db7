//! Request middleware: the correlation id (taken from `X-Correlation-Id` or made up, carried
//! into logs, events and the response) and optional bearer auth.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use worker_common::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// The header a correlation id travels in.
pub(crate) const CORRELATION_HEADER: &str = "x-correlation-id";

/// The request's correlation id, as a request extension.
#[derive(Clone, Debug)]
pub(crate) struct CorrelationId(pub String);

/// Whether `id` looks like an identifier (at most 128 of `[A-Za-z0-9-_.:]`): only such ids,
/// never free text, go into logs.
pub(crate) fn usable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Attaches the correlation id and a tracing span to every request.
pub(crate) async fn correlation(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map_or_else(
            || format!("{:016x}", crate::seed::fresh_seed()),
            str::to_string,
        );
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    response
}

/// A client-given id as logs show it: itself if it looks like an identifier, else only its
/// length (it may be any text, even a prompt).
pub(crate) fn loggable(id: &str) -> std::borrow::Cow<'_, str> {
    if usable(id) {
        id.into()
    } else {
        format!("<{} bytes, not an identifier>", id.len()).into()
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive and
/// may be followed by several spaces (RFC 7235 section 2.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Requires `Authorization: Bearer <api key>` on every route but `/health`, when a key is set.
pub(crate) async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        return next.run(req).await;
    }
    let mut err = ApiError::new(
        ErrorCode::Unauthorized,
        "missing or wrong API key (Authorization: Bearer <key>)",
    );
    if req.uri().path().starts_with("/v1/") {
        err = err.openai();
    }
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_is_eq() {
        use super::constant_time_eq as eq;
        assert!(eq(b"secret", b"secret"));
        assert!(!eq(b"secret", b"secreT"));
        assert!(!eq(b"secret", b"secret2"));
        assert!(!eq(b"", b"x"));
        assert!(eq(b"", b""));
        assert!(super::usable("abc-123"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        use super::bearer_token as token;
        for v in ["Bearer k", "bearer k", "BEARER k", "bEaReR   k"] {
            assert_eq!(token(v), Some("k"), "{v}");
        }
        assert_eq!(token("Basic k"), None);
        assert_eq!(token("Bearerk"), None);
        assert_eq!(token("Bearer"), None);
        assert!(!super::usable("a b"));
        assert_eq!(super::loggable("job-7"), "job-7");
        assert_eq!(
            super::loggable("my secret prompt"),
            "<16 bytes, not an identifier>"
        );
    }
}
