//! What every inbound frame parser shares: the [`Rejected`] error (the
//! refusal plus the `client_id` to echo) and the field checks of `client_id`,
//! `data.room` and message texts. It sits below the parsers of chat frames
//! ([`super::inbound`]) and of room frames ([`super::room_events`],
//! `room_inbound`), so they need not import each other.

use super::{ErrorCode, Limits, ProtocolError};
use crate::model::ids::{RoomId, MAX_CLIENT_ID_CHARS};

/// What the client said before validation failed, so the error can echo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why the frame was refused.
    pub error: ProtocolError,
    /// The frame's `client_id`, when it could be read.
    pub client_id: Option<String>,
}

impl Rejected {
    pub(crate) fn new(
        code: ErrorCode,
        message: impl Into<String>,
        client_id: Option<String>,
    ) -> Self {
        Self {
            error: ProtocolError::new(code, message),
            client_id,
        }
    }
}

/// Validates a `client_id`: at most [`MAX_CLIENT_ID_CHARS`] characters.
pub(crate) fn check_client_id(client_id: Option<String>) -> Result<Option<String>, Rejected> {
    match client_id {
        Some(id) if id.chars().count() > MAX_CLIENT_ID_CHARS => Err(Rejected::new(
            ErrorCode::InvalidClientId,
            format!("client_id is longer than {MAX_CLIENT_ID_CHARS} characters"),
            None,
        )),
        other => Ok(other),
    }
}

/// Checks a frame's `data.room`: present, valid, and the connection's.
pub(crate) fn check_room(
    claimed: Option<&str>,
    room: &RoomId,
    client_id: &Option<String>,
) -> Result<(), Rejected> {
    let reject = |code, msg: String| Err(Rejected::new(code, msg, client_id.clone()));
    match claimed {
        None => reject(ErrorCode::InvalidRoom, "data.room is required".into()),
        Some(r) if RoomId::parse(r).is_err() => reject(
            ErrorCode::InvalidRoom,
            "data.room must be 1-64 characters of [A-Za-z0-9_.:-]".into(),
        ),
        Some(r) if r != room.as_str() => reject(
            ErrorCode::RoomMismatch,
            format!("this connection is joined to room {:?}", room.as_str()),
        ),
        Some(_) => Ok(()),
    }
}

/// Checks a message text: present, not empty, at most `max_message_chars`.
/// Public for texts from elsewhere that must pass the same checks (a
/// pre-publish hook's modification).
///
/// # Errors
/// `empty_message` or `message_too_long`, echoing `client_id`.
pub fn check_text(
    text: Option<String>,
    limits: &Limits,
    client_id: &Option<String>,
) -> Result<String, Rejected> {
    let reject = |code, msg: String| Err(Rejected::new(code, msg, client_id.clone()));
    let Some(message) = text else {
        return reject(ErrorCode::EmptyMessage, "data.message is required".into());
    };
    if message.is_empty() {
        return reject(
            ErrorCode::EmptyMessage,
            "data.message must not be empty".into(),
        );
    }
    // Fast path: byte length bounds char count from above.
    if message.len() > limits.max_message_chars
        && message.chars().count() > limits.max_message_chars
    {
        return reject(
            ErrorCode::MessageTooLong,
            format!(
                "data.message is longer than {} characters",
                limits.max_message_chars
            ),
        );
    }
    Ok(message)
}
