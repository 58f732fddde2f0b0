//! The client protocol: JSON text frames `{"type":..,"data":{..}}`.
//!
//! - [`inbound`]: client frames parsed into [`ClientFrame`] and validated, so
//!   the gateway only sees well-formed requests or an [`ErrorCode`].
//! - [`room_events`]: the ordered room events (`edit`, `delete`, `react`)
//!   and a message's `reply_to` and `attachments`.
//! - [`outbound`]: server frames and the stored record, one serde model for
//!   WebSocket frames and HTTP bodies alike; stored records are embedded as
//!   [`serde_json::value::RawValue`], so a message is serialized once and
//!   never re-encoded per client.
//! - `room_inbound`: the parsers of the ephemeral room-feature frames
//!   (`presence`, `typing`, `read`).
//! - `checks`: the [`Rejected`] error and the field checks (`client_id`,
//!   `data.room`, texts) every parser shares, below all of them.
//!
//! This module holds what both directions share: the closed set of error
//! codes and the validation limits.

mod checks;
pub mod inbound;
pub mod outbound;
pub mod room_events;
mod room_inbound;

use serde::Serialize;

pub use checks::{check_text, Rejected};
pub use inbound::{parse_client_frame, ClientFrame, HistoryRequest, InboundMessage};
pub use outbound::{
    ack_frame, error_frame, history_frame, history_frames, http_error_body, live_frame, record_seq,
    HistoryData, HistoryMeta, MessageRecord, HISTORY_FRAME_BYTES,
};
pub use room_events::{Attachment, DeleteRequest, EditRequest, ReactOp, ReactRequest};

/// The closed set of error codes sent in `error` frames and HTTP error bodies.
///
/// The README documents each one; clients may switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not JSON, or not an object with a string `type`.
    BadJson,
    /// The JSON is valid but `data` is missing or has fields of the wrong type.
    BadFrame,
    /// `type` is not one the server knows.
    UnknownType,
    /// A room id is missing or not 1–64 chars of `[A-Za-z0-9_.:-]`.
    InvalidRoom,
    /// `data.room` differs from the room of the connection.
    RoomMismatch,
    /// The message text is empty.
    EmptyMessage,
    /// The message text is longer than `MAX_MESSAGE_LEN` characters.
    MessageTooLong,
    /// The username is empty, too long or has control characters.
    InvalidUsername,
    /// `client_id` is longer than 128 characters.
    InvalidClientId,
    /// A query or request parameter is malformed (e.g. `limit`, `since`).
    InvalidParameter,
    /// The frame is larger than `MAX_FRAME_BYTES`.
    FrameTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// The connection sends faster than its rate limit allows.
    RateLimited,
    /// The gateway is at `MAX_CONNECTIONS`.
    TooManyConnections,
    /// Redis is unreachable: the message was not stored and is not acked.
    Unavailable,
    /// Something unexpected failed inside the server; details are in its log.
    Internal,
    /// No such route, or the message an `edit`, `delete`, `react` or
    /// `reply_to` names is not in the room's history (unknown, trimmed or
    /// deleted).
    NotFound,
    /// A token is required and missing, invalid or expired (HTTP 401), or an
    /// API key is wrong.
    Unauthorized,
    /// The token does not allow this: a room outside its `rooms`, a name that
    /// differs from the token's, a refresh for another user (HTTP 403).
    Forbidden,
    /// The browser's Origin is not in `ALLOWED_ORIGINS` (HTTP 403).
    ForbiddenOrigin,
    /// The user is banned from the room (HTTP 403 before the upgrade).
    Banned,
    /// The gateway has no room for the request right now (HTTP 503 with
    /// `Retry-After`): e.g. `HTTP_READ_CONCURRENCY` reads are running.
    Overloaded,
    /// The message already has 20 distinct reactions; another emoji is refused.
    TooManyReactions,
    /// The application's pre-publish hook refused the message or edit; the
    /// error's message is the hook's reason. Nothing is stored (HTTP 422).
    Rejected,
}

impl ErrorCode {
    /// The wire label, also used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadFrame => "bad_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidRoom => "invalid_room",
            Self::RoomMismatch => "room_mismatch",
            Self::EmptyMessage => "empty_message",
            Self::MessageTooLong => "message_too_long",
            Self::InvalidUsername => "invalid_username",
            Self::InvalidClientId => "invalid_client_id",
            Self::InvalidParameter => "invalid_parameter",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::Banned => "banned",
            Self::Overloaded => "overloaded",
            Self::TooManyReactions => "too_many_reactions",
            Self::Rejected => "rejected",
        }
    }

    /// Every code, for documentation tests.
    pub const ALL: [ErrorCode; 24] = [
        Self::BadJson,
        Self::BadFrame,
        Self::UnknownType,
        Self::InvalidRoom,
        Self::RoomMismatch,
        Self::EmptyMessage,
        Self::MessageTooLong,
        Self::InvalidUsername,
        Self::InvalidClientId,
        Self::InvalidParameter,
        Self::FrameTooLarge,
        Self::BinaryNotSupported,
        Self::RateLimited,
        Self::TooManyConnections,
        Self::Unavailable,
        Self::Internal,
        Self::NotFound,
        Self::Unauthorized,
        Self::Forbidden,
        Self::ForbiddenOrigin,
        Self::Banned,
        Self::Overloaded,
        Self::TooManyReactions,
        Self::Rejected,
    ];
}

/// A protocol error: a code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A short explanation for humans; never holds server internals.
    pub message: String,
}

impl ProtocolError {
    /// Builds an error from a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Limits that validation enforces; filled from the gateway's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum message length in characters (`MAX_MESSAGE_LEN`).
    pub max_message_chars: usize,
    /// Maximum history page size a client may request.
    pub max_history_limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
