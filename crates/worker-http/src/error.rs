//! The crate's one error type, and the error response every route returns.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use worker_common::ErrorCode;
use worker_engine::EngineError;

/// What can go wrong setting up or running the server (request errors are responses, not
/// [`HttpError`]s). `Io`, `Model` and `Callback` carry their cause in the message; `Listen`
/// and `Load` say what failed and chain the cause as their `source()`; `Backend` is the
/// backend's own error. None says its cause twice.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The flags ask for a server that cannot run (`--slots 0`).
    #[error("{0}")]
    Flags(String),
    /// The port could not be taken.
    #[error("cannot listen on {addr}")]
    Listen {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: Box<HttpError>,
    },
    /// The binary could not open its backend (no device, a model too large for it).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The model file could not be opened, checked or loaded.
    #[error("cannot load model {model}")]
    Load {
        /// The file, as given.
        model: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Binding or serving failed.
    #[error("server I/O: {0}")]
    Io(std::io::Error),
    /// The model's metadata lacks what the server reports about it.
    #[error("model metadata: {0}")]
    Model(String),
    /// KV events cannot be published (a socket that does not bind, no prefix cache).
    #[error("KV events: {0}")]
    KvEvents(String),
    /// The ready callback could not be delivered.
    #[error("ready callback to {url} failed: {reason}")]
    Callback {
        /// The callback URL.
        url: String,
        /// Why it failed.
        reason: String,
    },
}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// One field that failed validation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldError {
    pub field: String,
    pub constraint: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, constraint: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            constraint: constraint.to_string(),
            message: message.into(),
        }
    }
}

/// The response form an [`ApiError`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `{code, message, retriable, errors: [{field, constraint, message}]}`.
    Orch,
    /// OpenAI's `{error: {message, type, param, code}}`.
    OpenAi,
}

/// A request that failed before (or instead of) streaming.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub errors: Vec<FieldError>,
    pub flavor: Flavor,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            errors: Vec::new(),
            flavor: Flavor::Orch,
        }
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        // Messages that open with their field name ("top_p must be …") stand alone.
        let message = errors
            .iter()
            .map(|e| {
                if e.message.starts_with(&e.field) {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            code: ErrorCode::InvalidRequest,
            message,
            errors,
            flavor: Flavor::Orch,
        }
    }

    pub fn field(field: &str, constraint: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, constraint, message)])
    }

    pub fn openai(mut self) -> Self {
        self.flavor = Flavor::OpenAi;
        self
    }

    /// Maps an engine refusal or failure; internal details are logged, not returned.
    pub fn from_engine(e: &EngineError) -> Self {
        match e {
            EngineError::EmptyPrompt => Self::field("prompt", "non-empty", "the prompt is empty"),
            EngineError::PromptTooLong { .. } => {
                let mut err = Self::field("prompt", "fits the context", e.to_string());
                err.code = ErrorCode::ContextFull;
                err
            }
            EngineError::TokenOutOfRange { .. } => {
                Self::field("prompt", "token ids < vocab_size", e.to_string())
            }
            EngineError::Tokenize(_) => {
                Self::field("prompt", "tokenizable", "the prompt could not be tokenized")
            }
            EngineError::Sampling(s) => {
                let field = s.field().unwrap_or("sampling");
                Self::field(field, "in range", s.to_string())
            }
            EngineError::Constraint(msg) => {
                // The route renames `constraint` to the field the constraint came from.
                Self::field(
                    "constraint",
                    "an enforceable schema or grammar",
                    msg.clone(),
                )
            }
            EngineError::ShutDown => {
                Self::new(ErrorCode::ShuttingDown, "the worker is shutting down")
            }
            EngineError::OutOfMemory(_) => {
                tracing::error!(
                    error = e as &(dyn std::error::Error + 'static),
                    "VRAM_OOM: request failed"
                );
                Self::new(
                    ErrorCode::VramOom,
                    "the device ran out of memory for this request; the worker goes on serving",
                )
            }
            EngineError::KvCacheFull => {
                tracing::warn!("KV cache pool full: a generating request ended");
                Self::new(
                    ErrorCode::VramOom,
                    "the KV cache pool had no room for this request's next token; retry later \
                     or raise --kv-cache-bytes",
                )
            }
            other => {
                tracing::error!(
                    error = other as &(dyn std::error::Error + 'static),
                    "engine failure"
                );
                Self::new(
                    ErrorCode::Internal,
                    "internal error in the inference engine",
                )
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body (without the HTTP status).
    pub fn body(&self) -> serde_json::Value {
        match self.flavor {
            Flavor::Orch => {
                let errors: Vec<_> = self
                    .errors
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "field": e.field, "constraint": e.constraint, "message": e.message,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "code": self.code.as_str(),
                    "message": self.message,
                    "retriable": self.code.retriable(),
                    "errors": errors,
                })
            }
            Flavor::OpenAi => {
                let kind = match self.code {
                    ErrorCode::Unauthorized => "authentication_error",
                    c if c.http_status() < 500 => "invalid_request_error",
                    _ => "server_error",
                };
                serde_json::json!({"error": {
                    "message": self.message,
                    "type": kind,
                    "param": self.errors.first().map(|e| e.field.clone()),
                    "code": self.code.as_str().to_ascii_lowercase(),
                }})
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if self.code.retriable() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use worker_compute::ComputeError;

    use super::*;

    #[test]
    fn an_engine_out_of_memory_is_vram_oom_retriable_503() {
        let alloc = ComputeError::Alloc {
            what: "kv partials",
            bytes: 1 << 40,
        };
        let e = ApiError::from_engine(&EngineError::OutOfMemory(Arc::new(alloc.into())));
        assert_eq!(e.code, ErrorCode::VramOom);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.code.retriable());
        assert_eq!(e.body()["code"], "VRAM_OOM", "{}", e.body());
        // Other forward failures stay internal errors.
        let shape = ComputeError::Shape {
            op: "matmul",
            reason: "shape".into(),
        };
        let e = ApiError::from_engine(&EngineError::Forward(Arc::new(shape.into())));
        assert_eq!(e.code, ErrorCode::Internal);
    }
}
