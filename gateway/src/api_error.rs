//! The JSON error response shared by every HTTP route and by refusals
//! before the WebSocket upgrade.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_shared::protocol::{http_error_body, ErrorCode, ProtocolError};

/// An HTTP error: status plus a `{"error":{"code","message"}}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: ProtocolError,
}

impl ApiError {
    /// Builds an error response.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            error: ProtocolError::new(code, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [("content-type", "application/json")],
            http_error_body(&self.error),
        )
            .into_response()
    }
}
