//! The stable error codes a worker reports to its clients, each with its HTTP status and
//! whether retrying the same request may succeed.

/// A stable, machine-readable error code. The string form ([`ErrorCode::as_str`]) is part of
/// the llama-orch contract: it never changes once published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range.
    InvalidRequest,
    /// The request lacks valid credentials.
    Unauthorized,
    /// The request body is larger than the worker accepts.
    PayloadTooLarge,
    /// The request body did not arrive in time (at the minimum rate).
    RequestTimeout,
    /// The job was cancelled (by `/cancel` or by its client going away).
    Cancelled,
    /// Every slot is busy and the wait queue is full.
    QueueFull,
    /// The prompt (or prompt plus output) does not fit the context.
    ContextFull,
    /// The job ran past the inference timeout.
    Timeout,
    /// The device ran out of memory.
    VramOom,
    /// The worker is shutting down and takes no more work.
    ShuttingDown,
    /// The worker is still loading its model and takes no work yet.
    Loading,
    /// Anything else: a bug or a failed forward pass.
    Internal,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::Cancelled,
        ErrorCode::QueueFull,
        ErrorCode::ContextFull,
        ErrorCode::Timeout,
        ErrorCode::VramOom,
        ErrorCode::ShuttingDown,
        ErrorCode::Loading,
        ErrorCode::Internal,
    ];

    /// The stable string: `INVALID_REQUEST`, `CANCELLED`, `QUEUE_FULL`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::ContextFull => "CONTEXT_FULL",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::VramOom => "VRAM_OOM",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Loading => "LOADING",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status a response carrying this code has (when the error is known before a
    /// stream starts; inside a stream the code travels in an `error` event).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::ContextFull => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Cancelled => 499,
            ErrorCode::QueueFull
            | ErrorCode::ShuttingDown
            | ErrorCode::Loading
            | ErrorCode::VramOom => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed if sent again (later, or to another worker).
    pub fn retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::QueueFull
                | ErrorCode::Timeout
                | ErrorCode::VramOom
                | ErrorCode::ShuttingDown
                | ErrorCode::Loading
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_upper_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{s}");
            assert!((400..600).contains(&code.http_status()), "{s}");
            assert_eq!(code.to_string(), s);
        }
    }

    #[test]
    fn client_errors_are_not_retriable() {
        for code in ErrorCode::ALL {
            if code.http_status() < 500 {
                assert!(!code.retriable(), "{code}");
            }
        }
    }
}
