//! The JSON error response shared by every HTTP route and by refusals
//! before the WebSocket upgrade.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_shared::ids::RoomId;
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

    /// The error code of the body.
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }

    /// The 503 of a room-state read without Redis: "`what` is unavailable".
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("{what} is unavailable: Redis unreachable"),
        )
    }
}

/// A room id from a path, or the usual 400.
///
/// # Errors
/// `invalid_room` when it is not 1–64 characters of `[A-Za-z0-9_.:-]`.
pub fn parse_room(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRoom,
            "room must be 1-64 characters of [A-Za-z0-9_.:-]",
        )
    })
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
