//! One error type for every endpoint, mapped to an HTTP status and an OpenAI-style body
//! `{"error": {"message", "type", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// 400: the body is not JSON.
    #[error("{0}")]
    Malformed(String),
    /// 422: valid JSON, invalid request (limits, ranges, unknown fields' values).
    #[error("{0}")]
    Invalid(String),
    /// 404: no such prompt / model.
    #[error("{0}")]
    NotFound(String),
    /// 401: admin endpoint without the right key.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: admin endpoints are disabled (no key configured).
    #[error("{0}")]
    Forbidden(String),
    /// 413: body larger than --max-body-bytes.
    #[error("{0}")]
    TooLarge(String),
    /// 429: --max-concurrent requests already in flight.
    #[error("{0}")]
    Overloaded(String),
    /// 503: shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 504: --timeout-s passed.
    #[error("{0}")]
    Timeout(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::Malformed(_) => StatusCode::BAD_REQUEST,
            ServeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ServeError::Malformed(_) | ServeError::Invalid(_) | ServeError::TooLarge(_) => {
                "invalid_request_error"
            }
            ServeError::NotFound(_) => "not_found_error",
            ServeError::Unauthorized(_) | ServeError::Forbidden(_) => "authentication_error",
            ServeError::Overloaded(_) => "rate_limit_error",
            ServeError::Unavailable(_) | ServeError::Timeout(_) | ServeError::Internal(_) => {
                "server_error"
            }
        }
    }

    /// A library error: bad input and mismatches are the client's (422), I/O is ours.
    pub fn from_core(e: softprompt_core::Error) -> Self {
        use softprompt_core::Error as E;
        match e {
            E::Io { .. } | E::Fetch(_) => ServeError::Internal(e.to_string()),
            _ => ServeError::Invalid(e.to_string()),
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "code": self.status().as_u16(),
            }
        });
        (self.status(), Json(body)).into_response()
    }
}
